"""Triplet objective: semi-hard negative selection, P x K batches, the embedding head, end to end."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kebench.config import resolve
from kebench.errors import UserError
from methods.triplet import EmbeddingNet, pairwise_sq_distances, pk_batches, semihard_negatives, semihard_triplet_loss

# A hand-made batch on a line: class A at 0 and 1, class B at 1.2, 2, -0.5 and 4.
POSITIONS = [0.0, 1.0, 1.2, 2.0, -0.5, 4.0]
LABELS = torch.tensor([0, 0, 1, 1, 1, 1])


def line_batch():
    emb = torch.zeros(len(POSITIONS), 2)
    emb[:, 0] = torch.tensor(POSITIONS)
    return emb


def brute_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    """TensorFlow's triplet_semihard_loss written as loops over (anchor, positive) pairs."""
    d = [[float(((a - b) ** 2).sum()) for b in emb] for a in emb]
    terms = []
    for a in range(len(emb)):
        negatives = [n for n in range(len(emb)) if labels[n] != labels[a]]
        for p in range(len(emb)):
            if p == a or labels[p] != labels[a] or not negatives:
                continue
            farther = [d[a][n] for n in negatives if d[a][n] > d[a][p]]
            d_an = min(farther) if farther else max(d[a][n] for n in negatives)
            terms.append(max(d[a][p] - d_an + margin, 0.0))
    return sum(terms) / len(terms)


def test_semihard_selection_on_a_hand_made_batch():
    emb = line_batch()
    dist = pairwise_sq_distances(emb)
    assert torch.allclose(dist[0], torch.tensor([0.0, 1.0, 1.44, 4.0, 0.25, 16.0]))
    neg_dist, neg_index, pairs = semihard_negatives(dist, LABELS)
    # (anchor 0, positive 1): D_ap = 1; negatives 1.44, 4, 16 are farther, 0.25 is not -> 1.44 (item 2).
    assert neg_index[0, 1] == 2 and neg_dist[0, 1] == pytest.approx(1.44)
    # (1, 0): D_ap = 1; item 3 is at exactly 1 (not farther), item 4 at 2.25 is the closest farther one.
    assert neg_index[1, 0] == 4 and neg_dist[1, 0] == pytest.approx(2.25)
    # (3, 2): D_ap = 0.64; class A at 4 and 1 -> item 1 (semi-hard: 0.64 < 1 < 0.64 + 0.5).
    assert neg_index[3, 2] == 1
    # (5, 4): D_ap = 20.25 but both negatives are closer (16, 9): the farthest one, item 0, is used.
    assert neg_index[5, 4] == 0 and neg_dist[5, 4] == pytest.approx(16.0)
    assert pairs.sum() == 2 + 4 * 3  # ordered anchor-positive pairs: 2 in class A, 12 in class B
    assert not pairs.diagonal().any()

    margin = 0.5
    loss = semihard_triplet_loss(emb, LABELS, margin)
    pair_terms = torch.relu(dist - neg_dist + margin)
    assert pair_terms[0, 1] == pytest.approx(0.06)  # semi-hard: contributes
    assert pair_terms[1, 0] == 0  # beyond the margin: contributes 0
    assert pair_terms[3, 2] == pytest.approx(0.14)
    assert pair_terms[5, 4] == pytest.approx(4.75)  # fallback negative
    assert loss.item() == pytest.approx(brute_loss(emb, LABELS, margin), rel=1e-6)


def test_loss_matches_brute_force_on_random_batches_and_has_gradients():
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        emb = nn.functional.normalize(torch.randn(20, 8, generator=gen), dim=1).requires_grad_()
        labels = torch.arange(4).repeat_interleave(5)
        loss = semihard_triplet_loss(emb, labels, 0.2)
        assert loss.item() == pytest.approx(brute_loss(emb.detach(), labels, 0.2), rel=1e-5)
        loss.backward()
        assert emb.grad.abs().sum() > 0


def test_loss_without_positive_pairs_is_zero_but_differentiable():
    emb = torch.randn(4, 3, requires_grad=True)
    loss = semihard_triplet_loss(emb, torch.arange(4), 0.2)
    loss.backward()
    assert loss.item() == 0 and emb.grad is not None


