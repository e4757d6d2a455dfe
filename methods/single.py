"""One training pass: the baseline regime (CE (N1) in the KE paper's tables)."""
from dataclasses import dataclass

from kebench.context import PassKind
from kebench.plugin import Regime


class Single(Regime):
    @dataclass
    class Params:
        """No parameters: one pass of --epochs."""

    def run(self, run):
        run.fit(run.cfg.epochs, kind=PassKind.PASS)
