"""Parameter sharing between a parent network and its mutated children (network morphisms).

Shared by the architecture-search regimes (methods/neuroevo.py, methods/agevo.py): Net2WiderNet's
unit remapping, the copy of a parent's trained weights into a child wherever shapes allow, the
birth check (how far a child's function is from its parent's), and the held-out validation split
that selection reads.
"""
from __future__ import annotations

import torch
from torch import nn

from kebench.data.spec import Split

#: Largest relative change of the logits at birth that counts as "the same function": float32 (and
#: TF32 convolutions on GPUs) round-off is orders of magnitude below; a broken mutation far above.
BIRTH_TOLERANCE = 1e-3
#: The validation subset carved from train is the same for every seed (like a dataset's own split).
VAL_SPLIT_SEED = 0


@torch.no_grad()
def remap_units(conv_a: nn.Conv2d, bn: nn.BatchNorm2d | None, consumer: nn.Module, index: torch.Tensor,
                in_scale: torch.Tensor | None = None) -> None:
    """Rebuild the units of conv_a (and its BN) so that new unit j is old unit index[j].

    conv_a's filters and the BN's parameters and running statistics are gathered by `index`; the
    consumer's (a Conv2d or Linear reading those units) input weights too, multiplied by
    `in_scale[j]`. Narrowing: index = 0..k-1. Net2WiderNet: index repeats units and the shares
    in_scale of each old unit's copies sum to 1, so the consumer sees the same sum.
    """
    index = index.to(conv_a.weight.device)
    conv_a.weight = nn.Parameter(conv_a.weight[index].contiguous())
    if conv_a.bias is not None:
        conv_a.bias = nn.Parameter(conv_a.bias[index].contiguous())
    conv_a.out_channels = len(index)
    if bn is not None:
        for name in ("weight", "bias"):
            if getattr(bn, name, None) is not None:
                setattr(bn, name, nn.Parameter(getattr(bn, name)[index].contiguous()))
        for name in ("running_mean", "running_var"):
            if getattr(bn, name, None) is not None:
                setattr(bn, name, getattr(bn, name)[index].contiguous())
        bn.num_features = len(index)
    w = consumer.weight[:, index]
    if in_scale is not None:
        w = w * in_scale.to(w).view(1, -1, *([1] * (w.dim() - 2)))
    consumer.weight = nn.Parameter(w.contiguous())
    if isinstance(consumer, nn.Conv2d):
        consumer.in_channels = len(index)
    else:
        consumer.in_features = len(index)


def widen_index(width: int, added: int, gen: torch.Generator, split: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
    """Net2WiderNet's unit map for adding `added` copies of random units to `width`, and the share of
    each copy's outgoing weights: equal (`equal`, Net2Net's rule) or a uniform random point of each
    unit's simplex (`random`: still exact, and copies get different gradients)."""
    index = torch.cat([torch.arange(width), torch.randint(width, (added,), generator=gen)])
    if split == "equal":
        weight = torch.ones(len(index), dtype=torch.float64)
    else:  # Exp(1) weights normalised per group = a uniform point on each group's simplex
        weight = torch.empty(len(index), dtype=torch.float64).exponential_(generator=gen)
    group_total = torch.zeros(width, dtype=torch.float64).index_add_(0, index, weight)
    return index, weight / group_total[index]


@torch.no_grad()
def inherit(child: nn.Module, parent: nn.Module, rename: dict[str, str] | None = None) -> dict:
    """Copy the parent's weights and buffers into the child wherever shapes allow.

    A tensor of the same name (or the name `rename` maps it to) and the same shape is copied whole;
    one whose shape differs (a layer that gained or lost channels, a changed kernel) gets the
    overlapping slice, centred for spatial kernel dims; the rest keeps the child's fresh init.
    Returns counts {"copied", "sliced", "fresh"} of tensors.
    """
    theirs = parent.state_dict()
    counts = {"copied": 0, "sliced": 0, "fresh": 0}
    for name, t in child.state_dict().items():
        src = theirs.get((rename or {}).get(name, name))
        if src is None or src.dim() != t.dim() or not t.is_floating_point():
            if src is not None and src.shape == t.shape:
                t.copy_(src)
                counts["copied"] += 1
            else:
                counts["fresh"] += 1
            continue
        if src.shape == t.shape:
            t.copy_(src)
            counts["copied"] += 1
            continue
        dst_idx, src_idx = [], []
        for d, (a, b) in enumerate(zip(t.shape, src.shape)):
            n = min(a, b)
            if d >= 2:  # spatial kernel dims: align the centres
                dst_idx.append(slice((a - n) // 2, (a - n) // 2 + n))
                src_idx.append(slice((b - n) // 2, (b - n) // 2 + n))
            else:
                dst_idx.append(slice(0, n))
                src_idx.append(slice(0, n))
        t[tuple(dst_idx)] = src[tuple(src_idx)].to(t)
        counts["sliced"] += 1
    return counts


@torch.no_grad()
def birth_change(parent: nn.Module, child: nn.Module, x: torch.Tensor) -> float:
    """max |child(x) - parent(x)| / max |parent(x)| in eval mode (0 for a function-preserving child)."""
    modes = parent.training, child.training
    parent.eval()
    child.eval()
    a, b = parent(x).float(), child(x).float()
    parent.train(modes[0])
    child.train(modes[1])
    return ((a - b).abs().max() / a.abs().max().clamp_min(torch.finfo(a.dtype).tiny)).item()


def carve_validation(train: Split, fraction: float) -> tuple[Split, Split]:
    """A stratified, seed-independent validation subset of `train` (each class keeps >= 1 train image)."""
    gen = torch.Generator().manual_seed(VAL_SPLIT_SEED)
    val, keep = [], []
    for c in torch.unique(train.labels):
        idx = torch.nonzero(train.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        val.append(idx[:n_val])
        keep.append(idx[n_val:])
    return train.subset(torch.sort(torch.cat(keep)).values), train.subset(torch.sort(torch.cat(val)).values)


def ensure_validation(run, fraction: float, who: str) -> None:
    """Give the run a val split for selection: the dataset's own, else a carved stratified share of train."""
    if run.data.val is None:
        run.data.train, run.data.val = carve_validation(run.data.train, fraction)
        run.data.info["validation"] = (f"{who}: stratified {fraction:.0%} of train held out for "
                                       f"selection (generator seed {VAL_SPLIT_SEED}); "
                                       f"{len(run.data.train)} train / {len(run.data.val)} val images")
