"""Datasets stored as arrays rather than image files: CIFAR-10, CIFAR-100 (Python pickles) and
MNIST (idx files). Each is read straight from its official format, whole, into a uint8 tensor in
memory (CIFAR-100's training set is 150 MB), so no decode cache is involved and the batch pipeline
(or the GPU, where it fits) holds every image.

torchvision's CIFAR classes verify the archives' MD5 sums, which refuses subsets and test copies;
the pickles are therefore read here (with an unpickler that only builds numpy arrays). MNIST's idx
files are parsed here too, so that raw and .gz files both work and a damaged file is named in a
one-paragraph error rather than an assertion.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from kebench.data.sources import hint as download_hint
from kebench.data.spec import DataBundle, DatasetSpec, Split, register
from kebench.errors import UserError

# The standard CIFAR recipe (He et al. 2016, and every CIFAR code Park et al. build on): 4-pixel
# zero padding + random 32x32 crop, horizontal flip, per-channel normalisation with the dataset's own
# statistics (computed over its 50,000 training images, 0-1 scale; CIFAR-10's differ from CIFAR-100's).
CIFAR_PAD = 4
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
# rethinking-network-pruning cifar/ (l1-norm-pruning, network-slimming, weight-level main.py): SGD
# momentum 0.9, batch 64, lr 0.1, weight decay 1e-4, 160 epochs, LR x0.1 at 50% and 75% of training.
CIFAR_DEFAULTS = {"arch": "resnet56", "lr": 0.1, "batch_size": 64, "epochs": 160, "weight_decay": 1e-4,
                  "lr_schedule": "step", "warmup_epochs": 0}
# LeCun-style MNIST training is short; kebench's digits-sized defaults, at MNIST's native 28 px.
MNIST_DEFAULTS = {"arch": "resnet10t", "lr": 0.05, "batch_size": 128, "epochs": 20, "warmup_epochs": 0}


@dataclass
class ArrayDataset:
    name: str
    title: str
    reader: Callable  # (root: Path) -> ArrayData
    layout: str
    source: str
    official: dict
    description: str = ""
    options: dict = field(default_factory=dict)


@dataclass
class ArrayData:
    base: Path  # the folder or archive read
    classes: list[str]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 [N, C, H, W], int64 [N])
    layout: str = ""


ARRAYS: dict[str, ArrayDataset] = {}


def _error(ds: ArrayDataset, root: Path, problem: str) -> UserError:
    return UserError(
        f"{ds.title} ('{ds.name}') could not be read under {root}: {problem}\n"
        f"Expected layout (either of):\n{ds.layout}\nGet the files from {ds.source} and put them under "
        f"the data root (--data-root or KEBENCH_DATA). {download_hint(ds.name)}")


# ---------------------------------------------------------------------------- CIFAR
class _NumpyOnly(pickle.Unpickler):
    """The CIFAR pickles hold dicts, lists, strings and numpy arrays: nothing else is built
    (`_codecs.encode` is how Python 3 pickles bytes at protocol 2, e.g. a re-saved copy)."""

    def find_class(self, module, name):
        if (module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar")) \
                or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(ds, root, data: bytes, where: str) -> dict:
    try:
        obj = _NumpyOnly(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # truncated, not a pickle, foreign objects: every case is reported by file
        raise _error(ds, root, f"{where} is not a readable CIFAR pickle ({type(exc).__name__}: {exc}).") from None
    if not isinstance(obj, dict):
        raise _error(ds, root, f"{where} holds a {type(obj).__name__}, not the dict of a CIFAR batch.")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(ds, root, data: bytes, where: str, label_key: str, num_classes: int):
    d = _unpickle(ds, root, data, where)
    missing = [k for k in ("data", label_key) if k not in d]
    if missing:
        raise _error(ds, root, f"{where} lacks the key(s) {', '.join(missing)} (has {', '.join(sorted(d))}).")
    x, y = np.asarray(d["data"]), np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise _error(ds, root, f"{where}: 'data' is {x.dtype} {tuple(x.shape)} with {len(y)} labels; expected "
                               f"uint8 (N, 3072) with N labels.")
    bad = y[(y < 0) | (y >= num_classes)]
    if len(bad):
        raise _error(ds, root, f"{where}: label {bad[0]} is outside 0..{num_classes - 1}.")
    return x.reshape(-1, 3, 32, 32), y


def _cifar_reader(folder: str, archive: str, batches: dict, meta: str, label_key: str, names_key: str,
                  num_classes: int):
    def read(name: str, root: Path) -> ArrayData:
        ds = ARRAYS[name]
        files = [f for fs in batches.values() for f in fs]
        base = next((d for d in (root / folder, root) if all((d / f).is_file() for f in files)), None)
        blobs: dict[str, bytes] = {}
        if base is not None:
            where = base
            for f in [*files, meta]:
                if (base / f).is_file():
                    blobs[f] = (base / f).read_bytes()
            layout = "folder"
        else:
            tar = next((p for p in (root / archive, root / folder / archive) if p.is_file()), None)
            if tar is None:
                partial = root / folder if (root / folder).is_dir() else root
                missing = [f for f in files if not (partial / f).is_file()]
                raise _error(ds, root, f"neither {root / folder} with {', '.join(files)} nor the archive "
                                       f"{root / archive} was found ({partial} lacks {', '.join(missing)}).")
            where = tar
            try:
                with tarfile.open(tar, "r:*") as t:
                    for f in [*files, meta]:
                        try:
                            blobs[f] = t.extractfile(f"{folder}/{f}").read()
                        except KeyError:
                            if f != meta:
                                raise _error(ds, root, f"the archive {tar} has no member {folder}/{f}.") from None
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise _error(ds, root, f"{tar} is not a readable .tar.gz archive ({exc}).") from None
            layout = "archive"
        splits = {}
        for split, fs in batches.items():
            parts = [_cifar_batch(ds, root, blobs[f], str(where / f) if layout == "folder" else f"{where}:{folder}/{f}",
                                  label_key, num_classes) for f in fs]
            splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        classes = [f"class {c}" for c in range(num_classes)]
        if meta in blobs:
            names = _unpickle(ds, root, blobs[meta], meta).get(names_key)
            if names is not None and len(names) == num_classes:
                classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
        return ArrayData(Path(where), classes, splits, layout)

    return read


# ---------------------------------------------------------------------------- MNIST
IDX_IMAGES, IDX_LABELS = 2051, 2049  # idx3 (uint8 images) and idx1 (uint8 labels) magic numbers
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx(ds, root, path: Path, magic: int) -> np.ndarray:
    """An idx file (raw or .gz): big-endian magic, dimension sizes, then uint8 values."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise _error(ds, root, f"{path} could not be read ({type(exc).__name__}: {exc}).") from None
    dims = magic & 0xFF
    if len(raw) < 4 + 4 * dims or struct.unpack(">I", raw[:4])[0] != magic:
        found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
        raise _error(ds, root, f"{path} does not start with the idx magic number {magic} (0x{magic:08x}); "
                               f"found {found}. Is it the right file, and decompressed if named without .gz?")
    shape = struct.unpack(f">{dims}I", raw[4:4 + 4 * dims])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise _error(ds, root, f"{path} declares {'x'.join(map(str, shape))} values but holds {body.size} "
                               f"(truncated?).")
    return body.reshape(shape)


