"""Pruning primitives shared by the sparse regimes (DSD, KE+DSD, RePr) and the KD x pruning pipelines.

A pruning method here is three separate pieces:

* *which* weights to drop: `magnitude_masks` (smallest |w|, per layer or one global threshold),
  `orthogonality_scores` (RePr's inter-filter redundancy);
* *where* the masks live: `MaskSet`, an `nn.Module` of boolean buffers keyed by parameter name, so
  masks are saved in checkpoints and a regime can register them in `run.state` (resume);
* *holding* them during training: `MaskHook`, an engine `Hook` that zeroes the masked entries of the
  weights, their gradients and the SGD momentum buffers at every step. Masking only the weights
  is not enough: momentum and weight decay would move a zeroed weight again at the next step.

Structural helpers: `prunable_weights` (which tensors count as "layer weights"),
`following_batchnorms` (the BatchNorm channels that normalise a conv's output, from the channel graph of kebench/nets/channels.py).

KD x pruning (Park et al.; methods/kd_prune.py): `global_conv_masks` (weight level), and per channel
group of `kebench.nets.channels.channel_graph` `l1_filter_keep` (Li et al.) and `slimming_keep` (Liu et al.,
with `bn_l1_penalty` while training), whose kept indices `extract_pruned` turns into a physically
smaller network (`kebench.nets.slim`).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from kebench.plugin import Hook


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Layer weight tensors: every parameter named `weight` with >= 2 dims (conv kernels, linear and
    cosine-head matrices). Biases and normalisation parameters (1-D) are never pruned by magnitude."""
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "weight" and p.dim() >= 2]


def _drop_count(numel: int, fraction: float) -> int:
    return int(round(fraction * numel))


