"""One batch pipeline for every dataset: uint8 tensors in, normalised float batches out.

Augmentation (RandomResizedCrop + horizontal flip) runs per sample on whole batches on the
training device with one `grid_sample` call, so small-data training is not bound by per-image
CPU transforms. Randomness comes from a generator seeded per (seed, pass, epoch): a resumed run
sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import functools
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from kebench.data.spec import DataBundle, Split
from kebench.run.device import DevicePolicy, is_memmapped, resident_budget


def epoch_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from integers (seed, pass, epoch), independent of the global RNG."""
    h = 0
    for k in key:
        h = (h * 1_000_003 + int(k) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(h)


#: RandomResizedCrop's draws before it falls back to a centre crop (torchvision: 10).
CROP_TRIES = 10


def crop_params(n: int, height, width, scale, ratio, gen: torch.Generator) -> torch.Tensor:
    """Per-sample crop boxes (cx, cy, w, h) in whole pixels, drawn as torchvision's
    `RandomResizedCrop.get_params` draws them, for all samples at once: up to `CROP_TRIES` (area,
    log-aspect) draws, w and h rounded, the first draw that fits the image is placed uniformly at an
    integer offset; if none fits, the centre crop of the whole image with its aspect clamped to
    `ratio`. `height`/`width`: ints, or per-sample tensors (images of different sizes)."""
    height = torch.as_tensor(height, dtype=torch.float64).expand(n)
    width = torch.as_tensor(width, dtype=torch.float64).expand(n)
    area = (height * width)[:, None] * torch.empty(n, CROP_TRIES, dtype=torch.float64).uniform_(
        scale[0], scale[1], generator=gen)
    r = torch.exp(torch.empty(n, CROP_TRIES, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=gen))
    w, h = torch.sqrt(area * r).round(), torch.sqrt(area / r).round()
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    found = fits.any(1)
    first = fits.to(torch.int8).argmax(1, keepdim=True)  # index of the first draw that fits
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    # the centre-crop fallback, with the image's aspect clamped to the ratio range
    in_ratio = width / height
    fw = torch.where(in_ratio < ratio[0], width, torch.where(in_ratio > ratio[1], (height * ratio[1]).round(), width))
    fh = torch.where(in_ratio < ratio[0], (width / ratio[0]).round(), height)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    u = torch.rand(n, 2, dtype=torch.float64, generator=gen)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).floor(), ((height - h) / 2).floor())
    left = torch.where(found, (u[:, 1] * (width - w + 1)).floor(), ((width - w) / 2).floor())
    return torch.stack([left + w / 2, top + h / 2, w, h], dim=1).float()


def stored_boxes(boxes: torch.Tensor, transposed: torch.Tensor | None) -> torch.Tensor:
    """Boxes (cx, cy, w, h) drawn in each image's own orientation -> in the stored slot's
    coordinates (x and y swap for images the cache stored transposed)."""
    if transposed is None or not transposed.any():
        return boxes
    return torch.where(transposed[:, None], boxes[:, [1, 0, 3, 2]], boxes)


