"""The decode-once cache: decoded once, memory-mapped after, invalidated by a changed source or
option; the DataLoader fallback yields the cached pipeline's batches (within one grey level)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fixtures_datasets as fx  # noqa: E402

from kebench import data as datasets  # noqa: E402
from kebench.config import RunConfig  # noqa: E402
from kebench.data import cache, paper  # noqa: E402
from kebench.data.pipeline import BatchStream, _is_memmapped, epoch_generator  # noqa: E402

RES = 32


@pytest.fixture
def decodes(monkeypatch):
    """Counts decode_image calls (the builder's thread pool looks the function up at call time)."""
    calls = []
    real = cache.decode_image

    def counting(path, size, banner_px=0, keep_aspect=False):
        calls.append(Path(path).name)
        return real(path, size, banner_px, keep_aspect)

    monkeypatch.setattr(cache, "decode_image", counting)
    return calls


def load(fixture, tmp_path, resolution=RES, **options):
    opts = {"cache_dir": str(tmp_path / "cache"), "workers": 1, **options}
    return datasets.load(RunConfig(data=fixture.name, data_root=str(fixture.root), resolution=resolution,
                                   data_options=opts))


def test_second_load_hits_the_memory_mapped_cache(tmp_path, decodes):
    fixture = fx.build("aircraft", tmp_path / "data")
    first = load(fixture, tmp_path)
    assert len(decodes) == sum(fixture.sizes.values()) == 15
    assert {s: i["hit"] for s, i in first.info["cache"].items()} == {"train": False, "val": False, "test": False}
    second = load(fixture, tmp_path)
    assert len(decodes) == 15  # nothing decoded again
    assert all(i["hit"] and i["mode"] == "memmap" for i in second.info["cache"].values())
    for split in ("train", "val", "test"):
        a, b = getattr(first, split), getattr(second, split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert _is_memmapped(b.images)  # BatchStream streams it by index instead of copying it whole
    # train: aspect-keeping 37 x 74 slots; evaluation splits: 37 x 37 center squares
    assert Path(second.info["cache"]["train"]["file"]).stat().st_size == 6 * 3 * 37 * 74
    assert Path(second.info["cache"]["test"]["file"]).stat().st_size == 6 * 3 * 37 * 37
    stream = BatchStream(second, second.train, batch_size=4, device=torch.device("cpu"), train=True)
    assert stream.images is second.train.images


def test_changed_source_file_invalidates_its_split_only(tmp_path, decodes):
    fixture = fx.build("aircraft", tmp_path / "data")
    before = load(fixture, tmp_path)
    listing = paper.list_dataset("aircraft", fixture.root)
    changed = listing.base / listing.splits["train"][0][0]
    fx.write_jpeg(changed, fx.PALETTE[5], banner=True)  # a new colour for a class-0 image
    later = time.time() + 5
    os.utime(changed, (later, later))
    decodes.clear()
    after = load(fixture, tmp_path)
    assert len(decodes) == fixture.sizes["train"]  # the train split is rebuilt, val and test are hits
    assert [i["hit"] for i in after.info["cache"].values()] == [False, True, True]
    h, w = after.train.extent[0].tolist()
    new_color = after.train.images[0, :, :h, :w].float().mean((1, 2))
    assert torch.allclose(new_color, torch.tensor(fx.PALETTE[5], dtype=torch.float32), atol=12)
    assert not torch.equal(before.train.images[0], after.train.images[0])
    assert torch.equal(before.train.images[1:], after.train.images[1:])
    files = sorted(p.name for p in (tmp_path / "cache" / "aircraft").glob("train-*.u8"))
    assert len(files) == 1 and files[0] == Path(after.info["cache"]["train"]["file"]).name  # the stale file is gone


def test_size_and_banner_option_are_part_of_the_key(tmp_path, decodes):
    fixture = fx.build("aircraft", tmp_path / "data")
    load(fixture, tmp_path)
    load(fixture, tmp_path, resolution=24)
    assert len(decodes) == 30
    load(fixture, tmp_path, crop_banner="false")
    assert len(decodes) == 45
    load(fixture, tmp_path, resolution=24)
    load(fixture, tmp_path, crop_banner="false")
    assert len(decodes) == 45


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    fixture = fx.build("dogs", tmp_path / "data")
    monkeypatch.setenv("KEBENCH_CACHE", str(tmp_path / "envcache"))
    bundle = datasets.load(RunConfig(data="dogs", data_root=str(fixture.root), resolution=RES,
                                     data_options={"workers": 1}))
    assert bundle.info["cache"]["train"]["file"].startswith(str(tmp_path / "envcache" / "dogs"))


def test_unusable_images_are_remembered_by_the_cache(tmp_path, decodes):
    fixture = fx.build("mit67", tmp_path / "data")
    listing = paper.list_dataset("mit67", fixture.root)
    test = listing.splits["test"]
    labels = [y for _, y in test]
    # an image of a class with another readable test image (a class with none is refused, issue 14)
    bad = listing.base / next(rel for rel, y in test if labels.count(y) > 1)
    bad.write_bytes(b"this is not a jpeg")
    with pytest.warns(UserWarning, match="1 missing or unreadable"):
        first = load(fixture, tmp_path)
    decodes.clear()
    with pytest.warns(UserWarning, match="1 missing or unreadable"):
        second = load(fixture, tmp_path)
    assert decodes == []
    assert second.info["unusable"] == first.info["unusable"]
    assert second.info["unusable"]["files"][0]["path"] == str(bad)
    assert torch.equal(second.test.labels, first.test.labels) and len(second.test) == fixture.sizes["test"] - 1


def test_fallback_decodes_on_demand_with_the_cached_pixels(tmp_path):
    fixture = fx.build("cub200", tmp_path / "data")
    cached = load(fixture, tmp_path)
    with pytest.warns(UserWarning, match="cache_budget_gb"):
        lazy = load(fixture, tmp_path, cache_budget_gb=0)
    assert isinstance(lazy.train, cache.LazySplit) and lazy.info["cache"]["train"]["mode"] == "dataloader"
    assert torch.equal(lazy.train.labels, cached.train.labels)
    device = torch.device("cpu")
    for split, train in (("train", True), ("test", False)):
        a = BatchStream(cached, getattr(cached, split), batch_size=4, device=device, train=train)
        b = BatchStream(lazy, getattr(lazy, split), batch_size=4, device=device, train=train)
        gen_a, gen_b = epoch_generator(0, 0, 0), epoch_generator(0, 0, 0)
        order_a, order_b = a.batches(gen_a), b.batches(gen_b)
        assert b.images._iter is not None or not train  # the epoch's order went to the DataLoader workers
        for ia, ib in zip(order_a, order_b):
            xa, ya = a.load(ia, gen_a)
            xb, yb = b.load(ib, gen_b)
            # the same crops of the same pixels: the cache resizes with PIL, streaming with torch's
            # antialiased kernel, which agree within one grey level
            assert torch.equal(ya, yb) and ((xa - xb) * a.std).abs().max() <= 1.001
        assert not b.images._pending  # every prefetched batch was consumed
    sub = lazy.train.subset(torch.tensor([0, 5]))
    assert isinstance(sub, cache.LazySplit)
    assert (sub.images[torch.tensor([1])].int() - cached.train.images[5:6].int()).abs().max() <= 1


def test_fallback_reports_images_that_fail_while_training(tmp_path):
    fixture = fx.build("cub200", tmp_path / "data")
    listing = paper.list_dataset("cub200", fixture.root)
    bad = listing.base / listing.splits["test"][2][0]  # (a train image's header is read up front)
    bad.write_bytes(bad.read_bytes()[:150])
    with pytest.warns(UserWarning):
        bundle = load(fixture, tmp_path, cache_budget_gb=0, workers=0)
    with pytest.warns(UserWarning, match="black image"):
        x = bundle.test.images[torch.tensor([1, 2])]
    assert x[1].max() == 0 and x[0].max() > 0
    failures = bundle.info["cache"]["test"]["unreadable_during_training"]
    assert [f[0] for f in failures] == [str(bad)]


def test_engine_trains_on_the_fallback(tmp_path, make_cfg, run_cfg):
    fixture = fx.build("dogs", tmp_path / "data")
    cfg = make_cfg(data="dogs", data_root=str(fixture.root), resolution=RES, batch_size=3, epochs=1,
                   data_options={"cache_dir": str(tmp_path / "cache"), "workers": 1, "cache_budget_gb": 0})
    with pytest.warns(UserWarning, match="DataLoader workers"):
        result = run_cfg(cfg)
    assert result["status"] == "complete", result.get("error")
    assert result["data"]["cache"]["train"]["mode"] == "dataloader" and result["training"]["steps"] == 2


# ---------------------------------------------------------------------------- the CPU batch path
def test_cpu_augmentation_samples_the_same_points_as_grid_sample():
    """augment_cpu (per image, uint8 resize, used on CPU) and augment (batched grid_sample, used on
    CUDA) agree inside whole-pixel boxes: same sample points, up to uint8 rounding; only the outer
    ring differs (interpolate clamps at the crop edge, grid_sample reads the pixel beyond it)."""
    from kebench.data.pipeline import augment, augment_cpu

    gen = torch.Generator().manual_seed(0)
    source = (torch.rand(6, 3, 40, 40, generator=gen) * 255).to(torch.uint8)
    source = source.contiguous(memory_format=torch.channels_last)  # the cache's layout
    index = torch.tensor([4, 0, 2, 2])
    ltwh = torch.tensor([[3, 5, 30, 20], [0, 0, 40, 40], [10, 2, 9, 12], [21, 17, 19, 23]], dtype=torch.float32)
    boxes = torch.cat([ltwh[:, :2] + ltwh[:, 2:] / 2, ltwh[:, 2:]], dim=1)  # (cx, cy, w, h)
    flips = torch.tensor([True, False, True, False])
    mean, std = torch.full((1, 3, 1, 1), 100.0), torch.full((1, 3, 1, 1), 50.0)
    threads = torch.get_num_threads()
    ours = augment_cpu(source, index, 16, boxes, flips, mean, std) * 50 + 100
    assert torch.get_num_threads() == threads  # restored after the single-threaded loop
    ref = augment(source[index].float(), 16, boxes, flips)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert ours.shape == (4, 3, 16, 16) and ours.is_contiguous(memory_format=torch.channels_last)
    assert (ours - ref)[inner].abs().max() <= 1.01
    unflipped = augment_cpu(source, index, 16, boxes, torch.zeros(4, dtype=torch.bool), mean, std) * 50 + 100
    assert torch.allclose(ours[0], unflipped[0].flip(-1)) and not torch.allclose(ours[0], unflipped[0])


def test_cpu_augmentation_is_the_same_with_several_threads():
    """The batch is shared among CPU threads; every image must come out exactly as single-threaded."""
    from kebench.data.pipeline import augment_cpu, crop_params

    gen = torch.Generator().manual_seed(0)
    source = torch.randint(0, 256, (10, 3, 40, 48), dtype=torch.uint8, generator=gen)
    index = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    boxes = crop_params(len(index), 40, 48, (0.08, 1.0), (3 / 4, 4 / 3), gen)
    flips = torch.rand(len(index), generator=gen) < 0.5
    mean, std = torch.full((1, 3, 1, 1), 120.0), torch.full((1, 3, 1, 1), 60.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = augment_cpu(source, index, 16, boxes, flips, mean, std)
        torch.set_num_threads(2)
        shared = augment_cpu(source, index, 16, boxes, flips, mean, std)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    assert torch.equal(single, shared)
    assert not torch.equal(shared[1], shared[3])  # image 1 twice, different crops


@pytest.mark.parametrize("height,width,scale", [(32, 32, (0.08, 1.0)), (40, 200, (0.08, 1.0)), (300, 200, (0.7, 1.0))])
def test_crop_params_draw_as_torchvision_random_resized_crop(height, width, scale):
    """Area, aspect and offsets follow `RandomResizedCrop.get_params` (10 rejection draws, then the
    centre crop with the aspect clamped), not a clamp of w and h to the image: two-sample KS tests
    at fixed seeds, plus whole-pixel boxes inside the image."""
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomResizedCrop

    from kebench.data.pipeline import crop_params

    n, ratio = 3000, (3 / 4, 4 / 3)
    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, height, width), scale, ratio) for _ in range(n)],
                       dtype=torch.float64)
    top, left, h, w = ref.T
    boxes = crop_params(n, height, width, scale, ratio, torch.Generator().manual_seed(1)).double()
    ow, oh = boxes[:, 2], boxes[:, 3]
    otop, oleft = boxes[:, 1] - oh / 2, boxes[:, 0] - ow / 2
    for a, b in ((w * h, ow * oh), (w / h, ow / oh), (top, otop), (left, oleft)):
        assert ks_2samp(a.numpy(), b.numpy()).pvalue > 0.01
    whole = torch.cat([ow, oh, otop, oleft])
    assert torch.equal(whole, whole.round()) and (otop >= 0).all() and (oleft >= 0).all()
    assert (otop + oh <= height).all() and (oleft + ow <= width).all()


