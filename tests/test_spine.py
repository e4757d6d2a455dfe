"""The spine: config precedence and validation, CLI errors, determinism, resume, results files."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from kebench.config import resolve
from kebench.run.engine import Run, effective_warmup, lr_factor
from kebench.errors import UserError
from kebench.plugin import Hook


@pytest.mark.parametrize("args, expect", [
    (["--method", "nope"], ["Unknown method 'nope'", "ce", "smooth"]),
    (["--method", "smoth"], ["Did you mean: smooth"]),
    (["--arch", "resnet181"], ["Unknown arch 'resnet181'", "resnet18"]),
    (["--data", "nope"], ["Unknown dataset 'nope'", "digits", "synthetic"]),
    (["--epochs", "0"], ["--epochs must be a positive"]),
    (["--lr", "-1"], ["--lr must be > 0"]),
    (["--seeds", "a,b"], ["--seeds expects"]),
    (["--bogus-flag", "3"], ["Unknown setting 'bogus-flag'"]),
])
def test_user_errors_exit_2_with_message(args, expect, cli_run):
    code, out, err = cli_run(["run", "--quiet", *args])
    text = out + err
    assert code == 2
    for piece in expect:
        assert piece in text
    assert "Traceback" not in text


def test_engine_flags_are_made_from_the_declarations(cli_run):
    """Every engine setting is declared once (config.RunConfig's param() fields: help, default, choices,
    range): `kebench run` has its flag, typed and with its choices, and config.validate its check."""
    import dataclasses

    import click

    from kebench import cli, config
    from kebench.run import loop

    declared = {f.name: f.metadata for f in dataclasses.fields(config.RunConfig) if f.metadata}
    assert set(declared) == set(config.FIELDS) - {"params"} and all(m["help"] for m in declared.values())
    options = {p.name: p for p in cli.run.params}
    flags = {"data_options": "data_opt", "seed": "seeds"}
    assert {flags.get(n, n) for n in declared} <= set(options)
    assert tuple(options["lr_schedule"].type.choices) == config.LR_SCHEDULES and loop.SCHEDULES is config.LR_SCHEDULES
    assert tuple(options["amp"].type.choices) == ("auto", "bf16", "fp16", "off")
    assert isinstance(options["epochs"].type, click.types.IntParamType) and not options["epochs"].show_default
    assert options["channels_last"].secondary_opts == ["--no-channels-last"]
    assert options["lr"].help == "Peak learning rate (SGD)."
    code, _, err = cli_run(["run", "--quiet", "--lr-schedule", "linear"])
    assert code == 2 and "'linear' is not one of 'cosine', 'constant'" in err
    for given, message in (({"momentum": 1.0}, "--momentum must be in [0, 1), got 1.0."),
                           ({"resolution": 4}, "--resolution must be >= 8 pixels, got 4."),
                           ({"lr_per": "batch"}, "Unknown lr-per value 'batch'. Valid lr-per values: epoch, step.")):
        with pytest.raises(UserError) as exc:
            resolve({}, given)
        assert str(exc.value) == message


def test_precedence_registry_file_cli(tmp_path):
    assert resolve({"method": "smooth"}).params["smooth"]["alpha"] == 0.1  # registry default
    file_cfg = {"alpha": 0.2, "epochs": 3}
    cfg = resolve({"method": "smooth"}, file_cfg)
    assert cfg.params["smooth"]["alpha"] == 0.2 and cfg.epochs == 3
    cfg = resolve({"method": "smooth", "epochs": 7}, file_cfg, {"alpha": "0.3"})
    assert cfg.params["smooth"]["alpha"] == 0.3 and cfg.epochs == 7
    cfg = resolve({"method": "smooth"}, {"params": {"smooth": {"alpha": 0.05}}})
    assert cfg.params["smooth"]["alpha"] == 0.05


def test_method_composition_defaults():
    cfg = resolve({"method": "smooth"})
    assert (cfg.method_spec.objective.name, cfg.method_spec.regime.name) == ("smooth", "single")
    with pytest.raises(UserError, match="expected OBJECTIVE\\+REGIME"):
        resolve({"method": "single+ce"})


@pytest.mark.filterwarnings("ignore:triplet. dataset 'digits-retrieval' has only:UserWarning")
def test_the_task_record_picks_the_default_objective_and_headline_metric(make_cfg):
    """One Task record per task: a bare regime trains its default objective, the run's primary metric is
    its headline, and evaluate() scores exactly its metrics (retrieval adds NMI's spread)."""
    from kebench.config import method_spec
    from kebench.data import CLASSIFICATION, RETRIEVAL, DatasetSpec, get_spec, get_task

    assert get_task(get_spec("digits-retrieval").task) is RETRIEVAL and get_task("classification") is CLASSIFICATION
    assert [method_spec(m, d).name for m, d in [("ke", "digits-retrieval"), ("ke", "digits"), (None, "digits-retrieval"),
                                                 (None, "synthetic"), ("smooth+ke", "digits")]] == [
        "triplet+ke", "ce+ke", "triplet", "ce", "smooth+ke"]
    assert resolve({"method": "ke", "data": "digits-retrieval"}).method == "triplet+ke"
    for method, data, task, batch in [("ce", "synthetic", CLASSIFICATION, 16), ("triplet", "digits-retrieval", RETRIEVAL, None)]:
        run = Run(make_cfg(method, data=data, resolution=16, train_fraction=0.3, batch_size=batch), show_progress=False)
        assert (run.task, run.primary) == (task.name, task.headline)
        scores = list(run.evaluate())
        assert tuple(scores[:len(task.metrics)]) == task.metrics
        assert set(scores) - set(task.metrics) <= {"nmi_mean", "nmi_std", "nmi_min", "nmi_max"}
    with pytest.raises(UserError, match="Unknown task 'segmentation'.*classification, retrieval"):
        DatasetSpec("seg", "segmentation", lambda cfg: None)
    assert DatasetSpec("ret", RETRIEVAL, lambda cfg: None).task == "retrieval"  # a record or its name


def test_plugin_value_type_checked():
    with pytest.raises(UserError, match="'alpha' expects a finite number"):
        resolve({"method": "smooth"}, {}, {"alpha": "lots"})


def _ke_cosine_lr(base, epoch, epochs, warmup):
    """The official KE code's per-epoch schedule (cosine_lr with warmup_length), written out."""
    if epoch < warmup:
        return base * (epoch + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup))) * base


