"""The dataset registry. Every dataset yields uint8 image tensors + labels (see `Split`);
one batch pipeline (`pipeline.py`) augments them on the training device.

Datasets are an extension point (`registry.Extensions`): kebench's own register themselves when their
module (listed in `BUILTIN_MODULES`) is imported, `register(DatasetSpec(...))`; registry.yaml's
`datasets:` and the `kebench.datasets` entry points name a `DatasetSpec` as `module:attribute`."""
from __future__ import annotations

import importlib

from kebench import registry
from kebench.data.spec import (CLASSIFICATION, DATASETS, RETRIEVAL, TASKS, DataBundle, DatasetSpec, Split, Task,
                                get_task, headline_metric, register)
from kebench.errors import UserError

#: Modules of kebench's own datasets; importing one registers its datasets. A new in-tree dataset
#: module goes here (an import error in one is a bug to see, never a dataset that silently vanishes).
BUILTIN_MODULES = ("kebench.data.embedded", "kebench.data.paper", "kebench.data.arrays", "kebench.data.folders")


def _registered() -> dict[str, DatasetSpec]:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(DATASETS)


def _check(name: str, spec) -> None:
    if not isinstance(spec, DatasetSpec) or spec.name != name:
        raise UserError(f"Dataset '{name}' must name a kebench.data.DatasetSpec whose name is '{name}', got "
                        f"{spec!r:.200}.")


#: The dataset extension point: kebench's own and registered ones, registry.yaml's `datasets:`,
#: `kebench.datasets` entry points.
DATASET_POINT = registry.Extensions("dataset", "datasets", _registered, check=_check, sort=True)


def names() -> list[str]:
    return DATASET_POINT.names()


def get_spec(name: str) -> DatasetSpec:
    return DATASET_POINT.get(name)


def load(cfg) -> DataBundle:
    bundle = get_spec(cfg.data).load(cfg)
    if cfg.train_fraction < 1.0:
        bundle.train = stratified_fraction(bundle.train, cfg.train_fraction)
        bundle.info["train_fraction"] = cfg.train_fraction
    return bundle


def stratified_fraction(split: Split, fraction: float) -> Split:
    """The same per-class subset for every seed, so seeds differ only in training randomness."""
    import torch  # here: the dataset registry and task records load without torch

    gen = torch.Generator().manual_seed(0)
    keep = []
    for c in torch.unique(split.labels):
        idx = torch.nonzero(split.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        keep.append(idx[: max(1, round(fraction * len(idx)))])
    return split.subset(torch.sort(torch.cat(keep)).values)


__all__ = ["CLASSIFICATION", "RETRIEVAL", "TASKS", "DataBundle", "DatasetSpec", "Split", "Task", "get_spec", "get_task",
           "headline_metric", "load", "names", "register", "stratified_fraction"]