def test_crop_params_take_per_image_sizes():
    """Images of different sizes in one batch (the aspect-keeping cache): each box fits its image,
    and an image no draw fits falls back to torchvision's centre crop with the aspect clamped."""
    from kebench.data.pipeline import crop_params

    heights, widths = torch.tensor([40, 64, 10] * 100), torch.tensor([64, 40, 100] * 100)
    boxes = crop_params(300, heights, widths, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    cx, cy, w, h = boxes.T
    assert (cx - w / 2 >= 0).all() and (cx + w / 2 <= widths).all()
    assert (cy - h / 2 >= 0).all() and (cy + h / 2 <= heights).all()
    # 10x100 with scale 1: every draw is taller than 10 px, so the fallback: h 10, w round(10 * 4/3)
    box = crop_params(1, 10, 100, (1.0, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))[0]
    assert box.tolist() == [43 + 6.5, 5.0, 13.0, 10.0]  # left (100 - 13) // 2 = 43, as torchvision


def _margin_image(path: Path, w: int, h: int) -> None:
    """Green, with a red first and a blue last 1/6 along the longer side (left/right, or top/bottom)."""
    from PIL import Image

    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[...] = (0, 255, 0)
    m = max(w, h) // 6
    if w >= h:
        arr[:, :m], arr[:, -m:] = (255, 0, 0), (0, 0, 255)
    else:
        arr[:m], arr[-m:] = (255, 0, 0), (0, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)  # PNG: exact colours


def test_training_crops_reach_the_margins_in_each_images_orientation(tmp_path):
    """The training cache keeps each whole image (aspect ratio kept, portrait stored transposed), so
    RandomResizedCrop reaches the margins a central square would drop; crops come out in the image's
    own orientation, on the CPU path and the grid_sample path alike."""
    from kebench.data import DataBundle, Split
    from kebench.data.pipeline import augment, augment_cpu, crop_params, stored_boxes

    _margin_image(tmp_path / "src" / "wide.png", 72, 40)
    _margin_image(tmp_path / "src" / "tall.png", 40, 72)
    got = cache.open_split("toy", "train", tmp_path / "src", [("wide.png", 0), ("tall.png", 1)], size=16,
                           keep_aspect=True, cache_dir=tmp_path / "cache", workers=1)
    split = got.split
    assert split.extent.tolist() == [[16, 28], [28, 16]] and split.images.shape == (2, 3, 16, 32)
    assert "-aspect-" in got.info["file"] and json.loads(Path(got.info["file"]).with_suffix(".json").read_text())[
        "version"] == cache.FORMAT_VERSION == 3  # a new key: square caches of format 2 are rebuilt
    # an image longer than MAX_ASPECT x its shorter side is shrunk whole into the slot, not cut
    assert cache.stored_extent(72, 40, 16) == (16, 28) and cache.stored_extent(200, 40, 16) == (6, 32)
    assert cache.stored_extent(40, 200, 16) == (32, 6) and cache.stored_extent(40, 230, 16, banner_px=30) == (32, 6)
    bundle = DataBundle("toy", "classification", split, split, 2, 3, 8, (0.0,) * 3, (1 / 255,) * 3)
    stream = BatchStream(bundle, split, batch_size=2, device=torch.device("cpu"), train=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([stream.load(torch.tensor([0, 1]), gen)[0] for _ in range(100)])  # pixel values
    red, blue = x[:, 0] > 200, x[:, 2] > 200
    wide, tall = slice(0, None, 2), slice(1, None, 2)
    assert red[wide].any(1).any(1).float().mean() > 0.2 and blue[wide].any(1).any(1).float().mean() > 0.2
    assert red[tall].any(1).any(1).float().mean() > 0.2 and blue[tall].any(1).any(1).float().mean() > 0.2
    rows, cols = torch.arange(8.0)[:, None].expand(8, 8), torch.arange(8.0)[None, :].expand(8, 8)
    unflipped_tall = red[tall].float()  # no flip reverses rows: red stays at the top of the tall image
    assert (unflipped_tall * rows).sum() / unflipped_tall.sum() < 2.5
    assert (red[tall].float() * cols).sum() / red[tall].float().sum() == pytest.approx(3.5, abs=0.8)
    # evaluated (a validation subset carved from it): the center view of each real image, not of the slot
    view, _ = BatchStream(bundle, split, batch_size=2, device=torch.device("cpu"), train=False).load(torch.arange(2))
    assert view.shape == (2, 3, 8, 8) and (view[:, 1] > 200).all() and (view[:, [0, 2]] < 60).all()
    # grid_sample (CUDA path) reads the same points from the transposed slot
    hw = split.extent.T
    boxes = stored_boxes(crop_params(2, *hw, (0.08, 1.0), (3 / 4, 4 / 3), gen), hw[0] > hw[1])
    flips = torch.tensor([True, False])
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    cpu = augment_cpu(split.images, torch.arange(2), 8, boxes, flips, mean, std, hw[0] > hw[1])
    grid = augment(split.images.float(), 8, boxes, flips, hw[0] > hw[1])
    assert (cpu - grid)[..., 2:-2, 2:-2].abs().max() <= 1.01
