"""Sweeps and studies on a real one-node SLURM cluster (tests/slurm_cluster.py): the job array, the
#SBATCH options the flags become, preemption and requeue, scancel, DDP ranks started by srun, a
study, and the submissions refused before anything is queued (issue 27)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml

import slurm_cluster as sc
from kebench.grid import sweep
from kebench.run import guard, results

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]  # one worker holds the cluster

TINY = {"method": "ce", "data": "synthetic", "arch": "test_resnet", "batch_size": 16, "device": "cpu",
        "checkpoint_every_s": 0}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs inherit the submitter's environment


def _spec(tmp_path, grid, set_=None, name="sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"grid": grid, "set": {**TINY, **(set_ or {})}, "out": str(tmp_path / "results")}))
    return path


def _entries(path):
    return sweep.expand(sweep.load_spec(path))


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _close(a: dict, b: dict) -> None:
    """Two results' final metrics agree within round-off (different processes, same numbers)."""
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], float):
            assert math.isclose(a[k], b[k], rel_tol=1e-5, abs_tol=1e-6), (k, a[k], b[k])
        else:
            assert a[k] == b[k], k


def _reference(run_cfg, entry, tmp_path):
    """The same run done here, in this process (the local result a SLURM run must equal)."""
    return run_cfg(dataclasses.replace(entry.cfg, out=str(tmp_path / "reference")))


