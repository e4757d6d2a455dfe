"""The CUDA paths, on a GPU: `pytest -m cuda` (benchmarks/gpu_check.sh runs them with the GPU
benchmark). Every test skips without CUDA. KEBENCH_CUDA_TEST_DEVICE=cpu runs their logic on a CPU
(a dry run of the tests themselves; the assertions that only hold on a GPU are then skipped)."""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fixtures_datasets as fx  # noqa: E402

from kebench import data as datasets  # noqa: E402
from kebench.run import engine, metrics  # noqa: E402
from kebench.config import RunConfig, resolve  # noqa: E402
from kebench.data.pipeline import BatchStream, epoch_generator  # noqa: E402
from kebench.run.device import DevicePolicy  # noqa: E402
from kebench.nets.prune import prunable_weights  # noqa: E402
from kebench.run.results import load_torch  # noqa: E402
from kebench.nets.slim import load_slim  # noqa: E402
from kebench.nets.channels import channel_graph  # noqa: E402
from kebench.nets.split import SplitMasks  # noqa: E402

from cuda_device import DEVICE, ON_GPU, needs_cuda  # noqa: E402

pytestmark = [pytest.mark.cuda, needs_cuda]
TINY = {"data": "synthetic", "arch": "test_resnet", "epochs": 1, "batch_size": 16, "device": DEVICE,
        "checkpoint_every_s": 0.0, "data_options": {"size": 32}}


def _cfg(tmp_path, method="ce", plugin=None, **overrides):
    return resolve({**TINY, "out": str(tmp_path / "results"), "method": method, **overrides}, {}, plugin or {})


