"""The plugin contract. Subclass `Objective` or `Regime` in one file under `methods/`.

Objectives decide *what* one pass optimises (loss, head, batch sampler, extra hooks).
Regimes decide *how* passes are scheduled; they never own a loop: they call `run.fit(...)`.
What a plugin may use of `run` is `kebench.context.RunContext` (facts go through `run.report`).
Plugins meet through declared contracts, never through each other's attributes: the teacher
contract (`Objective.needs_teacher`, `Regime.provides_teacher`, `Regime.trains_own_teacher`,
`Objective.set_teacher`), checked
when a config is validated (`kebench.config.refusal`, `kebench.config.teacher_problem`).
A plugin declares its parameters once, as a nested `Params` dataclass of `param(...)` fields
(type, choices, range, help); registry.yaml holds the paper's values and is checked against it
(docs/plugins.md).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from kebench.params import declared, param, parse_params  # noqa: F401  (param: the declaration helper plugins use)


class Hook:
    """Engine callbacks. Override only what you need; all are no-ops by default."""

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After backward, before optimizer.step(): edit gradients (e.g. mask them)."""

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After optimizer.step(): edit weights or optimizer state (e.g. re-apply a mask)."""

    def epoch_end(self, model: nn.Module, epoch: int, metrics: dict) -> None:
        """After each epoch's metrics are computed (epoch counts from 1 within the pass)."""

    def stop_pass(self) -> str | None:
        """Asked after epoch_end: a reason (text) ends the pass after this epoch, e.g. an individual
        extinguished at a landmark epoch. The record keeps the reason and the epochs trained."""
        return None

    def pass_end(self, record: dict) -> None:
        """After a pass (generation / phase) ends, with its record (metrics, cost); monitors log it."""


class Plugin:
    kind = ""
    #: Tasks this plugin supports; None means any.
    tasks: tuple[str, ...] | None = None
    #: The declared parameters: a nested @dataclass of param(...) fields (None: untyped, legacy).
    Params: type | None = None

    def __init__(self, params: dict, run):
        if declared(type(self)) is None:
            self.params = SimpleNamespace(**params)
        else:  # already checked when the config was resolved; parsing again is cheap and idempotent
            self.params = parse_params(type(self), params, getattr(self, "name", "") or type(self).__name__)
        self.run_ctx = run


class Objective(Plugin):
    kind = "objective"
    tasks = ("classification",)
    #: The teacher contract. True for an objective that distils from a network it does not train (kd,
    #: fd). Its teacher comes from its own `teacher` setting (the model.pt of an earlier run; the
    #: objective declares that parameter) or from a regime that `provides_teacher`, which trains one
    #: and hands it over with `set_teacher`. Config validation refuses a method where neither holds.
    needs_teacher: bool = False
    #: A teacher-needing objective's frozen teacher once it has one (None before), and where it came
    #: from: the model file of its `teacher` setting, or "trained" when a regime handed it over.
    teacher: nn.Module | None = None
    teacher_source: str = ""

    def adapt_model(self, model: nn.Module, num_classes: int) -> nn.Module:
        """Change the head if the objective needs its own (cosine head, embedding head)."""
        return model

    def batch_sampler(self, labels: torch.Tensor, batch_size: int, generator: torch.Generator):
        """Return a list of index tensors (one per batch) for one epoch, or None for plain shuffling."""
        return None

    def shard(self, batch: torch.Tensor, world: int, rank: int) -> torch.Tensor:
        """This rank's indices of a global batch when `world` processes train one run. The default
        deals out equal contiguous parts; an objective whose samples are coupled across the batch
        (pairs stored apart, groups mined together) overrides it so coupled samples share a rank."""
        return batch.tensor_split(world)[rank]

    def hooks(self) -> list[Hook]:
        return []

    def extra_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Trainable tensors outside `model` that a pass also optimises (a distillation regressor).

        Called at the start of every pass, before the optimizer is built and before a checkpoint is
        restored; register the modules holding them in run.state so they are checkpointed."""
        return []

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (loss, logits-for-train-accuracy or None)."""
        raise TypeError(f"{type(self).__name__} must define loss()")

    def train_mode(self, model: nn.Module) -> None:
        """Called when a pass starts; objectives holding a teacher put it in eval mode here."""

    def set_teacher(self, teacher: nn.Module, source: str = "trained") -> None:
        """Teacher contract: distil from `teacher` (frozen: eval mode, no gradients) from now on. A
        regime that `provides_teacher` calls it; only objectives that `needs_teacher` accept it."""
        raise TypeError(f"{type(self).__name__} distils from no teacher (needs_teacher is False)")

    def set_augment(self, augment) -> None:
        """Teacher contract: apply `augment(x, y) -> (x, y_b, lam)` (a `kebench.run.distill.BatchAugment`:
        AutoAugment, CutMix with mixed labels) to every batch inside loss(). A regime that
        `provides_teacher` may set it for the student's passes; teacher-needing objectives accept it."""
        raise TypeError(f"{type(self).__name__} takes no batch augmentation from a regime")


class Regime(Plugin):
    kind = "regime"
    tasks = None
    #: Objectives this regime cannot run with, mapped to the reason shown to the user.
    incompatible: dict[str, str] = {}
    #: The teacher contract. True for a regime that trains a teacher (unless the objective loaded one
    #: from its `teacher` setting) and hands it to its objective with `objective.set_teacher`. Its
    #: objective must be one that `needs_teacher`; config validation refuses any other.
    provides_teacher: bool = False
    #: The teacher contract. True for a regime that distils from teachers it trains and keeps to itself
    #: (BANs: each generation is the next one's teacher). An objective that needs a teacher would add
    #: a second one (its `--teacher PATH`), so config validation refuses every such objective under it.
    trains_own_teacher: bool = False

    def run(self, run) -> None:
        raise TypeError(f"{type(self).__name__} must define run()")


#: The methods of the objective contract (everything public an `Objective` defines).
OBJECTIVE_CONTRACT = tuple(name for name, value in vars(Objective).items()
                           if callable(value) and not name.startswith("_"))


def _forwarded(name: str):
    def method(self, *args, **kwargs):
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"The wrapped objective's {name}()."
    return method


class WrappingObjective(Objective):
    """An objective that changes another one (adds a loss term, a teacher): every method of the
    objective contract is forwarded to `inner` unless the wrapper overrides it, so a contract
    method added later reaches the wrapped objective without editing any wrapper. An override that
    adds to the inner behaviour calls `super().<method>(...)`, which is the forwarding."""

    def __init__(self, inner: Objective, params: dict | None = None):
        super().__init__(params or {}, inner.run_ctx)
        self.inner = inner
        self.tasks = inner.tasks


for _name in OBJECTIVE_CONTRACT:
    setattr(WrappingObjective, _name, _forwarded(_name))
del _name
