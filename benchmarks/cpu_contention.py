"""The default `kebench run` on a shared CPU: alone, and beside one and two busy-loop processes.

    python benchmarks/cpu_contention.py [--repeats 2] [--busy 0,1,2]

Each configuration runs `kebench run` (the embedded defaults) in a fresh process and a fresh results
folder, twice: with kebench's thread policy (`KEBENCH_THREADS=auto`, the default: the cores other
work leaves free, kebench/run/threads.py) and, as the peer measured in the same run, with a fixed
thread count of every core (`KEBENCH_THREADS=<cores>`: what torch does by itself). It prints the wall
times, each one's ratio to the same mode's time alone, and the result's `threads` record.
Target (issue 25): <= 2.5x the alone time with one busy process on a 2-core machine.

The busy processes are plain Python loops (`while True: pass`), one core each, stopped by pid.
A machine with other work on it makes "alone" mean "with that work": the script prints the load
average before it starts so the figures can be read with it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY_LOOP = [sys.executable, "-c", "while True: pass"]


def kebench_run(threads: str, out: Path) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(KEBENCH_THREADS=threads, KEBENCH_NO_PROGRESS="1")
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kebench", "run", "--out", str(out)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    (result,) = out.glob("*/result.json")
    return wall, json.loads(result.read_text()).get("threads", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (the median is reported)")
    parser.add_argument("--busy", default="0,1,2", help="numbers of busy-loop processes beside the run")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores ({os.uname().machine}), load average before: {os.getloadavg()[0]:.2f}", flush=True)
    modes = {"kebench auto": "auto", f"fixed {cores} threads": str(cores)}
    times: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for busy in (int(b) for b in args.busy.split(",")):
            loops = [subprocess.Popen(BUSY_LOOP) for _ in range(busy)]
            try:
                time.sleep(1.0 if busy else 0.0)  # the loops are running before the run starts
                for name, threads in modes.items():
                    walls, used = [], {}
                    for _ in range(args.repeats):
                        wall, used = kebench_run(threads, Path(tmp) / "results")
                        walls.append(wall)
                    times[name, busy] = statistics.median(walls)
                    ratio = times[name, busy] / times[name, 0] if (name, 0) in times else 1.0
                    print(f"busy {busy}  {name:18s} {times[name, busy]:7.1f} s  ({ratio:4.2f}x alone)  "
                          f"threads {used}", flush=True)
            finally:
                for p in loops:
                    p.kill()
                    p.wait()
    if (f"kebench auto", 1) in times:
        print(f"target: kebench auto beside one busy process <= 2.5x alone: "
              f"{times['kebench auto', 1] / times['kebench auto', 0]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
