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
import io
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


def _target(w: int, h: int, size: int, banner_px: int, keep_aspect: bool) -> tuple[tuple[int, int] | None, float]:
    """(the `stored_extent` of a w x h image, or None for the square layout; the scale it is
    decoded at, which libjpeg can reduce to at 1/2, 1/4 or 1/8 where it is at most 1/2)."""
    if h - banner_px < 1:
        raise ValueError(f"image is {w}x{h}, too small to drop a {banner_px}-pixel banner")
    target = stored_extent(w, h, size, banner_px) if keep_aspect else None
    return target, (size if target is None else min(target)) / min(w, h - banner_px)


def _decode_rgb(source, size: int, banner_px: int, keep_aspect: bool):
    """Decode one image (a path or a file object) to RGB, libjpeg decoding at 1/2, 1/4 or 1/8 scale
    where that still covers the request; -> (PIL image, banner rows in decoded pixels, the target
    `stored_extent` or None for the square layout)."""
    from PIL import Image

    with Image.open(source) as im:
        w, h = im.size
        target, scale = _target(w, h, size, banner_px, keep_aspect)
        if scale < 1:
            # JPEG only (a no-op for other formats): decode at 1/2, 1/4 or 1/8 scale, never below the request.
            im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        dh = im.size[1]
        img = im.convert("RGB")
    return img, round(banner_px * dh / h), target


def decode_image(path, size: int, banner_px: int = 0, keep_aspect: bool = False):
    """One image file -> uint8 array: drop `banner_px` bottom rows (in original pixels), then either
    resize the shorter side to `size` and center-crop a square ([size, size, 3]), or
    (`keep_aspect`) resize to `stored_extent` and return ([short, long, 3] landscape, (h, w)).
    The decode cache's transform (PIL's resize); streamed splits use `decode_tensor`."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    img, banner, target = _decode_rgb(path, size, banner_px, keep_aspect)
    if banner:
        img = img.crop((0, 0, img.width, img.height - banner))
    if target is None:
        img = TF.resize(img, size, interpolation=InterpolationMode.BILINEAR)
        return np.asarray(TF.center_crop(img, [size, size]))
    arr = np.asarray(TF.resize(img, list(target), interpolation=InterpolationMode.BILINEAR))
    return (arr.transpose(1, 0, 2) if target[0] > target[1] else arr), target


def fit(img: torch.Tensor, size: int, banner_rows: int, target: tuple[int, int] | None) -> torch.Tensor:
    """A decoded uint8 [3, h, w] image (CPU or GPU) -> its slot content, as `decode_image` makes it:
    `banner_rows` bottom rows dropped, then resized (bilinear, antialiased) either to `target` (h, w)
    and returned landscape ([3, short, long]; portrait images transposed), or (`target` None) its
    shorter side to `size` and center-cropped to [3, size, size]. torch's uint8 antialiased kernel
    on a CPU (within one grey level of PIL's, three times faster), float and rounded on a GPU."""
    import torch.nn.functional as F

    if banner_rows:
        img = img[:, :img.shape[1] - banner_rows]
    h, w = img.shape[1:]
    square = target is None
    if square:  # torchvision's Resize(size) output size
        target = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    elif target[0] > target[1]:  # portrait: stored transposed
        img, target = img.transpose(1, 2), target[::-1]
    x = img[None]
    if x.device.type == "cpu":
        y = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=target, mode="bilinear",
                          align_corners=False, antialias=True)[0]
    else:
        y = F.interpolate(x.float(), size=target, mode="bilinear", align_corners=False, antialias=True)[0]
        y = y.round_().clamp_(0, 255).to(torch.uint8)
    if square:  # torchvision's center_crop offsets
        top, left = int(round((target[0] - size) / 2.0)), int(round((target[1] - size) / 2.0))
        return y[:, top:top + size, left:left + size]
    return y


def decode_tensor(source, size: int, banner_px: int = 0, keep_aspect: bool = False) -> torch.Tensor:
    """`decode_image` for streamed splits: PIL decodes (a path or a file object), `fit` resizes;
    -> the slot content as a uint8 [3, h, w] tensor (channels-last strides)."""
    from PIL import Image

    img, banner, target = _decode_rgb(source, size, banner_px, keep_aspect)
    if banner:
        img = img.crop((0, 0, img.width, img.height - banner))
    if target is not None and target[0] > target[1]:  # portrait, stored transposed: PIL transposes fastest
        img, target = img.transpose(Image.Transpose.TRANSPOSE), target[::-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable": only read
        x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)
    return fit(x, size, 0, target)


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
    except Exception as exc:  # PIL raises many types for broken files; each is reported by path
        return None, _reason(exc)


