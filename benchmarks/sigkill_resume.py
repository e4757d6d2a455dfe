"""Soak check: SIGKILL a real `kebench run` at random moments, `--resume` it, and compare with an
uninterrupted run (issue 14). Prints how many of N kill/resume cycles ended identical.

    python benchmarks/sigkill_resume.py --trials 20 --epochs 3

A trial passes when the resumed result.json has the same per-pass metrics and final numbers as the
uninterrupted run, its metrics.jsonl has one row per epoch, and no `.*.tmp` file is left in the folder.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def command(out: Path, epochs: int, method: str, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "kebench", "run", "--method", method, "--data", "synthetic", "--arch",
           "test_resnet", "--epochs", str(epochs), "--device", "cpu", "--out", str(out),
           "--checkpoint-every-s", "0", "--quiet"]
    return cmd + (["--resume"] if resume else [])


def comparable(run_dir: Path) -> dict:
    rec = json.loads((run_dir / "result.json").read_text())
    return {"final": rec["final"], "passes": [p["metrics"] for p in rec["passes"]], "status": rec["status"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--method", default="ce+ke", help="a multi-pass method exercises replay (default ce+ke)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KEBENCH_NO_PROGRESS": "1"}
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ref_out = Path(tmp) / "reference"
        t0 = time.perf_counter()
        subprocess.run(command(ref_out, args.epochs, args.method), check=True, env=env, capture_output=True)
        duration = time.perf_counter() - t0
        (ref_dir,) = [p for p in ref_out.iterdir() if p.is_dir()]
        reference = comparable(ref_dir)
        passed, killed = 0, 0
        for trial in range(args.trials):
            out = Path(tmp) / f"trial{trial}"
            proc = subprocess.Popen(command(out, args.epochs, args.method), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3, 0.95) * duration)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            proc.wait()
            subprocess.run(command(out, args.epochs, args.method, resume=True), check=True, env=env,
                           capture_output=True)
            (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
            rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
            ok = (comparable(run_dir) == reference and not list(run_dir.glob(".*.tmp"))
                  and len({(r["pass"], r["epoch"]) for r in rows}) == len(rows))
            passed += ok
            print(f"trial {trial + 1:2d}: {'identical' if ok else 'DIFFERENT'}", flush=True)
    print(f"{passed}/{args.trials} resumed runs identical to the uninterrupted one "
          f"({killed} killed mid-run; reference run {duration:.1f} s)")
    return 0 if passed == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
