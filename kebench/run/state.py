"""`RunState`: what one run accumulates while it trains, shared explicitly by the pieces of the run
core — `Run` (engine.py) owns it, `PassLoop` (loop.py) adds to it, `checkpoint.py` saves and restores
it, `record.py` turns it into result.json. Everything a checkpoint holds besides tensors is here."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RunState:
    #: Records of the finished passes (`Run.passes`, result.json["passes"]).
    passes: list[dict] = field(default_factory=list)
    #: The best evaluated epoch by the task's headline metric: {metric, "pass", "label", "epoch"}.
    best: dict = field(default_factory=dict)
    #: What regimes reported (`run.report*`): written into result.json, checkpointed.
    facts: dict = field(default_factory=dict)
    #: Loss landscapes taken at the end of each LR step of step-schedule passes (`--analyses landscape`,
    #: kebench/run/analyses.py): checkpointed, written as result.json's analyses.landscape_steps.
    landscapes: list = field(default_factory=list)
    #: `fit()` calls so far (a replayed run counts its finished passes again).
    fits: int = 0
    #: On --resume, the checkpoint being replayed, until the pass it stopped in is restored.
    resume: dict | None = None
    #: Wall time of the earlier attempts of a resumed run, and when this attempt started training.
    elapsed_before: float = 0.0
    started: float | None = None
    #: When the last checkpoint was written (mid-pass checkpoints are spaced by --checkpoint-every-s).
    last_save: float = field(default_factory=time.perf_counter)

    def next_fit(self) -> int:
        """The index of the pass a new `fit()` trains (or replays)."""
        self.fits += 1
        return self.fits - 1

    def track_best(self, metric: str, test: dict, index: int, label: int, epoch: int) -> None:
        value = test.get(metric)
        if value is not None and (not self.best or value > self.best[metric]):
            self.best = {metric: value, "pass": index + 1, "label": label, "epoch": epoch}

    def contribute(self, name: str, values: dict) -> dict:
        """Merge `values` into the reported dict `name` ("final", "cost"); returns the whole dict."""
        part = self.facts.setdefault(name, {})
        part.update(values)
        return part

    def start(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Training wall time over every attempt of this run."""
        return self.elapsed_before + (0.0 if self.started is None else time.perf_counter() - self.started)

    def save_due(self, every_s: float) -> bool:
        return time.perf_counter() - self.last_save >= every_s

    def saved(self) -> None:
        self.last_save = time.perf_counter()