def _reason(exc: Exception) -> str:
    """Why an image could not be used, as `data.unusable` and `data check` list it."""
    return "missing" if isinstance(exc, FileNotFoundError) else f"unreadable ({type(exc).__name__}: {exc})"


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
               budget_bytes: float = math.inf, workers: int = 0, decode: str = "auto",
               verbose: bool = True) -> SplitImages:
    """The images of one split from the cache (building it on first use), or decoded on demand by
    DataLoader workers when the cache would exceed `budget_bytes` or the free disk space.
    `keep_aspect`: the whole image in an aspect-keeping slot (training splits), else the central square.
    `decode`: where decoded-on-demand JPEGs are decoded (DECODERS; settled per device by BatchStream)."""
    rels = [rel for rel, _ in items]
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    workers = workers or default_workers()
    row = 3 * math.prod(slot_shape(size, keep_aspect))
    need = len(rels) * row
    cache_dir = Path(cache_dir or default_dir()).expanduser()
    opts = (size, banner_px, keep_aspect, workers, decode)
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

    Console(stderr=True, soft_wrap=True).print(f"[dim]{msg}[/dim]", highlight=False)


# ---------------------------------------------------------------------------- the fallback
class LazySplit(Split):
    """A split whose images are decoded on demand (`LazyImages`); subsets stay lazy."""

    def subset(self, index: torch.Tensor) -> "LazySplit":
        return LazySplit(self.images.take(index), self.labels[index],
                         None if self.extent is None else self.extent[index])


#: --data-opt decode: where streamed JPEGs are decoded (auto: on the GPU when the run has one and the
#: split's files are JPEGs).
DECODERS = ("auto", "cpu", "gpu")
JPEG_SUFFIXES = (".jpg", ".jpeg")


def check_decoder(option: str) -> str:
    """The --data-opt decode value, refused with the choices when it is none of DECODERS."""
    from kebench.errors import UserError

    if option not in DECODERS:
        raise UserError(f"--data-opt decode={option!r} is not one of {', '.join(DECODERS)} (auto: on the GPU "
                        f"with torchvision.io.decode_jpeg when the run is on CUDA and the files are JPEGs).")
    return option


def choose_decoder(option: str, device: torch.device, paths) -> str:
    """'gpu' or 'cpu' for a streamed split on `device` (see DECODERS)."""
    from kebench.errors import UserError

    if check_decoder(option) == "gpu" and device.type != "cuda":
        raise UserError(f"--data-opt decode=gpu decodes JPEGs with nvjpeg on a CUDA device, and this run is on "
                        f"{device}. Use decode=cpu (DataLoader workers) or decode=auto, or run with --device cuda.")
    if option == "auto":
        jpeg = all(str(p).lower().endswith(JPEG_SUFFIXES) for p in paths)
        return "gpu" if device.type == "cuda" and jpeg else "cpu"
    return option


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG that libjpeg/nvjpeg decode as they are through torchvision (three
    components, baseline or progressive); None for grayscale and CMYK JPEGs and other formats under a
    .JPEG name (ImageNet has each), which PIL decodes on the CPU. Reads the header only."""
    from PIL import Image

    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size if im.format == "JPEG" and im.mode == "RGB" else None
    except Exception:  # noqa: BLE001 (a broken header: the PIL decoder reports it by path)
        return None


def _place(slot: torch.Tensor, region: torch.Tensor) -> None:
    """Write a `fit` result into the top-left of a [3, H, W] slot (the rest stays zero)."""
    slot[:, :region.shape[1], :region.shape[2]].copy_(region)


class _DecodeDataset(torch.utils.data.Dataset):
    """One batch per item (DataLoader workers take whole batches): its images decoded on the CPU into
    one uint8 batch in the slot layout, channels-last, written in place (no per-image tensors to
    collate). With `read_bytes` (GPU decoding) the JPEGs nvjpeg takes are only read, as raw bytes for
    the main process, and only the others are decoded here.

    An item is (pixels [m, 3, H, W], their positions in the batch, [(position, bytes)], [(image
    index, reason)] of the images that failed, black in `pixels`)."""

    def __init__(self, paths, size, banner_px, keep_aspect=False, read_bytes=False):
        self.paths, self.size, self.banner_px, self.keep_aspect = paths, size, banner_px, keep_aspect
        self.read_bytes = read_bytes

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, batch):
        return self.decode([int(i) for i in batch])

    def decode(self, batch: list[int], pool: ThreadPoolExecutor | None = None):
        run = map if pool is None else pool.map
        datas = list(run(_read_or_none, [self.paths[i] for i in batch]))
        sizes = [None if d is None else jpeg_size(d) for d in datas]
        raw = [(k, _as_tensor(d)) for k, (d, wh) in enumerate(zip(datas, sizes)) if self.read_bytes and wh]
        cpu = [k for k, wh in enumerate(sizes) if not (self.read_bytes and wh)]
        pixels = _zeros((len(cpu), *slot_shape(self.size, self.keep_aspect), 3)).permute(0, 3, 1, 2)
        # [m, 3, H, W], channels-last strides

        def one(j):
            k = cpu[j]
            try:
                region = None
                if sizes[k] is not None:
                    target, scale = _target(*sizes[k], self.size, self.banner_px, self.keep_aspect)
                    # libjpeg would not decode it smaller: torchvision's decoder, the same pixels as PIL's, faster
                    img = _decode_jpegs([_as_tensor(datas[k])], torch.device("cpu"))[0] if scale > 0.5 else None
                    if img is not None:
                        region = fit(img, self.size, self.banner_px, target)
                if region is None:  # PIL: any format, and libjpeg's reduced-scale decoding of large JPEGs
                    source = self.paths[batch[k]] if datas[k] is None else io.BytesIO(datas[k])
                    region = decode_tensor(source, self.size, self.banner_px, self.keep_aspect)
                _place(pixels[j], region)
            except Exception as exc:  # noqa: BLE001 (reported by path; the image stays black)
                return batch[k], _reason(exc)
            return None

        errors = [e for e in run(one, range(len(cpu))) if e is not None]
        return pixels, cpu, raw, errors


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _zeros(shape) -> torch.Tensor:
    """A zeroed uint8 tensor; in a DataLoader worker, fresh shared memory (zero-filled by the OS), so
    handing it to the main process copies nothing, as torch's default_collate allocates batches."""
    if torch.utils.data.get_worker_info() is not None:
        try:
            storage = torch.empty(0, dtype=torch.uint8).untyped_storage()._new_shared(math.prod(shape))
            return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
        except (AttributeError, RuntimeError):  # a torch without it: an ordinary tensor, copied when sent
            pass
    return torch.zeros(shape, dtype=torch.uint8)