def smallest_magnitude_mask(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean keep-mask that drops exactly round(fraction * numel) entries of smallest |w|.

    Ties are broken by position (stable sort), so the count is exact even when many weights are
    equal (e.g. already zero)."""
    k = _drop_count(weight.numel(), fraction)
    keep = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    if k:
        order = torch.argsort(weight.detach().abs().flatten().float(), stable=True)
        keep[order[:k]] = False
    return keep.view_as(weight)


@torch.no_grad()
def magnitude_masks(model: nn.Module, fraction: float, per_layer: bool = True,
                    params: Iterable[tuple[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks (True = kept) dropping the `fraction` smallest-magnitude weights.

    per_layer=True: every tensor loses exactly round(fraction * numel) entries (DSD, KE+DSD).
    per_layer=False: one global magnitude ranking over all tensors together (unstructured global
    pruning); a layer may then lose more or less than `fraction`.
    params: (name, tensor) pairs to prune; default `prunable_weights(model)`.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"pruning fraction must be in [0, 1), got {fraction}")
    named = list(params if params is not None else prunable_weights(model))
    if per_layer:
        return {n: smallest_magnitude_mask(p, fraction) for n, p in named}
    flat = torch.cat([p.detach().abs().flatten().float().cpu() for _, p in named])
    keep = smallest_magnitude_mask(flat, fraction)
    masks, start = {}, 0
    for n, p in named:
        masks[n] = keep[start:start + p.numel()].view(p.shape).to(p.device)
        start += p.numel()
    return masks


def sparsity(tensors: Iterable[torch.Tensor]) -> float:
    """Fraction of exactly-zero entries over all given tensors."""
    zeros = total = 0
    for t in tensors:
        zeros += int((t == 0).sum())
        total += t.numel()
    return zeros / max(total, 1)


def _key(name: str) -> str:
    return name.replace(".", "__")


class MaskSet(nn.Module):
    """Keep-masks for named parameters, held as boolean buffers (checkpointed with `state_dict`).

    Register it in `run.state` before the `fit()` that uses it: on resume its buffers are restored
    in place, so hooks already bound to them see the restored masks."""

    def __init__(self, masks: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.names: list[str] = []
        for name, mask in (masks or {}).items():
            self.add(name, mask)

    @classmethod
    def ones_like(cls, named: Iterable[tuple[str, torch.Tensor]]) -> "MaskSet":
        """All-kept masks shaped like the given parameters (a placeholder to fill later)."""
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in named})

    def add(self, name: str, mask: torch.Tensor) -> None:
        self.register_buffer(_key(name), mask.detach().to(torch.bool).clone())
        self.names.append(name)

    def __getitem__(self, name: str) -> torch.Tensor:
        return getattr(self, _key(name))

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def items(self):
        return [(n, self[n]) for n in self.names]

    @torch.no_grad()
    def assign(self, masks: dict[str, torch.Tensor]) -> None:
        """Overwrite stored masks in place (same names and shapes); unnamed ones become all-kept."""
        unknown = set(masks) - set(self.names)
        if unknown:
            raise KeyError(f"MaskSet has no masks for {sorted(unknown)}")
        for n in self.names:
            self[n].copy_(masks[n] if n in masks else torch.ones_like(self[n]))

    def kept_fraction(self) -> dict[str, float]:
        return {n: float(m.float().mean()) for n, m in self.items()}


class MaskHook(Hook):
    """Holds `masks` on `model` during a `Run.fit`: masked weights, their gradients and their SGD
    momentum buffers are zeroed before and after every optimizer step.

    Zeroing the gradient before the step keeps weight decay and momentum from producing an update
    (both are zero for a zero weight with a zero buffer); re-zeroing after the step makes the
    invariant hold whatever the optimizer did. `apply()` zeroes the weights once (call it before
    training: pruned weights start from zero)."""

    def __init__(self, model: nn.Module, masks: MaskSet | dict[str, torch.Tensor]):
        params = dict(model.named_parameters())
        items = masks.items() if isinstance(masks, MaskSet) else list(masks.items())
        missing = [n for n, _ in items if n not in params]
        if missing:
            raise KeyError(f"masks name parameters the model does not have: {missing[:5]}")
        self.pairs = [(params[n], m) for n, m in items]

    @torch.no_grad()
    def apply(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        for p, m in self.pairs:
            p.mul_(m)
            if p.grad is not None:
                p.grad.mul_(m)
            if optimizer is not None:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    buf.mul_(m)

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.apply(optimizer)

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.apply(optimizer)


# ---------------------------------------------------------------------------- structure
def orthogonality_scores(weight: torch.Tensor) -> torch.Tensor:
    """RePr's redundancy score per filter: rows of W (flattened, L2-normalised), P = |W Wᵀ − I|,
    score_i = Σ_j P_ij / #filters. Higher means more redundant (less orthogonal to the others)."""
    w = weight.detach().float().flatten(1)
    w = nn.functional.normalize(w, dim=1)
    p = (w @ w.t() - torch.eye(len(w), device=w.device)).abs()
    return p.sum(1) / len(w)


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def following_batchnorms(model: nn.Module, example: torch.Tensor) -> dict[str, list[tuple[str, int]]]:
    """For every conv: the BatchNorms that normalise its output channels, as (bn name, channel offset).

    Read from the model's channel graph (`kebench.nets.channels.channel_graph`, one traced forward pass on
    `example`): a conv feeding a BN directly, or through channel concatenations, as in DenseNet, where
    the offset says where the conv's channels sit in the BN. A model the graph cannot follow is
    refused with the op that stopped it.
    """
    from kebench.nets.channels import channel_graph

    found = channel_graph(model, example).following_norms()
    return {n: found.get(n, []) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def weight_sparsity(model) -> dict:
    """Pass record entries: fraction of exactly-zero weights over all prunable tensors (a metric)
    and per layer (`layer_sparsity`, a record entry beside the metrics)."""
    from kebench.context import RECORD

    named = prunable_weights(model)
    return {"sparsity": sparsity(p for _, p in named), RECORD: {"layer_sparsity": {n: sparsity([p]) for n, p in named}}}


# ---------------------------------------------------------------- KD x pruning (Park, Yoo, Kwak)
# Unstructured: one global magnitude threshold over conv weights (masks held by MaskHook).
# Structured: keep-indices per *channel group* (kebench.nets.channels.channel_graph: channels tied by a
# residual add form one group), then kebench.nets.slim extracts the physically smaller network.
def conv_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weights of every convolution (the tensors weight-level pruning ranks)."""
    return [(f"{n}.weight" if n else "weight", m.weight) for n, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd)]


def global_conv_masks(model: nn.Module, fraction: float) -> dict[str, torch.Tensor]:
    """Weight-level pruning: drop the `fraction` smallest-|w| conv weights under one global threshold."""
    return magnitude_masks(model, fraction, per_layer=False, params=conv_weights(model))


def bn_l1_penalty(model: nn.Module) -> torch.Tensor:
    """Σ|γ| over every BatchNorm scale: network slimming's sparsity term (its gradient is sign(γ))."""
    terms = [m.weight.abs().sum() for m in model.modules() if _is_bn(m) and m.weight is not None]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def prunable_groups(graph, model: nn.Module, tied: bool) -> list[str]:
    """Channel groups structured pruning may shrink: not pinned (input/output), written only by
    convolutions, more than one channel, and (unless `tied`) written by a single conv, i.e. not
    tied to other layers by a residual add."""
    out = []
    for gid, g in graph.groups.items():
        if g.pinned or g.size < 2 or not g.producers:
            continue
        if not all(isinstance(model.get_submodule(p), nn.modules.conv._ConvNd) for p in g.producers):
            continue
        if len(g.producers) > 1 and not tied:
            continue
        out.append(gid)
    return out


def _keep_count(size: int, ratio: float) -> int:
    from kebench.nets.split import ceil_rate

    return size if ratio == 0 else ceil_rate(1 - ratio, size)


@torch.no_grad()
def filter_l1_scores(graph, model: nn.Module, gid: str) -> torch.Tensor:
    """Σ|W| of the filters writing each channel of a group, summed over the group's member convs."""
    score = torch.zeros(graph.groups[gid].size)
    for name in graph.groups[gid].producers:
        w = model.get_submodule(name).weight.detach().float()
        score += w.abs().flatten(1).sum(1).cpu()
    return score


@torch.no_grad()
def bn_gamma_scores(graph, model: nn.Module, gid: str) -> torch.Tensor | None:
    """Mean |γ| per channel of a group over the BatchNorms that normalise it (None when none does)."""
    g = graph.groups[gid]
    total, count = torch.zeros(g.size), torch.zeros(g.size)
    for name in g.norms:
        pos, idx = graph.positions(name, gid)
        bn = model.get_submodule(name)
        if bn.weight is None or len(pos) == 0:
            continue
        total.index_add_(0, idx, bn.weight.detach().float().abs().cpu()[pos])
        count.index_add_(0, idx, torch.ones(len(idx)))
    if not (count > 0).all():
        return None
    return total / count


def l1_filter_keep(model: nn.Module, ratio: float, example: torch.Tensor, tied: bool = False
                   ) -> dict[str, torch.Tensor]:
    """L1-norm filter pruning (Li et al. 2017): in every prunable group keep the ceil((1-ratio)·C)
    channels whose filters have the largest Σ|W| (a tied group: summed over its member convs)."""
    from kebench.nets.channels import channel_graph

    graph = channel_graph(model, example)
    keep = {}
    for gid in prunable_groups(graph, model, tied):
        score = filter_l1_scores(graph, model, gid)
        n = _keep_count(len(score), ratio)
        keep[gid] = torch.argsort(score, descending=True, stable=True)[:n].sort().values
    return keep


def slimming_keep(model: nn.Module, ratio: float, example: torch.Tensor, tied: bool = False
                  ) -> dict[str, torch.Tensor]:
    """Network slimming (Liu et al. 2017): one global |γ| threshold removes `ratio` of all prunable
    channels; a group never loses all of its channels (its largest-|γ| channel stays)."""
    from kebench.nets.channels import channel_graph

    graph = channel_graph(model, example)
    scores = {}
    for gid in prunable_groups(graph, model, tied):
        s = bn_gamma_scores(graph, model, gid)
        if s is not None:
            scores[gid] = s
    if not scores:
        return {}
    flat = torch.cat(list(scores.values()))
    drop = torch.zeros(len(flat), dtype=torch.bool)
    drop[torch.argsort(flat, stable=True)[: int(round(ratio * len(flat)))]] = True
    keep, start = {}, 0
    for gid, s in scores.items():
        kept = ~drop[start:start + len(s)]
        start += len(s)
        if not kept.any():
            kept[int(torch.argmax(s))] = True
        keep[gid] = torch.nonzero(kept).flatten()
    return keep


def extract_pruned(model: nn.Module, keep: dict[str, torch.Tensor], example: torch.Tensor) -> nn.Module:
    """The physically smaller network keeping `keep` (kebench.nets.slim.extract_subnetwork)."""
    from kebench.nets.slim import extract_subnetwork

    return extract_subnetwork(model, keep, example)


def save_pruned(path, model: nn.Module, plan: dict, arch: str) -> None:
    """Save a pruned network: a structured one as a whole module (`kebench.nets.slim.save_slim`, reload
    with `kebench.nets.slim.load_slim`); a weight-pruned one keeps its shape, so as a kebench model file
    `{"arch", "state_dict"}` that loads with weights_only=True (and can serve as a teacher)."""
    if plan["method"] == "weight":
        from kebench.run.results import save_torch

        save_torch(path, {"arch": arch, "state_dict": model.state_dict()})
    else:
        from kebench.nets.slim import save_slim

        save_slim(model, path)
