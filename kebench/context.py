"""What a plugin may touch on `run`: the `RunContext` surface, the declared pass kinds, the key
under which `fit(after=...)` returns per-pass record entries, and `RunFailure` (a run that fails on
its own). `kebench.run.engine.Run` implements it; plugins use nothing else of it and never import
the engine (tests/test_plugin_surface.py checks `methods/`).
"""
from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Callable, ContextManager, Iterable, Protocol, runtime_checkable

from kebench.errors import RunFailure

if TYPE_CHECKING:  # the types of the surface; none of these modules is imported at run time
    from pathlib import Path

    import torch
    from torch import nn

    from kebench.config import RunConfig
    from kebench.data.pipeline import BatchStream
    from kebench.data.spec import DataBundle
    from kebench.plugin import Hook, Objective
    from kebench.registry import Method

__all__ = ["NOT_THE_MODEL", "RECORD", "PassKind", "RunContext", "RunFailure"]


class PassKind(str, Enum):
    """What a pass trains, as written to each pass record's "kind" and metrics.jsonl: the kinds every
    regime may use and kebench's tables and figures read. A plugin with passes of its own kind (RePr's
    s1/s2/final, DSD's phase) declares them under `passes:` in registry.yaml and passes the plain string;
    `fit` refuses a kind its method does not declare. A str enum: a record's kind compares equal to
    its plain-string value, and JSON holds the plain string."""

    PASS = "pass"                # the one pass of a single-pass regime
    GENERATION = "generation"    # KE / BANs / KE+DSD generation
    TEACHER = "teacher"          # trains a network other than the one the run reports
    TRAIN = "train"              # first training of a train-then-change regime
    FINETUNE = "finetune"

    def __str__(self) -> str:
        return self.value


#: Pass kinds whose pass trains a network other than the one the run reports (tables and plots skip them).
NOT_THE_MODEL = (PassKind.TEACHER.value,)

#: `fit(after=fn)`: fn(model) returns pass-level metrics (numbers), and may return per-pass record
#: entries (per-layer statistics, landmarks) as a dict under this key; they go beside "metrics".
RECORD = "record"


@runtime_checkable
class RunContext(Protocol):
    """Everything a plugin may use of the run it belongs to.

    Read-only facts: `cfg` (the resolved RunConfig), `data` (the loaded dataset: train/val/test,
    num_classes, in_chans, resolution, info), `device`, `task`, `primary` (the task's headline metric),
    `method` (the registry entry), `objective` (the run's objective, to wrap it), `passes` (records of
    the passes so far), `dir` (the run folder: write extra files there on rank 0 only), `rank`,
    `amp_dtype`, `channels_last`.
    Mutable: `model` (the network the run reports; a regime may replace it) and `state` (modules or
    tensors that outlive a pass; checkpointed with the model, restored on resume).
    """

    cfg: RunConfig
    data: DataBundle
    device: torch.device
    task: str  # the name of the dataset's `kebench.data.Task`
    primary: str  # that task's headline metric
    method: Method
    objective: Objective
    passes: list[dict]
    model: nn.Module
    state: dict[str, nn.Module | torch.Tensor]
    dir: Path
    rank: int
    amp_dtype: torch.dtype | None
    channels_last: bool

    def fit(self, epochs: int | None = None, *, kind: str = "pass", label: int | None = None,
            model: nn.Module | None = None, hooks: Iterable[Hook] = (), objective: Objective | None = None,
            lr: float | None = None, schedule: str | None = None, warmup: int | None = None,
            lr_window: tuple[int, int] | None = None, after: Callable[[nn.Module], dict] | None = None) -> dict:
        """Train one pass; returns (and appends to `passes`) its record."""

    def plan(self, passes: int, epochs: int) -> None:
        """Announce the passes and epochs the regime will train in all, before its first fit: the
        progress line then says "pass k/N" and the whole run's time left."""

    def evaluate(self, model: nn.Module | None = None, split: str = "test", prefix: str = "") -> dict[str, float]:
        """Task metrics of a model on a split."""

    def predict(self, model: nn.Module | None = None, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs, labels) of a model on a whole split, float32 on the CPU."""

    def build_model(self, arch: str | None = None, **kwargs) -> nn.Module:
        """A fresh model for this run's data and objective, on its device."""

    def stream(self, split: str = "train") -> BatchStream:
        """The batch stream of a split."""

    def autocast(self) -> ContextManager:
        """The run's autocast context (AMP policy)."""

    def resumed_state(self, name: str) -> nn.Module | torch.Tensor | dict | None:
        """On --resume, the checkpointed value of `state[name]` (None otherwise)."""

    def report(self, name: str, value: object) -> object:
        """Record a run-level fact as result.json[name] (not a schema field); returns `value`."""

    def reported(self, name: str, default: object = None) -> object:
        """A fact reported earlier in this run (or restored from its checkpoint)."""

    def report_final(self, values: dict) -> dict:
        """Add headline numbers to result.json["final"]; returns the run's whole contribution."""

    def report_cost(self, values: dict) -> dict:
        """Add entries to result.json["cost"]; returns the run's whole contribution."""
