"""Retrieval metrics: Recall@K and NMI against brute-force references, ties included."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sklearn.metrics import normalized_mutual_info_score

from kebench.run import metrics


def brute_recall(emb: torch.Tensor, labels: torch.Tensor, ks=(1, 2, 4, 8)) -> dict[int, float]:
    """Sort every other item by (float64 distance, same-class last) and look at the first K."""
    e, y = emb.double().numpy(), labels.numpy()
    hits = dict.fromkeys(ks, 0)
    for i in range(len(e)):
        ranked = sorted((float(((e[i] - e[j]) ** 2).sum()), int(y[j] == y[i])) for j in range(len(e)) if j != i)
        for k in ks:
            hits[k] += any(same for _, same in ranked[:k])
    return {k: hits[k] / len(e) for k in ks}


def brute_nmi(a: np.ndarray, b: np.ndarray) -> float:
    """NMI = I / sqrt(H(a) H(b)) (the KE paper's geometric normalisation), from the contingency table."""
    n = len(a)
    ua, ub = np.unique(a), np.unique(b)
    count = np.array([[np.sum((a == i) & (b == j)) for j in ub] for i in ua], dtype=float)
    pa, pb, pab = count.sum(1) / n, count.sum(0) / n, count / n
    h = lambda p: -sum(x * math.log(x) for x in p if x > 0)  # noqa: E731
    mi = sum(pab[i, j] * math.log(pab[i, j] / (pa[i] * pb[j]))
             for i in range(len(ua)) for j in range(len(ub)) if pab[i, j] > 0)
    return mi / math.sqrt(h(pa) * h(pb))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_recall_matches_brute_force_with_many_ties(seed, chunk):
    # Small integer coordinates: distances are exact in float32, so ties and duplicates abound.
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randint(0, 3, (70, 3), generator=gen).float()
    labels = torch.randint(0, 4, (70,), generator=gen)
    got = metrics.recall_at_k(emb, labels, ks=(1, 2, 3, 4, 8, 16), chunk_size=chunk)
    assert got == brute_recall(emb, labels, ks=(1, 2, 3, 4, 8, 16))
    assert len(torch.unique(emb, dim=0)) < len(emb)  # the case really holds duplicates


@pytest.mark.parametrize("seed", range(3))
def test_recall_matches_brute_force_on_float_embeddings_with_copies(seed):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(50, 8, generator=gen), dim=1)
    emb = torch.cat([emb, emb[:15]])  # bit-identical copies, some with another label
    labels = torch.randint(0, 5, (65,), generator=gen)
    assert metrics.recall_at_k(emb, labels, chunk_size=9) == brute_recall(emb, labels)


def test_recall_tie_rule_on_a_hand_made_case():
    # q0 has a same-class and an other-class item both at distance 1: the other-class one ranks first.
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1, 0, 1])
    # q0: hit from K=2 (an optimistic rule: K=1); q1: its positive q3 is 3rd -> K=3; q2: nearest is
    # q0 -> K=1; q3: q0 (9) then q1 and q2 tied at 10, other-class q2 first -> K=3 (optimistic: K=2).
    assert metrics.recall_at_k(emb, labels, ks=(1, 2, 3, 4)) == {1: 0.25, 2: 0.5, 3: 1.0, 4: 1.0}


def test_collapsed_embeddings_tie_completely():
    # Every embedding is the same vector (non-integer, so only deduplication keeps distances equal):
    # each query sees 5 other-class items at the same distance as its positives -> a hit needs K > 5.
    v = torch.nn.functional.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    emb, labels = v.repeat(10, 1), torch.arange(10) % 2
    assert metrics.recall_at_k(emb, labels, ks=(1, 4, 5, 6, 8)) == {1: 0.0, 4: 0.0, 5: 0.0, 6: 1.0, 8: 1.0}


def test_query_without_a_same_class_item_scores_zero_and_nan_propagates():
    emb = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    labels = torch.tensor([0, 0, 1, 2])  # classes 1 and 2 have a single member
    assert metrics.recall_at_k(emb, labels, ks=(1, 8)) == {1: 0.5, 8: 0.5}
    emb[1, 0] = float("nan")
    assert all(math.isnan(v) for v in metrics.recall_at_k(emb, labels).values())
    assert math.isnan(metrics.nmi(emb, labels))