def _rows(cfg) -> list[dict]:
    return [json.loads(ln) for ln in (Path(cfg.out) / cfg.run_id() / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def quick_latency(monkeypatch):
    import kebench.nets.slim

    monkeypatch.setattr(kebench.nets.slim, "LATENCY_WARMUP", 1)
    monkeypatch.setattr(kebench.nets.slim, "LATENCY_ITERS", 2)


def test_ke_with_amp_and_channels_last_slim_equals_masked_dense(tmp_path):
    """KE, 2 generations, bf16 autocast and channels-last on the GPU: the slim network extracted there
    computes what the trained dense network computes with its reset-hypothesis zeroed."""
    cfg = _cfg(tmp_path, "ke", {"generations": 2, "split_rate": 0.5}, amp="bf16", channels_last=True)
    record = engine.execute(cfg, show_progress=False)
    assert record["status"] == "complete" and len(record["passes"]) == 2
    if ON_GPU:
        assert record["device"] == torch.cuda.get_device_name(0)
    run_dir = Path(cfg.out) / cfg.run_id()
    run = engine.Run(cfg, show_progress=False)
    assert run.amp_dtype == torch.bfloat16 and run.channels_last
    dense = run.model
    dense.load_state_dict(load_torch(run_dir / "model.pt")["state_dict"])
    slim = load_slim(run_dir / "slim.pt", map_location=run.device)
    # the reported slim accuracy is the saved slim network's, evaluated the way the run did (bf16)
    assert abs(run.evaluate(slim, prefix="slim_")["slim_top1"] - record["final"]["slim_top1"]) <= 1 / len(run.data.test)
    # exact equivalence, checked in float64 on the CPU with the weights the GPU produced
    dense64, slim64 = dense.cpu().double().eval(), slim.cpu().double().eval()
    x = torch.randn(4, 3, 32, 32, dtype=torch.double, generator=torch.Generator().manual_seed(0))
    zeroed = copy.deepcopy(dense64)
    SplitMasks.kels(dense64, 0.5, channel_graph(dense64, x)).zero_reset(zeroed)
    with torch.no_grad():
        torch.testing.assert_close(slim64(x), zeroed(x), rtol=1e-9, atol=1e-9)
        assert (dense64(x) - zeroed(x)).abs().max() > 1e-4  # the reset-hypothesis mattered


def test_dsd_masks_exact_under_fp16_and_the_grad_scaler(tmp_path):
    """fp16 autocast with loss scaling (steps with inf/NaN gradients are skipped by the scaler): the
    sparse phase still holds exactly round(0.3 * n) zeros per layer."""
    cfg = _cfg(tmp_path, "dsd", {"sparse_epochs": 2}, amp="fp16", epochs=1)
    run = engine.Run(cfg, show_progress=False)
    assert run.policy.grad_scaler().is_enabled()
    zeros, fit = [], run.fit

    def spy(*args, **kwargs):
        record = fit(*args, **kwargs)
        zeros.append({n: int((p == 0).sum()) for n, p in prunable_weights(run.model)})
        return record

    run.fit = spy
    record = run.execute()
    assert record["status"] == "complete" and [p["phase"] for p in record["passes"]] == ["dense", "sparse", "redense"]
    sizes = {n: p.numel() for n, p in prunable_weights(run.model)}
    assert zeros[1] == {n: round(0.3 * s) for n, s in sizes.items()}
    assert record["passes"][1]["layer_sparsity"] == {n: round(0.3 * s) / s for n, s in sizes.items()}


def test_resume_on_cuda_equals_uninterrupted(tmp_path, kill_run, monkeypatch):
    """Killed after its 2nd checkpoint (mid-pass epoch ends), resumed: the same per-epoch numbers and
    weights as an uninterrupted run (deterministic cuDNN kernels, so both take the same ones)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(DevicePolicy, "apply_backend", lambda self: None)  # keep cuDNN autotuning off
    ref_cfg = _cfg(tmp_path / "ref", epochs=4)
    ref = engine.execute(ref_cfg, show_progress=False)
    cfg = _cfg(tmp_path / "killed", epochs=4)
    kill_run(cfg, after=2)
    resumed = engine.execute(cfg, resume=True, show_progress=False)
    assert resumed["status"] == "complete"
    a, b = _rows(cfg), _rows(ref_cfg)
    assert [(r["pass"], r["epoch"]) for r in a] == [(r["pass"], r["epoch"]) for r in b] == [(0, e) for e in (1, 2, 3, 4)]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in a]), torch.tensor([r["loss"] for r in b]),
                               rtol=1e-5, atol=1e-6)
    assert abs(resumed["final"]["top1"] - ref["final"]["top1"]) <= 1 / 32
    wa = load_torch(Path(cfg.out) / cfg.run_id() / "model.pt")["state_dict"]
    wb = load_torch(Path(ref_cfg.out) / ref_cfg.run_id() / "model.pt")["state_dict"]
    for k in wb:
        torch.testing.assert_close(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-5)


def test_retrieval_metrics_on_gpu_equal_cpu():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(600) % 12
    emb = torch.randn(12, 64, generator=gen)[labels] + 3.0 * torch.randn(600, 64, generator=gen)
    cpu = metrics.retrieval_metrics(emb, labels, seed=0, device="cpu")
    gpu = metrics.retrieval_metrics(emb.to(DEVICE), labels.to(DEVICE), seed=0)
    assert set(cpu) == set(gpu) and {"nmi", "r@1", "r@2", "r@4", "r@8"} <= set(cpu)
    assert 0.2 < cpu["r@1"] < cpu["r@8"] < 0.95  # neither trivial nor hopeless: near-ties matter
    assert gpu["nmi"] == pytest.approx(cpu["nmi"], abs=1e-6)
    for k in ("r@1", "r@2", "r@4", "r@8"):  # a distance tie decided differently moves one query at most
        assert gpu[k] == pytest.approx(cpu[k], abs=1 / 600)


def test_memory_mapped_cache_is_resident_on_gpu_as_uint8(tmp_path):
    """A paper dataset's memory-mapped cache goes to the GPU once, as uint8; with a zero residency
    budget it streams (pinned, side-stream prefetch) and yields the same batches."""
    fixture = fx.build("aircraft", tmp_path / "data")
    cfg = RunConfig(data=fixture.name, data_root=str(fixture.root), resolution=32, device=DEVICE,
                    data_options={"cache_dir": str(tmp_path / "cache"), "workers": 1})
    bundle = datasets.load(cfg)
    device = torch.device(DEVICE)
    policy = DevicePolicy.for_run(cfg, device, augment="batched")
    resident = BatchStream(bundle, bundle.train, batch_size=2, device=device, train=True, policy=policy)
    streamed = BatchStream(bundle, bundle.train, batch_size=2, device=device, train=True,
                           policy=DevicePolicy.for_run(cfg, device, augment="batched", resident_bytes=0))
    assert resident.images.dtype == torch.uint8 and not streamed.resident and streamed.prefetch is not None
    if ON_GPU:  # (a CPU reads a memory map in place: nothing is resident there)
        assert resident.resident and resident.prefetch is None and resident.images.device.type == "cuda"
        assert streamed.prefetch.stream is not None
    ga, gb = epoch_generator(0, 0, 0), epoch_generator(0, 0, 0)
    for ia, ib in zip(resident.batches(ga), streamed.batches(gb), strict=True):
        (xa, ya), (xb, yb) = resident.load(ia, ga), streamed.load(ib, gb)
        assert xa.device.type == xb.device.type == device.type
        torch.testing.assert_close(xa, xb, rtol=0, atol=1e-5)
        assert torch.equal(ya, yb)
    assert streamed.prefetch.hits == len(resident.batches(epoch_generator(0, 0, 0))) and streamed.prefetch.misses == 0


@pytest.mark.skipif(not ON_GPU, reason="inductor compiles C++ kernels for minutes on a CPU; "
                    "tests/test_device.py covers --compile there with the aot_eager backend")
def test_compile_with_inductor_trains_like_eager(tmp_path):
    """--compile with the default backend (inductor: Triton kernels on a GPU)."""
    losses = []
    for compile_ in (False, True):
        cfg = _cfg(tmp_path / str(compile_), compile=compile_, amp="bf16", epochs=2)
        record = engine.execute(cfg, show_progress=False)
        assert record["status"] == "complete"
        losses.append([r["loss"] for r in _rows(cfg)])
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=0.05, atol=0)


def test_batch_indices_and_crop_parameters_reach_the_device_in_one_copy_each():
    """On CUDA the epoch's order goes to the GPU once (a slice per batch) and a batch's boxes, flips
    and orientation travel together; the values are the host's exactly. Elsewhere nothing moves."""
    from kebench.data.pipeline import _send_order, _to_device_together

    device = torch.device(DEVICE)
    parts = list(torch.randperm(50, generator=torch.Generator().manual_seed(0)).split(16))
    sent = _send_order(parts, device)
    boxes, flips, turned = torch.rand(16, 4, dtype=torch.float64) * 30, torch.rand(16) < 0.5, torch.rand(16) < 0.5
    moved = _to_device_together(device, boxes, flips, turned)
    if not ON_GPU:
        assert sent is None and moved[0] is boxes and moved[1] is flips and moved[2] is turned
        return
    assert [torch.equal(sent[id(p)][1].cpu(), p) for p in parts] == [True] * len(parts)
    assert {t.device.type for t in moved} == {"cuda"}
    torch.testing.assert_close(moved[0].cpu(), boxes.float(), rtol=0, atol=0)
    assert torch.equal(moved[1].cpu(), flips) and torch.equal(moved[2].cpu(), turned)
    assert _to_device_together(device, boxes, flips, None)[2] is None


def test_gpu_jpeg_decoding_gives_the_cpu_workers_batches(tmp_path):
    """--data-opt decode=auto on CUDA: the streamed ImageNet split's JPEGs are decoded by nvjpeg
    (`torchvision.io.decode_jpeg(..., device='cuda')`, batched), grayscale/CMYK/PNG files by the CPU
    workers; training and evaluation batches match decode=cpu's within a few grey levels (two JPEG
    decoders and libjpeg's reduced-scale decoding of the large file differ slightly). On a CPU
    (KEBENCH_CUDA_TEST_DEVICE=cpu) the same path runs with decode_jpeg on the CPU."""
    fx.build_imagenet_mixed(tmp_path / "data")
    device = torch.device(DEVICE)

    def bundle(decode):
        return datasets.load(RunConfig(data="imagenet", data_root=str(tmp_path / "data"), resolution=32, device=DEVICE,
                                       data_options={"cache_dir": str(tmp_path / "cache"), "workers": 1,
                                                     "decode": decode}))

    cpu, auto = bundle("cpu"), bundle("auto")
    policy = DevicePolicy(device, augment="batched")
    for split, train in (("train", True), ("test", False)):
        a = BatchStream(cpu, getattr(cpu, split), batch_size=6, device=device, train=train, policy=policy)
        b = BatchStream(auto, getattr(auto, split), batch_size=6, device=device, train=train, policy=policy)
        if not ON_GPU:  # decode=auto keeps CPU workers on a CPU: take the GPU path with the CPU decoder
            b.images = b.images.decoded_on(device)
        assert a.images.decode_device is None and b.images.decode_device == device
        ga, gb = epoch_generator(0, 0, 0), epoch_generator(0, 0, 0)
        for ia, ib in zip(a.batches(ga), b.batches(gb), strict=True):
            (xa, ya), (xb, yb) = a.load(ia, ga), b.load(ib, gb)
            assert xb.device.type == device.type and torch.equal(ya, yb)
            levels = ((xa - xb) * a.std).abs()  # in grey levels
            assert levels.mean() < 2 and levels.mean((1, 2, 3)).max() < 6, levels.mean((1, 2, 3))
