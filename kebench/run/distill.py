"""What distilling plugins share (methods/kd.py, kd_prune.py, bans.py, cskd.py): THE distillation loss
(`kd_loss`), the objective side of the teacher contract (`TeacherObjective`: a teacher loaded from a
model file or handed over by a regime, frozen), batch-level AutoAugment and CutMix that an objective
applies inside `loss()`, the cross-entropy of a mixed batch, per-architecture-family defaults
(`auto`) and the plain augmented cross-entropy the non-distilling passes of a pipeline train with."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kebench.errors import UserError, unknown_choice
from kebench.plugin import Objective

AUGMENTATIONS = ("autoaugment", "cutmix")
#: How `kd_loss` scales the KL: "hinton" multiplies by T² (Hinton et al. 2015: the gradient's scale
#: does not depend on T); "reference" divides by the number of classes and has no T² (torch's
#: `KLDivLoss()` default 'mean' reduction, as in the Born-Again Networks reference code).
KD_FORMS = ("hinton", "reference")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            form: str = "hinton") -> torch.Tensor:
    """The distillation loss every distilling plugin uses (kd, BANs, CS-KD):
    KL(softmax(teacher/T) ‖ softmax(student/T)) summed over classes and averaged over the batch,
    times T² ("hinton") or divided by the number of classes ("reference", see `KD_FORMS`). The
    teacher side is a target only: pass it without gradients (a frozen teacher, a no-grad pass)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
                  reduction="batchmean", log_target=True)
    if form == "reference":
        return kl / student_logits.shape[1]
    if form != "hinton":
        raise ValueError(f"kd_loss form must be one of {', '.join(KD_FORMS)}, got {form!r}")
    return t * t * kl


def mixed_ce(logits: torch.Tensor, y: torch.Tensor, y_b: torch.Tensor | None, lam: float) -> torch.Tensor:
    """Cross-entropy against y, or lam·CE(y) + (1-lam)·CE(y_b) for a CutMix batch."""
    loss = F.cross_entropy(logits, y)
    if y_b is None:
        return loss
    return lam * loss + (1 - lam) * F.cross_entropy(logits, y_b)


def parse_augment(text: str, where: str) -> tuple[str, ...]:
    """'none' | 'autoaugment' | 'cutmix' | 'autoaugment+cutmix' -> a tuple of augmentation names."""
    text = (text or "none").strip().lower()
    if text in ("none", ""):
        return ()
    names = tuple(p.strip() for p in text.replace(",", "+").split("+") if p.strip())
    for n in names:
        if n not in AUGMENTATIONS:
            raise unknown_choice(f"{where} augmentation", n, ["none", *AUGMENTATIONS],
                                 hint="Combine them with '+', e.g. autoaugment+cutmix.")
    return names


