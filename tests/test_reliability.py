"""Reliability under faults: signals, corrupt checkpoints, NaN losses, full disks, concurrent
writers, and the security rules (weights-only checkpoints, safe YAML, registry-only plugins)."""
from __future__ import annotations

import dataclasses
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kebench.run import engine
from kebench.run import guard
from kebench.run import results
from kebench.cli import main as cli_main
from kebench.errors import UserError

STEPS_PER_EPOCH = 6  # synthetic: 4 classes x 24 train images, batch 16, drop_last


def _rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing column."""
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _reference(cfg, run_cfg, tmp_path):
    """The same config run uninterrupted in another folder (same run id)."""
    ref_cfg = dataclasses.replace(cfg, out=str(tmp_path / "reference"))
    record = run_cfg(ref_cfg)
    return record, _rows(Path(ref_cfg.out) / cfg.run_id())


@pytest.fixture
def sigterm_at_step(monkeypatch):
    """sigterm_at_step(n): the process sends itself a real SIGTERM during training step n (1-based)."""
    original = engine.Progress.step

    def arm(n):
        calls = []

        def step(self, n_images):
            original(self, n_images)
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(engine.Progress, "step", step)
        return lambda: monkeypatch.setattr(engine.Progress, "step", original)

    yield arm
    guard.STOP.clear()


# ------------------------------------------------------------------------------ signals
def test_sigterm_checkpoints_mid_epoch_and_resume_is_exact(make_cfg, run_cfg, sigterm_at_step, tmp_path):
    cfg = make_cfg("smooth", epochs=3, checkpoint_every_s=0)
    reference, reference_rows = _reference(cfg, run_cfg, tmp_path)
    handler_before = signal.getsignal(signal.SIGTERM)
    disarm = sigterm_at_step(STEPS_PER_EPOCH + 2)  # epoch 2, step 2
    with pytest.raises(guard.RunInterrupted, match=r"SIGTERM in pass 1, epoch 2, after step 2/6") as info:
        run_cfg(cfg)
    disarm()
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == guard.EXIT_INTERRUPTED
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the engine's handler is gone again
    run_dir = Path(cfg.out) / cfg.run_id()
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ck["pass_state"]["epoch"] == 1 and ck["pass_state"]["steps"] == STEPS_PER_EPOCH + 2
    assert ck["pass_state"]["partial"]["step"] == 2 and ck["pass_state"]["partial"]["seen"] == 2 * 16
    assert not (run_dir / "result.json").exists() and guard.lock_holder(run_dir) is None
    assert len(_rows(run_dir)) == 1  # epoch 1 is finished, epoch 2 is not

    resumed = run_cfg(cfg, resume=True)
    assert resumed["status"] == "complete"
    assert resumed["final"] == reference["final"]
    assert [p["metrics"] for p in resumed["passes"]] == [p["metrics"] for p in reference["passes"]]
    assert resumed["training"]["steps"] == reference["training"]["steps"] == 3 * STEPS_PER_EPOCH
    assert _rows(run_dir) == reference_rows  # train loss/accuracy of the split epoch included
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "checkpoint.prev.pt").exists()


@pytest.mark.parametrize("lr_per", ["step", "epoch"])
def test_resume_inside_a_warm_up_continues_the_schedule_exactly(make_cfg, run_cfg, sigterm_at_step, tmp_path, lr_per):
    """A stop inside the warm-up (per-step LR): the resumed scheduler starts at the step it stopped."""
    cfg = make_cfg("smooth", epochs=8, warmup_epochs=2, lr_per=lr_per, checkpoint_every_s=0)
    reference, reference_rows = _reference(cfg, run_cfg, tmp_path)
    disarm = sigterm_at_step(STEPS_PER_EPOCH + 3)  # epoch 2 (still warming up), step 3
    with pytest.raises(guard.RunInterrupted):
        run_cfg(cfg)
    disarm()
    resumed = run_cfg(cfg, resume=True)
    rows = _rows(Path(cfg.out) / cfg.run_id())
    assert [r["lr"] for r in rows] == [r["lr"] for r in reference_rows]
    assert rows[0]["lr"] < rows[1]["lr"] and max(r["lr"] for r in rows) == pytest.approx(cfg.lr)
    assert resumed["final"]["top1"] == pytest.approx(reference["final"]["top1"])
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference_rows], rel=1e-5)


def test_pending_stop_refuses_to_start_the_next_run(make_cfg, run_cfg):
    guard.STOP.request(signal.SIGTERM)
    with pytest.raises(guard.RunInterrupted, match="before run .* started"):
        run_cfg(make_cfg())
    assert guard.STOP.signum is None


def test_cli_sigterm_exits_3_with_a_resumable_checkpoint(tmp_path, make_cfg, run_cfg):
    """A real kebench process gets SIGTERM while training: exit code 3, and --resume finishes it."""
    out = tmp_path / "results"
    epochs = 40
    cmd = [sys.executable, "-m", "kebench", "run", "--data", "synthetic", "--arch", "test_resnet", "--epochs",
           str(epochs), "--batch-size", "16", "--device", "cpu", "--out", str(out), "--checkpoint-every-s", "0",
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while not list(out.glob("*/checkpoint.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == guard.EXIT_INTERRUPTED, stderr
    assert "stopped by SIGTERM" in stderr and "--resume" in stderr
    run_dir = next(out.glob("*/checkpoint.pt")).parent
    assert not (run_dir / "result.json").exists() and guard.lock_holder(run_dir) is None
    done = len(_rows(run_dir))
    assert 1 <= done < epochs

    cfg = make_cfg(epochs=epochs, out=str(out), checkpoint_every_s=0)
    assert cfg.run_id() == run_dir.name
    resumed = run_cfg(cfg, resume=True)
    assert resumed["status"] == "complete" and resumed["training"]["epochs"] == epochs
    assert [r["epoch"] for r in _rows(run_dir)] == list(range(1, epochs + 1))


# ------------------------------------------------------------------------------ checkpoints
def _interrupted_run(cfg, run_cfg, sigterm_at_step, step):
    disarm = sigterm_at_step(step)
    with pytest.raises(guard.RunInterrupted):
        run_cfg(cfg)
    disarm()
    return Path(cfg.out) / cfg.run_id()


def test_truncated_checkpoint_falls_back_to_previous_one(make_cfg, run_cfg, sigterm_at_step, tmp_path):
    cfg = make_cfg(epochs=3, checkpoint_every_s=0)
    reference, reference_rows = _reference(cfg, run_cfg, tmp_path)
    run_dir = _interrupted_run(cfg, run_cfg, sigterm_at_step, 2 * STEPS_PER_EPOCH + 3)  # epoch 3, step 3
    newest, previous = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"
    assert torch.load(previous, weights_only=True)["pass_state"]["epoch"] == 2
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"pass": 0, "epoch": 3, "lo')  # and a metrics line torn mid-append

    with pytest.warns(UserWarning, match=r"checkpoint.pt cannot be read.*Resuming from the previous checkpoint"):
        resumed = run_cfg(cfg, resume=True)
    assert resumed["final"] == reference["final"]
    assert _rows(run_dir) == reference_rows


def test_both_checkpoints_corrupt_restarts_the_run(make_cfg, run_cfg, sigterm_at_step, tmp_path):
    cfg = make_cfg(epochs=2, checkpoint_every_s=0)
    reference, reference_rows = _reference(cfg, run_cfg, tmp_path)
    run_dir = _interrupted_run(cfg, run_cfg, sigterm_at_step, STEPS_PER_EPOCH + 1)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run_dir / name).write_bytes(b"\x80\x02garbage")
    with pytest.warns(UserWarning, match="No earlier good checkpoint: restarting this run from the beginning"):
        resumed = run_cfg(cfg, resume=True)
    assert resumed["final"] == reference["final"]  # a restart is deterministic too
    assert _rows(run_dir) == reference_rows


class _Payload:
    """Unpickling this would run a command; weights-only loading must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_carrying_code_is_never_executed(make_cfg, run_cfg, tmp_path):
    cfg = make_cfg()
    run_dir = Path(cfg.out) / cfg.run_id()
    run_dir.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"run_id": cfg.run_id(), "evil": _Payload(marker)}, run_dir / "checkpoint.pt")
    with pytest.raises(results.CorruptCheckpoint, match="cannot be read"):
        results.load_torch(run_dir / "checkpoint.pt")
    with pytest.warns(UserWarning, match="restarting this run from the beginning"):
        record = run_cfg(cfg, resume=True)
    assert record["status"] == "complete" and not marker.exists()


