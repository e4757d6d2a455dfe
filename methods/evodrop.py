"""Evolutional dropout (Li, Gong, Yang, "Improved Dropout for Shallow and Deep Learning", NeurIPS 2016).

Multinomial dropout draws k units with replacement from Multinomial(p_1..p_d), counts m_i draws of
unit i and outputs x_i * m_i / (k * p_i), so E[output] = x. The paper's risk bound is minimised by sampling
probabilities that follow the data's second-order statistics, p_i ∝ sqrt(E[x_i^2]); *evolutional*
dropout estimates them on the fly from the current mini-batch, because in a deep network the
distribution of a layer's outputs keeps changing while it trains.

As an objective: cross-entropy (optionally label-smoothed) on a model whose chosen layers get a
dropout applied to their outputs (forward hooks, so parameter names and state_dicts are unchanged
and any regime — single, ke, neuroevo — can train it). `mode: plain` applies ordinary Bernoulli
dropout at the same keep rate and unit granularity — the paper's comparison; k is chosen so that both
modes inject the same noise when all units carry equal energy (see `draws`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from kebench.errors import UserError, unknown_choice
from kebench.plugin import Objective, param

MODES = ("evo", "plain")
STEM_MAX_REDUCTION = 2  # feature_info entries at stride <= 2 are the stem, not a stage
GOOGLENET_STAGES = ("inception3b", "inception4e", "inception5b")  # last block before each max-pool
DRAWS_PER_CHUNK = 2**22  # multinomial samples held at once (keep rates near 1 need many draws)


def unit_dim(x: torch.Tensor) -> int:
    """The 'unit' axis: channels for conv maps [N, C, ...] and features [N, D]; the last axis for
    token sequences [N, T, D]. One mask value is drawn per (example, unit)."""
    return 2 if x.dim() == 3 else 1


def sampling_probs(x: torch.Tensor) -> torch.Tensor:
    """p_i ∝ sqrt(mean over the batch (and positions) of x_i^2), in float32; all-zero input -> zeros."""
    d = unit_dim(x)
    energy = x.detach().float().movedim(d, -1).reshape(-1, x.shape[d]).pow(2).mean(0)
    root = energy.sqrt()
    total = root.sum()
    return root / total if total > 0 else root


def draws(units: int, keep_rate: float) -> int:
    """Multinomial draws k that give evo dropout plain dropout's noise at the same keep rate.

    Unit i is scaled by m_i / (k p_i) with variance (1 - p_i) / (k p_i); plain dropout's scale has
    variance (1 - q) / q. With equal energies (p_i = 1/d) the two agree when k = (d - 1) q / (1 - q):
    k = d at q = 0.5. So `mode: plain` is the same amount of noise spread uniformly, and the modes
    differ only in how evo spreads it (less on high-energy units), which is the paper's point.
    """
    return max(1, round((units - 1) * keep_rate / (1 - keep_rate)))


class EvolutionalDropout(nn.Module):
    """Evolutional (mode='evo') or plain Bernoulli (mode='plain') dropout; identity in eval mode.

    plain keeps each unit with probability keep_rate and scales it by 1/keep_rate; evo draws
    k = draws(units, keep_rate) units (with replacement) from p and scales unit i by m_i / (k p_i).
    Either way E[output] = input; keep_rate = 1 is no dropout.
    """

    def __init__(self, keep_rate: float, mode: str = "evo"):
        super().__init__()
        if mode not in MODES:
            raise unknown_choice("evodrop mode", mode, list(MODES))
        if not 0 < keep_rate <= 1:
            raise UserError(f"evodrop: keep_rate must be in (0, 1] (1 = no dropout), got {keep_rate}.")
        self.keep_rate, self.mode = keep_rate, mode

    def extra_repr(self) -> str:
        return f"mode={self.mode}, keep_rate={self.keep_rate}"

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per-(example, unit) multipliers [N, units] (float32): m_i/(k p_i) or bernoulli/keep_rate."""
        n, units = x.shape[0], x.shape[unit_dim(x)]
        if self.mode == "plain":
            keep = torch.rand(n, units, device=x.device) < self.keep_rate
            return keep.float() / self.keep_rate
        p = sampling_probs(x)
        if not p.any():  # nothing to drop: every unit is zero on this batch
            return torch.ones(n, units, device=x.device)
        k = draws(units, self.keep_rate)
        counts = torch.zeros(n, units, device=x.device)
        rows = p.expand(n, units)
        for start in range(0, k, max(1, DRAWS_PER_CHUNK // n)):  # bounded memory at high keep rates
            chunk = torch.multinomial(rows, min(k - start, max(1, DRAWS_PER_CHUNK // n)), replacement=True)
            counts.scatter_add_(1, chunk, torch.ones_like(chunk, dtype=counts.dtype))
        # A unit with p_i = 0 is zero on the whole batch; it is never drawn and stays zero.
        return torch.where(p > 0, counts / (k * p.clamp_min(torch.finfo(p.dtype).tiny)), torch.zeros_like(counts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.keep_rate >= 1:
            return x
        shape = [1] * x.dim()
        shape[0], shape[unit_dim(x)] = x.shape[0], x.shape[unit_dim(x)]
        return x * self.scale(x).view(shape).to(x.dtype)


class _DropOutput:
    """Forward hook: apply `drop` to a module's output."""

    def __init__(self, drop: nn.Module):
        self.drop = drop

    def __call__(self, module, args, output):
        return self.drop(output)


class _DropInput:
    """Forward pre-hook: apply `drop` to a module's (first) input — dropout before the classifier."""

    def __init__(self, drop: nn.Module):
        self.drop = drop

    def __call__(self, module, args):
        return (self.drop(args[0]), *args[1:])


def stage_names(model: nn.Module) -> list[str]:
    """The output modules of the model's stages, found generically.

    timm models list them in `feature_info` (minus the stride-2 stem); torchvision's GoogLeNet ends a
    stage at inception3b/4e/5b; otherwise a `stages` container or ResNet-style layer1..layerN.
    """
    info = getattr(model, "feature_info", None)
    if isinstance(info, (list, tuple)) and info and all(isinstance(f, dict) and "module" in f for f in info):
        names = [f["module"] for f in info if f.get("reduction", STEM_MAX_REDUCTION + 1) > STEM_MAX_REDUCTION]
        return names or [f["module"] for f in info]
    if isinstance(model, torchvision.models.GoogLeNet):
        return list(GOOGLENET_STAGES)
    if isinstance(getattr(model, "stages", None), nn.Sequential):
        return [f"stages.{i}" for i in range(len(model.stages))]
    layers = [f"layer{i}" for i in range(1, 10) if isinstance(getattr(model, f"layer{i}", None), nn.Module)]
    if layers:
        return layers
    raise UserError(
        f"evodrop cannot find the stages of {type(model).__name__} (no timm feature_info, 'stages' or "
        f"layer1..N). Name the layers to drop after with --at, e.g. --at head or --at features.3,head "
        f"(module names as in model.named_modules())."
    )


def classifier_name(model: nn.Module) -> str:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module):
        for name, module in model.named_modules():
            if module is head and name:
                return name
    raise UserError(f"evodrop cannot find the classifier of {type(model).__name__} (no get_classifier()); "
                    f"name the module to drop before with --at NAME.")


def attach(model: nn.Module, at: str, keep_rate: float, mode: str) -> list[tuple[str, str]]:
    """Hook dropout modules onto `model` at the places `at` names; returns [(module, 'output'|'input')].

    Tokens: `stages` (after each stage), `head` (before the classifier), or any module name. The dropout
    modules live in `model.evodrop` (no parameters, so state_dicts are unchanged) and follow
    model.train()/eval(); deepcopies of the model keep their hooks.
    """
    modules = dict(model.named_modules())
    targets: list[tuple[str, str]] = []
    for token in [t.strip() for t in at.split(",") if t.strip()]:
        if token == "stages":
            targets += [(name, "output") for name in stage_names(model)]
        elif token == "head":
            targets.append((classifier_name(model), "input"))
        elif token in modules and token:
            targets.append((token, "output"))
        else:
            candidates = ["stages", "head", *[n for n in modules if n and n.count(".") <= 1]]
            raise unknown_choice("evodrop layer", token, candidates,
                                 hint="--at takes a comma list of 'stages', 'head' and module names.")
    if not targets:
        raise UserError("evodrop: --at names no layer; give e.g. --at stages,head.")
    seen, unique = set(), []
    for t in targets:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    drops = nn.ModuleDict()
    for name, where in unique:
        drop = EvolutionalDropout(keep_rate, mode)
        drops[f"{where}_{name.replace('.', '_')}"] = drop
        if where == "output":
            modules[name].register_forward_hook(_DropOutput(drop))
        else:
            modules[name].register_forward_pre_hook(_DropInput(drop))
    model.evodrop = drops
    return unique


class EvolutionalDropoutObjective(Objective):
    """Cross-entropy (label smoothing `alpha`) with evolutional or plain dropout at the layers `at`."""

    @dataclass
    class Params:
        mode: str = param("evo: evolutional dropout (Li et al.) | plain: Bernoulli dropout", choices=MODES)
        keep_rate: float = param("probability a unit is kept (1 = no dropout)", gt=0, le=1)
        at: str = param("comma list of where to drop: 'stages' (after each stage), 'head' (before the "
                        "classifier), module names")
        alpha: float = param("label smoothing of the CE loss (0 = plain CE)", ge=0, lt=1)

    def __init__(self, params, run):
        super().__init__(params, run)
        self.targets: list[tuple[str, str]] = []

    def adapt_model(self, model: nn.Module, num_classes: int) -> nn.Module:
        self.targets = attach(model, self.params.at, self.params.keep_rate, self.params.mode)
        return model

    def loss(self, model, x, y):
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=self.params.alpha), logits
