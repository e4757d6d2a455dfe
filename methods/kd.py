"""Knowledge distillation objectives: `kd` (label) and `fd` (feature), after Park, Yoo and Kwak,
"On the orthogonality of knowledge distillation with other techniques: from an ensemble perspective".

* kd:  L = (1-α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))            (Hinton et al. 2015)
* fd:  L = CE(s, y) + β·mean|φ_T/‖φ_T‖₂ − R(φ_S)/‖R(φ_S)‖₂|                 (Factor-Transfer style)
  φ = the last feature map (`forward_features`), each sample's map flattened and L2-normalised,
  R a 1×1-conv regressor from the student's to the teacher's channels; the L1 distance is a *mean*
  over elements, as in the reference code, which is why β is in the hundreds. A mean |difference|
  of two unit vectors of N elements shrinks as 1/√N, so Park et al. scale β with the feature-map
  size: `beta auto` takes the family's CIFAR value and multiplies it by √(N / N_ref), N the
  teacher's C·H·W at the run's resolution, N_ref that of the CIFAR network the value was tuned on
  (ResNet-56: 64·8·8; at 224 px ResNet18's 512·7·7 gives β ≈ 1237).

Both need a teacher (the teacher contract, `kebench.plugin`; `kebench.run.distill.TeacherObjective`):
the same architecture, in eval mode, never updated, which a regime that provides one trains first
(`methods/kd_prune.py`) or `--teacher PATH` loads from the `model.pt` of an earlier kebench run.
The kd term is the shared `kebench.run.distill.kd_loss` (form "hinton").

Batch augmentations (`autoaugment`, `cutmix`) are engine-neutral: an objective applies them to
the batch inside `loss()`, so a regime can switch them on for the teacher's pass and/or the
student's passes independently (Park et al.'s four augmentation combinations).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kebench.errors import UserError
from kebench.plugin import param
from kebench.run.distill import TeacherObjective, auto_value, family_value, kd_loss, mixed_ce


# ---------------------------------------------------------------------------------------- losses
def feature_term(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Mean |φ_T/‖φ_T‖₂ − φ_S/‖φ_S‖₂| with each sample's feature map flattened and L2-normalised."""
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(f"feature maps differ: student {tuple(student_feat.shape)} vs teacher "
                         f"{tuple(teacher_feat.shape)}; the regressor must map one onto the other")
    s = F.normalize(student_feat.float().flatten(1), dim=1)
    t = F.normalize(teacher_feat.float().flatten(1), dim=1)
    return F.l1_loss(s, t)


# ------------------------------------------------------------------------------------- objectives
TEACHER_HELP = ("model.pt of an earlier kebench run (same arch and data); empty = a pipeline regime "
                "trains the teacher first")


class LabelKD(TeacherObjective):
    """kd: (1-α)·CE + α·T²·KL(teacher ‖ student) on temperature-softened logits."""

    @dataclass
    class Params:
        alpha: float = param("weight of the distillation term", ge=0, le=1)
        temperature: float = param("T softening teacher and student", gt=0)
        teacher: str = param(TEACHER_HELP)

    def loss(self, model, x, y):
        x, y_b, lam = self.batch(x, y)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits = model(x)
        a = self.params.alpha
        loss = (1 - a) * mixed_ce(logits, y, y_b, lam) + a * kd_loss(logits, teacher_logits, self.params.temperature)
        return loss, logits


class FeatureKD(TeacherObjective):
    """fd: CE + β·(normalised L1 distance) between the teacher's last feature map and R(student's)."""

    @dataclass
    class Params:
        beta: float | str = param("weight of the feature term; auto = beta_by_family scaled by the teacher's "
                                  "feature-map size over beta_reference_size", choices=("auto",), ge=0)
        beta_by_family: dict[str, float] = param("beta of 'auto' per arch family (Park et al.'s CIFAR values)", ge=0)
        beta_reference_size: dict[str, float] = param("C*H*W of the CIFAR network each family's beta was tuned "
                                                      "on", gt=0)
        teacher: str = param(TEACHER_HELP)

    def __init__(self, params, run):
        super().__init__(params, run)
        self.beta = auto_value(self.params.beta, run.cfg.arch, self.params.beta_by_family, "beta")
        self.auto_beta = str(self.params.beta).strip().lower() == "auto"
        if self.auto_beta:  # the family's reference size; the scaled beta is set once the teacher is known
            self.reference_size = family_value(run.cfg.arch, self.params.beta_reference_size, "beta_reference_size")
        self.regressor: nn.Module | None = None

    def extra_parameters(self, model):
        """A fresh 1×1-conv regressor per pass, sized from the student's and teacher's feature maps
        (a pruned student has fewer channels than its teacher). Registered in run.state so it is
        checkpointed and restored with the pass."""
        self.require_teacher()
        self.regressor = make_regressor(model, self.teacher, self.run_ctx)
        self.run_ctx.state["fd.regressor"] = self.regressor
        if self.auto_beta:
            size = math.prod(feature_shape(self.teacher, self.run_ctx))
            family = family_value(self.run_ctx.cfg.arch, self.params.beta_by_family, "beta")
            self.beta = scaled_beta(family, size, self.reference_size)
            self.run_ctx.report("fd", {"beta": self.beta, "beta_family": family, "feature_size": size,
                                       "reference_size": self.reference_size,
                                       "rule": "beta_family * sqrt(feature_size / reference_size)"})
        return list(self.regressor.parameters())

    def loss(self, model, x, y):
        x, y_b, lam = self.batch(x, y)
        with torch.no_grad():
            teacher_feat = self.teacher.forward_features(x)
        feat = model.forward_features(x)
        logits = model.forward_head(feat)
        loss = mixed_ce(logits, y, y_b, lam) + self.beta * feature_term(self.regressor(feat), teacher_feat)
        return loss, logits


def scaled_beta(beta: float, feature_size: int, reference_size: int) -> float:
    """β for a feature map of `feature_size` elements (C·H·W), from a β tuned at `reference_size`:
    the mean |difference| of unit-norm maps scales as 1/√size, so β scales as √size keeps the
    distillation term's weight against CE that of the reference setting."""
    return float(beta) * math.sqrt(feature_size / reference_size)


def feature_shape(model: nn.Module, run) -> torch.Size:
    """Shape of one sample's last feature map at the run's input size."""
    if not hasattr(model, "forward_features"):
        raise UserError(f"fd needs a model with forward_features() (timm models, googlenet); "
                        f"{type(model).__name__} has none.")
    shape = (1, run.data.in_chans, run.data.resolution, run.data.resolution)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.forward_features(torch.zeros(shape, device=next(model.parameters()).device))
    model.train(was_training)
    if out.dim() != 4:
        raise UserError(f"fd distils a convolutional feature map, but {run.cfg.arch}'s forward_features "
                        f"returns shape {tuple(out.shape)}.")
    return out.shape[1:]


def make_regressor(student: nn.Module, teacher: nn.Module, run) -> nn.Module:
    """1×1 conv mapping the student's feature channels onto the teacher's (same spatial size)."""
    s, t = feature_shape(student, run), feature_shape(teacher, run)
    if s[1:] != t[1:]:
        raise UserError(f"fd: student and teacher feature maps differ in spatial size ({tuple(s)} vs {tuple(t)}); "
                        f"a 1×1 regressor cannot align them.")
    reg = nn.Conv2d(s[0], t[0], kernel_size=1, bias=False).to(run.device)
    if run.channels_last:
        reg = reg.to(memory_format=torch.channels_last)
    return reg
