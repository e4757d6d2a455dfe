"""Sweeps through submitit: a SLURM job array (or submitit's local executor, the same code path).

Each job runs one config through `SweepTask`, a `submitit.helpers.Checkpointable`. Two ways a job
is stopped early, both ending in a run that resumes where it stopped:

* SLURM's warning signal before the time limit (submitit asks for USR2 90 s before it): the task
  asks the engine to stop at the end of the current training step; the engine writes a checkpoint
  of that exact position and raises `RunInterrupted`; the task then hands over to submitit, which
  calls `checkpoint()` (a DelayedSubmission of the same config) and requeues the job itself.
* SIGTERM: preemption, `scontrol requeue` or `scancel`. The engine checkpoints the same way and the
  job exits; SLURM requeues it (preemption, requeue) or ends it (scancel: rerun the sweep).

The requeued job resumes from the checkpoint, so its final numbers equal those of an uninterrupted
run. A run with several processes (`--nproc`) gets one SLURM task per rank: srun starts them and
they meet over NCCL (GPU) or gloo (CPU) at the job's first node.
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
from kebench.grid import scheduler

SUBMITIT_DIR = ".submitit"


def _join_srun_ranks(env) -> None:
    """The process group of a run whose ranks are the job's SLURM tasks (srun started them)."""
    job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
    os.environ.update(RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=str(env.num_tasks),
                      LOCAL_WORLD_SIZE=str(env.num_tasks // max(1, env.num_nodes)),
                      MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(20000 + job % 20000))


class SweepTask(submitit.helpers.Checkpointable):
    """One run as a submitit job. `nproc` > 1 trains it with DDP: one rank per SLURM task when the
    job has that many tasks (srun), else `nproc` processes started here."""

    def __init__(self, nproc: int = 1):
        self.nproc = nproc
        self._warned = False

    def __call__(self, cfg_dict: dict) -> dict:
        from kebench.run.launch import run_config
        from kebench.grid.sweep import config_from_dict

        cfg = config_from_dict(cfg_dict)
        env = JobEnvironment()
        srun_ranks = env.num_tasks > 1
        if srun_ranks:
            _join_srun_ranks(env)
        usr = JobEnvironment._usr_sig()
        submitit_handler = signal.getsignal(usr)
        self._warned, self._local_ranks = False, self.nproc > 1 and not srun_ranks
        signal.signal(usr, self._on_warning)
        try:
            records = run_config(cfg, nproc=1 if srun_ranks else self.nproc)
        except guard.RunInterrupted as exc:
            if not self._warned or not callable(submitit_handler):
                raise  # SIGTERM (preemption, scontrol requeue, scancel): SLURM requeues or ends the job
            print(f"kebench: {exc}\nkebench: handing over to submitit to checkpoint and requeue this job.",
                  file=sys.stderr, flush=True)
            signal.signal(usr, submitit_handler)
            submitit_handler(usr, None)  # rank 0: calls self.checkpoint(), requeues, exits
            raise
        finally:
            if signal.getsignal(usr) == self._on_warning:
                signal.signal(usr, submitit_handler)
        return {"run_id": cfg.run_id(),
                "records": [{"run_id": r["run_id"], "status": r["status"], "final": r.get("final", {}),
                             "error": r.get("error")} for r in records]}

    def _on_warning(self, signum, frame) -> None:
        self._warned = True
        guard.STOP.request(signum)
        if getattr(self, "_local_ranks", False):  # launch.launch passes SIGTERM on to every rank
            os.kill(os.getpid(), signal.SIGTERM)

    def checkpoint(self, cfg_dict: dict) -> submitit.helpers.DelayedSubmission:
        """The requeued job runs the same config again; the engine resumes it from its checkpoint."""
        return submitit.helpers.DelayedSubmission(SweepTask(self.nproc), cfg_dict)


def make_executor(folder, cluster: str, *, time_min: int = 240, gpus_per_job: int = 1,
                  partition: str | None = None, array_parallelism: int = 16, cpus_per_task: int | None = None,
                  mem_gb: float | None = None, slurm_opts: dict | None = None, setup: list | None = None,
                  nproc: int = 1):
    """A configured submitit executor: cluster 'slurm' or 'local'. On SLURM each job has `nproc`
    tasks (the run's DDP ranks, started by srun) and `--cpus-per-task` cores for each."""
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
    params = {"time": time_min, "ntasks_per_node": nproc, "nodes": 1, "array_parallelism": array_parallelism,
              "job_name": "kebench"}
    if gpus_per_job:  # a CPU partition gets no GPU line at all
        params["gpus_per_node"] = gpus_per_job
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
                 wait: bool = False, echo=print, nproc: int | None = None, **executor_opts) -> int:
    """Submit the sweep's unfinished runs. SLURM: one job array (returns once submitted unless
    `wait`), after checking with SLURM that it can run. Local: at most `workers` jobs at a time,
    waiting for all. Returns an exit code."""
    from kebench.grid.sweep import progress_line, unfinished

    nproc = nproc or max(1, executor_opts.get("gpus_per_job", 1))
    todo = unfinished(entries, retry_failed, echo)
    if cluster == "slurm":
        todo = _not_queued(todo, echo)
    if not todo:
        echo("nothing to run")
        return 0
    uneven = [e.run_id for e in todo if e.cfg.batch_size % nproc]
    if uneven:
        raise UserError(f"--nproc {nproc}: the batch size is the global batch and must be divisible by the "
                        f"number of processes; it is not for {', '.join(uneven[:3])}. Nothing was submitted.")
    if cluster == "slurm":
        scheduler.check_submission(executor_opts.get("partition"), executor_opts.get("time_min", 240),
                                   max(float(e.cfg.checkpoint_every_s) for e in todo))
    folder = Path(todo[0].cfg.out) / SUBMITIT_DIR
    payloads = [e.cfg.to_dict() for e in todo]
    if cluster == "slurm":
        executor = make_executor(folder / "%j", cluster, nproc=nproc, **executor_opts)
        jobs = _submit_array(executor, folder, SweepTask(nproc), payloads)
        _log_jobs(folder, zip(todo, jobs))
        echo(f"submitted {len(jobs)} run(s) as SLURM job {jobs[0].job_id.split('_')[0]} "
             f"(logs under {folder}); 'kebench sweep FILE --status' follows them")
        return _wait_slurm(list(zip(todo, jobs)), folder, echo) if wait else 0
    executor = make_executor(folder / "%j", cluster, **executor_opts)
    running, pending, limit = [], list(zip(todo, payloads)), workers or 1
    code, failed, took = 0, 0, []  # took: seconds of each job that ended (done or failed)
    while pending or running:
        while pending and len(running) < limit:
            entry, payload = pending.pop(0)
            job = executor.submit(SweepTask(nproc), payload)
            _log_jobs(folder, [(entry, job)])
            running.append((entry, job, time.perf_counter()))
            echo(f"start {entry.run_id} (submitit job {job.job_id})")
        for item in [r for r in running if r[1].done()]:
            running.remove(item)
            entry, job, t0 = item
            took.append(time.perf_counter() - t0)
            if not _outcome(entry, job, echo):
                code, failed = 1, failed + 1
            echo(progress_line(len(took) - failed, failed, len(running), len(pending), took, limit))
        time.sleep(0.2)
    return code


