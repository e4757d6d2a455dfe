"""kebench sweep: grid expansion, stable ids, status, the local executor surviving a SIGKILLed
worker, and submitit's local executor requeueing a preempted job that resumes from its checkpoint."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from kebench import config
from kebench.grid import executors
from kebench.run import guard
from kebench.run import results
from kebench.grid import sweep
from kebench.cli import main as cli_main
from kebench.errors import UserError

TINY = {"data": "synthetic", "arch": "test_resnet", "batch_size": 16, "device": "cpu"}


def _spec(tmp_path, grid, set_=None, name="sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"grid": grid, "set": {**TINY, **(set_ or {})}, "out": str(tmp_path / "results")}))
    return path


def _entries(path, **kw):
    return sweep.expand(sweep.load_spec(path), **kw)


# ------------------------------------------------------------------------------ the grid
def test_grid_expands_with_per_method_settings_and_stable_ids(tmp_path):
    path = _spec(tmp_path, {"method": ["ce", "smooth"], "seed": [0, 1, 2]}, {"epochs": 1, "alpha": 0.3})
    entries = _entries(path)
    assert [(e.cfg.method, e.cfg.seed) for e in entries] == [
        ("ce", 0), ("ce", 1), ("ce", 2), ("smooth", 0), ("smooth", 1), ("smooth", 2)]
    smooth = entries[3].cfg
    assert smooth.params["smooth"] == {"alpha": 0.3} and "alpha" not in entries[0].cfg.params["ce"]
    assert all(e.cfg.epochs == 1 and e.cfg.out == str(tmp_path / "results") for e in entries)
    # the id is the one `kebench run` gives the same settings, and it does not depend on the sweep
    same = config.resolve({**TINY, "method": "smooth", "seed": 0, "epochs": 1, "out": "elsewhere"}, {}, {"alpha": "0.3"})
    assert same.run_id() == smooth.run_id()
    assert [e.run_id for e in _entries(path)] == [e.run_id for e in entries]
    assert len({e.run_id for e in entries}) == 6


def test_seed_ranges_list_of_grids_and_duplicates(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"grid": [{"method": ["ce"], "seed": "0-2"}, {"method": ["ce", "smooth"], "seed": [2]}],
                                    "set": TINY}))
    entries = _entries(path, out=str(tmp_path / "o"))
    assert [(e.cfg.method, e.cfg.seed) for e in entries] == [("ce", 0), ("ce", 1), ("ce", 2), ("smooth", 2)]
    assert entries[0].cfg.out == str(tmp_path / "o")


def test_set_overrides_and_budget_pass_through(tmp_path):
    path = _spec(tmp_path, {"method": ["ce"]}, {"epochs": 3})
    entries = _entries(path, sets={"epochs": "2", "budget": "matched", "lr": "0.1"})
    cfg = entries[0].cfg
    assert (cfg.epochs, cfg.budget, cfg.lr) == (2, "matched", 0.1)


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"method": ["ce"]}, "set": {"alpah": 0.3}}, r"\['alpah'\] apply to none of the sweep's runs"),
    ({"grid": {"method": ["ce"]}, "sets": {}}, r"unknown top-level key\(s\) \['sets'\]"),
    ({"set": {"epochs": 1}}, "'grid' must be a mapping"),
    ({"grid": {"method": []}}, "'method' has an empty list"),
    ({"grid": {"method": ["ce", "nope"]}}, r"Sweep run \{'method': 'nope'\}: Unknown method 'nope'"),
    ({"grid": {"epochs": [0]}}, "--epochs must be a positive number"),
])
def test_bad_sweep_files_are_clear_errors(tmp_path, spec, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match=message):
        _entries(path)


# ------------------------------------------------------------------------------ status
def _fake_result(entry, status="complete", **extra):
    record = {"run_id": entry.run_id, "status": status, "final": {"top1": 0.75}, "training": {"epochs": 4}, **extra}
    results.write_text(entry.dir / "config.yaml", config.save_yaml(entry.cfg))
    results.write_json(entry.dir / "result.json", record)


def test_status_shows_done_running_failed_pending(tmp_path, capsys):
    path = _spec(tmp_path, {"seed": [0, 1, 2, 3, 4]}, {"epochs": 1})
    done, failed, resumable, running, fresh = _entries(path)
    _fake_result(done)
    _fake_result(failed, status="failed", error="non-finite loss (nan) in pass 1, epoch 1")
    resumable.dir.mkdir(parents=True)
    (resumable.dir / "checkpoint.pt").write_bytes(b"x")
    (resumable.dir / "metrics.jsonl").write_text(json.dumps({"pass": 0, "epoch": 3}) + "\n")
    with guard.RunLock(running.dir):
        rows = sweep.status_rows(_entries(path))
        cli_main(["sweep", str(path), "--status", "--json"])
    by_id = {r["run_id"]: r for r in rows}
    assert [by_id[e.run_id]["state"] for e in (done, failed, resumable, running, fresh)] == [
        "done", "failed", "pending", "running", "pending"]
    assert by_id[done.run_id]["detail"] == "top1 0.7500"
    assert "non-finite loss" in by_id[failed.run_id]["detail"]
    assert by_id[resumable.run_id]["detail"] == "resumable from pass 1 epoch 3"
    assert f"pid {os.getpid()}" in by_id[running.run_id]["detail"]
    assert sweep.counts(rows) == {"done": 1, "running": 1, "failed": 1, "pending": 2}
    printed = json.loads(capsys.readouterr().out)
    assert [r["state"] for r in printed] == [r["state"] for r in rows]


def test_matched_budget_run_is_done_only_with_its_baseline(tmp_path):
    path = _spec(tmp_path, {"method": ["ce+bans"]}, {"epochs": 2, "budget": "matched"})
    (entry,) = _entries(path)
    _fake_result(entry)  # the multi-pass run finished after 4 epochs in all ...
    state, detail = sweep.state_of(entry)
    assert state == "pending" and "matched baseline" in detail  # ... but its 4-epoch baseline did not
    baseline = config.matched_config(entry.cfg, 4)
    _fake_result(sweep.SweepRun(baseline, {}))
    assert sweep.state_of(entry)[0] == "done"


# ------------------------------------------------------------------------------ local executor
def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_local_sweep_survives_a_killed_worker(tmp_path, monkeypatch, run_cfg):
    """SIGKILL a worker after its first checkpoint; re-running the sweep resumes that run, skips the
    finished one, and ends with the numbers of an uninterrupted run."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers compute like this process (1 thread)
    epochs = 6
    path = _spec(tmp_path, {"method": ["smooth", "ce"]}, {"epochs": epochs, "checkpoint_every_s": 0})
    victim, other = _entries(path)

    killed = {}

    def kill_victim_after_first_checkpoint():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            holder = guard.lock_holder(victim.dir)
            if holder and (victim.dir / "checkpoint.pt").exists():
                os.kill(holder["pid"], signal.SIGKILL)
                killed["pid"], killed["epochs"] = holder["pid"], len(_rows(victim.dir))
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_victim_after_first_checkpoint)
    watcher.start()
    log = []
    code = executors.run_local(_entries(path), workers=1, gpus=[], echo=log.append)
    watcher.join()
    assert killed and killed["epochs"] < epochs, log
    assert code == 1 and any("FAIL" in line and "SIGKILL" in line for line in log), log
    assert sweep.state_of(victim)[0] == "pending"
    assert sweep.state_of(other)[0] == "done"
    other_result = (other.dir / "result.json").read_bytes()
    other_mtime = (other.dir / "result.json").stat().st_mtime_ns

    with pytest.raises(SystemExit) as exit_info:  # the same sweep again, through the CLI
        cli_main(["sweep", str(path), "--workers", "1"])
    assert exit_info.value.code == 0
    assert [e["state"] for e in sweep.status_rows(_entries(path))] == ["done", "done"]
    # the finished run was not run again; the killed one completed exactly once
    assert (other.dir / "result.json").read_bytes() == other_result
    assert (other.dir / "result.json").stat().st_mtime_ns == other_mtime
    assert (other.dir / executors.WORKER_LOG).read_text().count("--- ") == 1
    assert (victim.dir / executors.WORKER_LOG).read_text().count("--- ") == 2
    assert [r["epoch"] for r in _rows(victim.dir)] == list(range(1, epochs + 1))

    reference_cfg = dataclasses.replace(victim.cfg, out=str(tmp_path / "reference"))
    reference = run_cfg(reference_cfg)
    resumed = results.read_result(victim.dir)
    assert resumed["final"] == reference["final"]
    assert _rows(victim.dir) == _rows(Path(reference_cfg.out) / victim.run_id)


