"""The CLI's consoles (one module, so every command module prints through the same ones)."""
import sys

from rich.console import Console

# Wide enough for the summary table when output goes to a file or a pipe (rich defaults to 80).
out = Console(width=None if sys.stdout.isatty() else 160)
# Messages are paragraphs: let the terminal wrap them, so they stay greppable when captured.
err = Console(stderr=True, soft_wrap=True)
