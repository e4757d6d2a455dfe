"""Engine overhead: training images/s of kebench's engine vs a bare hand-written PyTorch loop.

Same model, batches (kebench's data pipeline, benchmarked on its own in data_pipeline.py),
batch size and number of epochs, measured in the same process. The bare loop evaluates once at
the end, as the engine does; the ratio therefore isolates the engine's own bookkeeping: LR
schedule, hooks, loss/accuracy tracking, FLOP counting on the first step, stop/NaN checks,
checkpoints and metrics.jsonl.

    python benchmarks/engine_overhead.py [--arch resnet18] [--epochs 3] [--repeats 3]
Target: ratio >= 0.95 on CPU.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from kebench.config import resolve
from kebench.data.pipeline import epoch_generator
from kebench.run.engine import Run, lr_factor


def bare_loop(run: Run, epochs: int) -> float:
    """The peer: a plain SGD loop over the same batches (kebench's data pipeline). Returns seconds."""
    cfg = run.cfg
    torch.manual_seed(cfg.seed)
    model = run.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train, test = run.stream("train"), run.stream("test")
    start = time.perf_counter()
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(epoch, 1, epochs, 0, "cosine")
        gen = epoch_generator(cfg.seed, 0, epoch)
        model.train()
        for idx in train.batches(gen):
            x, y = train.load(idx, gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test)
    assert correct >= 0
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--resolution", type=int, default=32,
                        help="32 px: the workload this figure has always been measured on (digits now "
                             "defaults to 40 px)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cfg = resolve({"arch": args.arch, "data": args.data, "epochs": args.epochs, "out": out, "device": args.device,
                       "resolution": args.resolution})
        run = Run(cfg, show_progress=False)
        n_images = args.epochs * (len(run.data.train) // cfg.batch_size) * cfg.batch_size
        engine_times, bare_times = [], []
        for r in range(args.repeats):  # interleaved so machine noise hits both alike
            bare_times.append(bare_loop(run, args.epochs))
            run = Run(cfg, show_progress=False)
            start = time.perf_counter()
            run.fit(args.epochs)
            engine_times.append(time.perf_counter() - start)
        bare, eng = min(bare_times), min(engine_times)
        print(f"device {run.device}, arch {args.arch}, data {args.data} at {cfg.resolution} px, batch {cfg.batch_size}, "
              f"{args.epochs} epochs x {args.repeats} repeats (best of)")
        print(f"bare PyTorch loop: {n_images / bare:8.1f} img/s")
        print(f"kebench engine:    {n_images / eng:8.1f} img/s")
        print(f"ratio engine/bare: {bare / eng:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