def test_worker_refuses_a_payload_naming_code(tmp_path, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"method": "os:system", "data": "synthetic"})))
    assert executors.worker_main([]) == guard.EXIT_USAGE
    assert "Unknown method 'os:system'" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"method": "ce", "entry": "os:system"})))
    assert executors.worker_main([]) == guard.EXIT_USAGE
    assert "unknown key(s) ['entry']" in capsys.readouterr().err


# ------------------------------------------------------------------------------ submitit
def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def test_submitit_local_sweep_requeues_a_preempted_job(tmp_path, monkeypatch, run_cfg, capsys):
    """`kebench sweep --executor submitit-local`: a preemption signal (USR2, as SLURM sends it) makes
    the job checkpoint at the next step and requeue; the requeued job resumes and matches an
    uninterrupted run. The sweep says where it stands as each job ends, as local sweeps do."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    epochs = 8
    path = _spec(tmp_path, {"method": ["smooth"]}, {"epochs": epochs, "checkpoint_every_s": 0})
    (entry,) = _entries(path)
    jobs_file = Path(entry.cfg.out) / ".submitit" / "jobs.jsonl"
    preempted = {}

    def preempt_after_first_checkpoint():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (entry.dir / "checkpoint.pt").exists() and jobs_file.exists():
                controller = int(json.loads(jobs_file.read_text().splitlines()[-1])["job_id"])
                tasks = _children(controller)
                if tasks and guard.lock_holder(entry.dir):
                    os.kill(tasks[0], signal.SIGUSR2)
                    preempted["epochs"] = len(_rows(entry.dir))
                    return
            time.sleep(0.01)

    watcher = threading.Thread(target=preempt_after_first_checkpoint)
    watcher.start()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["sweep", str(path), "--executor", "submitit-local", "--gpus-per-job", "0", "--time", "10"])
    watcher.join()
    assert exit_info.value.code == 0 and preempted and preempted["epochs"] < epochs
    said = capsys.readouterr()
    assert "sweep: 1 done, 0 failed, 0 running, 0 pending" in said.out + said.err
    job_dir = next(jobs_file.parent.glob("[0-9]*"))
    logs = "".join(f.read_text() for f in job_dir.glob("*_log.*"))
    assert "stopped by SIGUSR2" in logs and "handing over to submitit" in logs and "Requeued job" in logs
    assert sweep.state_of(entry)[0] == "done"
    assert [r["epoch"] for r in _rows(entry.dir)] == list(range(1, epochs + 1))
    reference = run_cfg(dataclasses.replace(entry.cfg, out=str(tmp_path / "reference")))
    assert results.read_result(entry.dir)["final"] == reference["final"]
    assert _rows(entry.dir) == _rows(Path(tmp_path / "reference") / entry.run_id)


def test_slurm_submission_is_one_job_array_with_the_options(tmp_path, monkeypatch):
    """Against stand-in sbatch/srun/sinfo: the sbatch script carries every option (two GPUs: two tasks,
    one DDP rank each, started by srun), jobs are recorded. tests/test_slurm.py does it for real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path / "submitted.sh"}\necho Submitted batch job 4242\n')
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho 'gpu*|4:00:00|up'\n")  # the pre-submission check
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    path = _spec(tmp_path, {"seed": [0, 1, 2]}, {"epochs": 1})
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["sweep", str(path), "--executor", "slurm", "--partition", "gpu", "--time", "90", "--gpus-per-job",
                  "2", "--array-parallelism", "2", "--mem-gb", "16", "--slurm-opt", "account=abc", "--slurm-opt",
                  "reservation=r1", "--setup", "module load cuda"])
    assert exit_info.value.code == 0
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=2", "--array=0-2%2", "--mem=16384M",
                 "--account=abc", "--reservation=r1", "--signal=USR2@90", "--ntasks-per-node=2"):
        assert f"#SBATCH {line}\n" in script, line
    assert "module load cuda" in script
    rows = sweep.status_rows(_entries(path))
    assert [r["detail"] for r in rows] == [f"submitted as job 4242_{i}" for i in range(3)]


