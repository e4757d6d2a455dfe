"""CPU threads on a shared machine: a run takes the cores other work leaves free, not all of them.

PyTorch's intra-op pool defaults to one thread per core and meets at a barrier after every parallel
region. When another process holds a core, the thread scheduled there arrives late and every other
thread waits at the barrier: on a 2-core machine with a load of 4-5, the default `kebench run` took
482 s against 95 s single-threaded (10 s alone). So a CPU run measures how busy the machine is
without it (all cores' busy time from /proc/stat minus this process's own CPU time) before its
first epoch and after every epoch, and trains with `round(free cores)` threads (at least 1).

The thread count is not part of the recipe: it stays out of the run id and only moves the last
digits of a result (reduction order), as a change of machine does. `result.json` records it under
`provenance.threads`. A fixed count: `KEBENCH_THREADS=N` (or an explicit `OMP_NUM_THREADS`, which
PyTorch and kebench both honour); `KEBENCH_THREADS=auto` is the default.
"""
from __future__ import annotations

import os
import time

import torch

from kebench.errors import UserError

ENV = "KEBENCH_THREADS"
SAMPLE_S = 0.2  # the first reading, before any work: how busy the machine is right now


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a SLURM or taskset allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def fixed_threads() -> int | None:
    """The thread count the user fixed (KEBENCH_THREADS=N, or OMP_NUM_THREADS), or None for auto."""
    value = os.environ.get(ENV, "auto").strip().lower()
    if value not in ("", "auto"):
        try:
            return max(1, int(value))
        except ValueError:
            return None  # ThreadPolicy.from_env refuses it (check_env says why)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(omp) if omp.isdigit() and int(omp) > 0 else None


def check_env() -> str | None:
    """A message when KEBENCH_THREADS holds something that is neither `auto` nor a positive count."""
    value = os.environ.get(ENV, "auto").strip().lower()
    if value in ("", "auto") or (value.isdigit() and int(value) > 0):
        return None
    return (f"{ENV}={value!r} is not a thread count. Set it to a positive integer (e.g. {ENV}=2) to fix "
            f"the number of CPU threads a run uses, or to 'auto' (the default) to let kebench use the "
            f"cores other work leaves free.")


class CpuMeter:
    """Busy cores of *other* processes between two readings: the machine's busy time (/proc/stat)
    minus this process's own CPU time, over the wall time between the readings."""

    def __init__(self):
        self.last = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [float(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        own = sum(os.times()[:2])  # this process: user + system seconds, all its threads
        return (sum(fields[:8]) - idle) / tick, own, time.monotonic()

    def others_busy(self) -> float | None:
        """Cores other processes kept busy since the last call (None where /proc/stat is absent)."""
        now = self._read()
        if now is None or self.last is None:
            return None
        (busy0, own0, t0), (busy1, own1, t1) = self.last, now
        self.last = now
        if t1 - t0 < 0.05:
            return None
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))


class ThreadPolicy:
    """Chooses and adapts torch's intra-op thread count for a CPU run; a no-op for a fixed count."""

    def __init__(self, fixed: int | None = None, cores: int | None = None):
        self.cores = cores or available_cores()
        self.fixed = fixed
        self.meter: CpuMeter | None = None
        self.used: list[int] = []

    @classmethod
    def from_env(cls) -> "ThreadPolicy":
        problem = check_env()
        if problem:
            raise UserError(problem)
        return cls(fixed=fixed_threads())

    def choose(self, others_busy: float | None) -> int:
        """Threads for the cores left free: cores - others' busy cores, rounded, in [1, cores]."""
        if self.fixed is not None:
            return self.fixed
        if others_busy is None:
            return self.cores
        return int(min(self.cores, max(1, round(self.cores - others_busy))))

    def start(self) -> int:
        """Before the first epoch: a short reading of the machine's load, then set the count."""
        if self.fixed is None:
            self.meter = CpuMeter()
            time.sleep(SAMPLE_S)
        return self._set(self.choose(self.meter.others_busy() if self.meter else None))

    def adapt(self) -> int:
        """After an epoch: the load measured over it decides the next epoch's count."""
        if self.meter is None:
            return torch.get_num_threads()
        return self._set(self.choose(self.meter.others_busy()))

    def _set(self, threads: int) -> int:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        if not self.used or self.used[-1] != threads:
            self.used.append(threads)
        return threads

    def describe(self) -> dict:
        """For result.json's provenance: how many threads the run used, and how they were chosen."""
        return {"mode": "fixed" if self.fixed is not None else "auto", "cores": self.cores,
                "threads": self.used[-1] if self.used else torch.get_num_threads(),
                "min": min(self.used, default=torch.get_num_threads()),
                "max": max(self.used, default=torch.get_num_threads())}
