"""Fit/reset hypotheses of Knowledge Evolution (Taha et al., CVPR 2021).

A split is one binary mask M per conv/linear weight: M=1 is the fit-hypothesis, M=0 the
reset-hypothesis. Before every generation after the first, `SplitMasks.reinitialize` draws the reset
part again from the layer's own default init (W = M*W + (1-M)*W_rand) and leaves fit weights,
BatchNorm parameters and statistics and (KELS) the output-layer bias alone.

* KELS keeps, in every *channel group*, the first ceil(s_r*C) channels: a conv's fit-hypothesis is
  the kernels that read kept input channels inside the filters that write kept output channels.
* WELS keeps each weight with probability s_r (drawn once; WELS-Rand redraws it each generation).

Channel groups come from the model's graph (kebench/nets/channels.py), never from per-architecture tables.
"""
from __future__ import annotations

import copy
import math
from fractions import Fraction

import torch
from torch import nn

from kebench.nets.channels import ChannelGraph
from kebench.errors import UserError, unknown_choice

SPLITS = ("kels", "wels", "wels-rand")


def ceil_rate(rate: float, size: int) -> int:
    """ceil(rate*size) with `rate` taken as the decimal it was written as (0.07*100 is 7, where the
    float product 7.000000000000001 would give 8). For the rates 0.1..0.9 and layer widths up to
    2048 this equals the float ceil(rate*size) of the official code (tests/test_split.py)."""
    return min(size, max(1, math.ceil(Fraction(repr(float(rate))) * size)))



def kels_keep(graph: ChannelGraph, rate: float) -> dict[str, torch.Tensor]:
    """KELS: the first ceil(rate*C) channels of every group (all of a pinned group)."""
    return {gid: torch.arange(g.size if g.pinned else ceil_rate(rate, g.size)) for gid, g in graph.groups.items()}


# ---------------------------------------------------------------------------------------------- masks
def _masked_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and m.weight is not None]


def _key(name: str) -> str:
    return name.replace(".", "/")


class SplitMasks(nn.Module):
    """Fit/reset masks of a model's conv and linear weights: bool buffers (checkpointed, never parameters).

    `weight_<layer>` is True on fit weights. KELS also masks the bias of reset output channels
    (`bias_<layer>`); WELS masks weights only, so every bias is carried over.
    """

    def __init__(self, kind: str, rate: float, masks: dict[str, tuple[torch.Tensor, torch.Tensor | None]]):
        super().__init__()
        if kind not in SPLITS:
            raise unknown_choice("split", kind, list(SPLITS))
        self.kind, self.rate = kind, rate
        self.layer_names = list(masks)
        for name, (w, b) in masks.items():
            self.register_buffer("weight_" + _key(name), w.to(torch.bool).contiguous())
            if b is not None:
                self.register_buffer("bias_" + _key(name), b.to(torch.bool).contiguous())

    # -------------------------------------------------------------- construction
    @classmethod
    def kels(cls, model: nn.Module, rate: float, graph: ChannelGraph) -> "SplitMasks":
        return cls("kels", rate, graph.masks(kels_keep(graph, rate), model))

    @classmethod
    def wels(cls, model: nn.Module, rate: float, generator: torch.Generator, kind: str = "wels") -> "SplitMasks":
        masks = {n: (torch.rand(m.weight.shape, generator=generator) < rate, None) for n, m in _masked_layers(model)}
        if not masks:
            raise UserError("WELS needs a model with conv or linear layers; this one has none.")
        return cls(kind, rate, masks)

    def redraw(self, generator: torch.Generator) -> None:
        """WELS-Rand: draw every weight mask again (in place, same order as built)."""
        for name in self.layer_names:
            buf = self.weight_mask(name)
            buf.copy_(torch.rand(buf.shape, generator=generator) < self.rate)

    # -------------------------------------------------------------- access
    def weight_mask(self, name: str) -> torch.Tensor:
        return getattr(self, "weight_" + _key(name))

    def bias_mask(self, name: str) -> torch.Tensor | None:
        return getattr(self, "bias_" + _key(name), None)

    # -------------------------------------------------------------- KE operations
    @torch.no_grad()
    def reinitialize(self, model: nn.Module) -> None:
        """Re-draw the reset-hypothesis from each layer's own default init; keep everything else.

        The layer's `reset_parameters` (kaiming_uniform a=sqrt(5) for nn.Conv/nn.Linear) runs on a
        scratch copy, so the RNG draws are exactly the layer's default init, from torch's global RNG.
        """
        for name in self.layer_names:
            module = model.get_submodule(name)
            scratch = copy.deepcopy(module)
            scratch.reset_parameters()
            m = self.weight_mask(name)
            module.weight.copy_(torch.where(m, module.weight, scratch.weight))
            b = self.bias_mask(name)
            if b is not None:
                module.bias.copy_(torch.where(b, module.bias, scratch.bias))

    @torch.no_grad()
    def zero_reset(self, model: nn.Module) -> None:
        """Set every reset weight (and KELS reset bias) to zero, in place."""
        for name in self.layer_names:
            module = model.get_submodule(name)
            module.weight.mul_(self.weight_mask(name))
            b = self.bias_mask(name)
            if b is not None:
                module.bias.mul_(b)

    @torch.no_grad()
    def stats(self, model: nn.Module) -> dict:
        """Mean |w| inside the fit and reset hypotheses, overall and per layer (None where empty)."""
        layers = {}
        tot = {"fit": [0.0, 0], "reset": [0.0, 0]}
        for name in self.layer_names:
            w = model.get_submodule(name).weight.detach().float().abs()
            m = self.weight_mask(name)
            row = {}
            for part, sel in (("fit", m), ("reset", ~m)):
                n = int(sel.sum())
                s = float(w[sel].sum()) if n else 0.0
                row[part] = s / n if n else None
                tot[part][0] += s
                tot[part][1] += n
            layers[name] = row
        return {"fit_abs_mean": tot["fit"][0] / tot["fit"][1] if tot["fit"][1] else None,
                "reset_abs_mean": tot["reset"][0] / tot["reset"][1] if tot["reset"][1] else None,
                "layers": layers}

    def fit_fraction(self) -> float:
        n = sum(self.weight_mask(k).numel() for k in self.layer_names)
        return sum(int(self.weight_mask(k).sum()) for k in self.layer_names) / max(n, 1)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, rate={self.rate}, layers={len(self.layer_names)}"
