"""kebench: which training regime wins on small data, and at what cost."""
from kebench.version import __version__

__all__ = ["__version__"]
