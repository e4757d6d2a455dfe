"""Sweep executors: `local` worker processes (one run each, GPUs shared out), `inline` (one run after
another in this process) and the dispatch to them and to SLURM/submitit (kebench/grid/slurm.py).

A worker is `python -m kebench.grid.executors [--nproc N]` with the run's config JSON on stdin.
"""
from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kebench.run import guard
from kebench.grid import EXECUTORS
from kebench.errors import UserError
from kebench.run.launch import run_config
from kebench.grid import sweep
from kebench.grid.sweep import WORKER_LOG, SweepRun, config_from_dict, parse_sets, progress_line, state_of, unfinished

#: A worker that died of one of these was stopped, not broken: the signal came before its handler
#: was installed (while torch imported) or from outside; nothing is lost and a rerun resumes it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def local_workers(gpus: list[str], gpus_per_run: int = 1, runs_per_gpu: int = 1, workers: int | None = None) -> int:
    """How many runs the local executor keeps going: `workers` if given, else one per GPU (or per
    group of `gpus_per_run` GPUs) times `runs_per_gpu`, else 1 on a CPU."""
    if runs_per_gpu > 1 and not gpus:
        raise UserError(f"--runs-per-gpu {runs_per_gpu} packs runs onto GPUs, but no GPU is visible here. "
                        f"On a CPU, set the number of runs at once with --workers.")
    if runs_per_gpu > 1 and gpus_per_run > 1:
        raise UserError(f"--runs-per-gpu {runs_per_gpu} cannot be combined with --gpus-per-run {gpus_per_run}: "
                        f"a DDP run already spans several GPUs. Pack single-GPU runs (--gpus-per-run 1) instead.")
    if workers:
        return workers
    return max(1, len(gpus) // gpus_per_run * runs_per_gpu) if gpus else 1


def slot_envs(workers: int, gpus: list[str], gpus_per_run: int, runs_per_gpu: int = 1) -> list[dict]:
    """Environment of each worker slot: its GPUs (CUDA_VISIBLE_DEVICES) and its share of the CPU threads.
    Single-GPU slots take the GPUs round-robin, so `len(gpus) * runs_per_gpu` workers put exactly
    `runs_per_gpu` runs on every GPU (several processes on one GPU run their kernels concurrently)."""
    threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))}
    if gpus:
        if workers * gpus_per_run > len(gpus) and gpus_per_run > 1:
            raise UserError(f"{workers} workers x {gpus_per_run} GPUs per run need {workers * gpus_per_run} "
                            f"GPUs, but {len(gpus)} are available ({','.join(gpus)}).")
        if runs_per_gpu > 1 and workers > len(gpus) * runs_per_gpu:
            raise UserError(f"{workers} workers on {len(gpus)} GPU(s) would put more than --runs-per-gpu "
                            f"{runs_per_gpu} runs on a GPU; use at most {len(gpus) * runs_per_gpu} workers.")
        if gpus_per_run > 1:
            return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * gpus_per_run:(i + 1) * gpus_per_run]), **threads}
                    for i in range(workers)]
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)], **threads} for i in range(workers)]
    return [dict(threads) for _ in range(workers)]


def worker_command(nproc: int = 1) -> list[str]:
    return [sys.executable, "-m", "kebench.grid.executors", "--nproc", str(nproc)]


