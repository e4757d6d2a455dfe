"""Images/s of kebench's CIFAR and streamed-ImageNet paths vs torchvision's usual recipe, same data,
same machine, same run; prints each ratio.

    OMP_NUM_THREADS=1 python benchmarks/cifar_imagenet_pipeline.py              # both, CPU
    python benchmarks/cifar_imagenet_pipeline.py --only cifar --cifar-images 50000 --device cuda

CIFAR: a synthetic CIFAR-100 copy in the real pickle format (`cifar-100-python/train`). kebench
reads it whole into a uint8 tensor (resident on the GPU where there is one) and pads, crops, flips
and normalises whole batches; the peer is torchvision's `CIFAR100` (its MD5 check bypassed: the
copy is synthetic) + `DataLoader(num_workers=W)` with RandomCrop(32, padding=4) +
RandomHorizontalFlip + ToTensor + Normalize per image. Target: ratio >= 1.

ImageNet: a synthetic ILSVRC-style JPEG tree (train/<wnid>/*.JPEG, ~500x375). kebench's `imagenet`
dataset streams it (persistent DataLoader workers decode whole batches into shared memory and
resize each image to its 256-px training slot; the main process crops the batch); the peer is `ImageFolder` + `DataLoader(num_workers=W)` with RandomResizedCrop(224)
+ flip + ToTensor + Normalize. Both with W workers; reported as images/s per worker. Target: >= 1.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from data_pipeline import make_jpegs  # noqa: E402  (the photo-like JPEGs of the cached-path benchmark)


def write_cifar100(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, count in (("train", n), ("test", max(100, n // 5))):
        labels = (np.arange(count) % 100).tolist()
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        obj = {"data": data, "fine_labels": labels, "coarse_labels": [y // 5 for y in labels],
               "filenames": [f"{i}.png" for i in range(count)], "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)],
                                                "coarse_label_names": [f"s{i}" for i in range(20)]}, protocol=2))


def _rate(batches, device, epochs: int) -> float:
    """Images/s over `epochs` passes of an iterable factory, from the second pass on (warm)."""
    rates = []
    for e in range(epochs):
        t0, n = time.perf_counter(), 0
        for x in batches(e):
            if device.type == "cuda":
                torch.cuda.synchronize()
            n += len(x)
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates[1:] if len(rates) > 1 else rates))


def bench_cifar(args, device) -> tuple[float, float]:
    import torchvision
    from torchvision import transforms as T

    from kebench import data as datasets
    from kebench.config import RunConfig
    from kebench.data import arrays
    from kebench.data.pipeline import BatchStream, epoch_generator

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar100(root, args.cifar_images)
        bundle = datasets.load(RunConfig(data="cifar100", data_root=str(root)))
        stream = BatchStream(bundle, bundle.train, batch_size=args.batch_size, device=device, train=True)

        def ours(e):
            gen = epoch_generator(0, 0, e)
            for index in stream.batches(gen):
                yield stream.load(index, gen)[0]

        kebench_rate = _rate(ours, device, args.epochs)

        class CIFAR100(torchvision.datasets.CIFAR100):
            def _check_integrity(self) -> bool:  # the synthetic copy has no official MD5
                return True

            def _load_meta(self) -> None:  # torchvision checks the meta file's MD5 too
                self.classes = [f"c{i}" for i in range(100)]
                self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(arrays.CIFAR100_MEAN, arrays.CIFAR100_STD)])
        ds = CIFAR100(str(root), train=True, transform=tf)
        peer_rate = _torchvision_rate(ds, device, args)
    return kebench_rate, peer_rate


def _torchvision_rate(ds, device: torch.device, args) -> float:
    """Images/s of the peer: a torchvision dataset through a shuffling DataLoader onto the device."""
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0,
                                         pin_memory=device.type == "cuda")

    def peer(e):
        for x, _ in loader:
            yield x.to(device, non_blocking=True)

    return _rate(peer, device, args.epochs)


def write_imagenet(root: Path, n: int) -> None:
    tmp = root / "_mit"
    rels = make_jpegs(tmp, n)
    for i, rel in enumerate(rels):
        wnid = f"n{int(rel.split('_')[1][:2]):08d}"
        dst = root / "train" / wnid / f"{wnid}_{i}.JPEG"
        dst.parent.mkdir(parents=True, exist_ok=True)
        (tmp / "Images" / rel).rename(dst)
        if i < 20:
            v = root / "val" / wnid / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
            v.parent.mkdir(parents=True, exist_ok=True)
            v.write_bytes(dst.read_bytes())


def bench_imagenet(args, device) -> tuple[float, float]:
    import torchvision
    from torchvision import transforms as T

    from kebench import data as datasets
    from kebench.config import RunConfig
    from kebench.data.paper import IMAGENET_MEAN, IMAGENET_STD
    from kebench.data.pipeline import BatchStream, epoch_generator

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_imagenet(root, args.imagenet_images)
        bundle = datasets.load(RunConfig(data="imagenet", data_root=str(root), resolution=224,
                                         data_options={"workers": args.workers, "cache_dir": str(root / "cache")}))
        stream = BatchStream(bundle, bundle.train, batch_size=args.batch_size, device=device, train=True)

        def ours(e):
            gen = epoch_generator(0, 0, e)
            for index in stream.batches(gen):
                yield stream.load(index, gen)[0]

        kebench_rate = _rate(ours, device, args.epochs)
        tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=tf)
        peer_rate = _torchvision_rate(ds, device, args)
    return kebench_rate, peer_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("cifar", "imagenet"))
    ap.add_argument("--cifar-images", type=int, default=10000)
    ap.add_argument("--imagenet-images", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, DataLoader workers {args.workers}, "
          f"batch {args.batch_size}")
    if args.only in (None, "cifar"):
        ours, peer = bench_cifar(args, device)
        print(f"CIFAR-100 ({args.cifar_images} images): kebench {ours:,.0f} img/s, torchvision CIFAR100 + DataLoader "
              f"{peer:,.0f} img/s, ratio {ours / peer:.2f}x")
    if args.only in (None, "imagenet"):
        ours, peer = bench_imagenet(args, device)
        w = max(args.workers, 1)
        print(f"ImageNet streamed ({args.imagenet_images} JPEGs ~500x375 -> 224): kebench {ours / w:,.1f} img/s per "
              f"worker, ImageFolder + DataLoader {peer / w:,.1f} img/s per worker, ratio {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
