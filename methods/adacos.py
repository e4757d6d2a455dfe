"""AdaCos: adaptive-scale cosine logits (Zhang et al., CVPR 2019). No hyperparameters.

The classifier is replaced by `CosineHead`: logits = s * cos(theta) between L2-normalised features
and L2-normalised class weights. Whether the class weights train is `--adacos.train-weights`:

    false (default): the weights keep their Xavier draw (requires_grad off, so SGD, momentum and
        weight decay never touch them) -- 4uiiurz1/pytorch-adacos, the code the KE paper cites for
        its AdaCos row, builds its optimizer from the backbone's parameters only (every commit,
        2019-05 to 2020-01; its issue #10). The backbone learns to point at fixed class prototypes.
    true: the weights are trained with the backbone, as the AdaCos paper's Algorithm 1 does.

The scale s lives in a buffer (checkpointed with the model), starts at sqrt(2) * ln(C - 1) and is
updated on training batches only, before the loss is taken (the paper's Algorithm 1):

    B_avg     = mean over the batch of sum_{k != y} exp(s_old * cos(theta_k))
    theta_med = median of the target angles theta_y
    s         = ln(B_avg) / cos(min(pi/4, theta_med))

Safe floor: s never goes below sqrt(2) * ln(2), the formula's initial scale for C = 3 (the smallest
class count where it is positive). For C = 2 the formula gives s = 0 (every logit 0, nothing learns,
and B_avg = 1 keeps it there), and whenever B_avg < 1 it would make s negative (flipped logits).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from kebench.errors import UserError
from kebench.plugin import Objective, param

MIN_SCALE = math.sqrt(2) * math.log(2)  # the formula's value at C = 3; the floor described above


@torch.fx.wrap
def cosine_logits(features: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale * cos(features, class weights), in float32 even under autocast. A leaf for torch.fx
    (graph tools see one call instead of tracing the autocast context)."""
    with torch.autocast(features.device.type, enabled=False):
        return scale * F.linear(F.normalize(features.float(), dim=1), F.normalize(weight.float(), dim=1))


def initial_scale(num_classes: int) -> float:
    return max(math.sqrt(2) * math.log(max(num_classes - 1, 1)), MIN_SCALE)


class CosineHead(nn.Linear):
    """A bias-free Linear whose forward gives cosine logits: split-networks (KE) and sub-network
    extraction treat it as the Linear it is (a weight of [classes, features])."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__(in_features, num_classes, bias=False)
        self.num_classes = num_classes
        self.register_buffer("s", torch.tensor(initial_scale(num_classes)))

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # A copy of s: the training step updates the buffer in place after this forward pass.
        return cosine_logits(features, self.weight, self.s.clone())

    @torch.no_grad()
    def update_scale(self, cos: torch.Tensor, labels: torch.Tensor) -> None:
        """One AdaCos scale update from a training batch's cosines and labels."""
        target = F.one_hot(labels, cos.shape[1]).bool()
        b_avg = torch.where(target, torch.zeros_like(cos), torch.exp(self.s * cos)).sum(1).mean()
        theta_med = torch.acos(cos[target].clamp(-1 + 1e-7, 1 - 1e-7)).median()
        new = torch.log(b_avg) / torch.cos(torch.clamp(theta_med, max=math.pi / 4))
        self.s.copy_(torch.clamp(new, min=MIN_SCALE))


def cosine_head(model: nn.Module) -> CosineHead:
    for module in model.modules():
        if isinstance(module, CosineHead):
            return module
    raise TypeError("model has no AdaCos CosineHead; was it built by the adacos objective?")


class AdaCos(Objective):
    @dataclass
    class Params:
        """AdaCos sets its scale from the batch (hyperparameter-free); only what trains is a choice."""
        train_weights: bool = param("train the cosine head's class weights (the AdaCos paper) | false: keep "
                                    "their random draw (pytorch-adacos, the code behind the KE paper's row)")

    def adapt_model(self, model, num_classes):
        """Swap the model's linear classifier (timm's `get_classifier()`) for a CosineHead in place."""
        classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
        if not isinstance(classifier, nn.Linear):
            raise UserError(f"adacos replaces a linear classifier with a cosine head, but "
                            f"{type(model).__name__}'s classifier is {type(classifier).__name__}. "
                            f"Pick an architecture with a linear head (resnet, densenet, vgg, googlenet).")
        name = next(n for n, m in model.named_modules() if m is classifier)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        head = CosineHead(classifier.in_features, num_classes)
        head.weight.requires_grad_(bool(self.params.train_weights))
        setattr(parent, attr, head)
        return model

    def loss(self, model, x, y):
        head = cosine_head(model)
        used = head.s.clone()
        cos = model(x).float() / used  # the head returned used * cos(theta)
        if model.training and head.training:
            head.update_scale(cos.detach(), y)
        logits = head.s * cos
        return F.cross_entropy(logits, y), logits
