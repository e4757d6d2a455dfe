"""CS-KD: class-wise self-knowledge distillation (Yun et al., CVPR 2020).

Every training batch holds anchors followed by as many partners, partner i being another random
training sample of anchor i's class. `--cskd.batch-counts` says what `--batch-size` B counts:

    anchors (default, alinlab/cs-kd): B anchors + B partners, 2B images a step; every training image
        is an anchor once per epoch.
    images (the KE code's trainer, ahmdtaha/knowledge_evolution trainers/default_cls.py): B images =
        B/2 anchors + B/2 partners, and an epoch is N/B such steps (the KE loader's length), so an
        epoch processes N images with N/2 of them anchors (a fresh random half every epoch).

Loss:

    CE(f(x), y) + lambda_cls * T^2 * KL(softmax(f(x')/T) || softmax(f(x)/T))

(the shared `kebench.run.distill.kd_loss`) with the partner logits f(x') computed without gradients (a separate forward pass, as the
official code does, so the anchors' BatchNorm statistics are their own). A class with a single
training image pairs it with itself (under different augmentation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dataclasses import dataclass

from kebench.errors import UserError
from kebench.plugin import Objective, param
from kebench.run.distill import kd_loss

BATCH_COUNTS = ("anchors", "images")


def class_partners(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """partner[i]: a uniformly drawn *other* index with labels[i]'s class (i itself if it is alone)."""
    labels = labels.cpu()
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.empty_like(order)
    pos[order] = torch.arange(len(order)) - starts[labels[order]]  # rank of each sample inside its class
    n = counts[labels]
    shift = 1 + (torch.rand(len(labels), generator=generator) * (n - 1)).long().clamp(max=(n - 2).clamp(min=0))
    other = torch.where(n > 1, (pos + shift) % n, pos)
    return order[starts[labels] + other]


class ClassWiseSelfKD(Objective):
    @dataclass
    class Params:
        temperature: float = param("T softening both predictions", gt=0)
        lambda_cls: float = param("weight of the class-wise KL term", ge=0)
        batch_counts: str = param("what --batch-size counts: anchors (alinlab/cs-kd: B anchors + B partners) | "
                                  "images (the KE code: B/2 anchors + B/2 partners)", choices=BATCH_COUNTS)

    def __init__(self, params, run):
        super().__init__(params, run)
        if run is not None:  # refused when the run is set up, before its folder exists
            self._check_batch(run.cfg.batch_size)

    def _check_batch(self, batch_size: int) -> None:
        if self.params.batch_counts == "images" and (batch_size < 2 or batch_size % 2):
            raise UserError(f"--cskd.batch-counts images splits each batch of --batch-size {batch_size} "
                            f"into anchors and partners, so it needs an even batch size of at least 2 "
                            f"(the KE code uses 32: 16 anchors + 16 partners).")

    def batch_sampler(self, labels, batch_size, generator):
        order = torch.randperm(len(labels), generator=generator)
        if self.params.batch_counts == "images":
            self._check_batch(batch_size)
            steps = max(len(labels) // batch_size, 1)
            order, batch_size = order[:steps * batch_size // 2], batch_size // 2
        anchors = list(order.split(batch_size))
        if len(anchors) > 1 and len(anchors[-1]) < batch_size:
            anchors.pop()  # drop_last, like the engine's default batches
        partners = class_partners(labels, generator)
        return [torch.cat([a, partners[a]]) for a in anchors]

    def shard(self, batch, world, rank):
        """Under several processes each rank takes its part of the anchors *and* their partners,
        so it keeps the [anchors; partners] layout and every pair stays on one rank."""
        anchors, partners = batch.chunk(2)
        return torch.cat([anchors.tensor_split(world)[rank], partners.tensor_split(world)[rank]])

    def loss(self, model, x, y):
        b = len(x) // 2
        logits = model(x[:b])
        with torch.no_grad():
            partner = model(x[b:])
        kd = kd_loss(logits, partner, self.params.temperature)
        return F.cross_entropy(logits, y[:b]) + self.params.lambda_cls * kd, logits