def _not_queued(todo, echo) -> list:
    """The runs whose last SLURM job is not still queued or running (a rerun of the sweep while its
    jobs wait must not submit them twice)."""
    from kebench.grid.sweep import submitted_jobs

    jobs = submitted_jobs(todo[0].cfg.out) if todo else {}
    states = scheduler.job_states(jobs[e.run_id] for e in todo if e.run_id in jobs)
    keep = []
    for e in todo:
        info = states.get(jobs.get(e.run_id))
        if info is not None and info["state"] in scheduler.LIVE:
            echo(f"skip {e.run_id}: SLURM job {jobs[e.run_id]} is {info['state']}")
        else:
            keep.append(e)
    return keep


def _submit_array(executor, folder: Path, task, payloads) -> list:
    """One sbatch for all the runs. If SLURM refuses it, nothing was queued: the files submitit wrote
    for it are removed and sbatch's reason becomes a UserError."""
    from submitit.core.utils import FailedJobError

    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.iterdir())
    try:
        return executor.map_array(task, payloads)
    except (FailedJobError, OSError) as exc:
        for path in set(folder.iterdir()) - before:
            if path.is_file() or path.is_symlink():
                path.unlink()
        reason = " ".join(line.strip() for line in str(exc).splitlines() if "error" in line.lower()) or str(exc)
        raise UserError(f"SLURM refused the submission, so nothing was queued: {reason.strip()}") from None