def run_local(entries: list[SweepRun], *, workers: int, gpus: list[str], gpus_per_run: int = 1,
              runs_per_gpu: int = 1, retry_failed: bool = False, echo=print) -> int:
    """Run the sweep's unfinished runs with `workers` processes at a time. Returns the exit code of
    `sweep.exit_code`: 0 only when every run is done."""
    todo = unfinished(entries, retry_failed, echo)
    envs = slot_envs(workers, gpus, gpus_per_run, runs_per_gpu)
    free = list(range(workers))
    running: dict[int, tuple] = {}  # slot -> (Popen, entry, log file, start time)
    problems, stop = [], {"signals": 0}
    total = len(todo)
    echo(f"{len(entries)} runs in the sweep, {total} to run, {workers} worker(s)")

    def on_signal(signum, frame):
        stop["signals"] += 1
        hard = stop["signals"] > 1
        echo(f"{guard.signal_name(signum)}: " + ("killing the runs" if hard else
             "no new runs start; running ones checkpoint and stop (again to kill them)"))
        for proc, *_ in running.values():
            try:
                proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    started, durations = 0, []  # seconds of each run that finished (done or failed)
    try:
        while (todo and not stop["signals"]) or running:
            while free and todo and not stop["signals"]:
                e = todo.pop(0)
                if guard.lock_holder(e.dir) is not None:
                    echo(f"skip {e.run_id}: running elsewhere")
                    continue
                slot = free.pop(0)
                e.dir.mkdir(parents=True, exist_ok=True)
                log = open(e.dir / WORKER_LOG, "a")
                log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} kebench sweep worker, slot {slot}, "
                          f"{json.dumps(envs[slot])}\n")
                log.flush()
                proc = subprocess.Popen(worker_command(gpus_per_run if gpus else 1), stdin=subprocess.PIPE,
                                        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **envs[slot]})
                proc.stdin.write(json.dumps(e.cfg.to_dict()).encode())
                proc.stdin.close()
                started += 1
                running[slot] = (proc, e, log, time.perf_counter())
                echo(f"[{started}/{total}] start {e.run_id} (worker {slot})")
            for slot, (proc, e, log, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                log.close()
                del running[slot]
                free.append(slot)
                took = f"{time.perf_counter() - t0:.1f} s"
                state, detail = state_of(e)
                if rc == 0:
                    echo(f"done  {e.run_id}: {detail} ({took})")
                elif rc == guard.EXIT_INTERRUPTED:
                    echo(f"stopped {e.run_id} with a checkpoint ({detail}); rerun the sweep to resume it")
                elif rc == guard.EXIT_BUSY:
                    echo(f"skip {e.run_id}: another process holds it")
                elif rc < 0 and (-rc in STOP_SIGNALS or (-rc == signal.SIGKILL and stop["signals"] > 1)):
                    echo(f"stopped {e.run_id} by {guard.signal_name(-rc)} "
                         f"({detail or 'before it started training'}); rerun the sweep to resume it")
                else:
                    if rc > 0 and state != "failed":  # died without saying why (a crash): keep its last words
                        sweep.record_failure(e.dir, _last_line(e.dir / WORKER_LOG), rc)
                        state, detail = state_of(e)
                    why = detail if state == "failed" else f"killed by {guard.signal_name(-rc)}"
                    problems.append(e)
                    echo(f"FAIL  {e.run_id}: {why}; log: {e.dir / WORKER_LOG}")
                if rc == 0 or (problems and problems[-1] is e):  # it finished: done or failed (not stopped)
                    durations.append(time.perf_counter() - t0)
                echo(progress_line(len(durations) - len(problems), len(problems), len(running), len(todo), durations,
                                   workers))
            if running:
                time.sleep(0.1)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return sweep.exit_code(entries, stopped=bool(stop["signals"]), died=bool(problems), echo=echo)


def _last_line(log) -> str:
    """The last line a crashed worker wrote (a traceback ends with the exception)."""
    try:
        lines = [ln.strip() for ln in open(log, errors="replace").read().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_inline(entries: list[SweepRun], *, retry_failed: bool = False, echo=print) -> int:
    """Run the unfinished runs one after another in this process: no worker start-up per run (importing
    torch costs more than a whole tiny CPU run). Same exit codes as run_local."""
    todo = unfinished(entries, retry_failed, echo)
    echo(f"{len(entries)} runs in the sweep, {len(todo)} to run, in this process")
    failed, durations = 0, []  # seconds of each run that finished (done or failed)
    for i, e in enumerate(todo, 1):
        t0 = time.perf_counter()
        echo(f"[{i}/{len(todo)}] start {e.run_id}")
        try:
            records = run_config(e.cfg, show_progress=False)
        except guard.RunInterrupted as exc:
            echo(f"stopped {e.run_id} with a checkpoint ({exc}); rerun to resume it")
            return sweep.exit_code(entries, stopped=True)
        except guard.RunBusy:
            echo(f"skip {e.run_id}: another process holds it")
            continue
        except UserError as exc:
            sweep.record_failure(e.dir, str(exc), exc.exit_code)
            records = [{"status": "failed", "error": str(exc)}]
        state, detail = state_of(e)
        if all(r["status"] == "complete" for r in records):
            echo(f"done  {e.run_id}: {detail} ({time.perf_counter() - t0:.1f} s)")
        else:
            failed += 1
            echo(f"FAIL  {e.run_id}: {detail or records[-1].get('error')}")
        durations.append(time.perf_counter() - t0)
        echo(progress_line(len(durations) - failed, failed, 0, len(todo) - i, durations))
    return sweep.exit_code(entries, echo=echo)


def worker_main(argv: list[str] | None = None) -> int:
    """One sweep run in its own process: `python -m kebench.grid.executors [--nproc N]`, config JSON on stdin.

    Exit codes: 0 complete, 1 failed, 2 user error, 3 interrupted (checkpointed), 4 busy."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kebench.grid.executors")
    parser.add_argument("--nproc", type=int, default=1)
    args = parser.parse_args(argv)
    cfg = None
    try:
        cfg = config_from_dict(json.loads(sys.stdin.read()))
        records = run_config(cfg, nproc=args.nproc)
    except guard.RunInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr, flush=True)
        return guard.EXIT_INTERRUPTED
    except guard.RunBusy as exc:
        print(f"busy: {exc}", file=sys.stderr, flush=True)
        return guard.EXIT_BUSY
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if cfg is not None:  # counted as failed, with this reason, by --status and the sweep's summary
            sweep.record_failure(Path(cfg.out) / cfg.run_id(), str(exc), exc.exit_code)
        return exc.exit_code
    except json.JSONDecodeError as exc:
        print(f"error: the run config on stdin is not JSON: {exc}", file=sys.stderr, flush=True)
        return guard.EXIT_USAGE
    return 0 if all(r["status"] == "complete" for r in records) else guard.EXIT_FAILED


def run_local_executor(entries: list[SweepRun], *, echo=print, retry_failed=False, workers=None, gpus=None,
                       gpus_per_run=1, runs_per_gpu=1) -> int:
    """`--executor local`: worker processes on this machine, the visible GPUs shared out."""
    gpu_list = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else _visible_gpus()
    n = local_workers(gpu_list, gpus_per_run, runs_per_gpu, workers)
    return run_local(entries, workers=n, gpus=gpu_list, gpus_per_run=gpus_per_run, runs_per_gpu=runs_per_gpu,
                     retry_failed=retry_failed, echo=echo)


def run_slurm(entries: list[SweepRun], *, echo=print, retry_failed=False, workers=None, partition=None, time_min=240,
              gpus_per_job=1, array_parallelism=16, cpus_per_task=None, mem_gb=None, slurm_opt=(), setup=(),
              wait=False, cluster="slurm", nproc=None) -> int:
    """`--executor slurm`: a submitit job array (kebench/grid/slurm.py)."""
    try:  # submitit: imported only when a submitit executor is chosen (a GPU box may not have it)
        from kebench.grid import slurm
    except ImportError as exc:
        executor = "slurm" if cluster == "slurm" else "submitit-local"
        raise UserError(f"--executor {executor} hands the runs to submitit, which is not installed here ({exc}). "
                        f"Install it (pip install submitit), or use --executor local or inline.") from None
    return slurm.run_submitit(
        entries, cluster=cluster, retry_failed=retry_failed, partition=partition, time_min=time_min,
        gpus_per_job=gpus_per_job, array_parallelism=array_parallelism, cpus_per_task=cpus_per_task, mem_gb=mem_gb,
        slurm_opts=parse_sets(slurm_opt, "--slurm-opt"), setup=list(setup), workers=workers,
        wait=wait or cluster == "local", echo=echo, nproc=nproc)


def run_submitit_local(entries: list[SweepRun], *, echo=print, retry_failed=False, workers=None, partition=None,
                       time_min=240, gpus_per_job=1, array_parallelism=16, cpus_per_task=None, mem_gb=None,
                       slurm_opt=(), setup=(), wait=True, nproc=None) -> int:
    """`--executor submitit-local`: the slurm code path on this machine (waits for its jobs)."""
    return run_slurm(entries, echo=echo, retry_failed=retry_failed, workers=workers, partition=partition,
                     time_min=time_min, gpus_per_job=gpus_per_job, array_parallelism=array_parallelism,
                     cpus_per_task=cpus_per_task, mem_gb=mem_gb, slurm_opt=slurm_opt, setup=setup, wait=wait,
                     cluster="local", nproc=nproc)


def dispatch(entries: list[SweepRun], console, *, executor="local", what="sweep", **options) -> int:
    """Run the unfinished entries with the chosen executor (`kebench.grid.EXECUTORS`), passing it the
    executor flags its signature names; returns its exit code (see run_local). Every run's dataset
    is checked first (sweep.preflight): a problem refuses the whole sweep before any worker starts.
    SLURM jobs may see other disks than this machine, so there it only warns."""
    run = EXECUTORS.get(executor)
    starting = unfinished(entries, options.get("retry_failed", False), echo=lambda *_: None, claim=False)
    if executor == "slurm":
        for line in sweep.preflight(starting):
            console.print(f"[yellow]warning[/yellow] (checked on this machine; the jobs may see other disks): {line}")
    else:
        sweep.check_before_running(starting, what)
    takes = set(inspect.signature(run).parameters)
    if options.get("nproc") and "nproc" not in takes:
        raise UserError(f"--nproc sets the processes of a run on SLURM (--executor slurm or submitit-local); "
                        f"with --executor {executor}, --gpus-per-run N trains each run with N processes.")
    if options.get("runs_per_gpu", 1) > 1 and "runs_per_gpu" not in takes:
        raise UserError(f"--runs-per-gpu packs runs of the local executor; with --executor {executor} each "
                        f"job gets its own GPUs (--gpus-per-job).")
    return run(entries, echo=console.print, **{k: v for k, v in options.items() if k in takes})


if __name__ == "__main__":
    sys.exit(worker_main())
