"""Born-Again Networks: the distillation loss, a frozen teacher, fresh students, the ensemble,
resume, the refusal of kd, fd and --teacher, and multi-method commands (Table 2) whose plugin flags fit only some methods."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from kebench.config import resolve, split_plugin_flags
from kebench.run.engine import Run
from kebench.errors import UserError
from kebench.run.distill import kd_loss
from methods.bans import BornAgainStudent


def _softmax(v):
    e = [math.exp(a) for a in v]
    return [a / sum(e) for a in e]


class Fixed(nn.Module):
    """Returns fixed logits (plus a trainable zero), so losses can be checked by hand."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.logits[: len(x)] + self.w


def test_distill_loss_equals_hand_computed_value(make_cfg):
    from methods.ce import CrossEntropy

    s, t, y, a, temp = [2.0, 0.0, -1.0], [0.5, 1.5, 0.0], 1, 0.9, 4.0
    obj = BornAgainStudent(CrossEntropy({}, None), Fixed([t]), a, temp)
    loss, logits = obj.loss(Fixed([s]), torch.zeros(1, 3, 4, 4), torch.tensor([y]))
    ce = -math.log(_softmax(s)[y])
    p_s, p_t = _softmax([v / temp for v in s]), _softmax([v / temp for v in t])
    kl = sum(b * (math.log(b) - math.log(c)) for c, b in zip(p_s, p_t))
    assert loss.item() == pytest.approx((1 - a) * ce + a * temp * temp * kl, rel=1e-5)
    assert kd_loss(torch.tensor([s]), torch.tensor([s]), temp).item() == pytest.approx(0, abs=1e-7)
    assert logits.tolist() == [s]


def test_default_loss_is_the_reference_code_form(make_cfg):
    """nocotan/born_again_neuralnet (since 2018-11), the code behind the KE paper's BANs row:
    0.2 * nn.KLDivLoss()(log_softmax(s/T), softmax(t/T)) + 0.8 * CE, 'mean' over batch x classes, no T^2."""
    from methods.ce import CrossEntropy

    run = Run(make_cfg("bans", plugin={"generations": 2}), show_progress=False)
    assert (run.regime.params.loss, run.regime.alpha, run.regime.params.temperature) == ("reference", 0.2, 20.0)
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 102) * 3, torch.randn(5, 102) * 3, torch.randint(0, 102, (5,))
    obj = BornAgainStudent(CrossEntropy({}, None), Fixed(t.tolist()), run.regime.alpha, 20.0, "reference")
    loss, _ = obj.loss(Fixed(s.tolist()), torch.zeros(5, 3, 4, 4), y)
    with warnings.catch_warnings():  # torch warns that 'mean' is not 'batchmean': that is the point
        warnings.simplefilter("ignore")
        expect = (0.2 * nn.KLDivLoss()(torch.log_softmax(s / 20, 1), torch.softmax(t / 20, 1))
                  + 0.8 * nn.CrossEntropyLoss()(s, y))
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    hinton = Run(make_cfg("bans", plugin={"loss": "hinton"}), show_progress=False).regime
    assert hinton.alpha == 0.9
    with pytest.raises(UserError, match="bans: --loss must be one of reference, hinton, got 'kl'"):
        Run(make_cfg("bans", plugin={"loss": "kl"}), show_progress=False)


@pytest.mark.parametrize("form, alpha, ratio", [("reference", 0.2, 0.2 / (0.8 * 102 * 20)),
                                                ("hinton", 0.9, 0.9 * 20 / 0.1)])
def test_kd_to_ce_gradient_ratio_at_102_classes(form, alpha, ratio):
    """The figures in docs/baselines.md: d(KD)/dz = w_kd (p_s^T - p_t^T), d(CE)/dz = w_ce (p - y);
    w_kd / w_ce is 1/8160 (reference) and 180 (hinton) at 102 classes, T 20."""
    torch.manual_seed(1)
    b, c, temp = 4, 102, 20.0
    s = (torch.randn(b, c) * 4).requires_grad_()
    t, y = torch.randn(b, c) * 4, torch.randint(0, c, (b,))
    (kd_grad,) = torch.autograd.grad(alpha * kd_loss(s, t, temp, form), s)
    (ce_grad,) = torch.autograd.grad((1 - alpha) * nn.functional.cross_entropy(s, y), s)
    w_kd = kd_grad / (torch.softmax(s / temp, 1) - torch.softmax(t / temp, 1)).detach()
    w_ce = ce_grad / (torch.softmax(s, 1) - nn.functional.one_hot(y, c)).detach()
    assert (w_kd / w_ce).flatten().tolist() == pytest.approx([ratio] * b * c, rel=1e-3)
    assert ratio == pytest.approx(1 / 8160 if form == "reference" else 180)


def test_distill_uses_only_the_forward_passes_with_gradients(make_cfg):
    """Under CS-KD the teacher sees the anchors (the student's gradient pass), not the partners."""
    from methods.cskd import ClassWiseSelfKD

    cfg = make_cfg("cskd")
    seen = []

    class Teacher(nn.Module):
        def forward(self, x):
            seen.append(len(x))
            return torch.zeros(len(x), 4)

    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    obj = BornAgainStudent(ClassWiseSelfKD(cfg.plugin_params("cskd"), None), Teacher(), 0.5, 4.0)
    x, y = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    loss, logits = obj.loss(student, x, y)
    assert seen == [3] and len(logits) == 3
    loss.backward()
    assert student[1].weight.grad is not None


