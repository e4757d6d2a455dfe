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
from kebench.run import results

pytestmark = pytest.mark.slurm

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
