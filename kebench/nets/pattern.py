"""Pattern binarization (Li, Wang, Lv, Yang, SEP-Nets, 2017): k x k filters (k > 1) become scaled sign
patterns, 1 x 1 filters stay full precision; and the model size that this buys, in bytes.

A binarized filter is scale * sign(w) with scale = mean |w| over the filter (XNOR-Net's optimal
scale for a sign approximation, Rastegari et al. 2016). It is stored as one bit per weight plus its
fp32 scale; every other parameter costs 4 bytes.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

BITS_FP32 = 32


def sign_pattern(weight: torch.Tensor) -> torch.Tensor:
    """scale * sign(w) per output filter, scale = mean |w| of that filter (sign(0) taken as +1)."""
    scale = weight.abs().flatten(1).mean(1).view(-1, *([1] * (weight.dim() - 1)))
    return torch.where(weight >= 0, scale, -scale)


def is_spatial(conv: nn.Module) -> bool:
    """A conv that extracts spatial patterns: some kernel dim > 1 (SEP-Nets binarize these only)."""
    return isinstance(conv, nn.Conv2d) and max(conv.kernel_size) > 1


class BinaryConv2d(nn.Conv2d):
    """A k x k conv that always computes with its sign pattern (SEP-Net-B's pattern layers).

    The latent real weights are trained through a straight-through estimator (the gradient of the
    pattern is passed to them unchanged), as binary-weight networks are trained (BinaryConnect,
    XNOR-Net); only the pattern and the scales are deployed, so the size counts 1 bit per weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = w + (sign_pattern(w) - w).detach()
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def is_binarized(conv: nn.Module) -> bool:
    """The conv's deployed weights are a scaled sign pattern: a BinaryConv2d, or a spatial conv whose
    every filter holds one magnitude (what the binarize regime leaves; compared exactly, since the
    mean of n equal floats need not round back to that float)."""
    if isinstance(conv, BinaryConv2d):
        return True
    if not is_spatial(conv):
        return False
    magnitudes = conv.weight.detach().abs().flatten(1)
    return bool(torch.equal(magnitudes.amax(1), magnitudes.amin(1)))


def size_bytes(model: nn.Module) -> int:
    """Storage of the model's parameters: 1 bit per binarized weight + an fp32 scale per binarized
    filter, 4 bytes per other parameter (BN running statistics, buffers, are not counted)."""
    bits, binary = 0, set()
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and is_binarized(module):
            binary.add(id(module.weight))
            bits += module.weight.numel() + BITS_FP32 * module.out_channels
    for p in model.parameters():
        if id(p) not in binary:
            bits += BITS_FP32 * p.numel()
    return math.ceil(bits / 8)
