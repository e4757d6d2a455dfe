"""What SLURM itself says: the checks made before a sweep is submitted (`sinfo`) and the state of
its jobs (`squeue` for the jobs slurmctld still holds, `sacct` for older ones).

No submitit here: `kebench sweep --status` works on a login node without it, and nothing here is
imported unless a sweep has been submitted to SLURM.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

from kebench.errors import UserError

#: submitit asks SLURM for its USR2 this long before the time limit (sbatch --signal=USR2@90).
SIGNAL_DELAY_S = 90
#: A job gets at least this much training between its start and that signal.
MIN_WORK_S = 60
#: SLURM states of a job that is over without having finished its run.
ENDED = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED",
         "REVOKED", "SPECIAL_EXIT"}
LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
        "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}


def _run(args: list[str], timeout: float = 30) -> tuple[int, str, str]:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, "", f"{args[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(args)} did not answer within {timeout:.0f} s"
    return proc.returncode, proc.stdout, proc.stderr


def minutes(limit: str) -> float:
    """A SLURM time limit as sinfo prints it ('1:00:00', '2-00:00:00', '30:00', 'infinite') in minutes."""
    if limit.strip().lower() in ("infinite", "unlimited", "n/a", ""):
        return math.inf
    days, _, clock = limit.strip().rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return (int(days or 0) * 24 + h) * 60 + m + s / 60


def check_submission(partition: str | None, time_min: int, checkpoint_every_s: float = 0.0) -> None:
    """Raise a UserError (exit 2) for what would make a submission fail or waste its jobs, before
    anything is submitted: no SLURM commands here, a controller that does not answer, a partition
    that does not exist, a time limit over the partition's or too short to checkpoint before
    SLURM's warning signal."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise UserError("--executor slurm needs SLURM's commands (sbatch, sinfo), which are not on this "
                        "machine's PATH. Submit from a login node of your cluster, or try the sweep here "
                        "with --executor submitit-local.")
    code, out, err = _run(["sinfo", "-h", "-o", "%P|%l|%a"])
    if code:
        raise UserError(f"SLURM does not answer here ('sinfo' exit {code}: {err.strip() or out.strip()}). "
                        f"Check that the cluster is up and that this machine can reach its controller "
                        f"(scontrol ping); nothing was submitted.")
    limits = {}
    for line in out.splitlines():
        name, _, rest = line.partition("|")
        limit, _, avail = rest.partition("|")
        limits[name.rstrip("*")] = (limit, avail)
    if partition and partition not in limits:
        raise UserError(f"SLURM partition '{partition}' does not exist on this cluster; it has "
                        f"{', '.join(sorted(limits)) or 'none'} ('sinfo -s' lists them). Nothing was submitted.")
    need = math.ceil((SIGNAL_DELAY_S + max(MIN_WORK_S, checkpoint_every_s)) / 60)
    if time_min < need:
        raise UserError(f"--time {time_min} minute(s) is too short: SLURM's warning signal comes "
                        f"{SIGNAL_DELAY_S} s before the limit, and a job needs at least one checkpoint "
                        f"interval ({max(MIN_WORK_S, checkpoint_every_s):.0f} s) of training before it, or "
                        f"it is requeued before it makes progress. Ask for --time {need} or more.")
    if partition:
        limit = minutes(limits[partition][0])
        if time_min > limit:
            raise UserError(f"--time {time_min} minutes is over partition '{partition}''s limit of "
                            f"{limits[partition][0]}; ask for at most {int(limit)} (the runs checkpoint and "
                            f"requeue themselves, so a shorter job loses nothing).")


def _rows(text: str, names: list[str]) -> list[dict]:
    return [dict(zip(names, (v.strip() for v in line.split("|")))) for line in text.splitlines() if line.strip()]


def job_states(job_ids) -> dict[str, dict]:
    """job id ('123_4', or '123' for a single job) -> {state, reason, restarts, node, exit}, from
    squeue (jobs slurmctld still holds, requeue count included) and sacct for the others. Jobs
    SLURM no longer knows (or no SLURM here) are left out."""
    ids = sorted({str(j) for j in job_ids})
    if not ids or shutil.which("squeue") is None:
        return {}
    parents = sorted({j.split("_")[0] for j in ids})
    found: dict[str, dict] = {}
    code, out, _ = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(parents),
                         "-O", "JobArrayID:|,State:|,Reason:|,RestartCnt:|,NodeList:"])
    if code == 0:
        for row in _rows(out, ["id", "state", "reason", "restarts", "node"]):
            row["restarts"] = int(row["restarts"]) if row["restarts"].isdigit() else 0
            found[row["id"]] = row
    missing = [j for j in ids if j not in found]
    if missing and shutil.which("sacct"):
        code, out, _ = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,ExitCode,NodeList", "-j",
                             ",".join(sorted({j.split("_")[0] for j in missing}))])
        if code == 0:
            for row in _rows(out, ["id", "state", "exit", "node"]):
                if row["id"] in missing:
                    row["state"] = row["state"].split()[0]  # 'CANCELLED by 0' -> CANCELLED
                    found[row["id"]] = {**row, "restarts": 0, "reason": ""}
    return {j: found[j] for j in ids if j in found}


def log_of(folder: Path, job_id: str) -> Path | None:
    """The stderr log submitit gives a job (<folder>/<job id>/<job id>_0_log.err), if it exists."""
    path = Path(folder) / job_id / f"{job_id}_0_log.err"
    if path.exists():
        return path
    return next(iter(sorted(Path(folder).glob(f"**/{job_id}_*_log.err"))), None)


def describe(job_id: str, info: dict, log: Path | None) -> str:
    """One line for --status: 'SLURM 12_3 RUNNING on node1, requeued 1x' and the like."""
    state = info["state"]
    if state == "PENDING" and info.get("restarts"):
        state = "REQUEUED"  # requeued and waiting to start again
    text = f"SLURM {job_id} {state}"
    if info.get("state") == "PENDING" and info.get("reason") not in (None, "", "None"):
        text += f" ({info['reason']})"
    if info.get("state") == "RUNNING" and info.get("node"):
        text += f" on {info['node']}"
    if info.get("restarts"):
        text += f", requeued {info['restarts']}x"
    if info.get("exit") and info["exit"] not in ("0:0",) and state in ENDED:
        text += f", exit {info['exit']}"
    if state in ENDED and log is not None:
        text += f"; log: {log}"
    return text
