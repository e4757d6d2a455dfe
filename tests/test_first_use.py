"""What a researcher meets first (issue 24 items 6, 7, 9, 10, 11): no traceback for a network that
cannot take the images or an --out that cannot be written, reruns that never silently retrain or
throw a checkpoint away, messages that name what to type, progress for the whole run, and the
machine in the provenance."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kebench.errors import UserError

TINY = ["--data", "synthetic", "--arch", "test_resnet", "--batch-size", "16", "--device", "cpu",
        "--checkpoint-every-s", "0"]


def one_line(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------ item 6: no traceback
@pytest.mark.parametrize("arch, needs, exact", [("vit_tiny_patch16_224", 224, True), ("densenet121", 32, False)])
def test_a_network_that_cannot_take_the_images_is_refused_with_the_resolution_it_needs(make_cfg, run_cfg, arch,
                                                                                      needs, exact):
    cfg = make_cfg(arch=arch)  # synthetic: 16 px
    with pytest.raises(UserError) as info:
        run_cfg(cfg)
    msg = str(info.value)
    assert f"'{arch}' cannot take the 16x16 px images" in msg
    assert f"--resolution {needs}" in msg
    assert ("It needs 224 px" in msg) == exact
    assert not Path(cfg.out).exists()  # refused before any folder was made


def test_the_dry_forward_pass_changes_neither_the_rng_nor_the_weights():
    from kebench.nets.models import check_input_size, create_model

    model = create_model("test_resnet", 4, 3)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_input_size(model, "test_resnet", 3, 16)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched


def test_out_naming_a_file_or_an_unwritable_folder_exits_5(cli_run, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = cli_run(["run", *TINY, "--out", str(afile / "sub")])
    assert code == 5, err
    assert "is a file, not a folder" in one_line(err) and "Traceback" not in err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        code, _, err = cli_run(["run", *TINY, "--out", str(locked / "results")])
        assert code == 5, err
        assert "no permission to write" in one_line(err)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_a_crash_records_a_failed_run_not_an_interrupted_one(make_cfg, run_cfg, monkeypatch):
    from kebench.analysis.tables.runs import load_runs
    from kebench.run.engine import execute

    cfg = make_cfg()

    def broken(self, run):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cfg.method_spec.regime.load(), "run", broken)
    with pytest.raises(ZeroDivisionError):
        execute(cfg, show_progress=False)
    rec = json.loads((Path(cfg.out) / cfg.run_id() / "result.json").read_text())
    assert rec["status"] == "failed" and rec["error"] == "crashed: ZeroDivisionError: a bug"
    runs, left_out = load_runs([cfg.out])
    assert runs == [] and len(left_out) == 1
    assert left_out[0][1].startswith("failed: crashed") and "--resume" not in left_out[0][1]


def test_ctrl_c_while_the_cli_is_still_importing_prints_one_line_and_exits_130():
    code = ("import sys; sys.argv[0] = 'kebench'; import kebench.cli, os, signal, time; "
            "os.kill(os.getpid(), signal.SIGINT); time.sleep(60)")
    # as from a shell: SIGINT at its default (a parent that ignores it, e.g. a pytest-xdist worker,
    # passes SIG_IGN on, and Python then installs no KeyboardInterrupt handler at all)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 130
    assert done.stderr.strip().splitlines() == ["Interrupted while starting; nothing was run."]


def test_the_starting_handler_is_only_for_the_cli():
    import kebench.cli as cli

    assert signal.getsignal(signal.SIGINT) is not cli._interrupted_while_starting  # pytest imported it


# ------------------------------------------------------------------ item 7: reruns
def test_a_complete_run_is_skipped_unless_forced(cli_run, tmp_path):
    args = ["run", *TINY, "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"]
    code, _, _ = cli_run(args)
    assert code == 0
    (result,) = (tmp_path / "r").glob("*/result.json")
    first = result.read_text()
    stamp = result.stat().st_mtime_ns
    code, out, err = cli_run(args)
    assert code == 0
    assert "already complete" in one_line(err) and "--force" in err
    assert result.stat().st_mtime_ns == stamp and "complete" in out  # not retrained; still summarised
    code, _, err = cli_run([*args, "--force"])
    assert code == 0 and "already complete" not in err
    assert result.stat().st_mtime_ns != stamp
    assert json.loads(result.read_text())["run_id"] == json.loads(first)["run_id"]


def test_an_interrupted_run_is_never_silently_restarted(cli_run, make_cfg, kill_run, capsys):
    cfg = make_cfg(epochs=3)
    kill_run(cfg, after=1)  # a checkpoint after epoch 1 of 3
    run_dir = Path(cfg.out) / cfg.run_id()
    args = ["run", *TINY, "--epochs", "3", "--out", cfg.out]
    code, _, err = cli_run(args)
    assert code == 2
    err = one_line(err)
    assert f"{cfg.run_id()} (stopped at pass 1, epoch 2, step 0)" in err
    assert "--resume" in err and "--restart" in err
    assert (run_dir / "checkpoint.pt").is_file()  # kept
    code, _, err = cli_run([*args, "--resume", "--restart"])
    assert code == 2 and "Give one of them" in err
    code, _, err = cli_run([*args, "--resume"])
    assert code == 0, err
    assert "resuming from pass 1, epoch 2, step 0" in err
    assert json.loads((run_dir / "result.json").read_text())["training"]["epochs"] == 3


def test_restart_discards_the_checkpoint(cli_run, make_cfg, kill_run):
    cfg = make_cfg(epochs=3)
    kill_run(cfg, after=1)
    code, _, err = cli_run(["run", *TINY, "--epochs", "3", "--out", cfg.out, "--restart", "--quiet"])
    assert code == 0, err
    assert "resuming" not in err
    rows = [json.loads(x) for x in (Path(cfg.out) / cfg.run_id() / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_resume_position_and_a_changed_thread_count_are_said(make_cfg, kill_run, capsys, monkeypatch):
    from kebench.run.engine import execute

    cfg = make_cfg(epochs=3)
    monkeypatch.setenv("KEBENCH_THREADS", "1")
    kill_run(cfg, after=1)
    ck = torch.load(Path(cfg.out) / cfg.run_id() / "checkpoint.pt", weights_only=True)
    assert ck["threads"] == 1
    capsys.readouterr()
    monkeypatch.setenv("KEBENCH_THREADS", "2")
    threads = torch.get_num_threads()
    execute(cfg, resume=True, show_progress=False)
    assert torch.get_num_threads() == threads  # the run's policy does not leak
    err = one_line(capsys.readouterr().err)
    assert f"{cfg.run_id()} was checkpointed with 1 CPU thread and resumes with 2" in err
    assert "last digits" in err and "KEBENCH_THREADS=1" in err


# ------------------------------------------------------------------ item 9: messages
@pytest.mark.parametrize("args, wanted, unwanted", [
    (["--seed", "1"], "use --seeds 1", "Did you mean"),
    (["--data-options", "a=1"], "use --data-opt KEY=VALUE", "Did you mean"),
    (["--method", "ce", "--generations", "3"], "generations belongs to ke, bans,", "Valid settings"),
    (["--method", "ce", "--generations", "3"], "--method ke --generations 3", "Did you mean"),
    (["--method", "ke", "--generatons", "3"], "Did you mean: --generations?", "generatons belongs"),
    (["--method", "ke", "--epochz", "3"], "--seeds", "seed,"),  # valid settings are listed as flags
    (["--method", "ke", "--epochz", "3"], "--data-opt", "data-options"),
    (["--arch", "resnet19"], "Did you mean: resnet18", "bat_resnext26ts"),
    (["--method", "ce", "--pre_distill.prune", "l1"], "'pre-distill.prune' names plugin 'pre-distill'", "pre_distill"),
])
def test_suggestions_name_what_a_user_types(cli_run, tmp_path, args, wanted, unwanted):
    code, _, err = cli_run(["run", "--out", str(tmp_path / "r"), *args])
    err = one_line(err)
    assert code == 2, err
    assert wanted in err and unwanted not in err


def test_grammar_of_generated_messages():
    from kebench import registry
    from kebench.errors import article, plural, unknown_choice

    assert plural("study") == "studies" and plural("arch") == "archs" and plural("setting value") == "setting values"
    assert article("objective") == "an" and article("regime") == "a"
    assert "Valid studies:" in str(unknown_choice("study", "x", ["ke-table2"]))
    with pytest.raises(UserError, match="'ke' is a regime and 'ce' is an objective"):
        registry.parse_method("ke+ce")


def test_sweep_messages(cli_run, tmp_path):
    code, _, err = cli_run(["sweep", str(tmp_path / "missing.yaml")])
    assert code == 2 and "Sweep file" in err and "--config" not in err
    spec = tmp_path / "s.yaml"
    spec.write_text("grdi: {method: [ce]}\n")
    code, _, err = cli_run(["sweep", str(spec), "--status"])
    assert code == 2 and "did you mean grid for grdi" in one_line(err)
    spec.write_text("grid: {method: [ce], data: [synthetic], arch: [test_resnet]}\nset: {epochz: 3}\n")
    code, _, err = cli_run(["sweep", str(spec), "--status"])
    assert code == 2 and "did you mean epochs for epochz" in one_line(err)


def test_a_capped_warmup_is_said_once(make_cfg, capsys):
    from kebench.cli import note_capped_warmup

    note_capped_warmup([make_cfg(epochs=4, warmup_epochs=4), make_cfg(epochs=4, warmup_epochs=4, seed=1)])
    err = capsys.readouterr().err
    assert one_line(err) == ("note: a warm-up of 4 epochs is capped at 1 in each 4-epoch pass (at most a quarter "
                             "of a pass's schedule warms up).")
    note_capped_warmup([make_cfg(epochs=8, warmup_epochs=2)])
    assert capsys.readouterr().err == ""


def test_tensorboard_without_the_package_says_how_to_install_it(cli_run, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    monkeypatch.delenv("KEBENCH_TENSORBOARD", raising=False)
    code, _, err = cli_run(["run", *TINY, "--out", str(tmp_path / "r"), "--tensorboard"])
    assert code == 2
    assert "pip install -e '.[tensorboard]'" in one_line(err) and "KEBENCH_TENSORBOARD" not in err


def test_run_help_names_the_datasets_default_network(cli_run):
    code, out, _ = cli_run(["run", "--help"])
    assert code == 0
    from kebench.data import get_spec

    digits_arch = get_spec("digits").defaults["arch"]
    assert digits_arch != "resnet18"  # RunConfig's own default, which --help used to show
    assert f"Default: {digits_arch} (the default network of digits)" in one_line(out)
    code, out, _ = cli_run(["run", "--help", "--data", "synthetic"])
    assert "(the default network of synthetic)" in one_line(out)


# ------------------------------------------------------------------ item 10: progress
def test_progress_names_the_run_the_generation_and_the_time_left(cli_run, tmp_path):
    code, _, err = cli_run(["run", *TINY, "--method", "ce,ke", "--generations", "2", "--epochs", "1",
                            "--out", str(tmp_path / "r")])
    assert code == 0, err
    assert "run 1/2: ce seed 0 (test_resnet, synthetic)" in err
    assert "run 2/2: ce+ke seed 0 (test_resnet, synthetic)" in err
    lines = [ln for ln in err.splitlines() if "generation" in ln and "epoch" in ln]
    assert [re.search(r"generation \d/\d", ln).group(0) for ln in lines] == ["generation 1/2", "generation 2/2"]
    assert re.search(r"ETA run \S+", lines[0]) and "ETA" not in lines[1]  # nothing left after the last epoch


@pytest.mark.parametrize("method, plugin", [
    ("dsd", {}),  # dense, sparse, re-dense phases of 2, 1, 1 epochs
    ("repr", {"cycles": 2}),  # S1, S2 per cycle, then the final pass
    ("agevo", {"population": 2, "keep": 1, "generations": 1, "mutations": 1}),  # 2 x (1 + 1) individuals
    ("kd+self-distill", {"prune": "l1-filter", "finetune_epochs": 1}),  # teacher, student, pruned fine-tune
    ("binarize", {"finetune_epochs": 1}),  # train, then the pattern fine-tune
])
def test_multi_pass_regimes_plan_the_whole_run(make_cfg, capsys, method, plugin):
    """DSD, RePr, AG-Evo, the KD x pruning pipelines and binarize announce their passes and epochs: each epoch line says 'pass k/N' and the
    whole run's time left (they used to say only the pass's), and the plan is exactly what trains."""
    from kebench.run.engine import Run

    cfg = make_cfg(method, arch="evonet" if method == "agevo" else "test_resnet", epochs=2, plugin=plugin)
    run = Run(cfg, show_progress=True)
    trained = [p["epochs"] for p in run.execute()["passes"]]
    assert run.planned == (len(trained), sum(trained))
    assert len(trained) == {"dsd": 3, "repr": 5, "agevo": 4, "kd+self-distill": 3, "binarize": 2}[method]
    lines = [ln for ln in capsys.readouterr().err.splitlines() if " · loss " in ln]
    expected = [f"pass {k + 1}/{len(trained)}" for k, n in enumerate(trained) for _ in range(n)]
    assert [re.search(r"pass \d+/\d+", ln).group(0) for ln in lines] == expected
    assert all(re.search(r"ETA run \S+", ln) for ln in lines[:-1]) and "ETA" not in lines[-1]


def test_progress_lines_do_not_wrap_in_a_file():
    from kebench.run.progress import console, duration

    assert console.soft_wrap
    assert [duration(s) for s in (4.4, 65, 7322)] == ["4 s", "1m05s", "2h02m"]


def test_sweep_progress_line():
    from kebench.grid.sweep import progress_line

    assert progress_line(3, 1, 2, 4, [10.0, 20.0, 30.0, 40.0], workers=2) == \
        "sweep: 3 done, 1 failed, 2 running, 4 pending; ETA 1m15s"
    assert progress_line(2, 0, 0, 0, [1.0, 2.0]) == "sweep: 2 done, 0 failed, 0 running, 0 pending"


# ------------------------------------------------------------------ item 11: provenance
def test_the_result_records_the_machine(make_cfg, run_cfg):
    import timm

    rec = run_cfg(make_cfg(epochs=1))
    machine = rec["machine"]
    assert machine["cpu"] and machine["cpu_count"] == os.cpu_count() and machine["python"]
    assert rec["threads"]["threads"] >= 1  # the thread policy's record (kebench/run/threads.py)
    assert rec["versions"]["torch"] == torch.__version__ and rec["versions"]["timm"] == timm.__version__


def test_an_inline_sweep_reports_its_progress(make_cfg):
    from kebench.grid.executors import run_inline
    from kebench.grid.sweep import SweepRun

    lines = []
    assert run_inline([SweepRun(make_cfg(epochs=1), {})], echo=lines.append) == 0
    assert "sweep: 1 done, 0 failed, 0 running, 0 pending" in lines