def _read_mnist(name: str, root: Path) -> ArrayData:
    ds = ARRAYS[name]

    def find(d: Path, stem: str) -> Path | None:
        return next((d / f for f in (stem, stem + ".gz") if (d / f).is_file()), None)

    stems = [s for pair in MNIST_FILES.values() for s in pair]
    candidates = [root / "MNIST" / "raw", root / "mnist" / "raw", root / "MNIST", root / "mnist", root]
    base = next((d for d in candidates if all(find(d, s) for s in stems)), None)
    if base is None:
        best = max(candidates, key=lambda d: sum(find(d, s) is not None for s in stems))
        missing = [s for s in stems if find(best, s) is None]
        raise _error(ds, root, f"no folder holds all four idx files ({best} lacks {', '.join(missing)} "
                               f"[.gz]).")
    splits = {}
    for split, (images, labels) in MNIST_FILES.items():
        x = _idx(ds, root, find(base, images), IDX_IMAGES)
        y = _idx(ds, root, find(base, labels), IDX_LABELS).astype(np.int64)
        if x.ndim != 3 or len(x) != len(y):
            raise _error(ds, root, f"{images} holds {x.shape} images for {len(y)} labels in {labels}.")
        if len(y) and y.max() > 9:
            raise _error(ds, root, f"{labels} holds label {y.max()}, outside 0..9.")
        splits[split] = (x[:, None], y)
    return ArrayData(base, [str(d) for d in range(10)], splits)


# ---------------------------------------------------------------------------- the loader
def read(name: str, root: Path) -> ArrayData:
    return ARRAYS[name].reader(name, root)


def _resize(x: torch.Tensor, res: int) -> torch.Tensor:
    if x.shape[-1] == res:
        return x
    return F.interpolate(x.float(), size=(res, res), mode="bilinear", align_corners=False,
                         antialias=True).round().clamp(0, 255).to(torch.uint8)


