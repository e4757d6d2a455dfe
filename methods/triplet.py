"""Triplet loss with semi-hard negatives on an L2-normalised embedding (KE paper §4.2).

The loss follows `triplet_semihard_loss` of TensorFlow's metric_learning module as used by
ahmdtaha/tf_retrieval_baseline (Schroff et al., FaceNet, CVPR 2015): squared Euclidean
distances; every anchor-positive pair (a, p) of the batch takes the closest negative n with
D_an > D_ap. When that negative is semi-hard (D_ap < D_an < D_ap + m) the pair's loss is
D_ap - D_an + m; when it lies beyond the margin the loss is 0. When no negative is farther than
the positive at all, the farthest negative of the anchor is used (as TensorFlow does). The loss is
the mean over all anchor-positive pairs.

Batches are P x K: P classes, K images each (paper: 25 x 5 = 125). Under several processes the
embeddings of all ranks are gathered before mining, so negatives are chosen from the whole P x K
batch exactly as in one process (and the gradient is the one-process gradient).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kebench.run import distributed
from kebench.errors import UserError
from kebench.plugin import Objective, param


class EmbeddingNet(nn.Module):
    """A backbone whose classifier is replaced by Linear(features -> dim); outputs are L2-normalised.

    The normalisation is functional, so the embedding Linear stays the last module (the slim
    fit-hypothesis keeps all its outputs: the slim network embeds into the same space). timm's
    head interface is passed through so the wrapper looks like any other kebench model.
    """

    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__()
        backbone.reset_classifier(dim)
        if not isinstance(backbone.get_classifier(), nn.Linear):
            raise UserError(
                f"triplet needs an architecture whose classifier is a Linear layer (the embedding head); "
                f"{type(backbone).__name__} has {type(backbone.get_classifier()).__name__}. Pick another --arch.")
        self.backbone = backbone
        self.num_features = backbone.num_features
        self.embedding_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(x), dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        out = self.backbone.forward_head(x, pre_logits=pre_logits)
        return out if pre_logits else F.normalize(out, dim=1)

    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier()


def pairwise_sq_distances(emb: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [B, B], exactly 0 on the diagonal, never negative."""
    sq = (emb * emb).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * emb @ emb.T).clamp(min=0)
    return d.masked_fill(torch.eye(len(emb), dtype=torch.bool, device=emb.device), 0.0)


def semihard_negatives(dist: torch.Tensor, labels: torch.Tensor):
    """For each anchor-positive pair (a, p): the chosen negative's distance and index.

    Returns (neg_dist [B, B], neg_index [B, B], pair_mask [B, B]); entries are meaningful where
    pair_mask is true (a != p, same label, and the anchor has at least one negative).
    """
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    negative = ~same
    pair_mask = same & ~eye & negative.any(1, keepdim=True)
    # candidates[a, p, n]: n is a negative of a and farther from a than p is.
    candidates = negative.unsqueeze(1) & (dist.unsqueeze(1) > dist.unsqueeze(2))
    outside, outside_idx = dist.unsqueeze(1).expand_as(candidates).masked_fill(~candidates, math.inf).min(2)
    inside, inside_idx = dist.masked_fill(~negative, -math.inf).max(1)  # farthest negative per anchor
    has_outside = candidates.any(2)
    neg_dist = torch.where(has_outside, outside, inside.unsqueeze(1))
    neg_index = torch.where(has_outside, outside_idx, inside_idx.unsqueeze(1))
    return neg_dist, neg_index, pair_mask


def semihard_triplet_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over anchor-positive pairs of relu(D_ap - D_an + margin), negatives chosen semi-hard."""
    with torch.autocast(emb.device.type, enabled=False):  # distances in float32 even under AMP
        emb = emb.float()
        dist = pairwise_sq_distances(emb)
        neg_dist, _, pairs = semihard_negatives(dist, labels)
        if not pairs.any():  # no anchor-positive pair: nothing to learn from this batch
            return emb.sum() * 0.0
        return F.relu(dist - neg_dist + margin)[pairs].mean()


def pk_batches(labels: torch.Tensor, classes_per_batch: int, images_per_class: int,
               generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of P x K batches: len(labels) // (P*K) batches (at least 1).

    Each batch draws P distinct classes at random; each class hands out its images from a shuffled
    queue, refilled when empty, so within a class every image is used before any repeats (a class
    with fewer than K images repeats some inside one batch).
    """
    classes = torch.unique(labels)
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    p, k = min(classes_per_batch, len(classes)), images_per_class
    queues: list[list[int]] = [[] for _ in members]
    batches = []
    for _ in range(max(1, len(labels) // (p * k))):
        chosen = torch.randperm(len(classes), generator=generator)[:p].tolist()
        batch = []
        for c in chosen:
            while len(queues[c]) < k:
                queues[c].extend(members[c][torch.randperm(len(members[c]), generator=generator)].tolist())
            batch.extend(queues[c][:k])
            del queues[c][:k]
        batches.append(torch.tensor(batch, dtype=torch.long))
    return batches


class Triplet(Objective):
    tasks = ("retrieval",)

    @dataclass
    class Params:
        margin: float = param("triplet margin on L2-normalised embeddings", gt=0)
        embedding_dim: int = param("size of the L2-normalised embedding head", ge=1)
        classes_per_batch: int = param("classes per batch (negatives come from the others)", ge=2)
        images_per_class: int = param("images per class in a batch (the positives)", ge=2)

    def __init__(self, params, run):
        super().__init__(params, run)
        p = self.params
        cfg = run.cfg
        if cfg.batch_size != p.classes_per_batch * p.images_per_class:
            raise UserError(
                f"triplet builds batches of classes_per_batch x images_per_class = {p.classes_per_batch} x "
                f"{p.images_per_class} = {p.classes_per_batch * p.images_per_class} images, but --batch-size "
                f"is {cfg.batch_size}. Set all three consistently, e.g. --batch-size 60 --classes-per-batch 12 "
                f"--images-per-class 5.")
        n_classes = len(torch.unique(run.data.train.labels))
        if n_classes < 2:
            raise UserError(f"triplet needs >= 2 training classes; dataset '{cfg.data}' has {n_classes}.")
        self.classes_per_batch = min(p.classes_per_batch, n_classes)
        if self.classes_per_batch < p.classes_per_batch:
            warnings.warn(
                f"triplet: dataset '{cfg.data}' has only {n_classes} training classes, so batches hold "
                f"{n_classes} classes x {p.images_per_class} images = {n_classes * p.images_per_class} "
                f"(classes_per_batch={p.classes_per_batch} was asked for).", stacklevel=2)

    def adapt_model(self, model: nn.Module, num_classes: int) -> nn.Module:
        return EmbeddingNet(model, self.params.embedding_dim)

    def batch_sampler(self, labels, batch_size, generator):
        return pk_batches(labels, self.classes_per_batch, self.params.images_per_class, generator)

    def loss(self, model, x, y):
        emb = model(x)
        if distributed.world_size() == 1:
            return semihard_triplet_loss(emb, y, self.params.margin), None
        loss = semihard_triplet_loss(distributed.gather_rows(emb), distributed.gather_rows(y), self.params.margin)
        return distributed.global_loss(loss), None