def _read_or_none(path) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _as_is(item):
    return item


class _Order:
    """The sampler of a LazyImages' persistent DataLoader: the batches `plan()` announced last."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class LazyImages:
    """Stands in for a uint8 [N, 3, H, W] tensor whose rows are decoded when indexed, with the
    cache's per-image transform (`fit`: torch's resize, within one grey level of the cache's PIL).
    `BatchStream` announces each epoch's batch order through `plan()`; a torch DataLoader with
    `workers` processes then decodes ahead in that order, a whole batch per worker task, and
    indexing with the announced batches returns them. Any other indexing decodes synchronously.

    `for_device(device)` (BatchStream calls it) applies --data-opt decode: on a CUDA run with
    JPEG files the workers only read bytes and the main process decodes each batch on the GPU with
    `torchvision.io.decode_jpeg` (batched), images nvjpeg refuses on the CPU; indexing then returns
    batches on that device.

    An image that fails to decode here becomes a black image; it is warned about and listed in
    `failures` (which the bundle records in result.json)."""

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4

    def __init__(self, paths: list[Path], size: int, banner_px: int, workers: int, failures: list | None = None,
                 keep_aspect: bool = False, decode: str = "auto", decode_device: torch.device | None = None):
        self.paths, self.size, self.banner_px, self.workers = list(paths), size, banner_px, workers
        self.keep_aspect, self.decode = keep_aspect, decode
        self.decode_device = decode_device  # where JPEGs are decoded from raw bytes; None: CPU workers
        self.failures = failures if failures is not None else []
        self._dataset = _DecodeDataset(self.paths, size, banner_px, keep_aspect, read_bytes=decode_device is not None)
        self._pending: deque = deque()
        self._iter = None
        self._order, self._loader = _Order(), None
        self._gpu_refused = False  # warned that the GPU decoder refused a whole batch

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
                          self.keep_aspect, self.decode, self.decode_device)

    def for_device(self, device: torch.device) -> "LazyImages":
        """These images as a run on `device` reads them: decoded on that GPU where --data-opt decode
        says so (see `choose_decoder`), else by CPU workers (self)."""
        if self.decode_device is not None or choose_decoder(self.decode, device, self.paths) == "cpu":
            return self
        return self.decoded_on(device)

    def decoded_on(self, device: torch.device) -> "LazyImages":
        """A copy whose workers only read the files and whose JPEGs `decode_jpeg` decodes on
        `device` (any device: on a CPU, torchvision's CPU decoder, which is how tests run this path)."""
        return LazyImages(self.paths, self.size, self.banner_px, self.workers, self.failures, self.keep_aspect,
                          self.decode, torch.device(device))

    def plan(self, batches) -> None:
        """Start decoding this epoch's batches, in this order, in worker processes."""
        from torch.utils.data import DataLoader

        batches = [torch.as_tensor(b).cpu().reshape(-1) for b in batches]
        self._pending, self._iter = deque(), None
        if not batches or self.workers < 1:
            return
        if self._loader is None:  # the workers persist across epochs (a fork per epoch costs a batch's time)
            self._loader = DataLoader(self._dataset, sampler=self._order, batch_size=None, num_workers=self.workers,
                                      collate_fn=_as_is, prefetch_factor=4, persistent_workers=True)
        self._order.batches = [b.tolist() for b in batches]
        self._iter = iter(self._loader)
        self._pending = deque(batches)

    def __getitem__(self, index):
        if isinstance(index, int):
            return self[torch.tensor([index])][0]
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        idx = torch.as_tensor(index).cpu().reshape(-1)
        if self._pending and len(self._pending[0]) == len(idx) and torch.equal(self._pending[0], idx):
            self._pending.popleft()
            return self._assemble(next(self._iter), len(idx))
        with ThreadPoolExecutor(max_workers=max(self.workers, 1)) as pool:
            return self._assemble(self._dataset.decode(idx.tolist(), pool), len(idx))

    def _assemble(self, item, n: int) -> torch.Tensor:
        """A decoded item (see `_DecodeDataset`) -> the uint8 batch [n, 3, H, W]: as it came from the
        workers, or on `decode_device` with the raw JPEGs decoded there."""
        pixels, at, raw, errors = item
        self._note(errors)
        if self.decode_device is None:
            return pixels
        dev = self.decode_device
        out = torch.zeros(n, *self.shape[1:], dtype=torch.uint8, device=dev)
        if at:
            out[torch.tensor(at, device=dev)] = pixels.to(dev)
        decoded = _decode_jpegs([data for _, data in raw], dev)
        if raw and all(img is None for img in decoded) and not self._gpu_refused:
            self._gpu_refused = True
            warnings.warn(f"torchvision.io.decode_jpeg refused every JPEG of a batch on {dev}; they are decoded on "
                          f"the CPU in the main process instead (slow). Use --data-opt decode=cpu to decode them in "
                          f"the DataLoader workers.", stacklevel=3)
        for (k, data), img in zip(raw, decoded):
            if img is None:  # nvjpeg refused it after all: the CPU decoder, from the same bytes
                region = decode_tensor(io.BytesIO(data.numpy().tobytes()), self.size, self.banner_px,
                                       self.keep_aspect).to(dev)
            else:
                target, _ = _target(img.shape[2], img.shape[1], self.size, self.banner_px, self.keep_aspect)
                region = fit(img, self.size, self.banner_px, target)
            _place(out[k], region)
        return out

    def _note(self, errors) -> None:
        for i, err in errors:
            path = str(self.paths[i])
            if all(f[0] != path for f in self.failures):
                self.failures.append((path, err))
                warnings.warn(f"{path}: {err}; used a black image in its place. Run 'kebench data check' "
                              f"to list every unreadable image.", stacklevel=3)


@contextlib.contextmanager
def _quiet_torchvision_io():
    """torchvision 0.29 deprecates its image decoders (for TorchCodec's) with a warning at every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        yield


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """RGB uint8 [3, h, w] images on `device` from JPEG bytes, with torchvision's batched
    `decode_jpeg`; if the batch is refused, image by image, None for each one refused."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    try:
        with _quiet_torchvision_io():
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    out = []
    for data in datas:
        try:
            with _quiet_torchvision_io():
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out.append(None)
    return out


def _lazy(base: Path, rels, labels, size, banner_px, keep_aspect, workers, decode, reason: str) -> SplitImages:
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
            return None, _reason(exc)

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
    images = LazyImages([base / rels[i] for i in kept], size, banner_px, workers, keep_aspect=keep_aspect,
                        decode=decode)
    info = {"mode": "dataloader", "reason": reason, "size": size, "workers": workers, "decode": decode,
            "unreadable_during_training": images.failures}
    extent = torch.tensor(extents, dtype=torch.int64).reshape(-1, 2) if keep_aspect else None
    return SplitImages(LazySplit(images, labels[kept], extent), kept, unusable, info)
