"""Images/s of kebench's cached data pipeline vs torchvision ImageFolder + DataLoader, same JPEGs,
same run.

    python benchmarks/data_pipeline.py                 # 320 JPEGs of ~500x375, 224 px, CPU
    python benchmarks/data_pipeline.py --images 1000 --epochs 4 --device cuda

Both pipelines produce normalised float batches [B, 3, 224, 224] with RandomResizedCrop(224) +
horizontal flip. The peer is the usual recipe: ImageFolder + DataLoader(num_workers=2,
persistent workers) with RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize per
image. kebench reads the images through its real loader (the MIT-67 layout, which is also an
ImageFolder tree): decoded once into the memory-mapped cache, then `BatchStream` crops, flips and
normalises whole batches. The one-off cache build time is reported separately; the ratio is taken
from the second epoch on. Target: >= 3x.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CLASSES = 10


def make_jpegs(root: Path, n: int, seed: int = 0) -> list[str]:
    """Photo-like JPEGs (smooth structure + texture + noise, quality 90), most 500x375, some portrait."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rels = []
    for i in range(n):
        w, h = (500, 375) if i % 4 else (375, 500)
        layers = []
        for cells in (4, 16, 64):  # coarse shapes, mid texture, fine texture
            small = (rng.random((cells * h // w + 1, cells, 3)) * 255).astype(np.uint8)
            layers.append(np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32))
        img = 0.55 * layers[0] + 0.3 * layers[1] + 0.15 * layers[2] + rng.normal(0, 6, (h, w, 3))
        rel = f"class_{i % CLASSES:02d}/img {i:05d}.jpg"
        (root / "Images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "Images" / rel, quality=90)
        rels.append(rel)
    (root / "TrainImages.txt").write_text("\n".join(rels) + "\n")
    (root / "TestImages.txt").write_text("\n".join(rels[:CLASSES]) + "\n")
    return rels


def bench_kebench(root: Path, cache_dir: Path, args) -> tuple[float, list[tuple[float, float]], int]:
    from kebench import data as datasets
    from kebench.config import RunConfig
    from kebench.data.pipeline import BatchStream, epoch_generator

    cfg = RunConfig(data="mit67", data_root=str(root), resolution=args.resolution,
                    data_options={"cache_dir": str(cache_dir), "workers": args.build_threads})
    t0 = time.perf_counter()
    bundle = datasets.load(cfg)
    load_s = time.perf_counter() - t0
    build_s = bundle.info["cache"]["train"]["build_s"]
    stream = BatchStream(bundle, bundle.train, batch_size=args.batch_size, device=torch.device(args.device),
                         train=True, channels_last=args.device.startswith("cuda"))
    rates = []
    for epoch in range(args.epochs):
        gen = epoch_generator(0, 0, epoch)
        t0, c0 = time.perf_counter(), time.process_time()
        seen = 0
        for index in stream.batches(gen):
            x, y = stream.load(index, gen)
            seen += len(y)
        _sync(args.device, x)
        rates.append((seen / (time.perf_counter() - t0), seen / (time.process_time() - c0)))
    print(f"kebench: first load (listing + cache build) {load_s:.2f}s, of which decoding the train split {build_s:.2f}s")
    return build_s, rates, len(bundle.train)


def bench_torchvision(root: Path, args) -> list[tuple[float, float]]:
    from torch.utils.data import DataLoader
    from torchvision import datasets as tvd
    from torchvision import transforms as T

    tf = T.Compose([T.RandomResizedCrop(args.resolution), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    loader = DataLoader(tvd.ImageFolder(str(root / "Images"), transform=tf), batch_size=args.batch_size, shuffle=True,
                        num_workers=2, drop_last=True, persistent_workers=True,
                        pin_memory=args.device.startswith("cuda"))
    rates = []
    workers = []
    for _ in range(args.epochs):
        t0, c0 = time.perf_counter(), time.process_time() + _cpu_seconds(workers)
        seen = 0
        it = iter(loader)
        workers = [w.pid for w in getattr(it, "_workers", [])]  # persistent: the same processes every epoch
        for x, y in it:
            x = x.to(args.device, non_blocking=True)
            seen += len(y)
        _sync(args.device, x)
        cpu = time.process_time() + _cpu_seconds(workers) - c0
        rates.append((seen / (time.perf_counter() - t0), seen / cpu))
    return rates


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of worker processes (Linux /proc); 0 where unreadable."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def _sync(device: str, x: torch.Tensor) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    float(x[0, 0, 0, 0])  # the batch is materialised


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=320)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--build-threads", type=int, default=0, help="cache build threads (0: one per core)")
    p.add_argument("--workdir", help="keep the JPEGs and cache here (default: a temporary folder)")
    args = p.parse_args(argv)
    os.environ.setdefault("KEBENCH_NO_PROGRESS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        root = work / "jpegs"
        if not (root / "TrainImages.txt").exists():
            t0 = time.perf_counter()
            make_jpegs(root, args.images)
            print(f"wrote {args.images} JPEGs (~500x375) in {time.perf_counter() - t0:.1f}s to {root}")
        mb = sum(f.stat().st_size for f in (root / "Images").rglob("*.jpg")) / 2**20
        print(f"device {args.device}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
              f"{mb:.1f} MiB of JPEG, batch {args.batch_size}, {args.resolution} px")
        shutil.rmtree(work / "cache", ignore_errors=True)  # time a fresh build
        build_s, ours, n = bench_kebench(root, work / "cache", args)
        theirs = bench_torchvision(root, args)
    print(f"{'epoch':>5} {'kebench img/s':>14} {'torchvision img/s':>18} {'kebench img/CPU-s':>18} {'torchvision img/CPU-s':>22}")
    for e, (a, b) in enumerate(zip(ours, theirs), 1):
        print(f"{e:>5} {a[0]:>14.0f} {b[0]:>18.0f} {a[1]:>18.0f} {b[1]:>22.0f}")
    steady = [[statistics.mean(r[k] for r in (rs[1:] or rs)) for k in (0, 1)] for rs in (ours, theirs)]
    print(f"one-off cache build: {build_s:.2f}s for {n} images ({n / max(build_s, 1e-9):.0f} img/s)")
    print(f"speed-up from epoch 2 on: {steady[0][0] / steady[1][0]:.2f}x wall clock (kebench {steady[0][0]:.0f} img/s vs "
          f"ImageFolder+DataLoader(num_workers=2) {steady[1][0]:.0f} img/s; target >= 3x), "
          f"{steady[0][1] / steady[1][1]:.2f}x per CPU-second (main process + DataLoader workers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
