"""Park et al.'s two analyses on a tiny network: the NAS-without-training score (Mellor et al.) and
the filter-normalised loss landscape (Li et al.), recorded by a run and drawn as a figure."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from kebench.run import analyses


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 4)).eval()


def test_jacobian_kernel_is_a_correlation_matrix_and_logdet_is_its_score():
    x = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    model = _net()
    k = analyses.jacobian_kernel(model, x)
    assert k.shape == (16, 16)
    torch.testing.assert_close(k.diagonal(), torch.ones(16, dtype=torch.double))
    torch.testing.assert_close(k, k.T)
    # the per-sample Jacobian of the summed outputs, checked for one sample by autograd on it alone
    x0 = x[3:4].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x0).sum(), x0)
    x1 = x[5:6].clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(model(x1).sum(), x1)
    expected = torch.corrcoef(torch.stack([g.flatten(), g1.flatten()]).double())[0, 1]
    assert float(k[3, 5]) == pytest.approx(float(expected), abs=1e-6)  # float32 gradients
    score = analyses.naswot(model, x)
    assert score["naswot"] == pytest.approx(float(torch.logdet(k)), rel=1e-9) and score["naswot"] < 0
    assert math.isfinite(score["naswot_eig"])
    # identical inputs cannot be told apart: the kernel is singular and the score collapses
    same = analyses.naswot(model, x[:1].repeat(16, 1, 1, 1))
    assert same["naswot"] < score["naswot"] - 50


def test_filter_normalised_directions_and_landscape():
    model = _net()
    d = analyses.filter_normalised_direction(model, torch.Generator().manual_seed(0))
    for p, u in zip(model.parameters(), d):
        if p.dim() <= 1:
            assert not u.any()
        else:
            torch.testing.assert_close(u.reshape(len(u), -1).norm(dim=1), p.detach().reshape(len(p), -1).norm(dim=1))
    x = torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(3))
    before = [p.detach().clone() for p in model.parameters()]
    land = analyses.loss_landscape(model, x, y, steps=5)
    assert land["alpha"] == [-1.0, -0.5, 0.0, 0.5, 1.0] and len(land["loss"]) == 5 and len(land["loss"][0]) == 5
    centre = float(nn.functional.cross_entropy(model(x), y))
    assert land["loss"][2][2] == pytest.approx(centre, rel=1e-5)  # the middle of the grid is the model itself
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model is untouched


def test_run_records_both_and_the_landscape_figure_draws(tmp_path, capsys):
    from kebench.cli import main

    out = tmp_path / "r"
    try:
        main(["run", "--data", "synthetic", "--arch", "test_resnet", "--epochs", "1", "--device", "cpu",
              "--out", str(out), "--quiet", "--analyses", "naswot,landscape"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    (path,) = out.glob("*/result.json")
    rec = json.loads(path.read_text())
    # scored on training images (the synthetic set has 96, its test split 32)
    assert math.isfinite(rec["final"]["naswot"]) and rec["final"]["naswot_batch"] == 96
    land = rec["analyses"]["landscape"]
    assert len(land["loss"]) == analyses.LANDSCAPE_STEPS and rec["config"]["analyses"] == ["naswot", "landscape"]
    fig_path = tmp_path / "land.png"
    try:
        main(["plot", str(out), "--kind", "landscape", "--out", str(fig_path)])
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert fig_path.stat().st_size > 1000
    with pytest.raises(SystemExit) as exc:
        main(["run", "--data", "synthetic", "--analyses", "nope", "--out", str(out), "--quiet"])
    assert exc.value.code == 2 and "--analyses nope is not known" in capsys.readouterr().err


def test_the_probe_batch_is_a_seeded_sample_of_training_images_in_the_evaluation_view(make_cfg):
    """Li et al. compute the landscape's loss on training data and Mellor et al. score a training
    batch: the probe is drawn from the training split, un-augmented, the same for a seed."""
    from types import SimpleNamespace

    from kebench import data
    from kebench.data.pipeline import BatchStream

    cfg = make_cfg(seed=3)
    bundle = data.load(cfg)
    run = SimpleNamespace(data=bundle, cfg=cfg, device=torch.device("cpu"))
    x, y = analyses.probe_batch(run)
    index = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(3)).sort().values
    assert len(x) == len(bundle.train) == 96 and torch.equal(y, bundle.train.labels[index])
    whole = BatchStream(bundle, bundle.train, batch_size=96, device=torch.device("cpu"), train=False)
    expect, _ = whole.load(index)
    assert torch.allclose(x, expect)  # the evaluation view: no crop, no flip
    x2, _ = analyses.probe_batch(run)
    assert torch.equal(x, x2)


# ------------------------------------------------------------------ landscapes at the end of each LR step
def test_step_ends_are_the_last_epoch_before_each_milestone_and_the_pass_end():
    from kebench.run.loop import LRPlan, lr_factor

    plan = LRPlan(peak=0.1, schedule="step", warmup=0, offset=0, total=160)
    assert plan.step_ends(160) == [80, 120, 160]
    # each end is the last epoch at its LR: the next epoch (0-based index = end) has the lower one
    for end in (80, 120):
        assert lr_factor(end, 1, 160, 0, "step") == pytest.approx(0.1 * lr_factor(end - 1, 1, 160, 0, "step"))
    # a pass continuing a shared window (offset 100 of 160, 40 epochs) only reaches the 120 milestone
    assert LRPlan(0.1, "step", 0, offset=100, total=160).step_ends(40) == [20, 40]
    assert LRPlan(0.1, "step", 0, 0, 4, milestones=(0.5, 0.75)).step_ends(4) == [2, 3, 4]
    assert LRPlan(0.1, "step", 0, 0, 2, milestones=(0.5, 1.0)).step_ends(2) == [1, 2]  # no duplicate end
    assert LRPlan(0.1, "cosine", 0, 0, 160).step_ends(160) == []


def _sigterm_at_step(monkeypatch, n):
    """The process sends itself a real SIGTERM during training step n (1-based)."""
    import os
    import signal

    from kebench.run import engine

    original, calls = engine.Progress.step, []

    def step(self, n_images):
        original(self, n_images)
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(engine.Progress, "step", step)
    return lambda: monkeypatch.setattr(engine.Progress, "step", original)


def _close(a: list, b: list) -> None:
    assert [(s["pass"], s["kind"], s["epoch"], s["lr"]) for s in a] == [(s["pass"], s["kind"], s["epoch"], s["lr"])
                                                                        for s in b]
    for s, t in zip(a, b):
        torch.testing.assert_close(torch.tensor(s["loss"]), torch.tensor(t["loss"]), rtol=1e-4, atol=1e-5)


def test_a_step_schedule_pass_records_a_landscape_per_lr_step_and_resume_keeps_them(make_cfg, run_cfg,
                                                                                    monkeypatch, tmp_path):
    from pathlib import Path

    from kebench.run import guard

    cfg = make_cfg(epochs=4, lr_schedule="step", lr=0.05, analyses=["landscape"], checkpoint_every_s=0)
    ref = run_cfg(dataclasses.replace(cfg, out=str(tmp_path / "reference")))
    steps = ref["analyses"]["landscape_steps"]
    # milestones 0.5, 0.75 of 4 epochs: the LR steps end after epochs 2, 3 and 4, at 0.05, 0.005, 0.0005
    assert [(s["pass"], s["kind"], s["epoch"]) for s in steps] == [(1, "pass", 2), (1, "pass", 3), (1, "pass", 4)]
    assert [s["lr"] for s in steps] == pytest.approx([0.05, 0.005, 0.0005])
    assert all(len(s["loss"]) == analyses.LANDSCAPE_STEPS for s in steps)
    assert steps[0]["loss"] != steps[1]["loss"]  # the weights moved between the step ends
    # the final model is the one at the end of the last step: the same landscape
    _close([dict(steps[-1])], [{**ref["analyses"]["landscape"], **{k: steps[-1][k] for k in ("pass", "kind", "epoch", "lr")}}])

    disarm = _sigterm_at_step(monkeypatch, 3 * 6 + 2)  # epoch 4, step 2 (6 steps an epoch)
    try:
        with pytest.raises(guard.RunInterrupted):
            run_cfg(cfg)
    finally:
        disarm()
        guard.STOP.clear()
    ck = torch.load(Path(cfg.out) / cfg.run_id() / "checkpoint.pt", weights_only=True)
    assert [s["epoch"] for s in ck["landscapes"]] == [2, 3]  # taken before the stop, carried by the checkpoint
    resumed = run_cfg(cfg, resume=True)
    _close(resumed["analyses"]["landscape_steps"], steps)


def test_other_schedules_keep_the_final_landscape_only(make_cfg, run_cfg):
    rec = run_cfg(make_cfg(epochs=2, analyses=["landscape"]))
    assert "landscape_steps" not in rec["analyses"] and len(rec["analyses"]["landscape"]["loss"]) == 11


def test_the_landscape_figure_draws_a_panel_per_step_on_one_colour_scale_and_old_single_results():
    from kebench.analysis.plots import landscape_figure

    def grid(scale):
        return {"alpha": [-1.0, 0.0, 1.0], "beta": [-1.0, 0.0, 1.0],
                "loss": [[scale * (1 + a * a + b * b) for a in (-1, 0, 1)] for b in (-1, 0, 1)]}

    steps = [{"pass": 1, "kind": "train", "label": 2, "epoch": e, "lr": lr, **grid(s)}
             for e, lr, s in ((80, 0.1, 4.0), (120, 0.01, 1.0), (160, 0.001, 0.1))]
    new = {"method": "ce", "objective": "ce", "regime": "single", "arch": "resnet56", "dataset": "cifar100", "seed": 0,
           "passes": [{"kind": "train", "epochs": 160}], "analyses": {"landscape": grid(0.1), "landscape_steps": steps}}
    seed1 = {**new, "seed": 1}  # another seed of the same setting: its directions differ, one model is drawn
    old = {"method": "ce", "objective": "ce", "regime": "single", "arch": "resnet110", "dataset": "cifar100", "seed": 1,
           "analyses": {"landscape": grid(2.0)}}  # a result written before per-step landscapes
    pruned = {"method": "kd+self-distill", "objective": "kd", "regime": "self-distill", "arch": "resnet56",
              "dataset": "cifar100", "seed": 2,
              "passes": [{"kind": "train", "epochs": 160}, {"kind": "finetune", "epochs": 40}],
              "analyses": {"landscape": grid(0.5), "landscape_steps": steps[:1]}}
    fig = landscape_figure([seed1, new, old, pruned])
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    # the last step of `new` is its final model (not drawn twice); the pruned student's fine-tune
    # (a constant LR) adds its final model after its one step
    assert [ax.get_title().splitlines()[-1] for ax in panels] == [
        "train 2, epoch 80, lr 0.1", "train 2, epoch 120, lr 0.01", "train 2, epoch 160, lr 0.001",
        "CE (N1) / resnet110 / cifar100 / s1", "train 2, epoch 80, lr 0.1", "final model"]
    levels = [tuple(ax.collections[0].levels) for ax in panels]
    assert len(set(levels)) == 1  # one scale: log10 of the smallest (0.1) to the largest (4 * 3) loss
    assert levels[0][0] == pytest.approx(-1.0) and levels[0][-1] == pytest.approx(math.log10(12.0))


def test_step_landscapes_skip_teacher_passes_and_close_a_pass_a_hook_ended_early(monkeypatch):
    from types import SimpleNamespace

    from kebench.run.loop import LRPlan
    from kebench.run.state import RunState

    run = SimpleNamespace(cfg=SimpleNamespace(analyses=["landscape"], seed=0), task="classification", book=RunState())
    step = LRPlan(0.1, "step", 0, 0, 8)
    assert analyses.pass_hooks(run, "teacher", step, 8) == []  # another network than the reported one
    assert analyses.pass_hooks(run, "train", LRPlan(0.1, "cosine", 0, 0, 8), 8) == []
    (hook,) = analyses.pass_hooks(run, "train", step, 8)
    assert hook.ends == {4, 6, 8}
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(analyses, "probe_batch", lambda r: (x, torch.arange(8) % 4))
    model = _net()
    for epoch in (1, 2, 3, 4, 5):
        hook.epoch_end(model, epoch, {"pass": 1, "kind": "train", "label": 2, "epoch": epoch, "lr": 0.1})
    hook.pass_end({"stopped": "extinct at a landmark", "epochs": 5})
    assert [(s["pass"], s["epoch"]) for s in run.book.landscapes] == [(2, 4), (2, 5)]
    hook.pass_end({"epochs": 5})  # a pass that ran to its end adds nothing at pass_end
    assert len(run.book.landscapes) == 2


def test_the_analyses_score_the_pruned_student_a_pipeline_reports(make_cfg, run_cfg, monkeypatch):
    """final.top1 of a KD x pruning run is the pruned, fine-tuned student's (a network beside
    run.model): its NASWOT score and final landscape are that network's too."""
    scored, real = [], analyses.naswot
    monkeypatch.setattr(analyses, "naswot",
                        lambda model, x: scored.append(sum(p.numel() for p in model.parameters())) or real(model, x))
    rec = run_cfg(make_cfg("kd+self-distill", plugin={"prune": "l1-filter", "prune_ratio": 0.5, "finetune_epochs": 1},
                           analyses=["naswot"]))
    assert scored == [rec["cost"]["pruned"]["params"]] and scored[0] < rec["cost"]["unpruned"]["params"]