@pytest.mark.parametrize("warmup", [0, 2, 5])
def test_lr_per_epoch_is_the_ke_code_schedule(warmup):
    lrs = [0.256 * lr_factor(e, 1, 20, warmup, "cosine") for e in range(20)]
    assert lrs == pytest.approx([_ke_cosine_lr(0.256, e, 20, warmup) for e in range(20)])
    assert [lr_factor(e, 1, 20, warmup, "constant") for e in range(warmup, 20)] == [1.0] * (20 - warmup)


def test_effective_warmup_is_at_most_a_quarter_of_the_schedule():
    assert [effective_warmup(5, t) for t in (200, 20, 12, 3, 1)] == [5, 5, 3, 0, 0]


class _LRTrace(Hook):
    """A hook that records the LR of every optimizer step."""

    def __init__(self):
        self.lrs = []

    def before_step(self, model, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_per_step_warmup_rises_every_step_then_decays(make_cfg):
    """--lr-per step: the warm-up climbs step by step to the peak (it used to saw-tooth 0.5, 0.125,
    0.25, 0.375 inside the first epoch), then the cosine starts at the peak and ends near 0."""
    cfg = make_cfg(epochs=8, warmup_epochs=2, lr_per="step", lr=0.1)
    trace = _LRTrace()
    record = Run(cfg, show_progress=False).fit(hooks=[trace])
    steps = 6  # synthetic: 96 train images, batch 16
    assert len(trace.lrs) == 8 * steps
    warm = [0.1 * (k + 1) / (2 * steps) for k in range(2 * steps)]
    decay = [0.1 * 0.5 * (1 + math.cos(math.pi * k / (6 * steps))) for k in range(6 * steps)]
    assert trace.lrs == pytest.approx(warm + decay)
    assert record["lr"] == {"peak": 0.1, "schedule": "cosine", "warmup_epochs": 2, "window": [0, 8]}


def test_fit_takes_its_own_lr_and_schedule(make_cfg):
    """A pass may run its own peak LR and schedule (a constant-LR fine-tune) without warm-up."""
    cfg = make_cfg(epochs=4, warmup_epochs=1)
    run = Run(cfg, show_progress=False)
    trace = _LRTrace()
    record = run.fit(2, lr=0.001, schedule="constant", warmup=0, hooks=[trace])
    assert trace.lrs == pytest.approx([0.001] * 12)
    assert record["lr"] == {"peak": 0.001, "schedule": "constant", "warmup_epochs": 0, "window": [0, 2]}
    with pytest.raises(UserError, match="schedule in cosine, constant, step"):  # step: issue 26
        run.fit(1, schedule="linear")


def test_run_writes_results_and_is_deterministic(make_cfg, run_cfg):
    cfg = make_cfg(epochs=2)
    first = run_cfg(cfg)
    run_dir = (cfg.out and __import__("pathlib").Path(cfg.out)) / cfg.run_id()
    assert first["status"] == "complete"
    assert {"top1"} <= set(first["final"]) and 0 <= first["final"]["top1"] <= 1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["params"] == {"ce": {}, "single": {}}
    assert first["training"]["steps"] == first["passes"][0]["steps"] == 2 * (96 // 16)
    assert (run_dir / "model.pt").is_file() and not (run_dir / "checkpoint.pt").exists()
    assert first["provenance"] == {"precision": "fp32", "autocast": False}  # CPU: no autocast, no TF32
    second = run_cfg(cfg)
    assert second["final"] == first["final"]
    assert second["passes"][0]["metrics"] == first["passes"][0]["metrics"]
    assert rows[-1]["loss"] == json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["loss"]


def test_killed_run_resumes_to_identical_numbers(make_cfg, run_cfg, kill_run):
    cfg = make_cfg(epochs=3, method="smooth")
    reference = run_cfg(cfg)
    run_dir = __import__("pathlib").Path(cfg.out) / cfg.run_id()
    def rows():  # everything but the timing
        return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    reference_rows = rows()
    (run_dir / "result.json").unlink()

    kill_run(cfg, after=2)  # killed right after epoch 2's checkpoint
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "result.json").exists()
    resumed = run_cfg(cfg, resume=True)
    assert resumed["final"] == reference["final"]
    assert rows() == reference_rows and len(reference_rows) == 3


def test_training_flops_match_hand_count_for_linear_model(make_cfg):
    from kebench.run.engine import Run

    cfg = make_cfg(epochs=1)
    run = Run(cfg, show_progress=False)
    d = run.data.in_chans * run.data.resolution ** 2
    c = run.data.num_classes
    run.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, c))
    record = run.fit(1)
    b = cfg.batch_size
    # forward x@W^T: 2*b*d*c; backward dL/dW: 2*b*d*c (the input needs no gradient).
    assert record["step_flops"] == 4 * b * d * c
    assert record["train_flops"] == record["steps"] * record["step_flops"]
    assert record["steps"] == len(run.data.train) // b


