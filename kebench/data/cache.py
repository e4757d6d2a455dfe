"""The decode-once image cache, and the worker-DataLoader fallback when a cache would not fit.

On small datasets JPEG decoding and per-image CPU transforms, not the network, bound the speed of
a fast GPU. So every image of a split is decoded once (PIL, with `Image.draft` letting libjpeg
decode straight at a reduced scale), its shorter side resized to `size` (torchvision's `Resize`,
bilinear, antialiased) and written into one uint8 raw file, pixel-interleaved, one fixed-size slot
per image. It is exposed as the [N, 3, H, W] tensor the pipeline expects, in channels-last strides
(what the CPU resize kernels and CUDA convolutions prefer). Every later epoch, generation and run
memory-maps that file; the batch pipeline (`pipeline.BatchStream`) crops, flips and normalises whole
batches on the training device.

Two layouts:
* evaluation splits (`keep_aspect=False`): the central `size` x `size` square, which is all that
  Resize(size) + CenterCrop(resolution) ever reads;
* training splits (`keep_aspect=True`): the whole image with its aspect ratio, so RandomResizedCrop
  draws from the whole frame as torchvision does over the decoded image. Shorter side `size`, longer
  side at most MAX_ASPECT x `size` (a longer image is shrunk to fit, nothing is cut), stored
  landscape in a `size` x MAX_ASPECT*`size` slot (portrait images transposed), zero-padded; the real
  (height, width) of each image, in its own orientation, is `Split.extent`. Twice the bytes of the
  square layout.

Cache key: dataset, split, size, banner crop, layout, and a fingerprint of the source (format
version, every listed file's relative path, size and mtime, in listing order). A changed source or
format gets a new key; older files of the same dataset/split/size/options are then deleted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kebench.data.spec import Split

FORMAT_VERSION = 3  # 2: pixel-interleaved (N, S, S, 3); 3: + aspect-keeping train slots (N, S, 2S, 3)
#: Longest side of a training image in the cache, in units of its shorter side.
MAX_ASPECT = 2


def default_dir() -> Path:
    """$KEBENCH_CACHE, else ~/.cache/kebench."""
    return Path(os.environ.get("KEBENCH_CACHE") or Path.home() / ".cache" / "kebench").expanduser()


def default_workers() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def stored_extent(w: int, h: int, size: int, banner_px: int = 0) -> tuple[int, int]:
    """(height, width) a w x h source image gets in the aspect-keeping layout: shorter side `size`
    (torchvision's Resize(size) rounding), or the longer side MAX_ASPECT*size if that is smaller."""
    h = h - banner_px
    short, long = min(w, h), max(w, h)
    if long * size > MAX_ASPECT * size * short:  # too elongated: shrink so the longer side fits
        long_out, short_out = MAX_ASPECT * size, max(1, round(MAX_ASPECT * size * short / long))
    else:
        short_out, long_out = size, int(size * long / short)
    return (short_out, long_out) if w >= h else (long_out, short_out)


def decode_image(path, size: int, banner_px: int = 0, keep_aspect: bool = False):
    """One image file -> uint8 array: drop `banner_px` bottom rows (in original pixels), then either
    resize the shorter side to `size` and center-crop a square ([size, size, 3]), or
    (`keep_aspect`) resize to `stored_extent` and return ([short, long, 3] landscape, (h, w))."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    with Image.open(path) as im:
        w, h = im.size
        if h - banner_px < 1:
            raise ValueError(f"image is {w}x{h}, too small to drop a {banner_px}-pixel banner")
        target = stored_extent(w, h, size, banner_px) if keep_aspect else None
        scale = size / min(w, h - banner_px) if target is None else min(target) / min(w, h - banner_px)
        if scale < 1:
            # JPEG only (a no-op for other formats): decode at 1/2, 1/4 or 1/8 scale, never below the request.
            im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        dw, dh = im.size
        img = im.convert("RGB")
    if banner_px:
        img = img.crop((0, 0, dw, dh - round(banner_px * dh / h)))
    if target is None:
        img = TF.resize(img, size, interpolation=InterpolationMode.BILINEAR)
        return np.asarray(TF.center_crop(img, [size, size]))
    arr = np.asarray(TF.resize(img, list(target), interpolation=InterpolationMode.BILINEAR))
    return (arr.transpose(1, 0, 2) if target[0] > target[1] else arr), target


def slot_shape(size: int, keep_aspect: bool) -> tuple[int, int]:
    """(height, width) of one image's slot in the cache file."""
    return (size, MAX_ASPECT * size) if keep_aspect else (size, size)


def to_slot(decoded, size: int, keep_aspect: bool) -> tuple[np.ndarray, tuple[int, int] | None]:
    """A `decode_image` result -> (the [slot_h, slot_w, 3] array, (h, w) or None)."""
    if not keep_aspect:
        return decoded, None
    arr, extent = decoded
    slot = np.zeros((*slot_shape(size, True), 3), dtype=np.uint8)
    slot[:arr.shape[0], :arr.shape[1]] = arr
    return slot, extent


def _try_decode(args):
    path, size, banner_px, keep_aspect = args
    try:
        return to_slot(decode_image(path, size, banner_px, keep_aspect), size, keep_aspect), None
    except FileNotFoundError:
        return None, "missing"
    except Exception as exc:  # PIL raises many types for broken files; each is reported by path
        return None, f"unreadable ({type(exc).__name__}: {exc})"


def fingerprint(base: Path, rels: list[str]) -> str:
    """Hash of every listed file's relative path, size and mtime, in listing order."""
    h = hashlib.sha1(f"v{FORMAT_VERSION}".encode())
    for rel in rels:
        try:
            st = os.stat(base / rel)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{rel}\0missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


@dataclass
class SplitImages:
    """What `open_split` returns: the split (images in listing order, unusable files skipped)."""

    split: Split
    kept: list[int]  # indices into the listing that made it into `split`
    unusable: list[tuple[str, str]]  # (relative path, reason)
    info: dict = field(default_factory=dict)  # cache facts for result.json


def open_split(dataset: str, split: str, base: Path, items: list[tuple[str, int]], *, size: int,
               banner_px: int = 0, keep_aspect: bool = False, cache_dir: Path | None = None,
               budget_bytes: float = math.inf, workers: int = 0, verbose: bool = True) -> SplitImages:
    """The images of one split from the cache (building it on first use), or decoded on demand by
    DataLoader workers when the cache would exceed `budget_bytes` or the free disk space.
    `keep_aspect`: the whole image in an aspect-keeping slot (training splits), else the central square."""
    rels = [rel for rel, _ in items]
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    workers = workers or default_workers()
    row = 3 * math.prod(slot_shape(size, keep_aspect))
    need = len(rels) * row
    cache_dir = Path(cache_dir or default_dir()).expanduser()
    opts = (size, banner_px, keep_aspect, workers)
    if need > budget_bytes:
        return _lazy(base, rels, labels, *opts,
                     f"cache would take {need / 2**30:.2f} GiB > cache_budget_gb {budget_bytes / 2**30:g}")

    fp = fingerprint(base, rels)
    folder = cache_dir / dataset
    prefix = f"{split}-{size}px-banner{banner_px}-{'aspect' if keep_aspect else 'square'}-"
    stem = prefix + fp[:20]
    data_path, meta_path = folder / (stem + ".u8"), folder / (stem + ".json")
    info = {"mode": "memmap", "file": str(data_path), "size": size,
            "layout": f"aspect (shorter side {size}, longer <= {MAX_ASPECT * size})" if keep_aspect
            else f"center square {size}x{size}"}
    meta = _read_meta(meta_path, data_path, row, fp)
    if meta is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(folder).free
        except OSError as exc:
            return _lazy(base, rels, labels, *opts, f"cache folder {folder} is not usable ({exc})")
        if need > free:
            return _lazy(base, rels, labels, *opts,
                         f"cache would take {need / 2**30:.2f} GiB, only {free / 2**30:.2f} GiB free in {folder}")
        with _lock(folder / (stem + ".lock")):
            meta = _read_meta(meta_path, data_path, row, fp)  # another process may have built it meanwhile
            if meta is None:
                meta = _build(dataset, split, base, rels, size, banner_px, keep_aspect, workers, fp, data_path,
                              meta_path, verbose)
                info["hit"] = False
        for old in folder.glob(prefix + "*"):
            if not old.name.startswith(stem):
                with contextlib.suppress(OSError):
                    old.unlink()
    info.setdefault("hit", True)
    info["build_s"] = meta["build_s"]
    kept = meta["kept"] if meta["kept"] is not None else list(range(len(rels)))
    unusable = [tuple(u) for u in meta["unusable"]]
    images = _map(data_path, len(kept), slot_shape(size, keep_aspect))
    extent = torch.tensor(meta["extent"], dtype=torch.int64).reshape(-1, 2) if keep_aspect else None
    split_obj = Split(images, labels[kept] if len(kept) < len(rels) else labels, extent)
    return SplitImages(split_obj, kept, unusable, info)


def _read_meta(meta_path: Path, data_path: Path, row: int, fp: str) -> dict | None:
    try:
        meta = json.loads(meta_path.read_text())
        ok = (meta.get("version") == FORMAT_VERSION and meta.get("fingerprint") == fp
              and data_path.stat().st_size == meta["count"] * row
              and (meta.get("extent") is None or len(meta["extent"]) == meta["count"]))
        return meta if ok else None
    except (OSError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def _lock(path: Path):
    """One builder per cache file across processes (parallel seeds share the decode)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent builders each write a complete file; the last rename wins
        yield
        return
    with open(path, "w") as f:  # the lock file stays (unlinking it would let a third process in); stale ones are swept
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(dataset, split, base, rels, size, banner_px, keep_aspect, workers, fp, data_path, meta_path,
           verbose) -> dict:
    from kebench.run.results import write_json

    slot = slot_shape(size, keep_aspect)
    row = 3 * math.prod(slot)
    t0 = time.perf_counter()
    if verbose:
        _say(f"kebench: decoding {dataset}/{split} once ({len(rels)} images -> {slot[0]}x{slot[1]} uint8, "
             f"{len(rels) * row / 2**30:.2f} GiB, {workers} threads) into {data_path.parent}")
    tmp = data_path.with_name(f".{data_path.name}.{os.getpid()}.tmp")
    kept, unusable = [], []
    extents = {}
    try:
        out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(max(len(rels), 1), *slot, 3))
        errors = {}
        # PIL releases the GIL while decoding and resizing, so threads scale across cores. Each image
        # is written to its row as soon as it is done (memory stays bounded whatever the order).
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_try_decode, (base / rel, size, banner_px, keep_aspect)): i
                       for i, rel in enumerate(rels)}
            for future in as_completed(futures):
                i = futures[future]
                got, err = future.result()
                if err is None:
                    out[i], extents[i] = got
                else:
                    errors[i] = err
        for i in range(len(rels)):  # close the gaps left by unusable images (rows only move forward)
            if i in errors:
                unusable.append((rels[i], errors[i]))
            else:
                if len(kept) != i:
                    out[len(kept)] = out[i]
                kept.append(i)
        out.flush()
        del out
        os.truncate(tmp, len(kept) * row)
        os.replace(tmp, data_path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    meta = {"version": FORMAT_VERSION, "dataset": dataset, "split": split, "size": size, "banner_px": banner_px,
            "layout": "aspect" if keep_aspect else "square",
            "extent": [list(extents[i]) for i in kept] if keep_aspect else None,
            "fingerprint": fp, "listed": len(rels), "count": len(kept),
            "kept": None if len(kept) == len(rels) else kept, "unusable": unusable,
            "build_s": round(time.perf_counter() - t0, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(meta_path, meta)
    if verbose:
        _say(f"kebench: cached {dataset}/{split} in {meta['build_s']:.1f}s")
    return meta


def _map(path: Path, n: int, slot: tuple[int, int]) -> torch.Tensor:
    """Memory-map the cache file (shared pages: parallel runs read one copy from the page cache).
    Treat the tensor as read-only; the pipeline only ever reads it."""
    if n == 0:
        return torch.empty(0, 3, *slot, dtype=torch.uint8)
    nbytes = n * 3 * math.prod(slot)
    try:
        t = torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8)
    except RuntimeError:  # a read-only cache folder: map it read-only through numpy instead
        arr = np.memmap(path, dtype=np.uint8, mode="r", shape=(nbytes,))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "non-writable": we never write to it
            t = torch.from_numpy(arr)
    return t.view(n, *slot, 3).permute(0, 3, 1, 2)  # [N, 3, H, W], channels-last strides


def _say(msg: str) -> None:
    if os.environ.get("KEBENCH_NO_PROGRESS"):
        return
    from rich.console import Console

    Console(stderr=True).print(f"[dim]{msg}[/dim]", highlight=False)


# ---------------------------------------------------------------------------- the fallback
class LazySplit(Split):
    """A split whose images are decoded on demand (`LazyImages`); subsets stay lazy."""

    def subset(self, index: torch.Tensor) -> "LazySplit":
        return LazySplit(self.images.take(index), self.labels[index],
                         None if self.extent is None else self.extent[index])


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, paths, size, banner_px, keep_aspect=False):
        self.paths, self.size, self.banner_px, self.keep_aspect = paths, size, banner_px, keep_aspect

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        got, err = _try_decode((self.paths[i], self.size, self.banner_px, self.keep_aspect))
        if err is not None:
            return torch.zeros(3, *slot_shape(self.size, self.keep_aspect), dtype=torch.uint8), i, err
        return torch.from_numpy(np.array(got[0])).permute(2, 0, 1), i, None


def _collate(samples):
    return torch.stack([s[0] for s in samples]), [(i, err) for _, i, err in samples if err is not None]


class LazyImages:
    """Stands in for a uint8 [N, 3, S, S] tensor whose rows are decoded when indexed, with exactly
    the cache's per-image transform. `BatchStream` announces each epoch's batch order through
    `plan()`; a torch DataLoader with `workers` processes then decodes ahead in that order, and
    indexing with the announced batches returns them. Any other indexing decodes synchronously.

    An image that fails to decode here becomes a black image; it is warned about and listed in
    `failures` (which the bundle records in result.json)."""

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4

    def __init__(self, paths: list[Path], size: int, banner_px: int, workers: int, failures: list | None = None,
                 keep_aspect: bool = False):
        self.paths, self.size, self.banner_px, self.workers = list(paths), size, banner_px, workers
        self.keep_aspect = keep_aspect
        self.failures = failures if failures is not None else []
        self._dataset = _DecodeDataset(self.paths, size, banner_px, keep_aspect)
        self._pending: deque = deque()
        self._iter = None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 3, *slot_shape(self.size, self.keep_aspect)))

    def __len__(self) -> int:
        return len(self.paths)

    def numel(self) -> int:
        return math.prod(self.shape)

    def take(self, index) -> "LazyImages":
        idx = torch.as_tensor(index).reshape(-1).tolist()
        return LazyImages([self.paths[i] for i in idx], self.size, self.banner_px, self.workers, self.failures,
                          self.keep_aspect)

    def plan(self, batches) -> None:
        """Start decoding this epoch's batches, in this order, in worker processes."""
        from torch.utils.data import DataLoader

        batches = [torch.as_tensor(b).cpu().reshape(-1) for b in batches]
        self._pending, self._iter = deque(), None
        if not batches or self.workers < 1:
            return
        loader = DataLoader(self._dataset, batch_sampler=[b.tolist() for b in batches], num_workers=self.workers,
                            collate_fn=_collate, prefetch_factor=4)
        self._iter = iter(loader)
        self._pending = deque(batches)

    def __getitem__(self, index):
        if isinstance(index, int):
            return self[torch.tensor([index])][0]
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        idx = torch.as_tensor(index).cpu().reshape(-1)
        if self._pending and len(self._pending[0]) == len(idx) and torch.equal(self._pending[0], idx):
            self._pending.popleft()
            images, errors = next(self._iter)
            self._note(errors)
            return images
        with ThreadPoolExecutor(max_workers=max(self.workers, 1)) as pool:
            samples = list(pool.map(self._dataset.__getitem__, idx.tolist()))
        images, errors = _collate(samples)
        self._note(errors)
        return images

    def _note(self, errors) -> None:
        for i, err in errors:
            path = str(self.paths[i])
            if all(f[0] != path for f in self.failures):
                self.failures.append((path, err))
                warnings.warn(f"{path}: {err}; used a black image in its place. Run 'kebench data check' "
                              f"to list every unreadable image.", stacklevel=3)


def _lazy(base: Path, rels, labels, size, banner_px, keep_aspect, workers, reason: str) -> SplitImages:
    """The fallback split: missing files are skipped up front (a stat each; with `keep_aspect` the
    header too, for the image's size); unreadable ones are found while decoding."""
    from PIL import Image

    def probe(rel):
        if not (base / rel).is_file():
            return None, "missing"
        if not keep_aspect:
            return None, None
        try:
            with Image.open(base / rel) as im:  # reads the header only
                w, h = im.size
            if h - banner_px < 1:
                raise ValueError(f"image is {w}x{h}, too small to drop a {banner_px}-pixel banner")
            return stored_extent(w, h, size, banner_px), None
        except Exception as exc:  # PIL raises many types for broken files; each is reported by path
            return None, f"unreadable ({type(exc).__name__}: {exc})"

    kept, unusable, extents = [], [], []
    # a stat (and a header read) per file: threads, since a streamed split may list a million files
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, (rel, (extent, err)) in enumerate(zip(rels, pool.map(probe, rels, chunksize=256))):
            if err is not None:
                unusable.append((rel, err))
                continue
            if keep_aspect:
                extents.append(extent)
            kept.append(i)
    images = LazyImages([base / rels[i] for i in kept], size, banner_px, workers, keep_aspect=keep_aspect)
    info = {"mode": "dataloader", "reason": reason, "size": size, "workers": workers,
            "unreadable_during_training": images.failures}
    extent = torch.tensor(extents, dtype=torch.int64).reshape(-1, 2) if keep_aspect else None
    return SplitImages(LazySplit(images, labels[kept], extent), kept, unusable, info)
