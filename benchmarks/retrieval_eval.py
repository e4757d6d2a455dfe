"""Retrieval evaluation cost: time and peak memory of Recall@K and NMI on random embeddings.

kebench's chunked Recall@K (blocks of queries x all embeddings) is compared with the obvious peer
measured in the same run: one full N x N `torch.cdist` matrix + `topk` (ties broken however topk
likes). Every measurement runs in a fresh subprocess, so its peak memory is its own: on CPU the
rise of the peak resident set size over the resident size just before the call; on CUDA
`torch.cuda.max_memory_allocated`.

    python benchmarks/retrieval_eval.py [--n 20000] [--dim 128] [--classes 100] [--device cpu|cuda]

Default device: cuda when there is one, else cpu; `--device cpu` forces the CPU figures.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _data(n: int, dim: int, classes: int, device: str):
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(n, dim, generator=gen), dim=1)
    labels = torch.randint(0, classes, (n,), generator=gen)
    return emb.to(device), labels.to(device)


def _full_matrix_recall(emb, labels, ks=(1, 2, 4, 8)):
    """The peer: all N x N distances at once, self masked, top-k neighbours."""
    import torch

    d = torch.cdist(emb, emb)
    d.fill_diagonal_(float("inf"))
    nn_labels = labels[d.topk(max(ks), dim=1, largest=False).indices]
    match = nn_labels == labels.unsqueeze(1)
    return {k: match[:, :k].any(1).float().mean().item() for k in ks}


def _measure(what: str, n: int, dim: int, classes: int, device: str, queue) -> None:
    import torch

    from kebench.run import metrics

    emb, labels = _data(n, dim, classes, device)
    fn = {"recall": lambda: metrics.recall_at_k(emb, labels),
          "recall_full_matrix": lambda: _full_matrix_recall(emb, labels),
          "nmi": lambda: metrics.nmi(emb, labels, seed=0)}[what]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    value = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    queue.put({"what": what, "wall_s": wall, "cpu_s": cpu, "peak_mib": peak, "value": value})


def run(what: str, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(what, args.n, args.dim, args.classes, args.device, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-peer", action="store_true", help="Do not run the full-matrix peer.")
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{args.n} x {args.dim} random unit embeddings, {args.classes} classes, on {device_name}")
    rows = [run("recall", args), run("nmi", args)]
    if not args.skip_peer:
        rows.append(run("recall_full_matrix", args))
    for r in rows:
        value = r["value"] if isinstance(r["value"], float) else ", ".join(f"R@{k} {v:.4f}" for k, v in r["value"].items())
        print(f"{r['what']:<20} wall {r['wall_s']:7.2f} s   cpu {r['cpu_s']:7.2f} s   peak +{r['peak_mib']:8.1f} MiB   {value}")
    recall, nmi = rows[0], rows[1]
    print(f"Recall@K + NMI: wall {recall['wall_s'] + nmi['wall_s']:.2f} s, peak +{max(recall['peak_mib'], nmi['peak_mib']):.1f} MiB")
    if not args.skip_peer:
        peer = rows[2]
        print(f"chunked vs full matrix: time ratio {recall['wall_s'] / peer['wall_s']:.2f}, "
              f"memory ratio {recall['peak_mib'] / max(peer['peak_mib'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