def test_sweep_task_checkpoint_resubmits_the_same_config():
    from kebench.grid import slurm

    task = slurm.SweepTask(nproc=2)
    delayed = task.checkpoint({"method": "ce"})
    assert isinstance(delayed.function, slurm.SweepTask) and delayed.function.nproc == 2
    assert delayed.args == ({"method": "ce"},)


def test_waiting_on_slurm_jobs_says_where_the_sweep_stands(tmp_path, monkeypatch):
    """`--executor slurm --wait` polls squeue/sacct; whenever the counts change it prints the local
    executor's line, the ETA from the finished runs' training time (result.json wall_time_s) shared
    over the jobs running now. SLURM is scripted here (no cluster): tests/test_slurm.py runs one."""
    from types import SimpleNamespace

    from kebench.grid import scheduler, slurm

    entries = _entries(_spec(tmp_path, {"seed": [0, 1, 2, 3]}, {"epochs": 1}))
    pairs = [(e, SimpleNamespace(job_id=f"9_{i}")) for i, e in enumerate(entries)]

    def finish(i, seconds):
        entries[i].dir.mkdir(parents=True, exist_ok=True)
        (entries[i].dir / "result.json").write_text(json.dumps(
            {"status": "complete", "task": "classification", "final": {"top1": 0.5}, "wall_time_s": seconds}))

    polls = [  # what squeue says at each poll (a job it no longer lists has ended), after the runs' own files
        ({}, {"9_0": "RUNNING", "9_1": "PENDING", "9_2": "PENDING", "9_3": "PENDING"}),
        ({0: 30}, {"9_1": "RUNNING", "9_2": "RUNNING", "9_3": "PENDING"}),
        ({}, {"9_1": "RUNNING", "9_2": "RUNNING", "9_3": "PENDING"}),  # nothing changed: no new line
        ({1: 50}, {"9_2": "RUNNING", "9_3": "CANCELLED"}),  # cancelled before it ever ran
        ({2: 10}, {}),
    ]

    def job_states(ids):
        ids = set(ids)
        done, squeue = polls.pop(0)
        for i, seconds in done.items():
            finish(i, seconds)
        return {j: {"state": st, "reason": "", "restarts": 0} for j, st in squeue.items() if j in ids}

    monkeypatch.setattr(scheduler, "job_states", job_states)
    lines = []
    assert slurm._wait_slurm(pairs, tmp_path / ".submitit", lines.append, poll_s=0) == 1
    assert not polls
    assert [ln for ln in lines if ln.startswith("sweep:")] == [
        "sweep: 0 done, 0 failed, 1 running, 3 pending",
        "sweep: 1 done, 0 failed, 2 running, 1 pending; ETA 45 s",  # 30 s x 3 runs left / 2 running
        "sweep: 2 done, 1 failed, 1 running, 0 pending; ETA 40 s",  # mean(30, 50) x 1 / 1
        "sweep: 3 done, 1 failed, 0 running, 0 pending",
    ]
    assert sum(ln.startswith("done  ") for ln in lines) == 3
    assert [ln.split(" (")[0] for ln in lines if ln.startswith("FAIL")] == [f"FAIL  {entries[3].run_id}"]