#: SLURM states of a job whose run is being trained (the rest of `scheduler.LIVE` waits in the queue).
TRAINING = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"}


def _run_seconds(entry) -> float | None:
    """How long a finished run trained, from its result.json (queue time left out)."""
    from kebench.run import results

    took = (results.read_result(entry.dir) or {}).get("wall_time_s")
    return float(took) if isinstance(took, (int, float)) else None


def _wait_slurm(pairs, folder: Path, echo, poll_s: float = 2.0) -> int:
    """Follow the submitted jobs until each run is done or failed, or its job ended without it
    (cancelled, failed, timed out), reading the run folders and SLURM's own accounting. Whenever the
    counts change it says where the sweep stands, as the local executor does:
    'sweep: 3 done, 1 failed, 2 running, 4 pending; ETA 5m10s' (the ETA from the finished runs' mean
    training time, shared out over the jobs running now)."""
    from kebench.grid.sweep import progress_line, state_of

    code, waiting = 0, {e.run_id: e for e, _ in pairs}
    jobs = {e.run_id: j.job_id for e, j in pairs}
    failed, took, started, shown = 0, [], {}, None
    while waiting:
        states = scheduler.job_states(jobs[run_id] for run_id in waiting)
        running = 0
        for entry in list(waiting.values()):
            state, detail = state_of(entry)
            info = states.get(jobs[entry.run_id])
            slurm_state = info["state"] if info else None
            if state == "done":
                echo(f"done  {entry.run_id}: {detail}")
            elif state == "failed" or slurm_state in scheduler.ENDED or (
                    slurm_state == "COMPLETED" and state == "pending"):
                code, failed = 1, failed + 1
                log = scheduler.log_of(folder, jobs[entry.run_id])
                echo(f"FAIL  {entry.run_id} (SLURM job {jobs[entry.run_id]} {slurm_state or 'gone'}): "
                     f"{detail or 'no result'}; log: {log}")
            else:
                if state == "running" or slurm_state in TRAINING:
                    running += 1
                    started.setdefault(entry.run_id, time.monotonic())
                continue
            seconds = _run_seconds(entry) if state == "done" else None
            if seconds is None and entry.run_id in started:
                seconds = time.monotonic() - started[entry.run_id]
            if seconds is not None:
                took.append(seconds)
            del waiting[entry.run_id]
        counts = (len(pairs) - len(waiting) - failed, failed, running, len(waiting) - running)
        if counts != shown:
            echo(progress_line(*counts, took, workers=max(running, 1)))
            shown = counts
        if waiting:
            time.sleep(poll_s)
    return code


def _outcome(entry, job, echo) -> bool:
    """Say how a finished submitit job ended; True when its runs are complete."""
    try:
        statuses = [r["status"] for r in job.result()["records"]]
    except Exception as exc:  # submitit re-raises the job's error with its traceback
        echo(f"FAIL  {entry.run_id} (job {job.job_id}): {str(exc).strip().splitlines()[-1]}; "
             f"log: {job.paths.stderr}")
        return False
    ok = all(s == "complete" for s in statuses)
    echo(f"{'done ' if ok else 'FAIL '} {entry.run_id}: {statuses}")
    return ok
