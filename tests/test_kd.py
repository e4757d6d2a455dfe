"""kd / fd objectives: losses against hand-computed values, the regressor, the teacher contract,
and the batch augmentations (AutoAugment on uint8, CutMix with mixed labels)."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kebench.run.engine import Run
from kebench.errors import UserError
from kebench.run.distill import BatchAugment, auto_value, kd_loss, mixed_ce, parse_augment
from methods.kd import feature_term, make_regressor


def _softmax(v):
    e = [math.exp(a) for a in v]
    return [a / sum(e) for a in e]


def test_kd_term_equals_hand_computed_value():
    s, t, temp = [1.0, 2.0, 0.5], [3.0, -1.0, 0.0], 4.0
    p_s = _softmax([a / temp for a in s])
    p_t = _softmax([a / temp for a in t])
    kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    expect = temp * temp * kl
    got = kd_loss(torch.tensor([s, s]), torch.tensor([t, t]), temp)  # batchmean of two equal rows
    assert got.item() == pytest.approx(expect, rel=1e-6)
    assert kd_loss(torch.tensor([s]), torch.tensor([s]), temp).item() == pytest.approx(0.0, abs=1e-7)


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.logits + self.w


def test_label_kd_loss_equals_hand_computed_value(make_cfg):
    """(1-α)·CE + α·T²·KL on fixed student/teacher logits, with the registry defaults α=0.9, T=4."""
    from methods.kd import LabelKD

    cfg = make_cfg("kd+pre-distill")
    assert cfg.params["kd"]["alpha"] == 0.9 and cfg.params["kd"]["temperature"] == 4.0
    from kebench.registry import parse_method

    run = SimpleNamespace(cfg=cfg, method=parse_method("kd+pre-distill"))  # a regime that provides the teacher
    obj = LabelKD(cfg.plugin_params("kd"), run)
    s, t, y = [2.0, 0.0, -1.0], [0.5, 1.5, 0.0], 1
    obj.set_teacher(FixedLogits([t]))
    loss, logits = obj.loss(FixedLogits([s]), torch.zeros(1, 3, 4, 4), torch.tensor([y]))
    ce = -math.log(_softmax(s)[y])
    p_s, p_t = _softmax([a / 4 for a in s]), _softmax([a / 4 for a in t])
    kl = sum(b * (math.log(b) - math.log(a)) for a, b in zip(p_s, p_t))
    assert loss.item() == pytest.approx(0.1 * ce + 0.9 * 16 * kl, rel=1e-6)
    assert logits.tolist() == [s]


def test_feature_term_is_scale_free_mean_l1():
    a = torch.tensor([[[[3.0]], [[4.0]]]])  # one sample, 2 channels, 1x1: norm 5
    b = torch.tensor([[[[0.0]], [[2.0]]]])  # normalised: (0, 1)
    # |0.6 - 0| + |0.8 - 1| = 0.8, mean over 2 elements = 0.4
    assert feature_term(a, b).item() == pytest.approx(0.4, rel=1e-6)
    assert feature_term(a, 7 * a).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="regressor"):
        feature_term(a, torch.zeros(1, 3, 1, 1))


class Features(nn.Module):
    """forward_features gives a [N, C, 3, 3] map: a stand-in for a pruned (narrower) student."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(3)

    def forward_features(self, x):
        return self.pool(self.conv(x))


def test_regressor_maps_student_to_teacher_feature_shape():
    run = SimpleNamespace(data=SimpleNamespace(in_chans=1, resolution=12), device=torch.device("cpu"),
                          channels_last=False, cfg=SimpleNamespace(arch="toy"))
    student, teacher = Features(5), Features(8)
    reg = make_regressor(student, teacher, run)
    x = torch.randn(4, 1, 12, 12)
    assert reg(student.forward_features(x)).shape == teacher.forward_features(x).shape == (4, 8, 3, 3)
    assert isinstance(reg, nn.Conv2d) and reg.kernel_size == (1, 1)