# ------------------------------------------------------------------------------ NaN
def test_nan_loss_stops_the_run_with_a_failure_record(make_cfg, run_cfg, monkeypatch, capsys):
    from methods.ce import CrossEntropy

    original, calls = CrossEntropy.loss, []

    def poisoned(self, model, x, y):
        loss, logits = original(self, model, x, y)
        calls.append(1)
        return (loss * float("nan") if len(calls) >= 3 else loss), logits

    monkeypatch.setattr(CrossEntropy, "loss", poisoned)
    cfg = make_cfg(epochs=3)
    record = run_cfg(cfg)
    assert record["status"] == "failed"
    assert "non-finite loss (nan) in pass 1, epoch 1" in record["error"]
    assert len(calls) == STEPS_PER_EPOCH  # stopped at the end of epoch 1: no more training
    run_dir = Path(cfg.out) / cfg.run_id()
    text = (run_dir / "result.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in result.json"))  # strict JSON: no NaN
    assert not (run_dir / "model.pt").exists()

    calls.clear()
    with pytest.raises(SystemExit) as exit_info:  # the CLI reports it and exits 1
        cli_main(["run", "--data", "synthetic", "--arch", "test_resnet", "--epochs", "2", "--device", "cpu",
                  "--out", str(cfg.out), "--quiet"])
    assert exit_info.value.code == guard.EXIT_FAILED
    assert "non-finite loss" in capsys.readouterr().err


