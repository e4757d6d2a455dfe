"""Evaluation metrics. One pinned implementation each, named in result.json (see `describe`).

Retrieval (class-disjoint test split, KE paper §4.2):

* Recall@K: a query scores 1 when any of its K nearest neighbours by Euclidean distance (the
  query itself excluded) shares its class. Ties are counted pessimistically: neighbours at the
  same distance as the query's nearest same-class item are ranked other-class first. So a query
  scores 1 at K exactly when fewer than K other-class items lie at a distance <= its nearest
  same-class distance. The rule does not depend on the order of the data, and bit-identical
  embeddings (a collapsed network) really tie: they are deduplicated before distances are taken,
  so every copy gets the same computed distance. A query whose class has no other member scores 0.
* NMI: scikit-learn `KMeans` with k = number of distinct test labels and the settings in
  `KMEANS` (fixed n_init, random_state = the run's seed), then `normalized_mutual_info_score`
  between the clusters and the labels with the KE paper's normalisation NMI = I(Y;C)/sqrt(H(Y)H(C))
  (`average_method="geometric"`). k-means itself moves NMI by a few hundredths from one random
  state to the next, so `nmi_mean/std/min/max` report it over `NMI_RESTARTS` random states (the
  run's seed and the next ones); `nmi` is the run's seed's value (the first of them).
"""
from __future__ import annotations

import math

import torch

RECALL_KS = (1, 2, 4, 8)
#: Queries per distance block: a block holds RECALL_CHUNK x N distances (N = number of embeddings).
RECALL_CHUNK = 1024
#: The pinned k-means (scikit-learn's own defaults, spelled out so a library upgrade cannot move them;
#: n_init is pinned at 10, the pre-1.4 default, because sklearn's "auto" now means 1 run).
KMEANS = {"n_init": 10, "init": "k-means++", "algorithm": "lloyd", "max_iter": 300, "tol": 1e-4}
NMI_AVERAGE = "geometric"  # KE paper: NMI = I / sqrt(H(Y) H(C))
NMI_RESTARTS = 5  # k-means random states behind nmi_mean/std/min/max


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose highest logit is the true class."""
    return (logits.argmax(dim=1) == labels).float().mean().item()


def recall_at_k(embeddings: torch.Tensor, labels: torch.Tensor, ks=RECALL_KS,
                chunk_size: int = RECALL_CHUNK) -> dict[int, float]:
    """Recall@K for every K in `ks` (fractions in [0, 1]), computed on the embeddings' device.

    Squared Euclidean distances (same order as Euclidean) in blocks of `chunk_size` queries, so
    memory grows as chunk_size x N rather than N x N. NaN/inf embeddings give NaN.
    See the module docstring for the tie rule.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"recall_at_k: every K must be a positive integer, got {ks}")
    if embeddings.dim() != 2 or len(embeddings) != len(labels):
        raise ValueError(f"recall_at_k: expected embeddings [N, D] and labels [N], got "
                         f"{tuple(embeddings.shape)} and {tuple(labels.shape)}")
    emb = embeddings.detach()
    emb = emb.float() if emb.dtype in (torch.float16, torch.bfloat16) else emb
    n = len(emb)
    if n < 2:
        raise ValueError(f"recall_at_k needs at least 2 embeddings, got {n}")
    if not torch.isfinite(emb).all():
        return {k: math.nan for k in ks}
    dev = emb.device
    # Sort by label: a block of queries then finds all its same-class items in one column span.
    order = torch.argsort(labels.to(dev), stable=True)
    lab, emb = labels.to(dev)[order], emb[order]
    _, counts = torch.unique_consecutive(lab, return_counts=True)
    ends = counts.cumsum(0)
    starts, class_of = ends - counts, torch.repeat_interleave(torch.arange(len(counts), device=dev), counts)
    # Identical vectors share one row, hence one bit-identical distance to every query.
    uniq, inverse = torch.unique(emb, dim=0, return_inverse=True)
    dup = len(uniq) < n
    base = uniq if dup else emb
    sq = (base * base).sum(1)
    top = min(max(ks), n)
    hits = torch.zeros(len(ks), dtype=torch.long, device=dev)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        rows, cols = torch.arange(stop - start, device=dev), torch.arange(start, stop, device=dev)
        q = inverse[start:stop] if dup else cols
        # |x|^2 - 2 q.x: the squared distance minus |q|^2, which is constant along a row and so
        # changes no comparison.
        d = torch.addmm(sq.unsqueeze(0), base[q], base.T, alpha=-2)
        if dup:
            d[rows, q] = -math.inf  # copies of the query: distance exactly 0, the smallest there is
            d = d[:, inverse]  # [chunk, N]
        d[rows, cols] = math.inf  # the query itself is no neighbour
        lo, hi = starts[class_of[start]].item(), ends[class_of[stop - 1]].item()
        near = d[:, lo:hi]  # every same-class item of these queries lies in this span
        positive = lab[start:stop].unsqueeze(1) == lab[lo:hi].unsqueeze(0)
        d_pos = near.masked_fill(~positive, math.inf).amin(1)
        near.masked_fill_(positive, math.inf)  # d now ranks other-class items only
        # Fewer than K other-class items at distance <= d_pos  <=>  the K-th nearest one is farther.
        kth = d.topk(top, dim=1, largest=False).values
        for i, k in enumerate(ks):
            if k <= top:
                hits[i] += (kth[:, k - 1] > d_pos).sum()
            else:  # K > N: every query with a same-class item scores
                hits[i] += (d_pos < math.inf).sum()
    return {k: hits[i].item() / n for i, k in enumerate(ks)}


