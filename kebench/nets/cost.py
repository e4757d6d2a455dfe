"""Cost of a model: real parameters (no masks, no BN statistics) and FLOPs from torch's counter.

FLOP convention: torch.utils.flop_counter counts one multiply-add as 2 FLOPs.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kebench.nets.models import count_params


@torch.no_grad()
def forward_flops(model: nn.Module, input_shape: tuple[int, ...], device="cpu") -> int:
    """FLOPs of one eval-mode forward pass on a batch of the given shape."""
    was_training = model.training
    model.eval()
    x = torch.zeros(input_shape, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def inference_cost(model: nn.Module, data, device="cpu") -> dict:
    """Params, storage in bytes (1 bit per binarized pattern weight, kebench.nets.pattern) and per-image
    inference FLOPs at the dataset's input resolution."""
    from kebench.nets.pattern import size_bytes

    shape = (1, data.in_chans, data.resolution, data.resolution)
    return {"params": count_params(model), "size_bytes": size_bytes(model), "flops": forward_flops(model, shape, device)}
