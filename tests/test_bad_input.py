"""Bad input never reaches a traceback and never writes outside --out (issue 14): every case is exit
code 2 (5 for storage faults) with one paragraph saying what was expected."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fixtures_datasets as fx  # noqa: E402
from kebench import config
from kebench.run import engine
from kebench.run import results

QUICK = ["--data", "synthetic", "--arch", "test_resnet", "--epochs", "1", "--device", "cpu", "--quiet"]


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _one_paragraph(code, out, err, expected_code=2):
    assert code == expected_code, (code, out, err)
    assert "Traceback" not in err and "error:" in err
    return err


# ---------------------------------------------------------------------------- paths
HOSTILE = ["../../ESCAPED", "a/../../ESCAPED", "/tmp/ESCAPED", "nul\x00byte", "x" * 300, "..", "."]


@pytest.mark.parametrize("field", ["method", "arch", "data"])
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_names_create_nothing_anywhere(field, value, tmp_path, cli_run, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = [a for a in QUICK if a != value]
    code, out, err = cli_run(["run", *args, f"--{field}", value, "--out", str(work / "out" / "res")])
    _one_paragraph(code, out, err)
    assert _files_under(tmp_path) == {"work"}  # not even --out exists


def test_hostile_names_in_a_sweep_create_nothing(tmp_path, cli_run):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(json.dumps({"grid": {"arch": ["../../ESCAPED", "test_resnet"]},
                                 "set": {"data": "synthetic", "epochs": 1}, "out": str(tmp_path / "out")}))
    code, out, err = cli_run(["sweep", str(sweep), "--executor", "local"])
    _one_paragraph(code, out, err)
    assert _files_under(tmp_path) == {"s.yaml"}


def test_run_id_parts_are_always_safe_file_names():
    assert config.safe_name("../../ESCAPED") == "ESCAPED"
    assert config.safe_name("a/b\x00c") == "a-b-c"
    assert config.safe_name("..") == "x" and config.safe_name("ce+ke") == "ce+ke"
    assert len(config.safe_name("x" * 300)) == 40
    cfg = config.resolve({"data": "synthetic", "arch": "test_resnet"})
    for part in cfg.run_id().split("_"):
        assert part and "/" not in part and not part.startswith(".")


def test_bad_plugin_value_leaves_no_folder(tmp_path, cli_run):
    code, out, err = cli_run(["run", *QUICK, "--method", "ke", "--split-rate", "1.5", "--out", str(tmp_path / "r")])
    _one_paragraph(code, out, err)
    assert not (tmp_path / "r").exists()


def test_where_the_data_lives_does_not_change_the_run_id(tmp_path):
    a = config.resolve({"data": "digits", "data_root": str(tmp_path / "a")})
    b = config.resolve({"data": "digits", "data_root": str(tmp_path / "b"), "budget": "matched"})
    assert a.run_id() == b.run_id()
    assert a.run_id() != config.resolve({"data": "digits", "epochs": 3}).run_id()


# ---------------------------------------------------------------------------- config shapes
@pytest.mark.parametrize("text, fragment", [
    ("method: [ce, ke]\n", "'method' expects a name"),
    ("params: [1, 2]\n", "'params' must map plugin names"),
    ("5: 3\n", "setting names must be text"),
    ("data: 3\n", "'data' expects a name"),
    ("arch: 5\n", "'arch' expects a name"),
    ("data_options: [1, 2]\n", "'data_options' expects a mapping"),
    ("epochs: [1, 2]\n", "'epochs' expects an integer"),
    ("epochs: null\n", "'epochs' expects an integer"),
    ("lr: .inf\n", "'lr' expects a finite number"),
    ("params: {ke: [1]}\n", "'params.ke' must be a mapping"),
])
def test_config_file_of_the_wrong_shape(text, fragment, tmp_path, cli_run):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, out, err = cli_run(["run", "--config", str(path), "--out", str(tmp_path / "r"), "--quiet"])
    assert fragment in _one_paragraph(code, out, err)
    assert not (tmp_path / "r").exists()


def test_config_file_not_utf8(tmp_path, cli_run):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"epochs: 2\narch: \xff\xfe\n")
    code, out, err = cli_run(["run", "--config", str(path), "--quiet"])
    assert "is not UTF-8 text" in _one_paragraph(code, out, err)


@pytest.mark.parametrize("spec, fragment", [
    ({"grid": {"seed": [0]}, "set": {"method": ["ce", "ke"]}}, "'method' expects a name"),
    ({"grid": {"epochs": [[1, 2], [3]]}}, "'epochs' expects an integer"),
    ({"grid": {"seed": [0]}, "set": {"params": [1]}}, "'params' must map"),
    ({"grid": {"data": [3]}}, "'data' expects a name"),
])
def test_sweep_file_of_the_wrong_shape(spec, fragment, tmp_path, cli_run):
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(spec))
    code, out, err = cli_run(["sweep", str(path), "--status"])
    assert fragment in _one_paragraph(code, out, err)


def test_sweep_file_with_integer_key(tmp_path, cli_run):
    path = tmp_path / "s.yaml"
    path.write_text("grid:\n  7: [1]\n")
    code, out, err = cli_run(["sweep", str(path), "--status"])
    assert "setting names must be text" in _one_paragraph(code, out, err)


# ---------------------------------------------------------------------------- CLI values
def test_bad_plugin_parameter_creates_no_folder_and_submits_nothing(tmp_path, cli_run):
    """A declared range is checked when the config is resolved: before any run folder or lock exists,
    for `kebench run` and for every entry of a sweep (so --status never counts it as pending)."""
    out = tmp_path / "r"
    code, _, err = cli_run(["run", *QUICK, "--method", "ke", "--split-rate", "1.5", "--out", str(out)])
    assert "ke: --split-rate must be in (0, 1], got 1.5" in _one_paragraph(code, "", err)
    assert not out.exists()
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"grid": {"method": ["ce", "ke"], "split_rate": [0.5, 1.5]},
                                "set": {"data": "synthetic", "arch": "test_resnet"}, "out": str(out)}))
    for extra in (["--status"], []):
        code, _, err = cli_run(["sweep", str(path), *extra])
        assert "--split-rate must be in (0, 1], got 1.5" in _one_paragraph(code, "", err)
        assert not out.exists()


def test_batch_size_that_cannot_train_is_refused_before_starting(tmp_path, cli_run):
    code, out, err = cli_run(["run", *QUICK, "--batch-size", "1", "--out", str(tmp_path / "r")])
    assert "BatchNorm layers, which need at least 2 images per step" in _one_paragraph(code, out, err)
    code, out, err = cli_run(["run", *QUICK, "--batch-size", "1000", "--out", str(tmp_path / "r")])
    assert "larger than the 96 training images" in _one_paragraph(code, out, err)
    assert not (tmp_path / "r").exists()


def test_non_finite_lr_and_bad_data_options(tmp_path, cli_run):
    out_dir = str(tmp_path / "r")
    code, out, err = cli_run(["run", *QUICK, "--lr", "inf", "--out", out_dir])
    assert "'lr' expects a finite number" in _one_paragraph(code, out, err)
    code, out, err = cli_run(["run", *QUICK, "--data-opt", "classes=many", "--out", out_dir])
    assert "'classes' expects an integer" in _one_paragraph(code, out, err)
    code, out, err = cli_run(["run", "--data", "digits", "--data-opt", "colour=red", "--quiet", "--out", out_dir])
    assert "Unknown data option(s) ['colour'] for dataset 'digits'; valid: none" in _one_paragraph(code, out, err)
    code, out, err = cli_run(["run", *QUICK, "--data-opt", "classez=3", "--out", out_dir])
    assert "valid: classes (default 4)" in _one_paragraph(code, out, err)
    assert not (tmp_path / "r").exists()


def test_data_check_refuses_negative_workers(cli_run, tmp_path):
    code, out, err = cli_run(["data", "check", "aircraft", "--data-root", str(tmp_path), "--workers", "-1"])
    assert code == 2 and "Traceback" not in err and "--workers" in err


def test_plot_with_unsupported_extension_names_the_extension(cli_run, tmp_path):
    code, out, err = cli_run(["plot", str(tmp_path), "--out", str(tmp_path / "x.bmp")])
    assert "--out must end in .png, .pdf or .svg" in _one_paragraph(code, out, err) and "x.bmp" in err


# ---------------------------------------------------------------------------- broken result folders
def test_table_skips_broken_result_folders_with_a_warning(make_cfg, run_cfg, cli_run, tmp_path):
    cfg = make_cfg("ce")
    run_cfg(cfg)
    root = Path(cfg.out)
    broken = {"array": b"[1, 2]", "latin1": b'{"status": "complete", "method": "\xe9"}',
              "listconfig": json.dumps({"status": "complete", "method": "ce", "config": [1]}).encode()}
    for name, payload in broken.items():
        (root / name).mkdir()
        (root / name / "result.json").write_bytes(payload)
    code, out, err = cli_run(["table", str(root), "--format", "csv"])
    assert code == 0 and "Traceback" not in err
    assert "array: result.json holds a JSON list" in err
    assert "latin1: result.json is not UTF-8 text" in err
    assert "listconfig: result.json is not a kebench result record ('config' is not a dict)" in err
    assert "ce" in out.lower()


# ---------------------------------------------------------------------------- data that is quietly wrong
def test_a_class_without_readable_images_is_refused(tmp_path, cli_run):
    fixture = fx.build("aircraft", tmp_path / "data")
    d = fixture.root / "fgvc-aircraft-2013b" / "data"
    variant = fx.AIRCRAFT_VARIANTS[0]
    for line in (d / "images_variant_train.txt").read_text().splitlines():
        image_id, name = line.split(" ", 1)
        if name == variant:
            (d / "images" / f"{image_id}.jpg").write_bytes(b"not a jpeg")
    code, out, err = cli_run(["data", "check", "aircraft", "--data-root", str(fixture.root), "--workers", "1"])
    assert code == 1 and f"1 class(es) have no readable image" in out and variant in out
    code, out, err = cli_run(["run", "--data", "aircraft", "--data-root", str(fixture.root), "--arch", "test_resnet",
                              "--epochs", "1", "--resolution", "32", "--quiet", "--out", str(tmp_path / "r"),
                              "--data-opt", f"cache_dir={tmp_path / 'cache'}", "--data-opt", "workers=1"])
    assert f"have no usable image in the train split ({variant})" in _one_paragraph(code, out, err)


# ---------------------------------------------------------------------------- storage faults
def test_read_only_results_folder_is_a_clear_error(tmp_path, cli_run, monkeypatch):
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(30, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, out, err = cli_run(["run", *QUICK, "--out", str(tmp_path / "ro")])
    err = _one_paragraph(code, out, err, expected_code=5)
    assert "the file system is read-only" in err and str(tmp_path / "ro") in err


def test_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(make_cfg, run_cfg, kill_run, monkeypatch):
    cfg = make_cfg("ce", epochs=3)
    reference = run_cfg(dataclasses.replace(cfg, out=cfg.out + "-ref"))
    run_dir = Path(cfg.out) / cfg.run_id()
    kill_run(cfg, after=1)  # one good checkpoint on disk
    good = (run_dir / engine.CHECKPOINT).read_bytes()
    real = results.os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results.os, "fsync", full)
    with pytest.raises(results.StorageError, match="the disk is full"):
        run_cfg(cfg, resume=True)
    assert (run_dir / engine.CHECKPOINT).read_bytes() == good
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.setattr(results.os, "fsync", real)  # space is back
    resumed = run_cfg(cfg, resume=True)
    assert len(resumed["passes"]) == len(reference["passes"])
    for got, want in zip(resumed["passes"], reference["passes"]):  # a tolerance: not bitwise across runs
        assert got["metrics"] == pytest.approx(want["metrics"], abs=1e-6)


def test_abort_inside_torch_save_never_replaces_the_last_good_checkpoint(tmp_path, monkeypatch):
    path, prev = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    results.save_torch(path, {"v": torch.tensor(1)}, previous=prev)
    real_save = torch.save

    def interrupted(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise KeyboardInterrupt  # the second Ctrl-C, inside the writer

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        results.save_torch(path, {"v": torch.tensor(2)}, previous=prev)
    monkeypatch.setattr(torch, "save", real_save)
    assert results.load_torch(path)["v"].item() == 1 and not prev.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]

    def abort_on_rename(src, dst, real=os.replace):  # killed between the two renames of a rotation
        if str(src).endswith(".staged.tmp"):
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(results.os, "replace", abort_on_rename)
    with pytest.raises(KeyboardInterrupt):
        results.save_torch(path, {"v": torch.tensor(3)}, previous=prev)
    assert results.load_torch(prev)["v"].item() == 1  # the fallback a resume reads


def test_checkpoint_with_missing_keys_falls_back(make_cfg, run_cfg, kill_run):
    cfg = make_cfg("ce", epochs=3)
    run_dir = Path(cfg.out) / cfg.run_id()
    kill_run(cfg, after=2)
    results.save_torch(run_dir / engine.CHECKPOINT, {"version": 1, "run_id": cfg.run_id()})
    assert engine.checkpoint_problem({"version": 1, "run_id": "x"}).startswith("missing pass")
    with pytest.warns(UserWarning, match="is not a complete kebench checkpoint .*Resuming from the previous"):
        record = run_cfg(cfg, resume=True)
    assert record["status"] == "complete"


def test_stale_temp_files_are_removed_on_resume_and_by_status(make_cfg, run_cfg, kill_run, tmp_path, cli_run):
    cfg = make_cfg("ce", epochs=2)
    run_dir = Path(cfg.out) / cfg.run_id()
    kill_run(cfg, after=1)
    litter = [run_dir / ".checkpoint.pt.abc123.tmp", run_dir / ".result.json.x.tmp"]
    for p in litter:
        p.write_bytes(b"half")
    run_cfg(cfg, resume=True)
    assert not any(p.exists() for p in litter)

    sweep = tmp_path / "s.yaml"
    sweep.write_text(json.dumps({"grid": {"seed": [0]}, "set": {"data": "synthetic", "arch": "test_resnet",
                                                                 "epochs": 1, "batch_size": 16},
                                 "out": str(tmp_path / "sw")}))
    from kebench.grid import sweep as sweepmod

    (entry,) = sweepmod.expand(sweepmod.load_spec(sweep))
    entry.dir.mkdir(parents=True)
    (entry.dir / ".checkpoint.pt.zz.tmp").write_bytes(b"half")
    code, out, err = cli_run(["sweep", str(sweep), "--status"])
    assert code == 0 and not list(entry.dir.glob(".*.tmp"))


def test_run_help_lists_the_method_settings(cli_run):
    code, out, err = cli_run(["run", "--method", "smooth+ke", "--help"])
    assert code == 0
    assert "Settings of method smooth+ke" in out
    text = " ".join(out.split())  # click wraps the descriptions
    assert "--split-rate FLOAT s_r, the fit-hypothesis share. Default 0.8; in (0, 1] (ke.split_rate)" in text
    assert "--split TEXT" in text and "Default 'kels'; one of kels, wels," in text
    assert "--alpha FLOAT" in text and "Default 0.1; in [0, 1) (smooth.alpha)" in text
    code, out, err = cli_run(["run", "--help"])
    assert code == 0 and "Add --method NAME to --help" in out


def test_a_setting_from_the_command_line_or_a_file_is_the_same_run():
    cli = config.resolve({"method": "scratch", "data": "digits"}, {}, {"finetune_epochs": "40"})
    yaml_file = config.resolve({"method": "scratch", "data": "digits"}, {"finetune_epochs": 40}, {})
    assert cli.params["scratch"]["finetune_epochs"] == 40 and cli.run_id() == yaml_file.run_id()
