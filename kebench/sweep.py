"""`kebench sweep`: a grid of runs that survives anything.

A sweep file names a grid; every combination becomes one resolved `RunConfig`, and its run id
(a hash of everything that changes the numbers) names its folder. So a sweep can be re-run at any
time: completed runs are skipped, interrupted ones resume from their checkpoint, and two sweeps
over the same folder never run the same id at once (each run holds a lock on its folder).

    grid: {method: [ce, ke], arch: [resnet18], data: [digits], seed: [0, 1, 2]}
    set: {epochs: 5, generations: 3}      # every run; plugin settings only where the method has them
    out: results/

Executors: `local` (N worker processes, one run each, one GPU per worker, or `--runs-per-gpu` runs
packed on each GPU), `slurm` (a submitit
job array; preempted or timed-out jobs checkpoint and requeue themselves, see kebench/slurm.py)
and `submitit-local` (the slurm code path on this machine, for trying a sweep before submitting).
This module imports nothing heavy at import time: `kebench --help` stays fast.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from kebench.errors import UserError

SPEC_KEYS = ("grid", "set", "out", "name")
STATES = ("done", "running", "failed", "pending")
WORKER_LOG = "sweep.log"


@dataclass
class Entry:
    """One run of a sweep: its resolved config and the grid values that chose it."""

    cfg: object  # RunConfig
    combo: dict

    @property
    def run_id(self) -> str:
        return self.cfg.run_id()

    @property
    def dir(self) -> Path:
        return Path(self.cfg.out) / self.run_id


# ------------------------------------------------------------------------------ the grid
def load_spec(path) -> dict:
    from kebench.config import load_yaml

    spec = load_yaml(path)
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise UserError(f"Sweep file {path}: unknown top-level key(s) {unknown}. A sweep file has "
                        f"'grid' (settings -> lists of values), 'set' (settings for every run), 'out' "
                        f"(results folder) and optionally 'name'.")
    grid = spec.get("grid")
    grids = grid if isinstance(grid, list) else [grid]
    if grid is None or not all(isinstance(g, dict) and g for g in grids):
        raise UserError(f"Sweep file {path}: 'grid' must be a mapping of settings to lists of values "
                        f"(e.g. grid: {{method: [ce, ke], seed: [0, 1, 2]}}), or a list of such mappings.")
    if not isinstance(spec.get("set") or {}, dict):
        raise UserError(f"Sweep file {path}: 'set' must be a mapping of settings (e.g. set: {{epochs: 5}}).")
    return spec


def _values(key: str, value) -> list:
    if key in ("seed", "seeds") and isinstance(value, str):
        from kebench.cli import parse_seeds

        return parse_seeds(value)
    if isinstance(value, list):
        if not value:
            raise UserError(f"Sweep grid: '{key}' has an empty list of values.")
        return value
    return [value]


def _plugin_keys(settings: dict) -> tuple[set, set]:
    """(flat plugin keys, plugin names) of the method these settings select."""
    from kebench import registry
    from kebench.data import get_spec

    data = settings.get("data") or "digits"
    default_obj = "triplet" if get_spec(data).task == "retrieval" else "ce"
    method = registry.parse_method(settings.get("method") or default_obj, default_objective=default_obj)
    plugins = (method.objective, method.regime)
    return {k for p in plugins for k in p.defaults}, {p.name for p in plugins}


def _resolve(settings: dict):
    """Resolve one combination; settings that belong to another method's plugins are left out.
    Returns (RunConfig, names of the settings that applied)."""
    from kebench import config

    where = "sweep file"
    bad = [k for k in settings if not isinstance(k, str)]
    if bad:
        raise UserError(f"{where}: setting names must be text, got {bad!r}.")
    for key in ("method", "data", "arch"):  # the run's identity picks which plugin settings apply
        if settings.get(key) is not None:
            settings = {**settings, key: config._coerce(key, settings[key], "", where)}
    flat, plugin_names = _plugin_keys(settings)
    file_cfg, applied = {}, set()
    for key, value in settings.items():
        k = key.replace("-", "_")
        pname, dot, pkey = k.partition(".")
        if k == "params":
            if not isinstance(value, dict):
                raise UserError("Sweep: 'params' must map plugin names to settings.")
            kept = {p: kv for p, kv in value.items() if p in plugin_names}
            if kept:
                file_cfg["params"] = kept
                applied.add(key)
        elif k in config.FIELDS or (dot and pname in plugin_names) or (not dot and k in flat):
            file_cfg[k] = value
            applied.add(key)
    return config.resolve({}, file_cfg, {}, source=where), applied


def expand(spec: dict, *, out: str | None = None, sets: dict | None = None) -> list[Entry]:
    """Every run of the sweep, in grid order, one per distinct run id."""
    from kebench import config

    grids = spec["grid"] if isinstance(spec["grid"], list) else [spec["grid"]]
    fixed = {**(spec.get("set") or {}), **(sets or {})}
    out = str(Path(out or spec.get("out") or "results").expanduser().absolute())  # jobs may start elsewhere
    entries: dict[str, Entry] = {}
    named, applied = set(fixed), set()
    for grid in grids:
        grid = {("seed" if k == "seeds" else k): v for k, v in grid.items()}
        named |= set(grid)
        keys = list(grid)
        for combo in itertools.product(*(_values(k, grid[k]) for k in keys)):
            chosen = dict(zip(keys, combo))
            settings = {**fixed, **chosen, "out": out}
            try:
                cfg, used = _resolve(settings)
            except UserError as exc:
                raise UserError(f"Sweep run {chosen}: {exc}") from None
            applied |= used
            entries.setdefault(cfg.run_id(), Entry(cfg, chosen))
    unused = sorted(named - applied - {"out"})
    if unused:
        valid = sorted(k.replace("_", "-") for k in config.FIELDS if k not in ("params",))
        raise UserError(f"Sweep setting(s) {unused} apply to none of the sweep's runs: they are neither "
                        f"run settings ({', '.join(valid)}) nor a setting of any method in the grid "
                        f"(see 'kebench list methods').")
    return list(entries.values())


def parse_sets(items, flag: str = "--set") -> dict:
    found = {}
    for item in items or ():
        if "=" not in item:
            raise UserError(f"{flag} expects KEY=VALUE, got '{item}'.")
        k, v = item.split("=", 1)
        found[k.strip()] = v.strip()
    return found


def config_from_dict(d) -> object:
    """A RunConfig from a resolved config mapping (a sweep job's payload), validated the same way as
    any run: the method is looked up in the registry, so a payload can never name code to import."""
    from kebench import config

    if not isinstance(d, dict):
        raise UserError(f"A run config must be a mapping, got {type(d).__name__}.")
    unknown = sorted(set(d) - set(config.FIELDS))
    if unknown:
        raise UserError(f"Run config has unknown key(s) {unknown}; valid: {', '.join(config.FIELDS)}.")
    cfg = config.from_dict(d)
    config.validate(cfg)
    return cfg


# ------------------------------------------------------------------------------ state
def _last_row(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.jsonl"
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def _progress(run_dir: Path) -> str:
    row = _last_row(run_dir)
    return f"pass {row['pass'] + 1} epoch {row['epoch']}" if row else ""


def _matched_entry(entry: Entry, result: dict) -> Entry | None:
    """The equal-total-epochs baseline a `budget: matched` run also owes (issue 11)."""
    cfg = entry.cfg
    if getattr(cfg, "budget", "paper") != "matched" or cfg.method_spec.regime.name == "single":
        return None
    from kebench.config import matched_config

    return Entry(matched_config(cfg, result["training"]["epochs"]), entry.combo)


def state_of(entry: Entry) -> tuple[str, str]:
    """(done | running | failed | pending, detail) of one run, read from its folder only."""
    from kebench import guard, results

    holder = guard.lock_holder(entry.dir)
    if holder is not None:
        return "running", f"pid {holder.get('pid')} on {holder.get('host')}; {_progress(entry.dir)}".rstrip("; ")
    if any(entry.dir.glob(f".*{results.TMP_SUFFIX}")):  # litter of a killed writer: removed under the lock
        try:
            with guard.RunLock(entry.dir, wait_s=0):
                results.remove_stale_temps(entry.dir)
        except (guard.RunBusy, OSError):
            pass  # a run just started (it cleans up itself), or the folder is read-only
    result = results.read_result(entry.dir)
    if result is not None and result.get("status") == "complete":
        matched = _matched_entry(entry, result)
        if matched is not None:
            state, detail = state_of(matched)
            if state != "done":
                return state, f"matched baseline {matched.run_id}: {state} {detail}".strip()
        primary = next((k for k in ("top1", "r@1") if k in result.get("final", {})), None)
        return "done", f"{primary} {result['final'][primary]:.4f}" if primary else ""
    if result is not None and result.get("status") == "failed":
        return "failed", str(result.get("error", ""))
    if any((entry.dir / n).is_file() for n in ("checkpoint.pt", "checkpoint.prev.pt")):
        return "pending", f"resumable from {_progress(entry.dir) or 'its checkpoint'}"
    return "pending", ""


def submitted_jobs(out) -> dict:
    """run id -> the submitit/SLURM job id it was last submitted as (from <out>/.submitit/jobs.jsonl)."""
    jobs = {}
    try:
        for line in (Path(out) / ".submitit" / "jobs.jsonl").read_text().splitlines():
            rec = json.loads(line)
            jobs[rec["run_id"]] = rec["job_id"]
    except (OSError, ValueError, KeyError):
        pass
    return jobs


def status_rows(entries: list[Entry]) -> list[dict]:
    rows = []
    jobs = submitted_jobs(entries[0].cfg.out) if entries else {}
    for e in entries:
        state, detail = state_of(e)
        if state == "pending" and e.run_id in jobs:
            detail = "; ".join(filter(None, [f"submitted as job {jobs[e.run_id]}", detail]))
        rows.append({"run_id": e.run_id, "method": e.cfg.method, "arch": e.cfg.arch, "data": e.cfg.data,
                     "seed": e.cfg.seed, "state": state, "detail": detail, "dir": str(e.dir)})
    return rows


def counts(rows: list[dict]) -> dict:
    return {s: sum(r["state"] == s for r in rows) for s in STATES}


def print_status(rows: list[dict], console) -> None:
    from rich.table import Table

    colour = {"done": "green", "running": "cyan", "failed": "red", "pending": "yellow"}
    table = Table(title="kebench sweep status")
    for col in ("run id", "method", "arch", "data", "seed", "state", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["run_id"], r["method"], r["arch"], r["data"], str(r["seed"]),
                      f"[{colour[r['state']]}]{r['state']}[/]", r["detail"])
    console.print(table)
    c = counts(rows)
    console.print(f"{len(rows)} runs: " + ", ".join(f"{c[s]} {s}" for s in STATES))


# ------------------------------------------------------------------------------ local executor
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
    return [sys.executable, "-m", "kebench.sweep", "--nproc", str(nproc)]


def unfinished(entries: list[Entry], retry_failed: bool, echo=print) -> list[Entry]:
    """The runs an executor should start: pending ones (and failed ones when retrying); runs another
    process is writing right now are skipped and named."""
    todo = []
    for e in entries:
        state, detail = state_of(e)
        if state == "pending" or (state == "failed" and retry_failed):
            todo.append(e)
        elif state == "running":
            echo(f"skip {e.run_id}: running elsewhere ({detail})")
    return todo


def run_local(entries: list[Entry], *, workers: int, gpus: list[str], gpus_per_run: int = 1,
              runs_per_gpu: int = 1, retry_failed: bool = False, echo=print) -> int:
    """Run the sweep's unfinished runs with `workers` processes at a time. Returns an exit code:
    0 all done, 1 some run failed or died, 3 stopped by a signal (rerun the sweep to continue)."""
    from kebench import guard

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
    started = 0
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
                else:
                    why = detail if state == "failed" else (
                        f"killed by {guard.signal_name(-rc)}" if rc < 0 else f"exit code {rc}")
                    problems.append(e)
                    echo(f"FAIL  {e.run_id}: {why}; log: {e.dir / WORKER_LOG}")
            if running:
                time.sleep(0.1)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if stop["signals"]:
        return guard.EXIT_INTERRUPTED
    return 1 if problems else 0


def run_inline(entries: list[Entry], *, retry_failed: bool = False, echo=print) -> int:
    """Run the unfinished runs one after another in this process: no worker start-up per run (importing
    torch costs more than a whole tiny CPU run). Same exit codes as run_local."""
    from kebench import guard

    todo = unfinished(entries, retry_failed, echo)
    echo(f"{len(entries)} runs in the sweep, {len(todo)} to run, in this process")
    failed = 0
    for i, e in enumerate(todo, 1):
        t0 = time.perf_counter()
        echo(f"[{i}/{len(todo)}] start {e.run_id}")
        try:
            records = run_config(e.cfg, show_progress=False)
        except guard.RunInterrupted as exc:
            echo(f"stopped {e.run_id} with a checkpoint ({exc}); rerun to resume it")
            return guard.EXIT_INTERRUPTED
        except guard.RunBusy:
            echo(f"skip {e.run_id}: another process holds it")
            continue
        except UserError as exc:
            records = [{"status": "failed", "error": str(exc)}]
        state, detail = state_of(e)
        if all(r["status"] == "complete" for r in records):
            echo(f"done  {e.run_id}: {detail} ({time.perf_counter() - t0:.1f} s)")
        else:
            failed += 1
            echo(f"FAIL  {e.run_id}: {detail or records[-1].get('error')}")
    return 1 if failed else 0


def worker_main(argv: list[str] | None = None) -> int:
    """One sweep run in its own process: `python -m kebench.sweep [--nproc N]`, config JSON on stdin.

    Exit codes: 0 complete, 1 failed, 2 user error, 3 interrupted (checkpointed), 4 busy."""
    import argparse

    from kebench import guard

    parser = argparse.ArgumentParser(prog="python -m kebench.sweep")
    parser.add_argument("--nproc", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_dict(json.loads(sys.stdin.read()))
        records = run_config(cfg, nproc=args.nproc)
    except guard.RunInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr, flush=True)
        return guard.EXIT_INTERRUPTED
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except json.JSONDecodeError as exc:
        print(f"error: the run config on stdin is not JSON: {exc}", file=sys.stderr, flush=True)
        return guard.EXIT_USAGE
    return 0 if all(r["status"] == "complete" for r in records) else guard.EXIT_FAILED


def run_config(cfg, nproc: int = 1, show_progress: bool = True) -> list[dict]:
    """Run (or resume, or skip if complete) one config, with `nproc` DDP processes when > 1."""
    if nproc > 1:
        from kebench.distributed import launch

        return launch(cfg, nproc, resume=True, show_progress=show_progress)
    from kebench.engine import execute_all

    return execute_all(cfg, resume=True, show_progress=show_progress)


# ------------------------------------------------------------------------------ the command
EXECUTOR_OPTIONS = [
    click.option("--executor", type=click.Choice(["local", "inline", "slurm", "submitit-local"]), default="local",
                 show_default=True, help="local: worker processes here; inline: one run after another in this "
                                         "process (tiny CPU runs); slurm: a submitit job array; "
                                         "submitit-local: the slurm code path on this machine."),
    click.option("--retry-failed", is_flag=True, help="Run failed runs again (a failure is otherwise final)."),
    click.option("--workers", type=click.IntRange(min=1), help="local/submitit-local: runs at once. Default: one per GPU, else 1."),
    click.option("--gpus", help="local: GPU ids to use, e.g. 0,1,2,3. Default: all visible."),
    click.option("--gpus-per-run", type=click.IntRange(min=1), default=1, show_default=True,
                 help="local: GPUs per run; more than 1 trains each run with DDP."),
    click.option("--runs-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
                 help="local: pack N runs on each GPU (small datasets at batch 32 leave a large GPU mostly "
                      "idle); the default --workers becomes GPUs x N."),
    click.option("--partition", help="slurm: partition."),
    click.option("--time", "time_min", type=click.IntRange(min=1), default=240, show_default=True, help="slurm: minutes per job."),
    click.option("--gpus-per-job", type=click.IntRange(min=0), default=1, show_default=True,
                 help="slurm: GPUs per job; more than 1 trains the run with DDP across them."),
    click.option("--array-parallelism", type=click.IntRange(min=1), default=16, show_default=True, help="slurm: jobs running at once."),
    click.option("--cpus-per-task", type=click.IntRange(min=1), help="slurm: CPU cores per job."),
    click.option("--mem-gb", type=float, help="slurm: memory per job."),
    click.option("--slurm-opt", multiple=True, help="slurm: any other sbatch option KEY=VALUE (account=..., qos=...)."),
    click.option("--setup", multiple=True, help="slurm: shell line run before each job (e.g. 'module load cuda')."),
    click.option("--wait", is_flag=True, help="slurm: wait for the jobs and report their outcome."),
]


def executor_options(f):
    """The executor flags `kebench sweep` and `kebench study run` share."""
    for opt in reversed(EXECUTOR_OPTIONS):
        f = opt(f)
    return f


def dispatch(entries: list[Entry], console, *, executor="local", retry_failed=False, workers=None, gpus=None,
             gpus_per_run=1, runs_per_gpu=1, partition=None, time_min=240, gpus_per_job=1, array_parallelism=16,
             cpus_per_task=None, mem_gb=None, slurm_opt=(), setup=(), wait=False) -> int:
    """Run the unfinished entries with the chosen executor; returns its exit code (see run_local)."""
    if runs_per_gpu > 1 and executor != "local":
        raise UserError(f"--runs-per-gpu packs runs of the local executor; with --executor {executor} each "
                        f"job gets its own GPUs (--gpus-per-job).")
    if executor == "inline":
        return run_inline(entries, retry_failed=retry_failed, echo=console.print)
    if executor == "local":
        gpu_list = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else _visible_gpus()
        n = local_workers(gpu_list, gpus_per_run, runs_per_gpu, workers)
        return run_local(entries, workers=n, gpus=gpu_list, gpus_per_run=gpus_per_run, runs_per_gpu=runs_per_gpu,
                         retry_failed=retry_failed, echo=console.print)
    from kebench import slurm

    return slurm.run_submitit(
        entries, cluster="slurm" if executor == "slurm" else "local", retry_failed=retry_failed,
        partition=partition, time_min=time_min, gpus_per_job=gpus_per_job, array_parallelism=array_parallelism,
        cpus_per_task=cpus_per_task, mem_gb=mem_gb, slurm_opts=parse_sets(slurm_opt, "--slurm-opt"), setup=list(setup),
        workers=workers, wait=wait or executor == "submitit-local", echo=console.print)


@click.command("sweep")
@click.argument("spec_file", type=click.Path())
@click.option("--status", "show_status", is_flag=True, help="Show done / running / failed / pending and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --status: one JSON list on stdout.")
@click.option("--out", help="Results folder (overrides the file's 'out').")
@click.option("--set", "sets", multiple=True, help="KEY=VALUE for every run (overrides the file's 'set').")
@executor_options
def sweep_cmd(spec_file, show_status, as_json, out, sets, **executor_opts):
    """Run a grid of runs; completed runs are skipped and interrupted ones resumed.

    \b
    sweep.yaml:
      grid: {method: [ce, ke], arch: [resnet18], data: [digits], seed: [0, 1, 2]}
      set: {epochs: 5, generations: 3}
      out: results/
    \b
    Examples:
      kebench sweep sweep.yaml --executor local --workers 2
      kebench sweep sweep.yaml --runs-per-gpu 4          # 4 runs share each GPU
      kebench sweep sweep.yaml --status
      kebench sweep sweep.yaml --executor slurm --partition gpu --time 240 --gpus-per-job 1 --array-parallelism 16
    """
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    spec = load_spec(spec_file)
    entries = expand(spec, out=out, sets=parse_sets(sets))
    if show_status:
        rows = status_rows(entries)
        if as_json:
            click.echo(json.dumps(rows, indent=1))
        else:
            print_status(rows, Console(highlight=False))
        return
    code = dispatch(entries, console, **executor_opts)
    rows = status_rows(entries)
    c = counts(rows)
    console.print(f"sweep: {len(rows)} runs: " + ", ".join(f"{c[s]} {s}" for s in STATES))
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(worker_main())
