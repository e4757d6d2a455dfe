"""What a dataset is: its splits (`Split`), the bundle a run trains on (`DataBundle`) and its registry
entry (`DatasetSpec`). Dataset modules register themselves here; kebench.data looks them up."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from kebench.errors import UserError
from kebench.params import coerce


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
    task: str
    load: Callable  # (cfg) -> DataBundle
    description: str = ""
    defaults: dict = field(default_factory=dict)  # RunConfig defaults for this dataset
    options: dict = field(default_factory=dict)  # the --data-opt KEY=VALUE it takes, with their defaults

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