# ------------------------------------------------------------------------------ packing runs on GPUs
def test_runs_per_gpu_packs_workers_round_robin(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert executors.local_workers(["0", "1"], runs_per_gpu=4) == 8
    assert executors.local_workers(["0", "1", "2", "3"], gpus_per_run=2) == 2
    assert executors.local_workers([], runs_per_gpu=1) == 1 and executors.local_workers(["0"], runs_per_gpu=3, workers=2) == 2
    envs = executors.slot_envs(8, ["0", "1"], 1, runs_per_gpu=4)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"] * 4  # every GPU gets exactly 4 runs
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"2"}  # 16 cores shared by 8 workers
    assert [e["CUDA_VISIBLE_DEVICES"] for e in executors.slot_envs(2, ["0", "1", "2", "3"], 2)] == ["0,1", "2,3"]
    with pytest.raises(UserError, match="more than --runs-per-gpu 2 runs on a GPU; use at most 4"):
        executors.slot_envs(5, ["0", "1"], 1, runs_per_gpu=2)
    with pytest.raises(UserError, match="no GPU is visible"):
        executors.local_workers([], runs_per_gpu=2)
    with pytest.raises(UserError, match="cannot be combined with --gpus-per-run 2"):
        executors.local_workers(["0", "1"], gpus_per_run=2, runs_per_gpu=2)


def test_sweep_cli_runs_per_gpu(tmp_path, monkeypatch, cli_run):
    path = _spec(tmp_path, {"seed": [0, 1, 2]}, {"epochs": 1})
    calls = []
    monkeypatch.setattr(executors, "run_local", lambda entries, **kw: calls.append((len(entries), kw)) or 0)
    monkeypatch.setattr(executors, "_visible_gpus", lambda: ["0", "1"])
    code, _, _ = cli_run(["sweep", str(path), "--runs-per-gpu", "3"])
    assert code == 0 and calls[0][0] == 3
    assert {k: calls[0][1][k] for k in ("workers", "gpus", "runs_per_gpu")} == {
        "workers": 6, "gpus": ["0", "1"], "runs_per_gpu": 3}
    monkeypatch.setattr(executors, "_visible_gpus", lambda: [])
    code, _, err = cli_run(["sweep", str(path), "--runs-per-gpu", "2"])
    assert code == 2 and "no GPU is visible here" in err and len(calls) == 1


