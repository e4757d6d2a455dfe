"""The dataset registry. Every dataset yields uint8 image tensors + labels (see `Split`);
one batch pipeline (`pipeline.py`) augments them on the training device."""
from __future__ import annotations

import torch

from kebench.data.spec import DATASETS, DataBundle, DatasetSpec, Split, register
from kebench.errors import unknown_choice


def _ensure_builtin() -> None:
    from kebench.data import embedded  # noqa: F401  (registers digits, synthetic)

    try:
        from kebench.data import paper  # noqa: F401  (registers the six paper datasets)
    except ImportError:
        return
    from kebench.data import arrays, folders  # noqa: F401  (CIFAR, MNIST, ImageNet, Tiny-ImageNet, folder)


def names() -> list[str]:
    _ensure_builtin()
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    _ensure_builtin()
    if name not in DATASETS:
        raise unknown_choice("dataset", name, names())
    return DATASETS[name]


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


__all__ = ["DataBundle", "DatasetSpec", "Split", "get_spec", "load", "names", "register", "stratified_fraction"]