def test_teacher_frozen_student_fresh_and_ensemble(make_cfg):
    cfg = make_cfg("bans", epochs=2, plugin={"generations": 3})
    run = Run(cfg, show_progress=False)
    original = run.fit
    checks = []

    def spy(*args, objective=None, **kwargs):
        if objective is None:
            return original(*args, objective=objective, **kwargs)
        teacher = objective.teacher
        before = {k: v.clone() for k, v in teacher.state_dict().items()}  # weights and BN statistics
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        student = run.model
        # The student starts from a fresh init: BN statistics reset, weights unlike the teacher's.
        bn = next(m for m in student.modules() if isinstance(m, nn.BatchNorm2d))
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.equal(student.conv1[0].weight, teacher.conv1[0].weight)
        record = original(*args, objective=objective, **kwargs)
        after = teacher.state_dict()
        checks.append(all(torch.equal(before[k], after[k]) for k in before))
        assert not torch.equal(student.conv1[0].weight, teacher.conv1[0].weight)
        return record

    run.fit = spy
    result = run.execute()
    assert checks == [True, True]
    assert [(p["kind"], p["index"]) for p in result["passes"]] == [("generation", g) for g in (1, 2, 3)]
    first = result["passes"][0]["metrics"]
    assert first["ensemble_top1"] == first["top1"]  # an ensemble of one
    probs = run.state["bans_probs"]
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:2]))
    labels = run.data.test.labels
    expect = (probs.mean(0).argmax(1) == labels).float().mean().item()
    assert result["final"]["ensemble_top1"] == pytest.approx(expect)
    assert result["passes"][-1]["metrics"]["ensemble_top1"] == result["final"]["ensemble_top1"]


def test_bans_resumes_inside_a_student_generation(make_cfg, run_cfg, kill_run):
    cfg = make_cfg("smooth+bans", epochs=2, checkpoint_every_s=0, plugin={"generations": 2, "bans.alpha": 0.5})
    reference = run_cfg(cfg)
    (Path(cfg.out) / cfg.run_id() / "result.json").unlink()
    kill_run(cfg, after=3)  # generation 1: 2 saves; killed after generation 2's first epoch
    resumed = run_cfg(cfg, resume=True)
    assert [p["metrics"] for p in resumed["passes"]] == [p["metrics"] for p in reference["passes"]]
    assert resumed["final"]["ensemble_top1"] == reference["final"]["ensemble_top1"]


def test_bans_refuses_kd_and_bad_values(make_cfg):
    with pytest.raises(UserError, match="refused: BANs already distils every generation"):
        make_cfg("kd+bans")
    with pytest.raises(UserError, match="alpha"):
        Run(make_cfg("bans", plugin={"bans.alpha": 1.5}), show_progress=False)


@pytest.mark.parametrize("teacher_flag", [["--teacher", "teacher/model.pt"], []])
def test_bans_refuses_a_teacher_objective_with_or_without_teacher_path(tmp_path, cli_run, teacher_flag):
    """fd+bans --teacher PATH used to start (two teachers per student); without --teacher the old error
    even told the user to pass one. Both now name BANs' own teachers and what to run instead."""
    code, _, err = cli_run(["run", "--method", "fd+bans", *teacher_flag, "--data", "synthetic", "--arch",
                            "test_resnet", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 2
    message = " ".join(err.split())
    assert "Method 'fd+bans' is refused: BANs already distils every generation from the previous one, a teacher " \
           "it trains itself" in message
    assert "run 'fd' alone (one pass, under 'single') with --teacher PATH" in message
    assert "needs no teacher: adacos+bans, ce+bans, cskd+bans, dropout+bans, evodrop+bans, smooth+bans." in message
    assert "Traceback" not in err and "triplet+bans" not in message  # triplet is a retrieval objective
    assert not (tmp_path / "out").exists()  # refused when the config is resolved, before any folder


def test_multi_method_flags_reach_only_the_methods_that_take_them():
    flags = {"generations": "2", "cycles": "1"}
    split = split_plugin_flags(["ce", "bans", "repr", "smooth+ke_dsd"], flags, "synthetic")
    assert split == {"ce": {}, "bans": {"generations": "2"}, "repr": {"cycles": "1"},
                     "smooth+ke_dsd": {"generations": "2"}}
    assert split_plugin_flags(["ce", "bans"], {"bans.generations": "3"})["bans"] == {"bans.generations": "3"}
    with pytest.raises(UserError, match="none of the methods ce, smooth takes it"):
        split_plugin_flags(["ce", "smooth"], {"generations": "2"})
    # A single method keeps the strict per-method check.
    with pytest.raises(UserError, match="Unknown setting 'generations'"):
        resolve({"method": "ce", "data": "synthetic"}, {}, split_plugin_flags(["ce"], {"generations": "2"})["ce"])


def test_table2_command_runs_every_baseline(tmp_path, cli_run):
    out = tmp_path / "results"
    args = ["run", "--quiet", "--method", "ce,smooth,cskd,adacos,dsd,bans,repr", "--seeds", "0",
            "--data", "synthetic", "--arch", "test_resnet", "--epochs", "1", "--device", "cpu",
            "--out", str(out), "--generations", "2", "--cycles", "1"]
    code, _, err = cli_run(args)
    assert code == 0, err
    import json

    results = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in out.glob("*/result.json")}
    assert set(results) == {"ce", "smooth", "cskd", "adacos", "ce+dsd", "ce+bans", "ce+repr"}
    assert all(r["status"] == "complete" for r in results.values())
    assert results["ce+bans"]["config"]["params"]["bans"]["generations"] == 2
    assert len(results["ce+bans"]["passes"]) == 2 and len(results["ce+dsd"]["passes"]) == 3
    assert [p["kind"] for p in results["ce+repr"]["passes"]] == ["s1", "s2", "final"]
