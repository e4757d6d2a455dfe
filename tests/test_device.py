"""The device policy and the CUDA code paths that are not CUDA-specific in substance, run on a CPU:
batched grid_sample augmentation, streaming with prefetch, bf16 autocast and torch.compile."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kebench.run import device as devmod
from kebench.data import DataBundle, Split
from kebench.data.pipeline import BatchStream, augment, augment_cpu, epoch_generator
from kebench.run.device import DevicePolicy
from kebench.run.engine import Run

CPU = torch.device("cpu")


def test_policy_defaults_per_device(make_cfg, monkeypatch):
    cpu = DevicePolicy.for_run(make_cfg(), CPU)
    assert (cpu.amp_dtype, cpu.channels_last, cpu.compile, cpu.augment) == (None, False, False, "per_image")
    assert cpu.resident_bytes == float("inf") and not cpu.cudnn_benchmark
    monkeypatch.setattr(devmod, "resident_budget", lambda device: 2**30)  # no GPU to ask here
    gpu = DevicePolicy.for_run(make_cfg(), torch.device("cuda"))
    assert (gpu.amp_dtype, gpu.channels_last, gpu.augment, gpu.cudnn_benchmark) == (torch.bfloat16, True, "batched", True)
    assert gpu.resident_bytes == 2**30
    chosen = DevicePolicy.for_run(make_cfg(amp="fp16", channels_last=False, compile=True), torch.device("cuda"))
    assert (chosen.amp_dtype, chosen.channels_last, chosen.compile) == (torch.float16, False, True)
    assert DevicePolicy(CPU, amp_dtype=torch.float16).grad_scaler().is_enabled()  # fp16 scales the loss
    assert DevicePolicy(CPU, amp_dtype=torch.bfloat16).grad_scaler().is_enabled() is False


def test_residency_follows_the_budget_and_memory_maps(tmp_path):
    images = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)  # 1920 bytes
    (tmp_path / "x.u8").write_bytes(bytes(images.numel()))
    mapped = torch.from_file(str(tmp_path / "x.u8"), shared=True, size=images.numel(), dtype=torch.uint8).view(10, 3, 8, 8)
    assert DevicePolicy(CPU).keeps_resident(images)
    assert not DevicePolicy(CPU).keeps_resident(mapped)  # read in place on a CPU
    assert not DevicePolicy(CPU, resident_bytes=1919).keeps_resident(images)
    gpu = DevicePolicy(torch.device("cuda"), resident_bytes=1920)
    assert gpu.keeps_resident(mapped) and gpu.keeps_resident(images)  # a GPU copies the map once
    assert not DevicePolicy(torch.device("cuda"), resident_bytes=1000).keeps_resident(mapped)


def _smooth_images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).contiguous(memory_format=torch.channels_last)


def test_batched_grid_sample_equals_per_image_crops():
    """Same whole-pixel boxes and flips: the GPU path (one grid_sample over the float batch) and the
    CPU path (uint8 crop + bilinear resize per image) give the same crops up to interpolation."""
    images = _smooth_images(6, 40)
    # (left, top, w, h): down- and up-scaling, squares and slabs, touching the borders
    rects = torch.tensor([[0, 0, 40, 40], [5, 7, 20, 30], [10, 0, 30, 12], [0, 20, 8, 20], [3, 3, 16, 16],
                          [24, 1, 16, 39]], dtype=torch.float32)
    boxes = torch.stack([rects[:, 0] + rects[:, 2] / 2, rects[:, 1] + rects[:, 3] / 2, rects[:, 2], rects[:, 3]], 1)
    flips = torch.tensor([False, True, False, True, True, False])
    index = torch.tensor([3, 0, 5, 1, 2, 4])
    mean, std = torch.full((1, 3, 1, 1), 127.0), torch.full((1, 3, 1, 1), 64.0)
    cpu = augment_cpu(images, index, 24, boxes, flips, mean, std)
    gpu = (augment(images[index].float(), 24, boxes, flips) - mean) / std
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    # inside: bilinear weights agree, the uint8 kernel's fixed-point rounding costs <= 1 level; on the crop's edge grid_sample
    # blends in the neighbour outside the box where the CPU kernel clamps to the box.
    torch.testing.assert_close(gpu[inner], cpu[inner], atol=1.5 / 64, rtol=0)
    torch.testing.assert_close(gpu, cpu, atol=12.0 / 64, rtol=0)
    wrong = (augment(images[index].float(), 24, boxes, ~flips) - mean) / std
    assert (wrong - cpu).abs().amax() > 10 / 64  # the comparison sees a flip


def _bundle(images, labels):
    split = Split(images, labels)
    return DataBundle(name="t", task="classification", train=split, test=split, num_classes=int(labels.max()) + 1,
                      in_chans=images.shape[1], resolution=16, mean=(0.5,) * 3, std=(0.25,) * 3, crop_scale=(0.3, 1.0))


def test_memory_mapped_streaming_with_prefetch_equals_resident(tmp_path):
    images = _smooth_images(37, 20, seed=1)
    labels = torch.arange(37) % 3
    path = tmp_path / "cache.u8"
    path.write_bytes(images.permute(0, 2, 3, 1).contiguous().numpy().tobytes())  # the cache's NHWC layout
    mapped = torch.from_file(str(path), shared=True, size=images.numel(), dtype=torch.uint8)
    mapped = mapped.view(37, 20, 20, 3).permute(0, 3, 1, 2)
    bundle = _bundle(mapped, labels)
    batched = DevicePolicy(CPU, augment="batched")
    streamed = BatchStream(bundle, bundle.train, batch_size=8, device=CPU, train=True, policy=batched)
    in_memory = _bundle(images.clone(), labels)
    resident = BatchStream(in_memory, in_memory.train, batch_size=8, device=CPU, train=True, policy=batched)
    assert not streamed.resident and streamed.prefetch is not None
    assert resident.resident and resident.prefetch is None
    for start in (0, 2):  # 2: a resumed epoch skips its first steps
        gen_a, gen_b = epoch_generator(0, 0, start), epoch_generator(0, 0, start)
        chunks_a, chunks_b = streamed.batches(gen_a), resident.batches(gen_b)
        assert len(chunks_a) == 4 and all(torch.equal(a, b) for a, b in zip(chunks_a, chunks_b))
        hits = streamed.prefetch.hits
        for idx in chunks_a[start:]:
            xa, ya = streamed.load(idx, gen_a)
            xb, yb = resident.load(idx, gen_b)
            torch.testing.assert_close(xa, xb, atol=1e-5, rtol=0)
            assert torch.equal(ya, yb) and xa.shape == (8, 3, 16, 16)
        assert streamed.prefetch.hits - hits == 4 - start and streamed.prefetch.misses == 0
    # a DDP rank loads its share of every planned batch: the plan holds those shares
    rank1 = BatchStream(bundle, bundle.train, batch_size=8, device=CPU, train=True, policy=batched, shard=(1, 2))
    gen = epoch_generator(0, 0, 0)
    for idx in rank1.batches(gen):
        x, _ = rank1.load(idx.tensor_split(2)[1], gen)
        assert x.shape == (4, 3, 16, 16)
    assert (rank1.prefetch.hits, rank1.prefetch.misses) == (4, 0)
    # unplanned batches load synchronously, eval batches are prefetched in order
    x, _ = streamed.load(torch.tensor([5, 1]), epoch_generator(1))
    assert x.shape == (2, 3, 16, 16) and streamed.prefetch.misses == 1
    test = BatchStream(bundle, bundle.test, batch_size=16, device=CPU, train=False, policy=batched)
    ref = BatchStream(in_memory, in_memory.test, batch_size=16, device=CPU, train=False)
    for (xa, _), (xb, _) in zip(test, ref, strict=True):
        torch.testing.assert_close(xa, xb, atol=1e-5, rtol=0)
    assert test.prefetch.hits == 3


def _history(run):
    import json

    return [json.loads(ln) for ln in (run.dir / "metrics.jsonl").read_text().splitlines()]


def test_engine_streams_with_batched_augmentation_like_resident(make_cfg, tmp_path):
    """The CUDA data path (batched grid_sample; streamed + prefetched) drives the engine on a CPU and
    trains to the numbers of the resident data path."""
    losses = []
    for resident_bytes in (float("inf"), 0):
        cfg = make_cfg(out=str(tmp_path / f"r{resident_bytes}"))
        run = Run(cfg, show_progress=False, policy=DevicePolicy(CPU, augment="batched", resident_bytes=resident_bytes))
        run.execute()
        assert run.stream("train").resident is (resident_bytes > 0)
        losses.append([h["loss"] for h in _history(run)])
    assert run.stream("train").prefetch.hits == 6  # 96 images / 16 per batch, 1 epoch
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-4, atol=0)


def test_bf16_autocast_run_on_cpu(make_cfg, tmp_path):
    """--amp bf16 on a CPU: convolutions run in bf16, the run completes and trains like fp32."""
    results = {}
    for amp in ("off", "bf16"):
        run = Run(make_cfg(amp=amp, out=str(tmp_path / amp), epochs=2), show_progress=False)
        dtypes = set()
        conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype) if m.training else None)
        record = run.execute()
        assert record["status"] == "complete"
        results[amp] = (dtypes, [h["loss"] for h in _history(run)])
    assert results["off"][0] == {torch.float32} and results["bf16"][0] == {torch.bfloat16}
    fp32, bf16 = torch.tensor(results["off"][1]), torch.tensor(results["bf16"][1])
    assert torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16[0], fp32[0], rtol=0.05, atol=0)  # bf16 keeps 8 bits of mantissa
    assert bf16[1] < 0.9 * bf16[0]  # and it learns


def test_compile_trains_like_eager(make_cfg, tmp_path):
    """--compile on a tiny model: the compiled training step (dynamo graph capture + AOT autograd;
    aot_eager here, because inductor's C++ builds take minutes on a 2-core CPU; `pytest -m cuda`
    runs inductor on a GPU) trains to the eager numbers."""
    from torch._dynamo.utils import counters

    losses = []
    for compile_ in (False, True):
        cfg = make_cfg(compile=compile_, out=str(tmp_path / str(compile_)))
        policy = DevicePolicy.for_run(cfg, CPU, compile_backend="aot_eager")
        assert policy.compile is compile_
        before = counters["stats"]["unique_graphs"]
        run = Run(cfg, show_progress=False, policy=policy)
        assert run.execute()["status"] == "complete"
        assert (counters["stats"]["unique_graphs"] > before) is compile_
        losses.append([h["loss"] for h in _history(run)])
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-4, atol=0)


def _gpu_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "gpu.py"
    spec = importlib.util.spec_from_file_location("kebench_gpu_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_without_cuda_says_so(monkeypatch, capsys):
    import sys

    import pytest

    bench = _gpu_benchmark()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu.py"])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert exc.value.code == 2 and "torch sees none here" in capsys.readouterr().err
    # docs/gpu.md's Table 2 figure: 12,600 epochs x 27,708 images x 3 seeds
    assert bench.projection(10_000)["training_images"] == 12_600 * 27_708 * 3 == 1_047_362_400