def test_non_finite_values_become_null(tmp_path):
    results.write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": torch.tensor(-float("inf"))})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [1.0, None], "c": None}


# ------------------------------------------------------------------------------ disk
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    results.write_json(target, {"v": 1})
    monkeypatch.setattr(results.os, "fsync", _no_space)
    with pytest.raises(UserError, match=r"Cannot write .*result.json: the disk is full.*--resume"):
        results.write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temp file left behind


def test_full_disk_during_a_run_exits_5_with_the_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results.os, "fsync", _no_space)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["run", "--data", "synthetic", "--arch", "test_resnet", "--epochs", "1", "--device", "cpu",
                  "--out", str(tmp_path / "results"), "--quiet"])
    assert exit_info.value.code == 5  # guard.EXIT_STORAGE, documented in docs/sweeps.md
    err = capsys.readouterr().err
    assert "the disk is full" in err and "Traceback" not in err


def test_failed_write_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "checkpoint.pt"
    results.save_torch(target, {"w": torch.ones(3)})

    def half_then_crash(f):
        f.write(b"\x80\x02half")
        raise RuntimeError("crash in the middle of a write")

    with pytest.raises(RuntimeError):
        results._atomic(target, half_then_crash)
    assert torch.equal(results.load_torch(target)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# ------------------------------------------------------------------------------ concurrent writers
def test_second_writer_of_the_same_run_is_refused(make_cfg, run_cfg, capsys):
    cfg = make_cfg()
    run_dir = Path(cfg.out) / cfg.run_id()
    with guard.RunLock(run_dir):
        with pytest.raises(guard.RunBusy, match=rf"being written by another process \(pid {os.getpid()} on"):
            run_cfg(cfg)
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["run", "--data", "synthetic", "--arch", "test_resnet", "--epochs", "1", "--batch-size", "16",
                      "--device", "cpu", "--out", cfg.out, "--quiet"])
        assert exit_info.value.code == guard.EXIT_BUSY
        assert "being written by another process" in capsys.readouterr().err
        assert guard.lock_holder(run_dir)["pid"] == os.getpid()
    assert guard.lock_holder(run_dir) is None
    assert run_cfg(cfg)["status"] == "complete"