def load_array(name: str, cfg) -> DataBundle:
    from kebench.data.paper import data_root

    ds = ARRAYS[name]
    opts = _spec(name).parse_options(dict(cfg.data_options))
    data = read(name, data_root(cfg.data_root, ds))
    native = next(iter(data.splits.values()))[0].shape[-1]
    res = cfg.resolution or native
    channels = opts.get("channels", 3 if name != "mnist" else 1)
    if channels not in (1, 3):
        raise UserError(f"--data-opt channels must be 1 or 3 for '{name}', got {channels}.")
    splits = {}
    for split, (x, y) in data.splits.items():
        images = _resize(torch.from_numpy(np.ascontiguousarray(x)), res)
        if images.shape[1] == 1 and channels == 3:  # grey to RGB: the same plane three times
            images = images.expand(-1, 3, -1, -1).contiguous()
        splits[split] = Split(images, torch.from_numpy(np.asarray(y, dtype=np.int64)))
    for split, sp in splits.items():
        empty = [data.classes[c] for c, n in enumerate(torch.bincount(sp.labels, minlength=len(data.classes))) if n == 0]
        if empty:
            raise UserError(f"'{name}' at {data.base}: {len(empty)} class(es) have no image in the {split} split "
                            f"({', '.join(empty[:5])}); it cannot be trained and evaluated fairly.")
    sizes = {s: len(sp) for s, sp in splits.items()}
    if sizes != ds.official:
        warnings.warn(f"'{name}' at {data.base} has {sizes} images, the official copy {ds.official}: a subset "
                      f"trains, but its numbers are not the paper's.", stacklevel=2)
    mnist = name == "mnist"
    mean, std = (MNIST_MEAN, MNIST_STD) if mnist else (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" \
        else (CIFAR100_MEAN, CIFAR100_STD)
    if channels == 3 and len(mean) == 1:
        mean, std = mean * 3, std * 3
    pad = 0 if mnist else CIFAR_PAD
    return DataBundle(
        name=name, task="classification", train=splits["train"], test=splits["test"],
        num_classes=len(data.classes), in_chans=channels, resolution=res, mean=mean, std=std,
        flip=not mnist, pad_crop=pad,
        info={"root": str(data.base), "layout": data.layout or "official", "classes": len(data.classes),
              "splits": sizes, "official_sizes": ds.official, "matches_official": sizes == ds.official,
              "options": opts, "resolution": res, "test_resize_ratio": 1.0,
              "transform": {"train": ("none (MNIST is used as is)" if mnist else
                                      f"pad {pad} + RandomCrop({res}) + flip") + f", Normalize(mean={mean}, std={std})",
                            "test": f"Normalize(mean={mean}, std={std})"}})


def _spec(name: str) -> DatasetSpec:
    from kebench.data.spec import DATASETS

    return DATASETS[name]


def _add(ds: ArrayDataset, defaults: dict) -> None:
    ARRAYS[ds.name] = ds
    register(DatasetSpec(ds.name, "classification", lambda cfg, n=ds.name: load_array(n, cfg), ds.description,
                         dict(defaults), options=dict(ds.options)))


_CIFAR10 = ("  <root>/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta\n"
            "  or the archive as downloaded: <root>/cifar-10-python.tar.gz")
_CIFAR100 = ("  <root>/cifar-100-python/train, test, meta\n"
             "  or the archive as downloaded: <root>/cifar-100-python.tar.gz")
_MNIST = ("  <root>/MNIST/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte,\n"
          "                 t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte   (each raw or .gz)\n"
          "  or the same four files directly in <root>")

_add(ArrayDataset("cifar10", "CIFAR-10",
                  lambda n, root: _cifar_reader("cifar-10-batches-py", "cifar-10-python.tar.gz",
                                                {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                                                "batches.meta", "labels", "label_names", 10)(n, root),
                  _CIFAR10, "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-python.tar.gz)",
                  {"train": 50000, "test": 10000},
                  "CIFAR-10, 10 classes, 50000 train / 10000 test, 32 px (python pickles or the .tar.gz)"),
     CIFAR_DEFAULTS)
_add(ArrayDataset("cifar100", "CIFAR-100",
                  lambda n, root: _cifar_reader("cifar-100-python", "cifar-100-python.tar.gz",
                                                {"train": ["train"], "test": ["test"]},
                                                "meta", "fine_labels", "fine_label_names", 100)(n, root),
                  _CIFAR100, "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-100-python.tar.gz)",
                  {"train": 50000, "test": 10000},
                  "CIFAR-100, 100 classes, 50000 train / 10000 test, 32 px (python pickles or the .tar.gz)"),
     CIFAR_DEFAULTS)
_add(ArrayDataset("mnist", "MNIST", _read_mnist, _MNIST,
                  "https://yann.lecun.com/exdb/mnist/ or a mirror (the four *-ubyte.gz files)",
                  {"train": 60000, "test": 10000},
                  "MNIST digits, 10 classes, 60000 train / 10000 test, 28 px grey (idx files, raw or .gz); "
                  "--data-opt channels=3 for an RGB network", options={"channels": 1}),
     MNIST_DEFAULTS)


def names() -> list[str]:
    return sorted(ARRAYS)