def test_recall_is_invariant_to_chunk_size_and_order():
    gen = torch.Generator().manual_seed(5)
    emb, labels = torch.randn(300, 16, generator=gen), torch.randint(0, 10, (300,), generator=gen)
    ref = metrics.recall_at_k(emb, labels, chunk_size=300)
    perm = torch.randperm(300, generator=gen)
    assert metrics.recall_at_k(emb, labels, chunk_size=13) == ref
    assert metrics.recall_at_k(emb[perm], labels[perm], chunk_size=64) == ref
    assert all(0 <= v <= 1 for v in ref.values()) and list(ref) == [1, 2, 4, 8]
    assert ref[1] <= ref[2] <= ref[4] <= ref[8]


def test_recall_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive integer"):
        metrics.recall_at_k(torch.zeros(4, 2), torch.zeros(4), ks=(0, 1))
    with pytest.raises(ValueError, match="labels"):
        metrics.recall_at_k(torch.zeros(4, 2), torch.zeros(3))


@pytest.mark.parametrize("seed", range(3))
def test_nmi_matches_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([10, 20, 30])  # unequal classes: H(Y) != H(C), so the normalisations differ
    labels = torch.tensor([3, 7, 11]).repeat_interleave(sizes)  # 3 distinct, non-consecutive labels
    centers = torch.randn(3, 6, generator=gen)
    emb = centers.repeat_interleave(sizes, 0) + 0.9 * torch.randn(60, 6, generator=gen)
    clusters = metrics.kmeans_labels(emb, 3, seed=seed)  # k = number of distinct labels
    expected = brute_nmi(labels.numpy(), clusters)
    got = metrics.nmi(emb, labels, seed=seed)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert 0 < got < 1  # overlapping clusters: neither perfect nor independent
    arithmetic = normalized_mutual_info_score(labels.numpy(), clusters, average_method="arithmetic")
    assert abs(got - arithmetic) > 1e-9  # the normalisations differ far beyond the tolerance above
    assert metrics.nmi(emb, labels, seed=seed) == got  # pinned seed: deterministic


def test_nmi_is_one_for_separated_classes_and_ignores_label_values():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(10)
    emb = 10 * torch.eye(4)[labels] + 0.01 * torch.randn(40, 4, generator=gen)
    assert metrics.nmi(emb, labels) == pytest.approx(1.0, abs=1e-12)
    assert metrics.nmi(emb, labels * 5 + 2) == pytest.approx(1.0, abs=1e-12)


def test_retrieval_metrics_keys_and_recorded_recipe():
    gen = torch.Generator().manual_seed(1)
    emb, labels = torch.randn(40, 4, generator=gen), torch.arange(40) % 4
    out = metrics.retrieval_metrics(emb, labels, seed=3)
    assert list(out) == ["nmi", "r@1", "r@2", "r@4", "r@8", "nmi_mean", "nmi_std", "nmi_min", "nmi_max"]
    assert out["nmi"] == metrics.nmi(emb, labels, seed=3)
    runs = [metrics.nmi(emb, labels, seed=s) for s in range(3, 3 + metrics.NMI_RESTARTS)]
    assert out["nmi_min"] == min(runs) and out["nmi_max"] == max(runs)
    assert out["nmi_mean"] == pytest.approx(float(np.mean(runs)), abs=1e-12)
    assert out["nmi_std"] == pytest.approx(float(np.std(runs, ddof=1)), abs=1e-12)
    assert [out[f"r@{k}"] for k in (1, 2, 4, 8)] == list(metrics.recall_at_k(emb, labels).values())
    recipe = metrics.describe("retrieval", seed=3)["nmi"]
    assert recipe["n_init"] == 10 and recipe["random_state"] == 3 and recipe["algorithm"] == "lloyd"
    assert recipe["kmeans"].startswith("sklearn.cluster.KMeans (scikit-learn ")
    assert recipe["score"].endswith("(average_method='geometric')") and "sqrt(H(Y) H(C))" in recipe["definition"]