def kmeans_labels(embeddings: torch.Tensor, k: int, seed: int = 0):
    """Cluster assignments of the pinned k-means (numpy int array)."""
    from sklearn.cluster import KMeans

    x = embeddings.detach().cpu().double().numpy()
    return KMeans(n_clusters=k, random_state=seed, **KMEANS).fit(x).labels_


def nmi(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """NMI between k-means clusters (k = number of distinct labels) and the labels. NaN embeddings give NaN."""
    from sklearn.metrics import normalized_mutual_info_score

    y = labels.detach().cpu().numpy()
    if not torch.isfinite(embeddings).all():
        return math.nan
    k = len(set(y.tolist()))
    clusters = kmeans_labels(embeddings, k, seed)
    return float(normalized_mutual_info_score(y, clusters, average_method=NMI_AVERAGE))


def nmi_restarts(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0,
                 restarts: int = NMI_RESTARTS) -> dict[str, float]:
    """{'nmi' (k-means random_state = seed), 'nmi_mean', 'nmi_std' (sample), 'nmi_min', 'nmi_max'}
    over k-means random states seed, seed+1, ..., seed+restarts-1."""
    values = torch.tensor([nmi(embeddings, labels, seed + r) for r in range(restarts)], dtype=torch.float64)
    std = values.std().item() if restarts > 1 else 0.0
    return {"nmi": values[0].item(), "nmi_mean": values.mean().item(), "nmi_std": std,
            "nmi_min": values.min().item(), "nmi_max": values.max().item()}


def retrieval_metrics(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0,
                      device: torch.device | str | None = None) -> dict[str, float]:
    """{'nmi', 'r@1', 'r@2', 'r@4', 'r@8', 'nmi_mean', 'nmi_std', 'nmi_min', 'nmi_max'}: Recall@K on
    `device` (default: the embeddings'), NMI on CPU."""
    device = embeddings.device if device is None else torch.device(device)
    recall = recall_at_k(embeddings.to(device), labels.to(device), RECALL_KS)
    spread = nmi_restarts(embeddings, labels, seed)
    return {"nmi": spread.pop("nmi"), **{f"r@{k}": v for k, v in recall.items()}, **spread}


def describe(task: str, seed: int = 0) -> dict:
    """How this task's metrics were computed, for result.json (a metric without its recipe is no result)."""
    if task != "retrieval":
        return {"top1": "argmax(logits) == label on the test split"}
    import sklearn

    return {
        "recall": {"ks": list(RECALL_KS), "distance": "euclidean", "self_excluded": True,
                   "ties": "pessimistic: other-class items at the nearest same-class distance rank first"},
        "nmi": {"kmeans": f"sklearn.cluster.KMeans (scikit-learn {sklearn.__version__})",
                "n_clusters": "number of distinct test labels", "random_state": seed, **KMEANS,
                "input_dtype": "float64",
                "score": f"sklearn.metrics.normalized_mutual_info_score(average_method='{NMI_AVERAGE}')",
                "definition": "I(Y;C) / sqrt(H(Y) H(C)), the KE paper's NMI",
                "spread": f"nmi_mean/std/min/max over k-means random_state {seed}..{seed + NMI_RESTARTS - 1}; "
                          f"nmi is random_state {seed}"},
    }