# ------------------------------------------------------------------------------ refusing, failing, signals
def test_sweep_refuses_before_any_worker_when_a_dataset_cannot_be_read(tmp_path, monkeypatch, cli_run):
    """Issue 24.1: a paper dataset without a data root (or with a root that lacks its layout) stops the
    whole sweep with one error and exit 2, before any run folder or worker exists."""
    monkeypatch.delenv("KEBENCH_DATA", raising=False)
    started = []
    monkeypatch.setattr(executors, "run_local", lambda entries, **kw: started.append(entries) or 0)
    path = _spec(tmp_path, {"data": ["flowers102", "cub200"], "seed": [0, 1]}, {"epochs": 1})
    code, _, err = cli_run(["sweep", str(path)])
    assert code == 2 and not started and not (tmp_path / "results").exists()
    assert "4 of the 4 runs it would start cannot start" in err
    assert "4 run(s) read flowers102, cub200 from a local folder, but no data root is set" in err
    assert err.count("error") == 1 and "Traceback" not in err
    empty = tmp_path / "data"
    empty.mkdir()
    code, _, err = cli_run(["sweep", str(path), "--set", f"data_root={empty}"])
    assert code == 2 and not started
    assert err.count("2 run(s) (e.g. ce_test") == 2 and "flowers-102" in err and "CUB_200_2011" in err


def test_a_run_that_fails_before_training_is_counted_failed_with_its_reason(tmp_path, capsys):
    """A user error inside a run (here: a batch larger than the training set, found when the run builds
    its data) is recorded, counted as failed by --status and the summary, and final until --retry-failed."""
    path = _spec(tmp_path, {"seed": [0]}, {"epochs": 1, "batch_size": 100000})
    (entry,) = _entries(path)
    log = []
    assert executors.run_inline(_entries(path), echo=log.append) == guard.EXIT_FAILED
    state, detail = sweep.state_of(entry)
    assert state == "failed" and "--batch-size 100000 is larger than the" in detail
    assert sweep.counts(sweep.status_rows(_entries(path))) == {"done": 0, "running": 0, "failed": 1, "pending": 0}
    log.clear()
    assert executors.run_inline(_entries(path), echo=log.append) == guard.EXIT_FAILED
    assert "0 to run" in log[0]  # a failure is final ...
    assert executors.run_inline(_entries(path), retry_failed=True, echo=log.append) == guard.EXIT_FAILED
    assert "1 to run" in [ln for ln in log if "to run" in ln][-1] and sweep.state_of(entry)[0] == "failed"  # ... until retried
    from kebench.analysis import tables

    results.write_text(entry.dir / "config.yaml", config.save_yaml(entry.cfg))  # as a run that crashed later
    _, left_out = tables.load_runs([entry.dir.parent])
    assert left_out == [(str(entry.dir), f"failed: {detail}")]  # kebench table says why, not "rerun with --resume"


def test_a_worker_stopped_by_sigterm_before_its_handler_is_resumable_not_failed(tmp_path, monkeypatch):
    """Issue 24.4: SIGTERM while the worker still imports torch kills it with the default action; the
    sweep reports the run as stopped and resumable, and exits 3 (rerun to continue), not 1."""
    path = _spec(tmp_path, {"seed": [0]}, {"epochs": 1})
    (entry,) = _entries(path)
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    monkeypatch.setattr(executors, "worker_command", lambda nproc=1: [sys.executable, "-c", suicide])
    log = []
    code = executors.run_local(_entries(path), workers=1, gpus=[], echo=log.append)
    assert code == guard.EXIT_INTERRUPTED, log
    assert any(line.startswith(f"stopped {entry.run_id} by SIGTERM (before it started training)") for line in log)
    assert not any("FAIL" in line for line in log)
    assert sweep.state_of(entry) == ("pending", "")


def test_a_sweep_whose_runs_are_still_running_elsewhere_does_not_exit_0(tmp_path, cli_run):
    """Issue 24.4: rerunning a sweep while an orphaned worker of a killed sweep still trains one of its
    runs: that run is 'running', so the sweep is not done; exit 4, not 0."""
    path = _spec(tmp_path, {"seed": [0, 1]}, {"epochs": 1})
    done, orphan = _entries(path)
    _fake_result(done)
    with guard.RunLock(orphan.dir):  # held by a live process, as by the orphaned worker
        code, _, err = cli_run(["sweep", str(path)])
    assert code == guard.EXIT_BUSY, err
    assert f"skip {orphan.run_id}: running elsewhere" in err and "1 done, 1 running" in err
    assert "1 run(s) still running in another process: the sweep is not done yet (exit 4)" in " ".join(err.split())
    _fake_result(orphan)
    code, _, err = cli_run(["sweep", str(path)])
    assert code == 0 and "2 done" in err