def test_pk_batches_hold_exactly_p_classes_times_k_images():
    # 7 classes of sizes 3..15 (class 0 has fewer images than K).
    sizes = [3, 6, 8, 9, 10, 12, 15]
    labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])[torch.randperm(sum(sizes))]
    p, k = 3, 4
    batches = pk_batches(labels, p, k, torch.Generator().manual_seed(1))
    assert len(batches) == len(labels) // (p * k)
    uses = torch.zeros(len(labels), dtype=torch.long)
    for b in batches:
        assert len(b) == p * k
        classes, counts = torch.unique(labels[b], return_counts=True)
        assert len(classes) == p and counts.tolist() == [k] * p
        for c in classes:  # classes with >= K images never repeat an image inside a batch
            idx = b[labels[b] == c]
            assert len(idx.unique()) == min(k, sizes[c])
        uses += torch.bincount(b, minlength=len(labels))
    for c in range(len(sizes)):  # each class's queue hands out all its images before repeating one
        u = uses[labels == c]
        if u.sum() > 0:
            assert u.max() - u.min() <= 1
    again = pk_batches(labels, p, k, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # deterministic for a seed


def test_embedding_head_is_a_final_linear_and_unit_norm():
    from kebench.nets.models import create_model

    model = EmbeddingNet(create_model("test_resnet", 5, 1), 32)
    last = list(model.modules())[-1]
    assert isinstance(last, nn.Linear) and last.out_features == 32 and last is model.get_classifier()
    out = model(torch.randn(3, 1, 16, 16))
    assert out.shape == (3, 32)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    feats = model.forward_head(model.forward_features(torch.randn(2, 1, 16, 16)), pre_logits=True)
    assert feats.shape == (2, model.num_features)


def test_config_defaults_and_task_checks(tmp_path):
    cfg = resolve({"data": "digits-retrieval", "out": str(tmp_path)})
    assert cfg.method == "triplet" and cfg.batch_size == 125 and cfg.lr == 0.0256
    assert cfg.params["triplet"] == {"margin": 0.2, "embedding_dim": 128, "classes_per_batch": 25, "images_per_class": 5}
    with pytest.raises(UserError, match="retrieval"):
        resolve({"data": "digits", "method": "triplet"})
    with pytest.raises(UserError, match="classification"):
        resolve({"data": "digits-retrieval", "method": "ce"})


def test_batch_size_must_match_p_times_k():
    from types import SimpleNamespace

    from methods.triplet import Triplet

    params = {"margin": 0.2, "embedding_dim": 8, "classes_per_batch": 25, "images_per_class": 5}
    run = SimpleNamespace(cfg=SimpleNamespace(batch_size=16, data="toy"),
                          data=SimpleNamespace(train=SimpleNamespace(labels=torch.arange(30) % 30)))
    with pytest.raises(UserError, match=r"25 x 5 = 125 images, but --batch-size is 16"):
        Triplet(params, run)
    run.cfg.batch_size = 125
    assert Triplet(params, run).classes_per_batch == 25
    with pytest.raises(UserError, match="--images-per-class must be >= 2, got 1"):
        Triplet({**params, "images_per_class": 1}, run)


def test_triplet_end_to_end_on_digits_retrieval(run_cfg, tmp_path):
    cfg = resolve({"data": "digits-retrieval", "arch": "test_resnet", "epochs": 1, "resolution": 16,
                   "train_fraction": 0.3, "batch_size": 20, "device": "cpu", "out": str(tmp_path)},
                  {}, {"embedding_dim": "16", "images_per_class": "4", "classes_per_batch": "5"})
    result = run_cfg(cfg)
    assert result["status"] == "complete" and result["method"] == "triplet" and result["task"] == "retrieval"
    final = result["final"]
    assert list(final) == ["nmi", "r@1", "r@2", "r@4", "r@8", "nmi_mean", "nmi_std", "nmi_min", "nmi_max"]
    assert all(0 <= v <= 1 for v in final.values())
    assert final["r@1"] <= final["r@2"] <= final["r@4"] <= final["r@8"]
    assert final["r@8"] > 0.5  # five test classes: even a poor embedding finds a neighbour of its class
    train_images = result["passes"][0]["images"]
    assert train_images == result["passes"][0]["steps"] * 20  # every step a full 5 x 4 batch
    assert result["evaluation"]["nmi"]["n_init"] == 10
    assert result["best"]["r@1"] == final["r@1"]


def test_fewer_classes_than_p_warns_and_uses_them_all(run_cfg, tmp_path):
    cfg = resolve({"data": "digits-retrieval", "arch": "test_resnet", "epochs": 1, "resolution": 12,
                   "train_fraction": 0.1, "device": "cpu", "out": str(tmp_path)},
                  {}, {"embedding_dim": "8"})
    with pytest.warns(UserWarning, match="only 5 training classes, so batches hold 5 classes x 5 images = 25"):
        result = run_cfg(cfg)
    assert result["passes"][0]["images"] == result["passes"][0]["steps"] * 25


def test_ke_on_retrieval_reports_dense_and_slim_per_generation(run_cfg, tmp_path):
    from pathlib import Path

    from kebench.nets.slim import load_slim

    cfg = resolve({"data": "digits-retrieval", "method": "ke", "arch": "test_resnet", "epochs": 1, "resolution": 12,
                   "train_fraction": 0.1, "batch_size": 20, "device": "cpu", "out": str(tmp_path)},
                  {}, {"generations": "2", "embedding_dim": "8", "images_per_class": "4", "classes_per_batch": "5"})
    assert cfg.method == "triplet+ke"
    result = run_cfg(cfg)
    assert result["status"] == "complete" and result["task"] == "retrieval"
    keys = ["nmi", "r@1", "r@2", "r@4", "r@8"]
    gens = [p for p in result["passes"] if p["kind"] == "generation"]
    assert [p["index"] for p in gens] == [1, 2]
    for p in gens:
        for key in keys + ["slim_" + k for k in keys]:
            assert 0 <= p["metrics"][key] <= 1, key
    # The slim fit-hypothesis is narrower but embeds into the same 8-d unit sphere.
    slim = load_slim(Path(cfg.out) / cfg.run_id() / "slim.pt").eval()
    assert result["cost"]["slim"]["params"] < result["cost"]["dense"]["params"]
    assert slim.get_classifier().out_features == 8
    out = slim(torch.randn(3, 1, 12, 12))
    assert out.shape == (3, 8) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