def _hold_lock(run_dir, ready):
    guard.RunLock(run_dir).acquire()
    ready.set()
    time.sleep(600)


def test_lock_of_a_killed_process_is_released(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path / "run", ready))
    holder.start()
    assert ready.wait(30)
    assert guard.lock_holder(tmp_path / "run")["pid"] == holder.pid
    with pytest.raises(guard.RunBusy):
        guard.RunLock(tmp_path / "run", wait_s=0.2).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    assert guard.lock_holder(tmp_path / "run") is None
    guard.RunLock(tmp_path / "run", wait_s=0).acquire().release()


def _run_in_child(cfg_dict, queue):
    from kebench import config
    from kebench.run import engine

    try:
        record = engine.execute(config.from_dict(cfg_dict), show_progress=False)
        queue.put(("ok", record["run_id"], record["status"]))
    except guard.RunBusy as exc:
        queue.put(("busy", str(exc), None))


def test_concurrent_runs_into_one_folder_never_corrupt_each_other(make_cfg):
    """Three processes at once into one results folder: two different runs and a duplicate of one."""
    cfgs = [make_cfg(seed=0, epochs=2), make_cfg(seed=1, epochs=2), make_cfg(seed=0, epochs=2)]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_run_in_child, args=(c.to_dict(), queue)) for c in cfgs]
    for p in procs:
        p.start()
    outcomes = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    ok = sorted((o[1], o[2]) for o in outcomes if o[0] == "ok")
    assert {run_id for run_id, _ in ok} == {cfgs[0].run_id(), cfgs[1].run_id()}
    assert all(status == "complete" for _, status in ok)
    # the duplicate is refused while its twin runs (or, had its twin already finished, runs after it)
    busy = [o for o in outcomes if o[0] == "busy"]
    assert len(ok) + len(busy) == 3 and len(busy) <= 1
    for cfg in cfgs[:2]:
        run_dir = Path(cfg.out) / cfg.run_id()
        record = json.loads((run_dir / "result.json").read_text())
        assert record["run_id"] == cfg.run_id() and record["seed"] == cfg.seed
        assert [r["epoch"] for r in _rows(run_dir)] == [1, 2]  # one writer's rows, not interleaved
    assert not list(Path(cfgs[0].out).rglob("*.tmp"))


# ------------------------------------------------------------------------------ security
def test_config_naming_a_module_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "evil_mod.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\nclass Thing: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    attempts = {
        "method.yaml": "method: 'evil_mod:Thing'\n",
        "plugins.yaml": "plugins:\n  x: {entry: 'evil_mod:Thing', kind: objective}\n",
        "params.yaml": "params:\n  evil_mod: {entry: 'evil_mod:Thing'}\n",
    }
    for name, text in attempts.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["run", "--config", str(tmp_path / name), "--data", "synthetic", "--out", str(tmp_path / "r")])
        assert exit_info.value.code == 2, name
    err = capsys.readouterr().err
    assert "Unknown method 'evil_mod:Thing'" in err and "plugins" in err and "evil_mod" in err
    from kebench.grid.sweep import config_from_dict

    with pytest.raises(UserError, match="Unknown method"):
        config_from_dict({"method": "evil_mod:Thing", "data": "synthetic"})
    assert not (tmp_path / "imported").exists() and "evil_mod" not in sys.modules


def test_yaml_is_loaded_safely(tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "cfg.yaml").write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["run", "--config", str(tmp_path / "cfg.yaml")])
    assert exit_info.value.code == 2 and "is not valid YAML" in capsys.readouterr().err
    (tmp_path / "sweep.yaml").write_text(f"grid: {{seed: [0]}}\nset: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SystemExit):
        cli_main(["sweep", str(tmp_path / "sweep.yaml"), "--status"])
    assert not marker.exists()