def augment(images: torch.Tensor, out_size: int, boxes: torch.Tensor, flips: torch.Tensor,
            transposed: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image to its box (slot coordinates), resize to out_size (bilinear) and flip where
    asked; `transposed` images come out in their own orientation. Float in, float out."""
    n, _, height, width = images.shape
    boxes = boxes.to(images.device, torch.float32)
    sign = 1.0 - 2.0 * flips.to(images.device, torch.float32)
    t = torch.zeros(n, dtype=torch.bool, device=images.device) if transposed is None else transposed.to(images.device)
    # The affine_grid of an axis-aligned box, built separably: the stored x depends on the output
    # column only (on the row for a transposed image), y on the other (affine_grid's batched matmul
    # costs more than the sampling itself on CPU). The flip reverses the output columns.
    base = (torch.arange(out_size, device=images.device, dtype=torch.float32) * 2 + 1) / out_size - 1
    gx = (boxes[:, 2] / width * torch.where(t, 1.0, sign))[:, None] * base + (2 * boxes[:, 0] / width - 1)[:, None]
    gy = (boxes[:, 3] / height * torch.where(t, sign, 1.0))[:, None] * base + (2 * boxes[:, 1] / height - 1)[:, None]
    t = t[:, None, None]
    grid = torch.empty(n, out_size, out_size, 2, device=images.device)
    grid[..., 0] = torch.where(t, gx[:, :, None], gx[:, None, :])
    grid[..., 1] = torch.where(t, gy[:, None, :], gy[:, :, None])
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_cpu(source: torch.Tensor, index: torch.Tensor, out_size: int, boxes: torch.Tensor, flips: torch.Tensor,
                mean: torch.Tensor, std: torch.Tensor, transposed: torch.Tensor | None = None) -> torch.Tensor:
    """`augment` + normalisation for CPU training, image by image: each box (rounded to whole pixels,
    as torchvision's RandomResizedCrop) is read straight out of `source` (e.g. the memory-mapped
    cache: only the crop's pixels are touched), resized with the uint8 bilinear kernel on a
    channels-last view, flipped and normalised while it is still in the CPU cache. Several times
    less CPU work than gathering whole images, converting them to float and grid-sampling them.
    Boxes are in slot coordinates; `transposed` crops are turned back to their own orientation."""
    n = len(index)
    _, c, height, width = source.shape
    w = boxes[:, 2].round().clamp(1, width).long()
    h = boxes[:, 3].round().clamp(1, height).long()
    left = torch.minimum((boxes[:, 0] - w / 2).round().clamp(min=0).long(), width - w)
    top = torch.minimum((boxes[:, 1] - h / 2).round().clamp(min=0).long(), height - h)
    channels_last = source.is_contiguous(memory_format=torch.channels_last)
    out = torch.empty(n, c, out_size, out_size, memory_format=torch.channels_last)
    turn = torch.zeros(n, dtype=torch.bool) if transposed is None else transposed.cpu()
    # mean and std at full size: the same arithmetic per element, in one contiguous loop (broadcast over
    # a channels-last image, TensorIterator runs 3-element inner loops, several times slower)
    mean = mean.expand(1, c, out_size, out_size).contiguous(memory_format=torch.channels_last)
    std = std.expand(1, c, out_size, out_size).contiguous(memory_format=torch.channels_last)
    jobs = list(zip(range(n), index.tolist(), left.tolist(), top.tolist(), w.tolist(), h.tolist(), flips.tolist(),
                    turn.tolist()))

    def work(part) -> None:
        for k, i, l0, t0, wk, hk, flip, tr in part:
            crop = source[i:i + 1, :, t0:t0 + hk, l0:l0 + wk]
            if tr:
                crop = crop.transpose(-1, -2)
            if not channels_last or tr:
                crop = crop.contiguous(memory_format=torch.channels_last)
            y = F.interpolate(crop, size=(out_size, out_size), mode="bilinear", align_corners=False)
            o = out[k:k + 1]
            o.copy_(y.flip(-1) if flip else y)
            o.sub_(mean).div_(std)

    # Per-image ops are too small to split across threads, so each image runs single-threaded and
    # the batch is shared among the CPU threads instead (torch releases the GIL inside its kernels).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if threads > 1 and n > 1:
            parts = [jobs[t::threads] for t in range(threads)]
            list(_cpu_pool(threads).map(work, parts))
        else:
            work(jobs)
    finally:
        torch.set_num_threads(threads)
    return out


@functools.lru_cache(maxsize=4)
def _cpu_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kebench-augment")


def pad_crop(images: torch.Tensor, pad: int, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding=pad) + RandomHorizontalFlip on a whole batch at once:
    `offsets` [n, 2] (top, left) in 0..2*pad of the zero-padded image, crops as large as the input.
    One gather on the batch's device; uint8 in, float out (padding is 0, as PIL's black border)."""
    n, c, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    dev = images.device
    offsets, flips = offsets.to(dev), flips.to(dev)
    rows = offsets[:, 0, None] + torch.arange(height, device=dev)
    cols = torch.arange(width, device=dev).expand(n, width)
    cols = torch.where(flips[:, None], cols.flip(-1), cols) + offsets[:, 1, None]
    out = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    return out.float()


def center_view_extent(images: torch.Tensor, extent: torch.Tensor, out_size: int,
                       resize_ratio: float = 1.0) -> torch.Tensor:
    """`center_view` of images stored with their aspect ratio (`Split.extent`): each image's real
    region, in its own orientation, resized and center-cropped on its own. Float in, float out."""
    out = []
    for img, (h, w) in zip(images, extent.tolist()):
        real = img[:, :w, :h].transpose(-1, -2) if h > w else img[:, :h, :w]
        out.append(center_view(real[None], out_size, resize_ratio))
    return torch.cat(out) if out else images[:, :, :out_size, :out_size]


def center_view(images: torch.Tensor, out_size: int, resize_ratio: float = 1.0) -> torch.Tensor:
    """Test transform: resize the shorter side to out_size*resize_ratio, then center-crop out_size."""
    height, width = images.shape[-2:]
    short = round(out_size * resize_ratio)
    if min(height, width) != short:
        scale = short / min(height, width)
        images = F.interpolate(images, size=(round(height * scale), round(width * scale)),
                               mode="bilinear", align_corners=False, antialias=True)
        height, width = images.shape[-2:]
    top, left = (height - out_size) // 2, (width - out_size) // 2
    return images[..., top:top + out_size, left:left + out_size]


class BatchStream:
    """Iterates one split in batches on `device`. Train: shuffled (or the objective's sampler) and
    augmented; eval: in order, center view. Where the images live (resident on the device or
    streamed) and how batches are augmented is the run's `DevicePolicy` (kebench/run/device.py)."""

    def __init__(self, bundle: DataBundle, split: Split, *, batch_size: int, device: torch.device,
                 train: bool, channels_last: bool = False, test_resize_ratio: float | None = None,
                 policy: DevicePolicy | None = None, shard: tuple[int, int] = (0, 1)):
        self.bundle, self.split, self.batch_size = bundle, split, batch_size
        self.policy = policy or DevicePolicy(device, channels_last=channels_last,
                                             augment="per_image" if device.type == "cpu" else "batched",
                                             resident_bytes=resident_budget(device))
        self.device, self.train, self.channels_last = device, train, self.policy.channels_last
        self.test_resize_ratio = test_resize_ratio or bundle.info.get("test_resize_ratio", 1.0)
        self.shard = shard  # (rank, world): this process loads its share of every batch (DDP)
        # Small datasets live on the device once, as uint8 (a GPU data cache); others stream by batch.
        self.resident = self.policy.keeps_resident(split.images)
        self.images = split.images.to(device) if self.resident else split.images
        for_device = getattr(self.images, "for_device", None)  # on-demand decoders: CPU workers or this GPU
        if for_device is not None:
            self.images = for_device(device)
        self.labels = split.labels.to(device)
        self._on_device: dict | None = None  # this epoch's batch indices on CUDA (`_send_order`)
        self.extent = split.extent  # per-image (h, w) of aspect-keeping slots, or None (CPU)
        self.mean = torch.tensor(bundle.mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(bundle.std, device=device).view(1, -1, 1, 1) * 255
        # On-demand decoders (data/cache.py) read ahead themselves; a streamed tensor gets a prefetcher
        # when the batch is gathered whole (the per-image CPU path reads its crops in place).
        gathers = self.policy.augment == "batched" or not train
        self.prefetch = (Prefetcher(self.images, device) if self.policy.prefetch and gathers and not self.resident
                         and torch.is_tensor(self.images) else None)

    def batches(self, gen: torch.Generator | None = None, sampler=None, share=None) -> list[torch.Tensor]:
        """One epoch's global batches. `share(batch)`: this process's part of a batch under DDP (the
        objective's `shard`; default the contiguous part), which is what the prefetcher loads."""
        chunks = self._order(gen, sampler)
        rank, world = self.shard
        if world > 1 and self.train:
            share = share or (lambda c: c.tensor_split(world)[rank])
            parts = [share(c) for c in chunks]
        else:
            parts = chunks
        self._on_device = _send_order(parts, self.device)  # one copy of the epoch's order, not one per step
        plan = getattr(self.images, "plan", None)  # on-demand decoding (data/cache.py) prefetches this order
        if plan is not None:
            plan(parts)
        if self.prefetch is not None:
            self.prefetch.plan(parts)
        return chunks

    def _order(self, gen: torch.Generator | None = None, sampler=None) -> list[torch.Tensor]:
        n = len(self.split)
        if not self.train:
            return list(torch.arange(n).split(self.batch_size))
        if sampler is not None:
            return sampler
        order = torch.randperm(n, generator=gen)
        chunks = list(order.split(self.batch_size))
        if len(chunks) > 1 and len(chunks[-1]) < self.batch_size:
            chunks.pop()  # drop_last: every step sees a full batch (BN statistics, equal FLOPs per step)
        return chunks

    def _device_index(self, index: torch.Tensor) -> torch.Tensor:
        """A batch's indices on the device: the slice of the epoch's order sent by `batches()`, else a copy."""
        found = self._on_device.get(id(index)) if self._on_device else None
        return found[1] if found is not None and found[0] is index else index.to(self.device, non_blocking=True)

    def load(self, index: torch.Tensor, gen: torch.Generator | None = None):
        y = self.labels[self._device_index(index)]
        res = self.bundle.resolution
        if self.train and self.bundle.pad_crop is not None:
            n, pad = len(index), self.bundle.pad_crop
            offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
            flips = torch.rand(n, generator=gen) < 0.5 if self.bundle.flip else torch.zeros(n, dtype=torch.bool)
            if self.device.type == "cuda":  # one pinned non-blocking copy, not two blocking ones per step
                packed = torch.cat([offsets, flips[:, None].long()], 1).pin_memory().to(self.device, non_blocking=True)
                offsets, flips = packed[:, :2], packed[:, 2].bool()
            x = pad_crop(self._gather(index), pad, offsets, flips).sub_(self.mean).div_(self.std)
        elif self.train:
            n = len(index)
            # crops are drawn over each whole image (its real extent in an aspect-keeping cache)
            hw = self.images.shape[-2:] if self.extent is None else self.extent[index.cpu()].T
            boxes = crop_params(n, *hw, self.bundle.crop_scale, (3 / 4, 4 / 3), gen)
            flips = torch.rand(n, generator=gen) < 0.5 if self.bundle.flip else torch.zeros(n, dtype=torch.bool)
            turned = None if self.extent is None else hw[0] > hw[1]  # stored transposed (portrait)
            boxes = stored_boxes(boxes, turned)
            if self.policy.augment == "per_image":
                source, rows = (self.images, index) if torch.is_tensor(self.images) else (self.images[index], torch.arange(n))
                x = augment_cpu(source, rows, res, boxes, flips, self.mean, self.std, turned)
            else:
                boxes, flips, turned = _to_device_together(self.device, boxes, flips, turned)
                x = augment(self._gather(index).float(), res, boxes, flips, turned).sub_(self.mean).div_(self.std)
        elif self.extent is not None:  # e.g. a validation subset carved from an aspect-keeping train split
            x = (center_view_extent(self._gather(index).float(), self.extent[index.cpu()], res,
                                    self.test_resize_ratio) - self.mean) / self.std
        else:
            x = (center_view(self._gather(index).float(), res, self.test_resize_ratio) - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _gather(self, index: torch.Tensor) -> torch.Tensor:
        """The uint8 images of a batch, on the device."""
        if self.resident:
            return self.images[self._device_index(index)]
        x = self.prefetch.take(index) if self.prefetch is not None else None
        return x if x is not None else _fetch(self.images, index, self.device)

    def __iter__(self):
        for index in self.batches():
            yield self.load(index)


def _send_order(parts: list[torch.Tensor], device: torch.device) -> dict | None:
    """On CUDA, the epoch's batch indices in one pinned, non-blocking copy: {id(part): (part, on_device)}.
    A per-step `index.to(device)` from pageable memory would block the host at every step."""
    if device.type != "cuda" or not parts:
        return None
    sizes = [len(p) for p in parts]
    flat = torch.cat([torch.as_tensor(p).reshape(-1) for p in parts]).pin_memory().to(device, non_blocking=True)
    return {id(p): (p, d) for p, d in zip(parts, flat.split(sizes))}


def _to_device_together(device: torch.device, boxes: torch.Tensor, flips: torch.Tensor,
                        turned: torch.Tensor | None) -> tuple:
    """A training batch's crop boxes, flips and orientation sent as one pinned non-blocking copy on
    CUDA (three small blocking copies per step otherwise stall the GPU); unchanged elsewhere."""
    if device.type != "cuda":
        return boxes, flips, turned
    n = len(boxes)
    packed = torch.empty(n, 6, dtype=torch.float32).pin_memory()
    packed[:, :4] = boxes
    packed[:, 4] = flips
    packed[:, 5] = 0.0 if turned is None else turned
    packed = packed.to(device, non_blocking=True)
    return packed[:, :4], packed[:, 4] > 0.5, (None if turned is None else packed[:, 5] > 0.5)


def _fetch(images, index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Gather rows of a host tensor (e.g. memory-mapped) onto `device`: pinned and non-blocking on CUDA
    (rows an on-demand decoder made on the GPU already are there)."""
    x = images[index]
    return x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" and not x.is_cuda else x


def _fetch_ahead(images, index: torch.Tensor, device: torch.device, stream) -> tuple:
    """`_fetch` on a side CUDA stream: (batch, the copy's CUDA event or None on a CPU)."""
    if stream is None:
        return _fetch(images, index, device), None
    with torch.cuda.stream(stream):
        x = _fetch(images, index, device)
        done = torch.cuda.Event()
        done.record(stream)
    return x, done


class Prefetcher:
    """Reads a streamed split one batch ahead: when batch k is taken, batch k+1 of the announced
    order is gathered in a background thread (page-cache reads of a memory-mapped file release the
    GIL) and, on CUDA, pinned and copied on a side stream, while batch k trains. The order comes from
    `plan()`; a batch that is not the next one announced (a resumed epoch skips its first steps) is
    found further on in the plan, or else loaded synchronously. Augmentation randomness is untouched:
    only the raw uint8 rows are read ahead."""

    def __init__(self, images: torch.Tensor, device: torch.device):
        self.images, self.device = images, device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.upcoming: deque = deque()
        self.pending = None  # (index, future)
        self.hits = self.misses = 0

    def plan(self, order) -> None:
        self.upcoming = deque(torch.as_tensor(i).cpu() for i in order)
        self._next()

    def _next(self) -> None:
        self.pending = None
        if self.upcoming:
            index = self.upcoming.popleft()
            self.pending = (index, _prefetch_pool().submit(_fetch_ahead, self.images, index, self.device, self.stream))

    def take(self, index: torch.Tensor) -> torch.Tensor | None:
        """The batch for `index` (starting the read of the one after it), or None if it was not planned."""
        index = index.cpu()
        if self.pending is None or not _same(self.pending[0], index):
            skip = next((k for k, i in enumerate(self.upcoming) if _same(i, index)), None)
            if skip is None:
                self.misses += 1
                return None
            for _ in range(skip):
                self.upcoming.popleft()
            self.upcoming.popleft()
            self.pending = (index, _completed(_fetch_ahead(self.images, index, self.device, self.stream)))
        future = self.pending[1]
        self._next()
        x, done = future.result()
        self.hits += 1
        if done is not None:  # the compute stream waits for the copy; the allocator learns who uses x
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            x.record_stream(current)
        return x


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return len(a) == len(b) and torch.equal(a, b)


def _completed(value):
    from concurrent.futures import Future

    future = Future()
    future.set_result(value)
    return future


@functools.lru_cache(maxsize=1)
def _prefetch_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="kebench-prefetch")


_is_memmapped = is_memmapped  # the name tests and older callers import
