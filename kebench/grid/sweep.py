"""A sweep: a grid of runs that survives anything (its grid and the state of its runs).

A sweep file names a grid; every combination becomes one resolved `RunConfig`, and its run id
(a hash of everything that changes the numbers) names its folder. So a sweep can be re-run at any
time: completed runs are skipped, interrupted ones resume from their checkpoint, and two sweeps
over the same folder never run the same id at once (each run holds a lock on its folder).

    grid: {method: [ce, ke], arch: [resnet18], data: [digits], seed: [0, 1, 2]}
    set: {epochs: 5, generations: 3}      # every run; plugin settings only where the method has them
    out: results/

Executors: `local` (N worker processes, one run each, one GPU per worker, or `--runs-per-gpu` runs
packed on each GPU), `slurm` (a submitit
job array; preempted or timed-out jobs checkpoint and requeue themselves, see kebench/grid/slurm.py)
and `submitit-local` (the slurm code path on this machine, for trying a sweep before submitting).
The executors live in kebench/grid/executors.py, the command in kebench/cli/grid.py. This module
imports nothing heavy at import time: `kebench --help` stays fast.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from kebench.data.spec import headline_metric
from kebench.errors import UserError, did_you_mean
from kebench.params import coerce

SPEC_KEYS = ("grid", "set", "out", "name")
STATES = ("done", "running", "failed", "pending")
WORKER_LOG = "sweep.log"
#: Why a run failed before it could write a result.json (a user error, a crash): written by the
#: sweep's worker, read by `state_of`, removed when `--retry-failed` starts the run again.
FAILURE = "failure.json"


@dataclass
class SweepRun:
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
def parse_seeds(text: str) -> list[int]:
    """`0,1,2` or `0-4` (what `--seeds` and a sweep's `seed:` string accept) -> seeds."""
    try:
        seeds = []
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-")
                seeds.extend(range(int(lo), int(hi) + 1))
            elif part.strip():
                seeds.append(int(part))
        if not seeds or min(seeds) < 0:
            raise ValueError
        return seeds
    except ValueError:
        raise UserError(f"--seeds expects non-negative integers like '0,1,2' or '0-4', got '{text}'.") from None


def load_spec(path) -> dict:
    from kebench.config import load_yaml

    spec = load_yaml(path, what="Sweep file", hint="Give the path of an existing sweep YAML file.")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise UserError(f"Sweep file {path}: unknown top-level key(s) {unknown}{did_you_mean(unknown, SPEC_KEYS)}. "
                        f"A sweep file has "
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
        return parse_seeds(value)
    if isinstance(value, list):
        if not value:
            raise UserError(f"Sweep grid: '{key}' has an empty list of values.")
        return value
    return [value]


def _plugin_keys(settings: dict) -> tuple[set, set]:
    """(flat plugin keys, plugin names) of the method these settings select."""
    from kebench.config import method_spec

    method = method_spec(settings.get("method"), settings.get("data") or "digits")
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
            settings = {**settings, key: coerce(key, settings[key], "", where)}
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


def expand(spec: dict, *, out: str | None = None, sets: dict | None = None) -> list[SweepRun]:
    """Every run of the sweep, in grid order, one per distinct run id."""
    from kebench import config

    grids = spec["grid"] if isinstance(spec["grid"], list) else [spec["grid"]]
    fixed = {**(spec.get("set") or {}), **(sets or {})}
    out = str(Path(out or spec.get("out") or "results").expanduser().absolute())  # jobs may start elsewhere
    entries: dict[str, SweepRun] = {}
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
            entries.setdefault(cfg.run_id(), SweepRun(cfg, chosen))
    unused = sorted(named - applied - {"out"})
    if unused:
        valid = sorted(k.replace("_", "-") for k in config.FIELDS if k not in ("params",))
        known = {*config.FIELDS, *(k for e in entries.values() for p in e.cfg.params.values() for k in p)}
        raise UserError(f"Sweep setting(s) {unused} apply to none of the sweep's runs"
                        f"{did_you_mean(unused, sorted(known))}: they are neither "
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


def _matched_entry(entry: SweepRun, result: dict) -> SweepRun | None:
    """The equal-budget baseline a `budget: matched` run also owes (kebench/run/budget.py)."""
    cfg = entry.cfg
    if getattr(cfg, "budget", "paper") != "matched" or cfg.method_spec.regime.name == "single":
        return None
    from kebench.run import budget

    return SweepRun(budget.planned(cfg, result), entry.combo)


def state_of(entry: SweepRun) -> tuple[str, str]:
    """(done | running | failed | pending, detail) of one run, read from its folder only."""
    from kebench.run import guard
    from kebench.run import results

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
        primary = headline_metric(result.get("task"))
        return "done", f"{primary} {result['final'][primary]:.4f}" if primary in result.get("final", {}) else ""
    if result is not None and result.get("status") == "failed":
        return "failed", str(result.get("error", ""))
    failure = read_failure(entry.dir)
    if failure is not None:
        return "failed", failure
    if any((entry.dir / n).is_file() for n in ("checkpoint.pt", "checkpoint.prev.pt")):
        return "pending", f"resumable from {_progress(entry.dir) or 'its checkpoint'}"
    return "pending", ""


def record_failure(run_dir, reason: str, exit_code: int) -> None:
    """Remember why a run failed without a result.json, so `--status` and the summary count it."""
    from kebench.run import results

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    results.write_json(Path(run_dir) / FAILURE, {"error": reason.strip() or f"exit code {exit_code}",
                                                 "exit_code": exit_code})


def read_failure(run_dir) -> str | None:
    try:
        return str(json.loads((Path(run_dir) / FAILURE).read_text())["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def unfinished(entries: list[SweepRun], retry_failed: bool, echo=print, claim: bool = True) -> list[SweepRun]:
    """The runs an executor should start: pending ones (and failed ones when retrying); runs another
    process is writing right now are skipped and named. `claim`: the caller starts them now, so a
    retried run's recorded failure is cleared."""
    todo = []
    for e in entries:
        state, detail = state_of(e)
        if state == "pending" or (state == "failed" and retry_failed):
            if claim:
                (e.dir / FAILURE).unlink(missing_ok=True)  # a retry starts afresh; its outcome decides
            todo.append(e)
        elif state == "running":
            echo(f"skip {e.run_id}: running elsewhere ({detail})")
    return todo


def progress_line(done: int, failed: int, running: int, pending: int, took: list, workers: int = 1) -> str:
    """'sweep: 3 done, 1 failed, 2 running, 4 pending; ETA 5m10s' (the ETA from the mean time of the
    runs finished so far, shared out over the workers)."""
    from kebench.run.progress import duration

    line = f"sweep: {done} done, {failed} failed, {running} running, {pending} pending"
    if took and (pending or running):
        line += f"; ETA {duration(sum(took) / len(took) * (pending + running) / max(workers, 1))}"
    return line


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


def status_rows(entries: list[SweepRun]) -> list[dict]:
    """One row per run: its state read from its folder, refined by what SLURM says of the job it was
    last submitted as (running, requeued, or ended without finishing: cancelled, failed, timed out)."""
    rows = []
    jobs = submitted_jobs(entries[0].cfg.out) if entries else {}
    slurm = {}
    if jobs:
        from kebench.grid import scheduler

        slurm = scheduler.job_states(jobs[e.run_id] for e in entries if e.run_id in jobs)
    for e in entries:
        state, detail = state_of(e)
        job = jobs.get(e.run_id)
        info = slurm.get(job)
        if info is not None and state != "done":
            log = scheduler.log_of(Path(e.cfg.out) / ".submitit", job)
            if state == "pending" and info["state"] in ("RUNNING", "COMPLETING", "CONFIGURING"):
                state = "running"
            elif state == "pending" and info["state"] in scheduler.ENDED:
                state = "failed"  # the scheduler ended the job; rerunning the sweep resubmits the run
                detail = "; ".join(filter(None, [detail, "rerun the sweep to resubmit it"]))
            line = scheduler.describe(job, info, log)
            if state == "failed" and log is not None and "log:" not in line:
                line += f"; log: {log}"
            detail = "; ".join(filter(None, [line, detail]))
        elif state == "pending" and job:
            detail = "; ".join(filter(None, [f"submitted as job {job}", detail]))
        rows.append({"run_id": e.run_id, "method": e.cfg.method, "arch": e.cfg.arch, "data": e.cfg.data,
                     "seed": e.cfg.seed, "state": state, "detail": detail, "dir": str(e.dir),
                     "slurm": ({"job": job, **{k: info[k] for k in ("state", "reason", "restarts") if k in info}}
                               if info is not None else None)})
    return rows


def counts(rows: list[dict]) -> dict:
    return {s: sum(r["state"] == s for r in rows) for s in STATES}


def exit_code(entries: list[SweepRun], *, stopped: bool = False, died: bool = False, echo=None) -> int:
    """The exit code of a local or inline sweep, from the states its runs are in when it ends
    (docs/sweeps.md): 0 only when every run is done; 3 when a signal stopped the sweep or a run
    stopped resumable (rerun to continue); 1 when a run failed or its worker died; 4 when the only
    runs not done are still running in another process (an orphaned worker of a killed sweep, or
    a second sweep): nothing failed, but they are not done yet."""
    from kebench.run import guard

    if stopped:
        return guard.EXIT_INTERRUPTED
    c = counts(status_rows(entries))
    if died or c["failed"]:
        return guard.EXIT_FAILED
    if c["pending"]:
        return guard.EXIT_INTERRUPTED
    if c["running"]:
        if echo is not None:
            echo(f"{c['running']} run(s) still running in another process: the sweep is not done yet "
                 f"(exit {guard.EXIT_BUSY}); rerun it, or see --status, once they end")
        return guard.EXIT_BUSY
    return 0


# ------------------------------------------------------------------------------ checks before any run
def preflight(entries: list[SweepRun]) -> list[str]:
    """Check every run's dataset before the first worker starts, as `kebench run` would on its own:
    the data root is set and exists, and holds the dataset's layout (its annotation files, read by
    the loader's own listers; images are checked by `kebench data check`). Each distinct (dataset,
    root) is checked once; config values and network names were checked when the grid was
    expanded. Returns one paragraph per problem, naming how many runs it stops."""
    import os

    from kebench.data import paper

    problems: dict[str, list[str]] = {}
    rootless: dict[str, list[str]] = {}  # dataset -> run ids that name no data root at all
    seen: dict[tuple, str | None] = {}
    for e in entries:
        cfg = e.cfg
        if cfg.data not in paper.PAPER:
            continue
        if not (cfg.data_root or os.environ.get("KEBENCH_DATA")):
            rootless.setdefault(cfg.data, []).append(e.run_id)
            continue
        key = (cfg.data, cfg.data_root)
        if key not in seen:
            try:
                paper.list_dataset(cfg.data, paper.data_root(cfg.data_root, paper.PAPER[cfg.data]))
                seen[key] = None
            except UserError as exc:
                seen[key] = str(exc)
        if seen[key] is not None:
            problems.setdefault(seen[key], []).append(e.run_id)
    found = []
    if rootless:
        n = sum(len(ids) for ids in rootless.values())
        found.append(f"{n} run(s) read {', '.join(rootless)} from a local folder, but no data root is set "
                     f"(data_root, or the KEBENCH_DATA environment variable). 'kebench data check NAME "
                     f"--data-root PATH' shows a dataset's expected layout and checks a copy.")
    return found + [f"{len(ids)} run(s) (e.g. {ids[0]}): {msg}" for msg, ids in problems.items()]


def check_before_running(entries: list[SweepRun], what: str = "sweep") -> None:
    """Refuse the whole sweep, before any run starts, when a run could not start (see `preflight`)."""
    found = preflight(entries)
    if found:
        shown = "\n".join(found[:5]) + (f"\n... and {len(found) - 5} more" if len(found) > 5 else "")
        raise UserError(f"The {what} was not started: {sum(int(f.split(' ', 1)[0]) for f in found)} of the "
                        f"{len(entries)} runs it would start cannot start.\n{shown}\nIn a {what}, give a run setting "
                        f"such as the data root with --set data_root=PATH (or under 'set:' in the file).")


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
