"""One training pass: the baseline regime (CE (N1) in the KE paper's tables)."""
from kebench.context import PassKind
from kebench.plugin import Regime


class Single(Regime):
    def run(self, run):
        run.fit(run.cfg.epochs, kind=PassKind.PASS)