class BatchAugment:
    """Batch-level AutoAugment (per sample, on uint8 images) and CutMix (labels mixed).

    The engine hands objectives normalised float batches (already cropped and flipped); AutoAugment
    needs uint8, so the batch is de-normalised, rounded, augmented and normalised again. Randomness
    comes from torch's global RNG, which the engine checkpoints, so a resumed run replays it.
    """

    def __init__(self, names: tuple[str, ...], mean, std, *, policy: str = "imagenet",
                 cutmix_alpha: float = 1.0, cutmix_prob: float = 1.0):
        from torchvision.transforms import v2

        self.names = tuple(names)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        policies = {p.name.lower(): p for p in v2.AutoAugmentPolicy}
        if policy not in policies:
            raise unknown_choice("AutoAugment policy", policy, sorted(policies))
        if cutmix_alpha <= 0 or not 0 <= cutmix_prob <= 1:
            raise UserError(f"cutmix needs cutmix_alpha > 0 and cutmix_prob in [0, 1], got "
                            f"{cutmix_alpha} and {cutmix_prob}.")
        self.autoaugment = v2.AutoAugment(policies[policy]) if "autoaugment" in self.names else None
        self.cutmix_alpha, self.cutmix_prob = float(cutmix_alpha), float(cutmix_prob)

    def __bool__(self) -> bool:
        return bool(self.names)

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        """-> (x, y_b, lam): y_b is None unless CutMix pasted patches from a shuffled batch."""
        if self.autoaugment is not None:
            x = self._autoaugment(x)
        if "cutmix" in self.names and torch.rand(()) < self.cutmix_prob:
            return self._cutmix(x, y)
        return x, None, 1.0

    def _autoaugment(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        u8 = (x.float() * std + mean).round().clamp(0, 255).to(torch.uint8)
        # One policy draw per image (a call on a whole batch would give every image the same ops).
        u8 = torch.stack([self.autoaugment(img) for img in u8])
        out = ((u8.float() - mean) / std).to(x.dtype)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    def _cutmix(self, x: torch.Tensor, y: torch.Tensor):
        n, _, h, w = x.shape
        lam = float(torch.distributions.Beta(self.cutmix_alpha, self.cutmix_alpha).sample())
        perm = torch.randperm(n).to(x.device)
        cut = (1.0 - lam) ** 0.5
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the pasted area decides the label weight
        return x, y[perm], lam


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a teacher is never updated."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def family_value(arch: str, table: dict, setting: str) -> float:
    """A per-architecture-family default (e.g. β: resnet 500, vgg 1500, densenet 1000)."""
    name = arch.lower()
    for family in sorted(table, key=len, reverse=True):
        if family in name:
            return float(table[family])
    raise UserError(f"No default {setting} for arch '{arch}' (families with one: {', '.join(table)}). "
                    f"Pass --{setting.replace('_', '-')} VALUE.")


def auto_value(value, arch: str, table: dict, setting: str) -> float:
    """`auto` picks the family default; anything else must be a number."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return family_value(arch, table, setting)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"--{setting.replace('_', '-')} expects a number or 'auto', got {value!r}.") from None


def augment_batch(augment: BatchAugment | None, x: torch.Tensor, y: torch.Tensor):
    """-> (x, y_b, lam): the batch through `augment` (if any); y_b None and lam 1 without CutMix."""
    if augment:
        return augment(x, y)
    return x, None, 1.0


class AugmentedCE(Objective):
    """Plain cross-entropy that honours batch augmentation: the non-distilling passes of a pipeline."""

    def __init__(self, params, run, augment: BatchAugment | None = None):
        super().__init__(params, run)
        self.augment = augment

    def loss(self, model, x, y):
        x, y_b, lam = augment_batch(self.augment, x, y)
        logits = model(x)
        return mixed_ce(logits, y, y_b, lam), logits


# ------------------------------------------------------------------------------------ teachers
def load_teacher(path: str, run) -> nn.Module:
    """A frozen teacher from a kebench `model.pt` ({"arch", "state_dict"}), on the run's device."""
    from kebench.nets.models import create_model
    from kebench.run.results import CorruptCheckpoint, load_torch

    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"--teacher '{path}' does not exist. Pass the model.pt written by an earlier "
                        f"kebench run of arch '{run.cfg.arch}' on dataset '{run.cfg.data}'.")
    try:
        saved = load_torch(file)
    except CorruptCheckpoint as exc:
        raise UserError(f"--teacher: {exc} Pass a model.pt written by kebench.") from None
    if not isinstance(saved, dict) or "state_dict" not in saved or "arch" not in saved:
        raise UserError(f"--teacher '{path}' is not a kebench model file: expected a dict with 'arch' and "
                        f"'state_dict' (the model.pt in a run folder).")
    if saved["arch"] != run.cfg.arch:
        raise UserError(f"--teacher '{path}' holds a '{saved['arch']}' but this run trains '{run.cfg.arch}'; "
                        f"teacher and student are the same architecture. Pass --arch {saved['arch']} or "
                        f"a teacher of arch '{run.cfg.arch}'.")
    with torch.random.fork_rng(devices=[]):  # loading a teacher must not shift the student's init
        teacher = create_model(run.cfg.arch, run.data.num_classes, run.data.in_chans)
    try:
        teacher.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UserError(f"--teacher '{path}' does not fit this run's '{run.cfg.arch}' with "
                        f"{run.data.num_classes} classes and {run.data.in_chans} input channels "
                        f"(trained on another dataset?): {' '.join(first[:3])}") from None
    teacher = teacher.to(run.device)
    if run.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return freeze(teacher)


class TeacherObjective(Objective):
    """The objective side of the teacher contract (`kebench.plugin.Objective.needs_teacher`), shared by
    objectives that distil from a teacher they do not train (kd, fd): the teacher is loaded from the
    objective's `teacher` setting when one is given, else a regime that `provides_teacher` hands it
    over with `set_teacher` (config validation made sure one of the two holds); a regime may also set
    the batch augmentation (`set_augment`) that `batch(x, y)` applies."""

    needs_teacher = True

    def __init__(self, params, run):
        super().__init__(params, run)
        self.teacher: nn.Module | None = None
        self.teacher_source = ""
        self.augment: BatchAugment | None = None
        path = str(getattr(self.params, "teacher", "") or "")
        if path:
            self.set_teacher(load_teacher(path, run), source=path)

    def set_teacher(self, teacher: nn.Module, source: str = "trained") -> None:
        self.teacher, self.teacher_source = freeze(teacher), source

    def set_augment(self, augment: BatchAugment | None) -> None:
        self.augment = augment

    def batch(self, x: torch.Tensor, y: torch.Tensor):
        """-> (x, y_b, lam) after the regime's batch augmentation (see `augment_batch`)."""
        return augment_batch(self.augment, x, y)

    def require_teacher(self) -> nn.Module:
        """The teacher, or the contract's error when a pass starts without one (a regime that declared
        `provides_teacher` but did not call set_teacher before training)."""
        if self.teacher is None:
            raise UserError(
                f"'{self.run_ctx.method.name}' distils from a teacher but none was given: pass --teacher PATH "
                f"(the model.pt of an earlier kebench run with the same arch and data), or use a regime that "
                f"provides a teacher (kebench list shows them; `kebench.config.teacher_problem`).")
        return self.teacher

    def train_mode(self, model):
        self.require_teacher().eval()

    def extra_parameters(self, model):
        self.require_teacher()
        return []
