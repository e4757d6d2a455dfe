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
`following_batchnorms` (the BatchNorm channels that normalise a conv's output, from the model graph).
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


def following_batchnorms(model: nn.Module, example: torch.Tensor | None = None
                         ) -> dict[str, list[tuple[str, int]]]:
    """For every conv: the BatchNorms that normalise its output channels, as (bn name, channel offset).

    Read from the torch.fx graph (a conv feeding a BN directly, or through channel concatenations,
    as in DenseNet, where the offset says where the conv's channels sit in the BN). Models that
    cannot be traced fall back to module order: the next module, if it is a BN with as many
    features as the conv has filters (VGG, plain conv-bn stacks).
    `example`: an input batch for shape propagation through concatenations (needed for offsets).
    """
    import torch.fx as fx

    modules = dict(model.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: use module order
        return _following_by_order(model)
    if example is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        was_training = model.training
        gm.eval()
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(example)
        finally:
            model.train(was_training)

    def channels(node) -> int | None:
        if node.op == "call_module" and isinstance(modules.get(node.target), nn.Conv2d):
            return modules[node.target].out_channels
        meta = node.meta.get("tensor_meta")
        return int(meta.shape[1]) if meta is not None and len(meta.shape) > 1 else None

    result: dict[str, list[tuple[str, int]]] = {n: [] for n in convs}
    for node in gm.graph.nodes:
        if not (node.op == "call_module" and node.target in result):
            continue
        frontier = [(node, 0)]
        while frontier:
            src, offset = frontier.pop()
            for user in src.users:
                if user.op == "call_module" and _is_bn(modules.get(user.target)):
                    result[node.target].append((user.target, offset))
                elif user.op == "call_function" and user.target is torch.cat and _cat_dim(user) == 1:
                    before = 0
                    for arg in user.args[0]:
                        if arg is src:
                            break
                        c = channels(arg)
                        if c is None:
                            before = None
                            break
                        before += c
                    if before is not None:
                        frontier.append((user, offset + before))
    return result


def _cat_dim(node) -> int:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return dim


def _following_by_order(model: nn.Module) -> dict[str, list[tuple[str, int]]]:
    named = list(model.named_modules())
    result = {}
    for i, (name, m) in enumerate(named):
        if isinstance(m, nn.Conv2d):
            result[name] = []
            nxt = next(((n, mm) for n, mm in named[i + 1:] if not list(mm.children())), None)
            if nxt is not None and _is_bn(nxt[1]) and nxt[1].num_features == m.out_channels:
                result[name].append((nxt[0], 0))
    return result
