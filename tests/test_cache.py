"""The decode-once cache: decoded once, memory-mapped after, invalidated by a changed source or
option; the DataLoader fallback yields exactly the cached pipeline's batches."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

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

    def counting(path, size, banner_px=0):
        calls.append(Path(path).name)
        return real(path, size, banner_px)

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
    assert Path(second.info["cache"]["train"]["file"]).stat().st_size == 6 * 3 * 37 * 37
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
    new_color = after.train.images[0].float().mean((1, 2))
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
            assert torch.equal(ya, yb) and torch.equal(xa, xb)
        assert not b.images._pending  # every prefetched batch was consumed
    sub = lazy.train.subset(torch.tensor([0, 5]))
    assert isinstance(sub, cache.LazySplit) and torch.equal(sub.images[torch.tensor([1])], cached.train.images[5:6])


def test_fallback_reports_images_that_fail_while_training(tmp_path):
    fixture = fx.build("cub200", tmp_path / "data")
    listing = paper.list_dataset("cub200", fixture.root)
    bad = listing.base / listing.splits["train"][2][0]
    bad.write_bytes(bad.read_bytes()[:150])
    with pytest.warns(UserWarning):
        bundle = load(fixture, tmp_path, cache_budget_gb=0, workers=0)
    with pytest.warns(UserWarning, match="black image"):
        x = bundle.train.images[torch.tensor([1, 2])]
    assert x[1].max() == 0 and x[0].max() > 0
    failures = bundle.info["cache"]["train"]["unreadable_during_training"]
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
