"""What distillation pipelines share (methods/kd.py, methods/kd_prune.py): batch-level AutoAugment and
CutMix that an objective applies inside `loss()`, the cross-entropy of a mixed batch, frozen
teachers, per-architecture-family defaults (`auto`) and the plain augmented cross-entropy the
non-distilling passes of a pipeline train with."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kebench.errors import UserError, unknown_choice
from kebench.plugin import Objective

AUGMENTATIONS = ("autoaugment", "cutmix")


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


class AugmentedCE(Objective):
    """Plain cross-entropy that honours batch augmentation: the non-distilling passes of a pipeline."""

    def __init__(self, params, run, augment: BatchAugment | None = None):
        super().__init__(params, run)
        self.augment = augment

    def loss(self, model, x, y):
        y_b, lam = None, 1.0
        if self.augment:
            x, y_b, lam = self.augment(x, y)
        logits = model(x)
        return mixed_ce(logits, y, y_b, lam), logits
