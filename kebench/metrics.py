"""Evaluation metrics. One pinned implementation each, named in result.json."""
from __future__ import annotations

import torch


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose highest logit is the true class."""
    return (logits.argmax(dim=1) == labels).float().mean().item()
