"""The GPU benchmark: kebench's training core on CUDA, measured against its peers in one run.

    python benchmarks/gpu.py [--json out.json] [--archs resnet18,densenet169] [--batches 32,128,256]

For ResNet-18 and DenseNet-169 at 224 px, bf16 autocast, channels-last (the CUDA defaults of
kebench's DevicePolicy), on 2048 synthetic 224-px images resident on the GPU as uint8:

1. engine vs bare loop: images/s of `Run.fit` against a hand-written PyTorch loop (same model,
   same batches from kebench's pipeline, bf16, channels-last) at batch 32 (the KE paper's) and
   128/256; steady state (the first epoch, with cuDNN autotuning and the FLOP-counting step, is
   left out of both). Target >= 0.95.
2. data path share: time of the pipeline alone (gather, crop+flip with one grid_sample, normalise)
   per batch over the engine's step time at batch 32. Target < 5 %.
3. packing: aggregate images/s of 1, 2, 4, 8 runs sharing one GPU, started as `kebench sweep
   --runs-per-gpu N` starts its workers (kebench.grid.executors.slot_envs), ResNet-18, batch 32, released
   together after warm-up. Target >= 2x a single run.
4. projection: GPU-hours of the KE paper's ResNet-18 Table 2 study (5 datasets x its rows x 3
   seeds, epochs from registry.yaml's defaults) at the best aggregate rate measured in 3.
5. JPEG decoding: images/s of the streamed `imagenet` dataset's training batches (224 px, batch
   128) on a synthetic tree of ~500x375 JPEGs, decoded on the GPU (`--data-opt decode=gpu`:
   workers read bytes, `torchvision.io.decode_jpeg` on CUDA) and by CPU DataLoader workers
   (decode=cpu), one worker per core up to 16.

Needs CUDA: on a machine without one it exits with code 2 and says so. The CPU benchmarks are
engine_overhead.py and data_pipeline.py. benchmarks/gpu_check.sh runs this with the CUDA tests.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

IMAGES, CLASSES, RES = 2048, 64, 224
MIN_STEPS = 60  # timed steps per measurement (after the warm-up epoch)
DEVICE = "cuda"  # --cpu-dry-run: every code path on a CPU, tiny sizes (checks the script, measures nothing)
PACKS = (1, 2, 4, 8)

# KE Table 2 (ResNet-18): the datasets' training images (docs/datasets.md) and the runs behind its
# rows, in epochs at 200 epochs per pass (registry.yaml defaults). N1 and N3 are generations 1 and 3
# of the N10 run; CS-KD's batches hold pairs, so its images per step equal the batch like the others.
TABLE2_TRAIN = {"flowers102": 1020, "cub200": 5994, "aircraft": 3334, "mit67": 5360, "dogs": 12000}
TABLE2_RUNS = {"ce+ke N10": 10 * 200, "smooth+ke N10": 10 * 200, "cskd+ke N10": 10 * 200,
               "adacos+ke N10": 10 * 200, "dsd 200/100/100": 400, "ke_dsd N10": 10 * 200,
               "bans N10": 10 * 200, "repr": 200}
TABLE2_SEEDS = 3


def _cfg(arch: str, batch: int, out: str, seed: int = 0, **kw):
    from kebench.config import resolve

    return resolve({"data": "synthetic", "arch": arch, "batch_size": batch, "epochs": 1, "lr": 0.01,
                    "device": DEVICE, "amp": "bf16", "channels_last": True, "out": out, "seed": seed, "checkpoint_every_s": 1e9, "resolution": RES,
                    "data_options": {"classes": CLASSES, "size": 32, "train_per_class": IMAGES // CLASSES,
                                     "test_per_class": 1}, **kw}, {}, {})


def _share_data_across_runs() -> None:
    """Build the synthetic data once per process (each Run would build it again)."""
    from kebench import data as kdata

    real, memo = kdata.load, {}

    def load(cfg):
        key = (cfg.data, json.dumps(cfg.data_options, sort_keys=True), cfg.resolution)
        if key not in memo:
            memo[key] = real(cfg)
        return memo[key]

    kdata.load = load


def _epochs(batch: int) -> int:
    return 1 + max(2, math.ceil(MIN_STEPS * batch / IMAGES))


def engine_rate(run, epochs: int) -> float:
    """Images/s of Run.fit over epochs 2..E (from the engine's own per-epoch rows)."""
    rows_before = len(_rows(run))
    run.fit(epochs)
    rows = _rows(run)[rows_before:][1:]
    images = (IMAGES // run.cfg.batch_size) * run.cfg.batch_size
    return images * len(rows) / sum(images / r["images_per_s"] for r in rows)


def _rows(run) -> list[dict]:
    path = run.dir / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []


def bare_rate(run, epochs: int) -> float:
    """Images/s of a plain bf16 channels-last SGD loop over the same batches, epochs 2..E."""
    from kebench.data.pipeline import epoch_generator

    cfg = run.cfg
    model = run.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train = run.stream("train")
    images = seconds = 0.0
    for epoch in range(epochs):
        _sync()
        t0 = time.perf_counter()
        gen = epoch_generator(cfg.seed, 99, epoch)
        steps = 0
        for idx in train.batches(gen):
            x, y = train.load(idx, gen)
            with run.autocast():  # the run's policy: bf16 here
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        _sync()
        if epoch:
            seconds += time.perf_counter() - t0
            images += steps * cfg.batch_size
    return images / seconds


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def data_ms(run, batches: int = 50) -> float:
    """Milliseconds per batch of the data path alone (gather, augment, normalise) on the GPU."""
    from kebench.data.pipeline import epoch_generator

    train = run.stream("train")
    gen = epoch_generator(0, 77, 0)
    order = train.batches(gen)
    for idx in order[:5]:
        train.load(idx, gen)
    _sync()
    t0 = time.perf_counter()
    n = 0
    while n < batches:
        for idx in order:
            train.load(idx, gen)
            n += 1
            if n == batches:
                break
    _sync()
    return (time.perf_counter() - t0) / batches * 1000


def engine_vs_bare(arch: str, batch: int, out: str, report) -> None:
    from kebench.run.engine import Run

    run = Run(_cfg(arch, batch, out), show_progress=False)
    epochs = _epochs(batch)
    bare = bare_rate(run, epochs)
    eng = engine_rate(run, epochs)
    row = {"arch": arch, "batch": batch, "bare_img_s": round(bare, 1), "engine_img_s": round(eng, 1),
           "ratio": round(eng / bare, 3)}
    if batch == 32:
        ms = data_ms(run)
        row["data_ms_per_batch"] = round(ms, 3)
        row["data_share_of_step"] = round(ms / (1000 * batch / eng), 4)
    report.add("engine_vs_bare", row)
    extra = (f", data path {row['data_ms_per_batch']:.2f} ms/batch = {100 * row['data_share_of_step']:.1f}% "
             f"of a step" if "data_ms_per_batch" in row else "")
    print(f"{arch:12s} batch {batch:3d}: bare {bare:8.0f} img/s, engine {eng:8.0f} img/s, "
          f"ratio {eng / bare:.3f}{extra}", flush=True)
    del run
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def packing(n_runs: int, arch: str, batch: int, epochs: int, out: str) -> dict:
    """n_runs sweep-style workers on one GPU, released together; aggregate images/s of the window."""
    from kebench.grid import executors

    gpus = executors._visible_gpus()[:1] or ["0"]
    envs = executors.slot_envs(n_runs, gpus, 1, runs_per_gpu=n_runs)
    folder = Path(tempfile.mkdtemp(prefix=f"pack{n_runs}-", dir=out))
    go = folder / "go"
    procs = []
    for k, env in enumerate(envs):
        cmd = [sys.executable, __file__, "--pack-worker", str(k), "--pack-dir", str(folder), "--arch", arch,
               "--batch", str(batch), "--epochs", str(epochs), *(["--cpu-dry-run"] if DEVICE == "cpu" else [])]
        procs.append(subprocess.Popen(cmd, env={**os.environ, **env}))
    deadline = time.time() + 300
    while sum((folder / f"ready{k}").exists() for k in range(n_runs)) < n_runs:
        if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
            for p in procs:
                p.kill()
            raise RuntimeError(f"packing with {n_runs} runs: a worker failed to start")
        time.sleep(0.05)
    go.touch()
    for p in procs:
        p.wait(timeout=600)
    done = [json.loads((folder / f"result{k}.json").read_text()) for k in range(n_runs)]
    window = max(d["t1"] for d in done) - min(d["t0"] for d in done)
    images = sum(d["images"] for d in done)
    return {"runs": n_runs, "aggregate_img_s": round(images / window, 1),
            "per_run_img_s": [round(d["images"] / (d["t1"] - d["t0"]), 1) for d in done],
            "cuda_visible_devices": [e["CUDA_VISIBLE_DEVICES"] for e in envs]}


def pack_worker(args) -> None:
    """One packed run: build, warm up one epoch, wait for the release, train `epochs` epochs."""
    from kebench.run.engine import Run

    folder = Path(args.pack_dir)
    run = Run(_cfg(args.arch, args.batch, str(folder / "runs"), seed=args.pack_worker), show_progress=False)
    run.fit(1)
    _sync()
    (folder / f"ready{args.pack_worker}").touch()
    while not (folder / "go").exists():
        time.sleep(0.01)
    t0 = time.time()
    record = run.fit(args.epochs)
    _sync()
    t1 = time.time()
    (folder / f"result{args.pack_worker}.json").write_text(json.dumps({"images": record["images"], "t0": t0, "t1": t1}))


def projection(rate: float) -> dict:
    per_dataset_epochs = sum(TABLE2_RUNS.values())
    images = per_dataset_epochs * sum(TABLE2_TRAIN.values()) * TABLE2_SEEDS
    return {"training_images": images, "img_s": rate, "gpu_hours": round(images / rate / 3600, 1),
            "runs": TABLE2_RUNS, "datasets": TABLE2_TRAIN, "seeds": TABLE2_SEEDS,
            "excludes": "evaluation passes and data-cache builds"}


class Report:
    """The figures, written as they are measured: one JSON line per row to `<json>l` (flushed and
    fsynced, so a kill loses nothing measured) and the whole report to `<json>` after every row."""

    def __init__(self, path: str | None, **header):
        self.path = Path(path) if path else None
        self.data = {**header, "engine_vs_bare": [], "packing": [], "errors": []}
        self.lines = self.path.with_suffix(self.path.suffix + "l").open("a") if self.path else None

    def add(self, section: str, row: dict) -> None:
        self.data.setdefault(section, []).append(row)
        if self.lines:
            self.lines.write(json.dumps({"section": section, **row}) + "\n")
            self.lines.flush()
            os.fsync(self.lines.fileno())
        self.save()

    def save(self) -> None:
        if self.path:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            os.replace(tmp, self.path)

    def section(self, name: str, fn, *args) -> None:
        """Run one section; an error is recorded (and printed) and the next section still runs."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 (a benchmark section must not take the others down)
            self.add("errors", {"in": name, "error": f"{type(exc).__name__}: {exc}"})
            print(f"!! {name} failed: {type(exc).__name__}: {exc}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="resnet18,densenet169")
    parser.add_argument("--batches", default="32,128,256")
    parser.add_argument("--packs", default=",".join(map(str, PACKS)))
    parser.add_argument("--pack-epochs", type=int, default=8)
    parser.add_argument("--json", help="write the figures here as they are measured (and one JSON line per row to <json>l)")
    parser.add_argument("--pack-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pack-dir", help=argparse.SUPPRESS)
    parser.add_argument("--arch", default="resnet18", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run every code path on a CPU with tiny sizes: checks the script, measures nothing")
    args = parser.parse_args()
    if args.cpu_dry_run:
        global DEVICE, IMAGES, CLASSES, RES, MIN_STEPS, DECODE_IMAGES
        DEVICE, IMAGES, CLASSES, RES, MIN_STEPS, DECODE_IMAGES = "cpu", 64, 4, 32, 4, 48
        args.archs, args.batches, args.packs, args.pack_epochs = "test_resnet", "32", "1,2", 1
        args.arch = "test_resnet"
    elif not torch.cuda.is_available():
        print("benchmarks/gpu.py measures kebench on a CUDA GPU, and torch sees none here "
              "(torch.cuda.is_available() is False). Run it on a machine with an NVIDIA GPU; the CPU "
              "benchmarks are benchmarks/engine_overhead.py and benchmarks/data_pipeline.py.", file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("KEBENCH_NO_PROGRESS", "1")
    # `timeout` sends SIGTERM: leave through the normal exit path (every row is already on disk)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    _share_data_across_runs()
    if args.pack_worker is not None:
        pack_worker(args)
        return
    from kebench.run.device import DevicePolicy

    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (dry run: these figures mean nothing)"
    report = Report(args.json, gpu=name, torch=torch.__version__, images=IMAGES, resolution=RES)
    archs, batches = [a for a in args.archs.split(",") if a], [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as out:
        report.data["policy"] = DevicePolicy.for_run(_cfg("resnet18", 32, out), torch.device(DEVICE)).describe()
        report.save()
        print(f"{name}, torch {torch.__version__}; policy {report.data['policy']}", flush=True)
        # the first arch, then packing (the projection needs it), then the others: a time limit cuts the least
        for arch in archs[:1]:
            for batch in batches:
                report.section(f"engine vs bare {arch} batch {batch}", engine_vs_bare, arch, batch, out, report)
        for n in (int(p) for p in args.packs.split(",") if p):
            report.section(f"packing {n}", pack_row, n, args, out, report)
        report.section("jpeg decode", decode_rates, out, report)
        for arch in archs[1:]:
            for batch in batches:
                report.section(f"engine vs bare {arch} batch {batch}", engine_vs_bare, arch, batch, out, report)


DECODE_IMAGES, DECODE_BATCH = 1024, 128


def decode_rates(out: str, report: Report) -> None:
    """Section 5: the streamed ImageNet path's images/s, JPEGs decoded on the GPU vs by CPU workers."""
    sys.path.insert(0, str(Path(__file__).parent))
    from cifar_imagenet_pipeline import write_imagenet

    from kebench import data as kdata
    from kebench.config import RunConfig
    from kebench.data.pipeline import BatchStream, epoch_generator
    from kebench.run.device import DevicePolicy

    device, root = torch.device(DEVICE), Path(out) / "imagenet-jpegs"
    if not root.exists():
        write_imagenet(root, DECODE_IMAGES)
    workers = max(1, min(16, os.cpu_count() or 1))
    for decode in ("gpu", "cpu"):
        options = {"workers": workers, "decode": decode if DEVICE == "cuda" else "cpu", "cache_dir": str(Path(out) / "c")}
        bundle = kdata.load(RunConfig(data="imagenet", data_root=str(root), resolution=RES, device=DEVICE,
                                      data_options=options))
        stream = BatchStream(bundle, bundle.train, batch_size=min(DECODE_BATCH, len(bundle.train)), device=device,
                             train=True, policy=DevicePolicy(device, channels_last=True, augment="batched"))
        if decode == "gpu" and DEVICE != "cuda":  # the dry run: the same path, torchvision's CPU decoder
            stream.images = stream.images.decoded_on(device)
        rates = []
        for epoch in range(3):
            gen = epoch_generator(0, 0, epoch)
            _sync()
            t0, n = time.perf_counter(), 0
            for index in stream.batches(gen):
                n += len(stream.load(index, gen)[0])
            _sync()
            rates.append(n / (time.perf_counter() - t0))
        row = {"decode": decode, "workers": workers, "images": len(bundle.train), "batch": stream.batch_size,
               "img_s": round(sorted(rates[1:])[len(rates[1:]) // 2], 1)}
        report.add("jpeg_decode", row)
        print(f"streamed ImageNet JPEGs, decode={decode} ({workers} CPU workers{' reading bytes' if decode == 'gpu' else ''}): "
              f"{row['img_s']:8.0f} img/s", flush=True)


def pack_row(n: int, args, out: str, report: Report) -> None:
    row = packing(n, args.arch, 32, args.pack_epochs, out)
    base = report.data["packing"][0]["aggregate_img_s"] if report.data["packing"] else row["aggregate_img_s"]
    row["vs_one_run"] = round(row["aggregate_img_s"] / base, 2)
    report.add("packing", row)
    print(f"packing {n} run(s) of {args.arch} batch 32 on one GPU: {row['aggregate_img_s']:8.0f} img/s "
          f"aggregate ({row['vs_one_run']:.2f}x one run)", flush=True)
    best = max(report.data["packing"], key=lambda r: r["aggregate_img_s"])
    t2 = {**projection(best["aggregate_img_s"]), "packed_runs": best["runs"]}
    report.data["table2"] = t2
    report.add("table2_projection", {k: t2[k] for k in ("training_images", "img_s", "gpu_hours", "packed_runs")})
    print(f"KE Table 2 (ResNet-18, 5 datasets, {len(TABLE2_RUNS)} runs per dataset, 3 seeds): "
          f"{t2['training_images'] / 1e9:.2f} G training images at {t2['img_s']:.0f} img/s "
          f"({t2['packed_runs']} runs packed) = {t2['gpu_hours']} GPU-hours on one {report.data['gpu']}", flush=True)


if __name__ == "__main__":
    main()
