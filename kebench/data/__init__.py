"""The dataset registry. Every dataset yields uint8 image tensors + labels (see `Split`);
one batch pipeline (`pipeline.py`) augments them on the training device."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from kebench.errors import unknown_choice


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
        from kebench.config import _coerce
        from kebench.errors import UserError

        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = (", ".join(f"{k} (default {v!r})" for k, v in self.options.items())
                     or f"none: '{self.name}' takes no options")
            raise UserError(f"Unknown data option(s) {unknown} for dataset '{self.name}'; valid: {valid} "
                            f"(--data-opt KEY=VALUE).")
        opts = dict(self.options)
        for k, v in given.items():
            opts[k] = _coerce(k, v, opts[k], f"--data-opt for dataset '{self.name}'")
        return opts


_DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    _DATASETS[spec.name] = spec
    return spec


def _ensure_builtin() -> None:
    from kebench.data import embedded  # noqa: F401  (registers digits, synthetic)

    try:
        from kebench.data import paper  # noqa: F401  (registers the six paper datasets)
    except ImportError:
        pass


def names() -> list[str]:
    _ensure_builtin()
    return sorted(_DATASETS)


def get_spec(name: str) -> DatasetSpec:
    _ensure_builtin()
    if name not in _DATASETS:
        raise unknown_choice("dataset", name, names())
    return _DATASETS[name]


def load(cfg) -> DataBundle:
    bundle = get_spec(cfg.data).load(cfg)
    if cfg.train_fraction < 1.0:
        bundle.train = stratified_fraction(bundle.train, cfg.train_fraction)
        bundle.info["train_fraction"] = cfg.train_fraction
    return bundle


def stratified_fraction(split: Split, fraction: float) -> Split:
    """The same per-class subset for every seed, so seeds differ only in training randomness."""
    gen = torch.Generator().manual_seed(0)
    keep = []
    for c in torch.unique(split.labels):
        idx = torch.nonzero(split.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        keep.append(idx[: max(1, round(fraction * len(idx)))])
    return split.subset(torch.sort(torch.cat(keep)).values)