def test_beta_and_sparsity_defaults_follow_the_architecture_family(make_cfg):
    table = make_cfg("fd+pre-distill").params["fd"]["beta_by_family"]
    assert auto_value("auto", "resnet18", table, "beta") == 500
    assert auto_value("auto", "vgg11_bn", table, "beta") == 1500
    assert auto_value("auto", "densenet169", table, "beta") == 1000
    assert auto_value("750", "resnet18", table, "beta") == 750
    with pytest.raises(UserError, match="No default beta for arch 'efficientnet_b0'.*--beta"):
        auto_value("auto", "efficientnet_b0", table, "beta")


def test_scaled_beta_follows_the_feature_map_size():
    """Park et al.'s β are CIFAR values; the mean L1 of unit maps shrinks as 1/sqrt(C·H·W), so β
    grows as sqrt(size): ResNet18 at 224 px (512x7x7) against ResNet-56 on CIFAR (64x8x8)."""
    from kebench.nets.models import create_model
    from methods.kd import feature_shape, scaled_beta

    run = SimpleNamespace(data=SimpleNamespace(in_chans=3, resolution=224), cfg=SimpleNamespace(arch="resnet18"))
    shape = feature_shape(create_model("resnet18", 10), run)
    assert tuple(shape) == (512, 7, 7)
    assert scaled_beta(500, math.prod(shape), 64 * 8 * 8) == pytest.approx(1237.4, abs=0.1)
    assert scaled_beta(500, 4096, 4096) == 500
    # why: the distance of two random unit maps falls as 1/sqrt(size), beta * distance stays put
    gen = torch.Generator().manual_seed(0)
    terms = {n: feature_term(torch.randn(64, n, 1, 1, generator=gen), torch.randn(64, n, 1, 1, generator=gen))
             for n in (256, 4096)}
    assert scaled_beta(1, 4096, 256) * terms[4096].item() == pytest.approx(terms[256].item(), rel=0.02)


def test_fd_auto_beta_is_scaled_to_the_teachers_feature_map_and_recorded(make_cfg, teacher_file):
    cfg = make_cfg("fd", plugin={"teacher": teacher_file})
    run = Run(cfg, show_progress=False)
    run.objective.extra_parameters(run.model)
    size = math.prod(run.objective.teacher.forward_features(torch.zeros(1, 3, 16, 16)).shape[1:])
    assert run.objective.beta == pytest.approx(500 * math.sqrt(size / 4096))
    assert run.reported("fd") == {"beta": run.objective.beta, "beta_family": 500.0, "feature_size": size,
                               "reference_size": 4096.0,
                               "rule": "beta_family * sqrt(feature_size / reference_size)"}
    fixed = Run(make_cfg("fd", plugin={"teacher": teacher_file, "beta": "750"}), show_progress=False)
    fixed.objective.extra_parameters(fixed.model)
    assert fixed.objective.beta == 750 and fixed.reported("fd") is None  # a number is used as given


# --------------------------------------------------------------------------- the teacher contract
@pytest.fixture
def teacher_file(make_cfg, run_cfg):
    cfg = make_cfg("ce", epochs=1)
    run_cfg(cfg)
    return f"{cfg.out}/{cfg.run_id()}/model.pt"


def test_loaded_teacher_is_frozen_in_eval_and_never_updated(make_cfg, teacher_file):
    cfg = make_cfg("fd", plugin={"teacher": teacher_file}, epochs=2)
    run = Run(cfg, show_progress=False)
    teacher = run.objective.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = run.execute()
    assert result["status"] == "complete"
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # weights and BN running statistics alike
        assert torch.equal(v, before[k]), k
    saved = torch.load(teacher_file, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], before[k]) for k in saved)
    # The regressor is registered in run.state (checkpointed) and maps 96 student to 96 teacher channels.
    assert "fd.regressor" in run.state and run.state["fd.regressor"].weight.shape[:2] == (96, 96)