def _wait_until(ready, timeout_s=240, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _status(cli_run, path) -> dict:
    code, out, _ = cli_run(["sweep", str(path), "--status", "--json"])
    assert code == 0
    return {r["run_id"]: r for r in json.loads(out)}


def _submitted_script(out: Path) -> str:
    scripts = sorted((out / ".submitit").glob("**/*_submission.sh"))
    assert scripts, "submitit wrote no submission script"
    return scripts[-1].read_text()


# ------------------------------------------------------------------------------ 1. the job array
def test_sweep_is_one_job_array_with_the_flags_and_equals_local_runs(slurm_cluster, tmp_path, cli_run, run_cfg):
    path = _spec(tmp_path, {"seed": [0, 1]}, {"epochs": 1})
    code, _, err = cli_run([
        "sweep", str(path), "--executor", "slurm", "--partition", sc.PARTITION, "--time", "5", "--gpus-per-job", "0",
        "--cpus-per-task", "1", "--mem-gb", "0.5", "--array-parallelism", "2", "--slurm-opt", "account=kbacct",
        "--slurm-opt", "qos=normal", "--slurm-opt", f"constraint={sc.FEATURE}", "--slurm-opt", f"gres={sc.GRES}:1",
        "--slurm-opt", "comment=kebench-test", "--setup", "echo kebench-setup-line", "--wait"])
    assert code == 0, err
    array = re.search(r"as SLURM job (\d+)", err).group(1)
    script = _submitted_script(tmp_path / "results")
    for line in (f"--partition={sc.PARTITION}", "--time=5", "--cpus-per-task=1", "--mem=512M", "--account=kbacct",
                 "--qos=normal", f"--constraint={sc.FEATURE}", f"--gres={sc.GRES}:1", "--comment=kebench-test",
                 "--array=0-1%2", "--ntasks-per-node=1", "--nodes=1", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in script, line
    assert "--gpus-per-node" not in script and "echo kebench-setup-line" in script
    # SLURM ran it as one array: two tasks of one job, both completed
    jobs = sweep.submitted_jobs(tmp_path / "results")
    assert sorted(jobs.values()) == [f"{array}_0", f"{array}_1"]
    shown = _wait_until(lambda: (lambda t: t if t.count("JobState=COMPLETED") == 2 else None)(
        slurm_cluster.cmd("scontrol", "show", "job", array)), 120, "both array tasks to complete")
    assert shown.count("JobState=COMPLETED") == 2 and shown.count(f"ArrayJobId={array}") == 2
    assert "Account=kbacct" in shown and f"Features={sc.FEATURE}" in shown
    for entry in _entries(path):
        assert sweep.state_of(entry)[0] == "done"
        _close(results.read_result(entry.dir)["final"], _reference(run_cfg, entry, tmp_path)["final"])
    # rerunning submits nothing: every run is done
    code, _, err = cli_run(["sweep", str(path), "--executor", "slurm", "--partition", sc.PARTITION, "--time", "5"])
    assert code == 0 and "nothing to run" in err
    assert sorted(sweep.submitted_jobs(tmp_path / "results").values()) == [f"{array}_0", f"{array}_1"]


# ------------------------------------------------------------------------------ refused before submitting
def _nothing_submitted(cluster, tmp_path, before: set):
    assert not (tmp_path / "results" / ".submitit").exists() or not any((tmp_path / "results" / ".submitit").iterdir())
    assert set(cluster.jobs()) == before


def test_bad_partition_short_time_and_unreachable_cluster_submit_nothing(slurm_cluster, tmp_path, cli_run, monkeypatch):
    path = _spec(tmp_path, {"seed": [0, 1]}, {"epochs": 1})
    before = set(slurm_cluster.jobs())
    base = ["sweep", str(path), "--executor", "slurm", "--gpus-per-job", "0"]
    code, _, err = cli_run(base + ["--partition", "nosuch", "--time", "5"])
    assert code == 2 and "partition 'nosuch' does not exist" in err and sc.PARTITION in err and "Traceback" not in err
    _nothing_submitted(slurm_cluster, tmp_path, before)
    code, _, err = cli_run(base + ["--partition", sc.PARTITION, "--time", "2"])
    assert code == 2 and "--time 2 minute(s) is too short" in err and "--time 3 or more" in err
    code, _, err = cli_run(base + ["--partition", sc.PARTITION, "--time", "5", "--set", "checkpoint_every_s=600"])
    assert code == 2 and "(600 s)" in err and "--time 12 or more" in err
    code, _, err = cli_run(base + ["--partition", sc.PARTITION, "--time", "90"])  # the partition allows 60
    assert code == 2 and "over partition 'kbtest''s limit of 1:00:00" in err
    _nothing_submitted(slurm_cluster, tmp_path, before)
    # SLURM itself refuses what only it can judge (here: more memory than the node has): one error, nothing left
    code, _, err = cli_run(base + ["--partition", sc.PARTITION, "--time", "5", "--mem-gb", "100000"])
    assert code == 2 and "SLURM refused the submission, so nothing was queued" in err and "Traceback" not in err
    _nothing_submitted(slurm_cluster, tmp_path, before)
    # a cluster that does not answer: a slurm.conf whose controller port nobody listens on
    dead = tmp_path / "dead.conf"
    text = slurm_cluster.conf.read_text()
    dead.write_text(re.sub(r"SlurmctldPort=\d+", f"SlurmctldPort={sc._free_port()}", text) + "MessageTimeout=2\n")
    monkeypatch.setenv("SLURM_CONF", str(dead))
    code, _, err = cli_run(base + ["--partition", sc.PARTITION, "--time", "5"])
    assert code == 2 and "SLURM does not answer here" in err and "nothing was submitted" in err
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    _nothing_submitted(slurm_cluster, tmp_path, before)


# ------------------------------------------------------------------------------ 2. preemption
def _freeze_once_it_has_trained(cluster, entry, job_id) -> None:
    """Wait until the run holds its folder and has written a checkpoint and an epoch (so a stop now
    leaves work to resume), then freeze the job (SIGSTOP) so that however fast this machine is, the
    test acts on a running job; `_thaw` lets it go on."""
    def trained():
        return ((entry.dir / "checkpoint.pt").exists() and (entry.dir / "metrics.jsonl").exists()
                and entry.dir.joinpath("metrics.jsonl").read_text().strip() != "")
    _wait_until(trained, 240, f"{job_id} to train an epoch")
    os.kill(_trainer(entry), signal.SIGSTOP)  # the process itself: `scancel --signal=STOP` makes the job STOPPED


def _trainer(entry) -> int:
    """The pid of the job's process that trains the run (it holds the run folder's lock)."""
    return int(_wait_until(lambda: guard.lock_holder(entry.dir), 60, "the run's lock")["pid"])


def _thaw(entry) -> None:
    os.kill(_trainer(entry), signal.SIGCONT)


def test_requeue_and_the_time_limit_signal_resume_to_the_uninterrupted_result(slurm_cluster, tmp_path, cli_run,
                                                                              run_cfg):
    """Task 0 gets `scontrol requeue` (SIGTERM, as preemption), task 1 SLURM's pre-time-limit signal
    (USR2, `scancel --signal`): each checkpoints, is requeued, resumes, and ends with the numbers of
    an uninterrupted run; --status shows them running, then requeued, then done."""
    epochs = 6
    path = _spec(tmp_path, {"seed": [0, 1]}, {"epochs": epochs})
    code, _, err = cli_run(["sweep", str(path), "--executor", "slurm", "--partition", sc.PARTITION, "--time", "5",
                            "--gpus-per-job", "0", "--cpus-per-task", "1"])
    assert code == 0, err
    entries = _entries(path)
    jobs = sweep.submitted_jobs(tmp_path / "results")
    by_signal = {"requeue": entries[0], "USR2": entries[1]}
    for how, entry in by_signal.items():
        job = jobs[entry.run_id]
        _freeze_once_it_has_trained(slurm_cluster, entry, job)
        row = _status(cli_run, path)[entry.run_id]
        assert row["state"] == "running" and row["slurm"]["state"] == "RUNNING", row
        assert f"SLURM {job} RUNNING on {slurm_cluster.node}" in row["detail"], row
        if how == "requeue":
            _thaw(entry)
            slurm_cluster.cmd("scontrol", "requeue", job)
        else:
            slurm_cluster.cmd("scancel", "--signal=USR2", job)  # delivered when the job goes on
            _thaw(entry)
    # both come back: SLURM counts one restart each, and --status says so while they wait
    for how, entry in by_signal.items():
        job = jobs[entry.run_id]
        seen = _wait_until(lambda: (lambda r: r if r["slurm"] and r["slurm"]["restarts"] >= 1 else None)(
            _status(cli_run, path)[entry.run_id]), 120, f"{job} to be requeued")
        assert f"SLURM {job}" in seen["detail"] and "requeued 1x" in seen["detail"], seen
    # a rerun while they are queued or running submits nothing twice
    code, _, err = cli_run(["sweep", str(path), "--executor", "slurm", "--partition", sc.PARTITION, "--time", "5"])
    assert code == 0 and "nothing to run" in err and "submitted" not in err, err
    for entry in entries:
        _wait_until(lambda: sweep.state_of(entry)[0] == "done", 300, f"{entry.run_id} to finish")
    for how, entry in by_signal.items():
        job = jobs[entry.run_id]
        shown = _wait_until(lambda: (lambda t: t if "JobState=COMPLETED" in t else None)(
            slurm_cluster.cmd("scontrol", "show", "job", job)), 120, f"{job} to complete")
        assert "Restarts=1" in shown, (how, shown)
        # no epoch lost or run twice, and the numbers of an uninterrupted run
        assert [r["epoch"] for r in _rows(entry.dir)] == list(range(1, epochs + 1))
        _close(results.read_result(entry.dir)["final"], _reference(run_cfg, entry, tmp_path)["final"])
        log = "".join(p.read_text() for p in (tmp_path / "results" / ".submitit").glob(f"{job}/*_log.*"))
        if how == "USR2":
            assert "stopped by SIGUSR2" in log and "handing over to submitit" in log, log[-2000:]
        else:
            assert "stopped by SIGTERM" in log, log[-2000:]
    # nothing duplicated: one submission per run, and the rerun has nothing to do
    assert sweep.submitted_jobs(tmp_path / "results") == jobs
    code, _, err = cli_run(["sweep", str(path), "--executor", "slurm", "--partition", sc.PARTITION, "--time", "5"])
    assert code == 0 and "nothing to run" in err


# ------------------------------------------------------------------------------ 3. scancel, pending, failed
def test_scancel_of_one_task_is_reported_and_only_it_is_resubmitted(slurm_cluster, tmp_path, cli_run, run_cfg):
    """Three tasks on a two-core node: one waits (pending), one is cancelled while it runs, one fails
    by itself (a learning rate that makes the loss non-finite). --status reports each from SLURM and
    the run folders, with the path of the log; rerunning resubmits only the cancelled run."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"grid": [{"seed": [0, 1]}, {"seed": [2], "lr": [1.0e12]}],
                                    "set": {**TINY, "epochs": 4}, "out": str(tmp_path / "results")}))
    code, _, err = cli_run(["sweep", str(path), "--executor", "slurm", "--partition", sc.PARTITION, "--time", "5",
                            "--gpus-per-job", "0", "--cpus-per-task", "1", "--array-parallelism", "3"])
    assert code == 0, err
    victim, survivor, failing = _entries(path)
    jobs = sweep.submitted_jobs(tmp_path / "results")
    states = _status(cli_run, path)
    assert [states[e.run_id]["state"] for e in (victim, survivor, failing)].count("pending") >= 1
    assert any("PENDING" in (r["slurm"] or {}).get("state", "") for r in states.values()), states
    _freeze_once_it_has_trained(slurm_cluster, victim, jobs[victim.run_id])
    assert _status(cli_run, path)[victim.run_id]["state"] == "running"
    _thaw(victim)
    slurm_cluster.cmd("scancel", jobs[victim.run_id])
    for entry in (survivor, failing):
        _wait_until(lambda: sweep.state_of(entry)[0] in ("done", "failed"), 300, f"{entry.run_id} to end")
    rows = _wait_until(lambda: (lambda r: r if r[victim.run_id]["state"] == "failed" else None)(
        _status(cli_run, path)), 120, "the cancelled task to be reported")
    cancelled = rows[victim.run_id]
    assert cancelled["slurm"]["state"] == "CANCELLED" and f"SLURM {jobs[victim.run_id]} CANCELLED" in cancelled["detail"]
    log = re.search(r"log: ([^;\s]+)", cancelled["detail"]).group(1)
    assert Path(log).is_file() and "rerun the sweep to resubmit it" in cancelled["detail"]
    assert rows[survivor.run_id]["state"] == "done"
    assert rows[failing.run_id]["state"] == "failed" and "log: " in rows[failing.run_id]["detail"]
    assert Path(re.search(r"log: ([^;\s]+)", rows[failing.run_id]["detail"]).group(1)).is_file()
    code, out, _ = cli_run(["sweep", str(path), "--status"])
    assert code == 0 and "CANCELLED" in out and "3 runs: 1 done, 0 running, 2 failed, 0 pending" in out
    # the rerun resubmits the cancelled run only (the failed one needs --retry-failed); it resumes
    code, _, err = cli_run(["sweep", str(path), "--executor", "slurm", "--partition", sc.PARTITION, "--time", "5",
                            "--gpus-per-job", "0", "--cpus-per-task", "1", "--wait"])
    assert code == 0, err
    assert "submitted 1 run(s)" in err
    again = sweep.submitted_jobs(tmp_path / "results")
    assert again[victim.run_id] != jobs[victim.run_id]
    assert {k: v for k, v in again.items() if k != victim.run_id} == {
        k: v for k, v in jobs.items() if k != victim.run_id}
    assert sweep.state_of(victim)[0] == "done"
    assert [r["epoch"] for r in _rows(victim.dir)] == [1, 2, 3, 4]
    _close(results.read_result(victim.dir)["final"], _reference(run_cfg, victim, tmp_path)["final"])


# ------------------------------------------------------------------------------ 4. DDP ranks by srun
def test_two_process_run_has_its_ranks_started_by_srun(slurm_cluster, tmp_path, cli_run):
    from kebench.run import launch

    path = _spec(tmp_path, {"seed": [0]}, {"epochs": 1})
    code, _, err = cli_run(["sweep", str(path), "--executor", "slurm", "--partition", sc.PARTITION, "--time", "5",
                            "--gpus-per-job", "0", "--nproc", "2", "--cpus-per-task", "1", "--wait"])
    assert code == 0, err
    script = _submitted_script(tmp_path / "results")
    assert "#SBATCH --ntasks-per-node=2\n" in script and "srun" in script
    (entry,) = _entries(path)
    job = sweep.submitted_jobs(tmp_path / "results")[entry.run_id]
    shown = slurm_cluster.cmd("scontrol", "show", "job", job)
    assert "NumTasks=2" in shown or "NumCPUs=2" in shown, shown
    result = results.read_result(entry.dir)
    assert result["distributed"]["world_size"] == 2 and result["distributed"]["backend"] == "gloo", result["distributed"]
    local = launch.launch(dataclasses.replace(entry.cfg, out=str(tmp_path / "local")), 2, show_progress=False)[-1]
    _close(result["final"], local["final"])


# ------------------------------------------------------------------------------ 5. a study
STUDY = """
title: "Tiny SLURM study"
paper: "a test"
about: "CE and KE on synthetic data"
scales:
  mini:
    note: "synthetic, test_resnet, 1 epoch per pass"
    grid:
      - {method: [ce, ke], seed: [0]}
    set: {data: synthetic, arch: test_resnet, epochs: 1, batch_size: 16, generations: 2, checkpoint_every_s: 0,
          device: cpu}
tables:
  - {kind: classification, title: "Top-1", generation: "1,2"}
"""


def test_study_on_slurm_writes_the_report_inline_writes(slurm_cluster, tmp_path, cli_run):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(STUDY)
    code, _, err = cli_run(["study", "run", str(spec), "--out", str(tmp_path / "slurm"), "--executor", "slurm",
                            "--partition", sc.PARTITION, "--time", "5", "--gpus-per-job", "0", "--wait"])
    assert code == 0, err
    assert "as SLURM job" in err and "study: 2 runs: 2 done" in err
    code, _, err = cli_run(["study", "run", str(spec), "--out", str(tmp_path / "inline"), "--executor", "inline"])
    assert code == 0, err

    def report(folder):
        text = (folder / "report" / "report.md").read_text()
        return re.sub(r"\d+\.\d{3,}", lambda m: f"{float(m.group()):.2f}", text.replace(str(folder), "OUT"))

    assert report(tmp_path / "slurm") == report(tmp_path / "inline")


# ------------------------------------------------------------------------------ SLURM's own words, parsed
def test_time_limits_and_status_lines_read_as_slurm_writes_them(tmp_path):
    from kebench.grid import scheduler

    assert [scheduler.minutes(t) for t in ("1:00:00", "30:00", "2-00:00:00", "45", "1-02:03:00")] == [
        60, 30, 2880, 45, 1563]
    assert scheduler.minutes("infinite") == math.inf and scheduler.minutes("UNLIMITED") == math.inf
    log = tmp_path / "7_1" / "7_1_0_log.err"
    log.parent.mkdir()
    log.write_text("")
    assert scheduler.log_of(tmp_path, "7_1") == log and scheduler.log_of(tmp_path, "7_2") is None
    assert scheduler.describe("7_0", {"state": "PENDING", "reason": "Resources", "restarts": 0}, None) == \
        "SLURM 7_0 PENDING (Resources)"
    assert scheduler.describe("7_0", {"state": "PENDING", "reason": "BeginTime", "restarts": 2}, None) == \
        "SLURM 7_0 REQUEUED (BeginTime), requeued 2x"
    assert scheduler.describe("7_1", {"state": "CANCELLED", "reason": "", "restarts": 0, "exit": "0:15"}, log) == \
        f"SLURM 7_1 CANCELLED, exit 0:15; log: {log}"
