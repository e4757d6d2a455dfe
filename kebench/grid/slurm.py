"""Sweeps through submitit: a SLURM job array (or submitit's local executor, the same code path).

Each job runs one config through `SweepTask`, a `submitit.helpers.Checkpointable`. When SLURM
announces the end of a job (preemption or the time limit: submitit's USR2, or SIGTERM), the task
asks the engine to stop at the end of the current training step; the engine writes a checkpoint
of that exact position and raises `RunInterrupted`; the task then hands over to submitit, which
calls `checkpoint()` (a DelayedSubmission of the same config) and requeues the job. The requeued
job resumes from the checkpoint, so its final numbers equal those of an uninterrupted run.
"""
from __future__ import annotations

import inspect
import json
import os
import signal
import sys
import time
from pathlib import Path

import submitit
from submitit.core.job_environment import JobEnvironment

from kebench.run import guard
from kebench.errors import UserError

SUBMITIT_DIR = ".submitit"


class SweepTask(submitit.helpers.Checkpointable):
    """One run as a submitit job. `nproc` > 1 trains it with DDP over the job's GPUs."""

    def __init__(self, nproc: int = 1):
        self.nproc = nproc

    def __call__(self, cfg_dict: dict) -> dict:
        from kebench.run.launch import run_config
        from kebench.grid.sweep import config_from_dict

        cfg = config_from_dict(cfg_dict)
        usr = JobEnvironment._usr_sig()
        submitit_handler = signal.getsignal(usr)
        signal.signal(usr, self._on_preempt)
        try:
            records = run_config(cfg, nproc=self.nproc)
        except guard.RunInterrupted as exc:
            if exc.signum == signal.SIGINT or not callable(submitit_handler):
                raise  # a user's cancel (scancel/Ctrl-C) ends the job; the checkpoint stays for a rerun
            print(f"kebench: {exc}\nkebench: handing over to submitit to checkpoint and requeue this job.",
                  file=sys.stderr, flush=True)
            signal.signal(usr, submitit_handler)
            submitit_handler(usr, None)  # calls self.checkpoint(), requeues, exits
            raise
        finally:
            if signal.getsignal(usr) == self._on_preempt:
                signal.signal(usr, submitit_handler)
        return {"run_id": cfg.run_id(),
                "records": [{"run_id": r["run_id"], "status": r["status"], "final": r.get("final", {}),
                             "error": r.get("error")} for r in records]}

    def _on_preempt(self, signum, frame) -> None:
        guard.STOP.request(signum)
        if self.nproc > 1:  # launch.launch passes SIGTERM on to every rank
            os.kill(os.getpid(), signal.SIGTERM)

    def checkpoint(self, cfg_dict: dict) -> submitit.helpers.DelayedSubmission:
        """The requeued job runs the same config again; the engine resumes it from its checkpoint."""
        return submitit.helpers.DelayedSubmission(SweepTask(self.nproc), cfg_dict)


def make_executor(folder, cluster: str, *, time_min: int = 240, gpus_per_job: int = 1,
                  partition: str | None = None, array_parallelism: int = 16, cpus_per_task: int | None = None,
                  mem_gb: float | None = None, slurm_opts: dict | None = None, setup: list | None = None):
    """A configured submitit executor: cluster 'slurm' or 'local'."""
    folder = Path(folder)
    if cluster == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=time_min, gpus_per_node=gpus_per_job, tasks_per_node=1, nodes=1)
        return executor
    if cluster != "slurm":
        raise UserError(f"Unknown submitit cluster '{cluster}'; use slurm or local.")
    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as exc:
        raise UserError(f"--executor slurm needs SLURM's sbatch on this machine ({exc}). Submit from a "
                        f"cluster login node, or try the sweep here with --executor submitit-local.") from None
    from submitit.slurm.slurm import _make_sbatch_string

    known = set(inspect.signature(_make_sbatch_string).parameters) - {"command", "folder", "map_count"}
    params = {"time": time_min, "gpus_per_node": gpus_per_job, "ntasks_per_node": 1, "nodes": 1,
              "array_parallelism": array_parallelism, "job_name": "kebench"}
    if partition:
        params["partition"] = partition
    if cpus_per_task:
        params["cpus_per_task"] = cpus_per_task
    if mem_gb:
        params["mem"] = f"{int(mem_gb * 1024)}M"
    if setup:
        params["setup"] = list(setup)
    extra = {}
    for key, value in (slurm_opts or {}).items():
        key = key.replace("-", "_")
        (params if key in known else extra)[key] = value
    if extra:
        params["additional_parameters"] = extra
    executor.update_parameters(**params)
    return executor


def _log_jobs(folder: Path, pairs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "jobs.jsonl", "a") as f:
        for entry, job in pairs:
            f.write(json.dumps({"run_id": entry.run_id, "job_id": job.job_id, "time": time.time()}) + "\n")


def run_submitit(entries, *, cluster: str, retry_failed: bool = False, workers: int | None = None,
                 wait: bool = False, echo=print, **executor_opts) -> int:
    """Submit the sweep's unfinished runs. SLURM: one job array (returns once submitted unless
    `wait`). Local: at most `workers` jobs at a time, waiting for all. Returns an exit code."""
    from kebench.grid.sweep import unfinished

    todo = unfinished(entries, retry_failed, echo)
    if not todo:
        echo("nothing to run")
        return 0
    folder = Path(todo[0].cfg.out) / SUBMITIT_DIR
    executor = make_executor(folder / "%j", cluster, **executor_opts)
    nproc = max(1, executor_opts.get("gpus_per_job", 1))
    payloads = [e.cfg.to_dict() for e in todo]
    if cluster == "slurm":
        jobs = executor.map_array(SweepTask(nproc), payloads)
        _log_jobs(folder, zip(todo, jobs))
        echo(f"submitted {len(jobs)} runs as SLURM job array {jobs[0].job_id.split('_')[0]} "
             f"(logs under {folder}); 'kebench sweep FILE --status' follows them")
        pairs = list(zip(todo, jobs))
        return _wait(pairs, echo) if wait else 0
    pairs, pending, limit = [], list(zip(todo, payloads)), workers or 1
    while pending or any(not j.done() for _, j in pairs):
        while pending and sum(not j.done() for _, j in pairs) < limit:
            entry, payload = pending.pop(0)
            job = executor.submit(SweepTask(nproc), payload)
            _log_jobs(folder, [(entry, job)])
            pairs.append((entry, job))
            echo(f"start {entry.run_id} (submitit job {job.job_id})")
        time.sleep(0.2)
    return _wait(pairs, echo)


def _wait(pairs, echo) -> int:
    code = 0
    for entry, job in pairs:
        try:
            outcome = job.result()
            statuses = [r["status"] for r in outcome["records"]]
            echo(f"{'done ' if all(s == 'complete' for s in statuses) else 'FAIL '} {entry.run_id}: {statuses}")
            if any(s != "complete" for s in statuses):
                code = 1
        except Exception as exc:  # submitit re-raises the job's error with its traceback
            code = 1
            echo(f"FAIL  {entry.run_id} (job {job.job_id}): {str(exc).strip().splitlines()[-1]}; "
                 f"log: {job.paths.stderr}")
    return code
