"""What a dataset is: the task it poses (`Task`), its splits (`Split`), the bundle a run trains on
(`DataBundle`) and its registry entry (`DatasetSpec`). Dataset modules register themselves here;
kebench.data looks them up."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from kebench.errors import UserError, unknown_choice
from kebench.params import coerce

if TYPE_CHECKING:  # annotations only: the task records load without torch (tables, sweep status)
    import torch


@dataclass(frozen=True)
class Task:
    """What a dataset asks of a method, in one record: the metrics a run is scored with (what
    `evaluate` returns first, as fractions in [0, 1]), the headline one (the run's `primary`, best
    epoch, summaries and tables) and the objective a method without one trains with (`--method ke`
    on a retrieval dataset is triplet+ke)."""

    name: str
    metrics: tuple[str, ...]
    headline: str
    objective: str  # the default objective

    def __post_init__(self):
        if self.headline not in self.metrics:
            raise ValueError(f"task '{self.name}': headline metric '{self.headline}' is not one of its metrics")


CLASSIFICATION = Task("classification", metrics=("top1",), headline="top1", objective="ce")
RETRIEVAL = Task("retrieval", metrics=("nmi", "r@1", "r@2", "r@4", "r@8"), headline="r@1", objective="triplet")
TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, RETRIEVAL)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise unknown_choice("task", name, sorted(TASKS))
    return TASKS[name]


def headline_metric(task: str | None) -> str:
    """The headline metric of a result record's task (a record without a known task: classification's)."""
    return TASKS.get(task or CLASSIFICATION.name, CLASSIFICATION).headline


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W] (may be memory-mapped)
    labels: torch.Tensor  # int64 [N], 0-based
    #: int64 [N, 2]: each image's real (height, width) when images are stored with their aspect ratio
    #: in padded slots (data/cache.py; portrait ones transposed). None: every image fills [H, W].
    extent: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index], None if self.extent is None else self.extent[index])


@dataclass
class DataBundle:
    name: str
    task: str  # classification | retrieval
    train: Split
    test: Split
    num_classes: int  # classes the model is trained on
    in_chans: int
    resolution: int  # network input size
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val: Split | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop scale range
    flip: bool = True
    #: CIFAR-style training crops: zero-pad every side by this many pixels, then a random
    #: resolution x resolution crop (torchvision's RandomCrop(padding=...)). None: RandomResizedCrop.
    pad_crop: int | None = None
    info: dict = field(default_factory=dict)  # recorded in result.json (options, corrupt files, ...)


@dataclass
class DatasetSpec:
    name: str
    task: str  # the name of its `Task` (a Task record is accepted too and stored by name)
    load: Callable  # (cfg) -> DataBundle
    description: str = ""
    defaults: dict = field(default_factory=dict)  # RunConfig defaults for this dataset
    options: dict = field(default_factory=dict)  # the --data-opt KEY=VALUE it takes, with their defaults

    def __post_init__(self):
        self.task = self.task.name if isinstance(self.task, Task) else get_task(self.task).name

    def parse_options(self, given: dict) -> dict:
        """The dataset's options with `given` applied; an unknown key or a value of the wrong type is
        refused with the valid options listed (checked when a config is resolved, before any run)."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = (", ".join(f"{k} (default {v!r})" for k, v in self.options.items())
                     or f"none: '{self.name}' takes no options")
            raise UserError(f"Unknown data option(s) {unknown} for dataset '{self.name}'; valid: {valid} "
                            f"(--data-opt KEY=VALUE).")
        opts = dict(self.options)
        for k, v in given.items():
            opts[k] = coerce(k, v, opts[k], f"--data-opt for dataset '{self.name}'")
        return opts


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec
