"""Starting training: one config in this process, or with N local DDP processes (`--nproc`).

`launch` spawns the ranks (each runs `engine.execute_all` with the process group set up by
kebench/run/distributed.py) and passes SIGTERM/SIGINT on to them; `run_config` is what `kebench run`,
the sweep workers and SLURM jobs call.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket

import torch
import torch.multiprocessing as mp

from kebench.run import guard
from kebench.run.distributed import shutdown
from kebench.run.engine import execute_all, pick_device
from kebench.errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, nproc: int, port: int, cfg, resume: bool, show_progress: bool, queue) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        outcome = ("ok", execute_all(cfg, resume=resume, show_progress=show_progress and local_rank == 0))
    except guard.RunInterrupted as exc:
        outcome = ("interrupted", str(exc))
    except UserError as exc:
        outcome = ("user_error", str(exc), exc.exit_code)
    finally:
        shutdown()
    if local_rank == 0:
        queue.put(outcome)


def launch(cfg, nproc: int, *, resume: bool = False, show_progress: bool = True) -> list[dict]:
    """Train one config with `nproc` local processes; return rank 0's records (as `execute_all`).

    SIGTERM/SIGINT sent to this process are passed on to the ranks as SIGTERM (each stops at the
    same step and rank 0 writes the checkpoint); then `RunInterrupted` is raised here as well.
    """
    if nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {nproc}.")
    if cfg.batch_size % nproc:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch and must be divisible by --nproc {nproc}.")
    if pick_device(cfg.device).type == "cuda" and nproc > torch.cuda.device_count():
        raise UserError(f"--nproc {nproc} needs {nproc} GPUs (one per process), but {torch.cuda.device_count()} "
                        f"are visible. Use fewer processes, or --device cpu (gloo).")
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = mp.start_processes(_worker, args=(nproc, free_port(), cfg, resume, show_progress, queue),
                               nprocs=nproc, join=False, start_method="spawn")

    def forward(signum, frame):
        guard.STOP.request(signum)
        for pid in procs.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    with guard.graceful_stop(handler=forward):
        try:
            while not procs.join():
                pass
        except mp.ProcessExitedException as exc:
            raise RuntimeError(f"rank {exc.error_index} of the {nproc}-process run died "
                               f"(exit code {exc.exit_code}); rerun with --resume to continue.") from None
    if queue.empty():
        raise RuntimeError("the distributed run ended without a result from rank 0")
    outcome = queue.get()
    if outcome[0] == "interrupted":
        raise guard.RunInterrupted(outcome[1], guard.STOP.consume())
    if outcome[0] == "user_error":
        exc = UserError(outcome[1])
        exc.exit_code = outcome[2]
        raise exc
    return outcome[1]


def run_config(cfg, nproc: int = 1, show_progress: bool = True) -> list[dict]:
    """Run (or resume, or skip if complete) one config, with `nproc` DDP processes when > 1."""
    if nproc > 1:
        return launch(cfg, nproc, resume=True, show_progress=show_progress)
    return execute_all(cfg, resume=True, show_progress=show_progress)