def test_digits_dataset_shapes():
    from kebench import data

    cfg = resolve({})
    assert (cfg.arch, cfg.resolution, cfg.epochs) == ("test_resnet", 40, 5)  # the first run: < 1 min on 2 CPU cores
    assert resolve({"arch": "resnet18"}).arch == "resnet18"  # the user's arch wins over the dataset's
    bundle = data.load(cfg)
    assert (len(bundle.train), len(bundle.test)) == (1437, 360)
    assert bundle.train.images.shape[1:] == (1, 40, 40) and bundle.train.images.dtype == torch.uint8
    assert data.load(resolve({"resolution": 32})).train.images.shape[1:] == (1, 32, 32)
    paper = resolve({"data": "flowers102"})
    assert (paper.arch, paper.epochs, paper.resolution) == ("resnet18", 200, None)  # paper datasets: paper settings
    assert torch.bincount(bundle.test.labels).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]


def test_augment_identity_box_and_flip():
    from kebench.data.pipeline import augment

    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    full = torch.tensor([[2.0, 2.0, 4.0, 4.0]] * 2)
    same = augment(x, 4, full, torch.tensor([False, True]))
    assert torch.allclose(same[0], x[0], atol=1e-4)
    assert torch.allclose(same[1], x[1].flip(-1), atol=1e-4)


def test_list_commands(cli_run):
    code, out, err = cli_run(["list", "archs", "resnet1*"])
    text = out + err
    assert code == 0 and "resnet18" in text.split() and "resnet50" not in text.split()
    code, out, err = cli_run(["list", "archs", "googlenet"])
    text = out + err
    assert text.split() == ["googlenet"]
    code, out, err = cli_run(["list", "datasets"])
    text = out + err
    assert "digits" in text and "synthetic" in text
    code, out, err = cli_run(["list", "methods"])
    text = out + err
    assert "smooth" in text and "objective" in text


@pytest.mark.parametrize("amp, precision", [("bf16", "bf16"), ("fp16", "fp16"), ("off", "fp32")])
def test_provenance_states_the_precision_as_run(amp, precision, make_cfg):
    from kebench.run.device import DevicePolicy
    from kebench.run.results import provenance

    cfg = make_cfg(amp=amp)
    policy = DevicePolicy.for_run(cfg, torch.device("cpu"))
    assert provenance(policy) == {"precision": precision, "autocast": amp != "off"}
    auto = DevicePolicy.for_run(make_cfg(), torch.device("cpu"))  # --amp auto on a CPU: fp32
    assert provenance(auto)["precision"] == "fp32"