def test_teacher_errors_are_clear(make_cfg, teacher_file, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Run(make_cfg("kd", plugin={"teacher": str(tmp_path / "nope.pt")}), show_progress=False)
    with pytest.raises(UserError, match="holds a 'test_resnet' but this run trains 'resnet18'"):
        Run(make_cfg("kd", plugin={"teacher": teacher_file}, arch="resnet18"), show_progress=False)
    with pytest.raises(UserError, match="does not fit this run's 'test_resnet' with 6 classes"):
        Run(make_cfg("kd", plugin={"teacher": teacher_file}, data_options={"classes": 6}), show_progress=False)
    junk = tmp_path / "junk.pt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(UserError, match="not a kebench model file"):
        Run(make_cfg("kd", plugin={"teacher": str(junk)}), show_progress=False)


def test_kd_without_a_teacher_is_refused_when_the_config_is_validated(make_cfg, tmp_path):
    """The teacher contract is checked by config validation (exit 2 before any run folder exists); the
    message names the regimes that provide a teacher, read from their declarations."""
    with pytest.raises(UserError, match="'kd' distils from a teacher but none was given.*--teacher PATH.*"
                                        r"\(kd\+post-distill, kd\+pre-distill, kd\+pre-post, kd\+self-distill\)"):
        make_cfg("kd")
    with pytest.raises(UserError, match="'fd\\+ke' distils from a teacher but none was given"):
        make_cfg("fd+ke")
    assert not (tmp_path / "results").exists()
    make_cfg("kd+pre-distill")  # the regime provides the teacher
    make_cfg("kd", plugin={"teacher": str(tmp_path / "later.pt")})  # the objective loads it (checked by the run)


def test_teacher_contract_is_declared_by_the_plugins():
    from kebench import registry
    from kebench.config import refusal
    from kebench.params import declared

    needs = {n for n in registry.names("objective") if registry.get(n).load().needs_teacher}
    provides = {n for n in registry.names("regime") if registry.get(n).load().provides_teacher}
    assert needs == {"kd", "fd"}
    assert provides == {"pre-distill", "post-distill", "pre-post", "self-distill"}  # not scratch: it distils nothing
    assert all("teacher" in declared(registry.get(n).load()) for n in needs)
    get = registry.get
    assert refusal(get("kd"), get("self-distill")) is None
    assert refusal(get("ce"), get("self-distill")) == (
        "'self-distill' trains a teacher for its objective to distil from, so its objective must be one that "
        "needs a teacher: write fd+self-distill or kd+self-distill, not 'ce+self-distill'.")
    assert "Scratch uses no distillation" in refusal(get("kd"), get("scratch"))


def test_an_objective_that_needs_a_teacher_must_declare_where_it_loads_one(tmp_path, monkeypatch):
    import sys

    from kebench.config import teacher_problem
    from kebench.registry import Method, PluginSpec, get

    (tmp_path / "kebench_test_teacherless.py").write_text(
        "from dataclasses import dataclass\n"
        "from kebench.plugin import Objective, param\n"
        "class Teacherless(Objective):\n"
        "    needs_teacher = True\n"
        "    @dataclass\n"
        "    class Params:\n"
        "        alpha: float = param('weight', ge=0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "kebench_test_teacherless", raising=False)
    spec = PluginSpec("teacherless", "kebench_test_teacherless:Teacherless", "objective", source="test")
    problem = teacher_problem(Method(spec, get("ke")), {"alpha": 0.5})
    assert problem.startswith("Plugin 'teacherless' (test) needs a teacher (needs_teacher) but declares no "
                              "'teacher' setting")
    assert teacher_problem(Method(spec, get("pre-distill")), {}) is None  # the regime provides one


def test_one_distillation_loss_equals_each_former_formula():
    """kd, BANs and CS-KD each wrote their KL term; all now call kd_loss. Their former formulas, on
    logits wide enough to underflow some softened probabilities, give the same values."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(3)
    s, t = torch.randn(8, 102, generator=gen) * 6, torch.randn(8, 102, generator=gen) * 6
    for temp in (1.0, 4.0, 20.0):
        log_s = F.log_softmax(s / temp, dim=1)
        kd_former = F.kl_div(log_s, F.softmax(t / temp, dim=1), reduction="batchmean") * temp * temp
        kl = F.kl_div(log_s, F.log_softmax(t / temp, dim=1), reduction="batchmean", log_target=True)
        bans_hinton, bans_reference, cskd_former = temp * temp * kl, kl / s.shape[1], 3.0 * temp * temp * kl
        assert kd_loss(s, t, temp).item() == pytest.approx(kd_former.item(), rel=1e-5)
        assert kd_loss(s, t, temp, "hinton").item() == pytest.approx(bans_hinton.item(), rel=1e-6)
        assert kd_loss(s, t, temp, "reference").item() == pytest.approx(bans_reference.item(), rel=1e-6)
        assert (3.0 * kd_loss(s, t, temp)).item() == pytest.approx(cskd_former.item(), rel=1e-6)
    with pytest.raises(ValueError, match="form must be one of hinton, reference"):
        kd_loss(s, t, 4.0, "mean")


# --------------------------------------------------------------------------------- augmentation
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _normalised(u8):
    mean = torch.tensor(MEAN).view(1, -1, 1, 1) * 255
    std = torch.tensor(STD).view(1, -1, 1, 1) * 255
    return (u8.float() - mean) / std, mean, std


def test_autoaugment_runs_per_image_on_uint8_values():
    torch.manual_seed(0)
    u8 = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    x, mean, std = _normalised(u8)
    y = torch.arange(16)
    out, y_b, lam = BatchAugment(("autoaugment",), MEAN, STD)(x, y)
    assert out.shape == x.shape and out.dtype == x.dtype and y_b is None and lam == 1.0
    back = out * std + mean
    assert torch.allclose(back, back.round(), atol=1e-3) and back.min() >= -1e-3 and back.max() <= 255 + 1e-3
    changed = [(out[i] - x[i]).abs().max() > 1e-4 for i in range(16)]
    assert 0 < sum(changed)
    # per-image draws: images are not all given the same transformation
    diffs = {round(float((out[i] - x[i]).abs().mean()), 4) for i in range(16)}
    assert len(diffs) > 2


def test_cutmix_pastes_a_box_and_mixes_labels_by_its_area():
    torch.manual_seed(3)
    n = 8
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 10, 10).clone()
    y = torch.arange(n)
    out, y_b, lam = BatchAugment(("cutmix",), (0.0,), (1.0,))(x, y)
    assert y_b is not None and 0 < lam <= 1
    for i in range(n):
        src = int(y_b[i])
        pasted = (out[i, 0] == src) if src != i else torch.zeros(10, 10, dtype=torch.bool)
        if src != i:
            assert pasted.float().mean().item() == pytest.approx(1 - lam)  # label weight = kept area
            assert ((out[i, 0] == i) | pasted).all()
    logits = torch.randn(n, n)
    expect = lam * nn.functional.cross_entropy(logits, y) + (1 - lam) * nn.functional.cross_entropy(logits, y_b)
    assert mixed_ce(logits, y, y_b, lam).item() == pytest.approx(expect.item())


def test_cutmix_probability_zero_is_identity():
    x = torch.randn(4, 1, 6, 6)
    out, y_b, lam = BatchAugment(("cutmix",), (0.0,), (1.0,), cutmix_prob=0.0)(x, torch.arange(4))
    assert y_b is None and lam == 1.0 and torch.equal(out, x)


def test_parse_augment():
    assert parse_augment("none", "student") == ()
    assert parse_augment("autoaugment+cutmix", "student") == ("autoaugment", "cutmix")
    with pytest.raises(UserError, match="Unknown teacher augmentation 'mixup'"):
        parse_augment("mixup", "teacher")
