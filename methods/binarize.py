"""Pattern binarization (Li, Wang, Lv, Yang, SEP-Nets, 2017): train a network (or load one), turn every
k x k filter (k > 1) but the stem's (`--stem` binarizes it too) into its scaled sign pattern, keep the
1 x 1 filters in full precision, and
fine-tune everything else (1 x 1 convs, BN, the classifier) with the patterns frozen.

k x k filters extract spatial patterns and survive binarization; 1 x 1 filters transform data and
do not (SEP-Nets Sec. 3). A filter w becomes scale * sign(w) with scale = mean |w| of the filter
(kebench.nets.pattern), stored as 1 bit per weight plus the fp32 scale.

Passes: "train" (skipped with --init-from) and "finetune". Records and result.json carry accuracy,
parameters, storage in bytes and FLOPs before binarization, right after it, and after fine-tuning.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kebench.context import PassKind
from kebench.run import results
from kebench.nets.cost import inference_cost
from kebench.errors import UserError
from kebench.nets.pattern import is_spatial, sign_pattern
from kebench.plugin import Hook, Regime, param


def pattern_convs(model: nn.Module, stem: bool = False) -> dict[str, nn.Conv2d]:
    """Every k x k conv (k > 1) of the model, by module path; the stem (the first one, which reads the
    image) only when `stem`: binary-weight networks usually keep their first layer in full precision
    (XNOR-Net does), it sees the raw pixels and holds few of the weights."""
    convs = {name: m for name, m in model.named_modules() if is_spatial(m)}
    if not stem and convs:
        convs.pop(next(iter(convs)))
    return convs


class Patterns(nn.Module):
    """The frozen patterns as buffers (checkpointed in run.state, so a resumed fine-tune keeps them)."""

    def __init__(self, convs: dict[str, nn.Conv2d]):
        super().__init__()
        for name, conv in convs.items():
            self.register_buffer(name.replace(".", "__"), sign_pattern(conv.weight.detach()).clone())

    def of(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace(".", "__"))


@torch.no_grad()
def binarize(model: nn.Module, stem: bool = False) -> Patterns:
    """Replace every k x k filter (the stem's only when `stem`) by its sign pattern times mean |w|;
    1 x 1 convs are left alone."""
    convs = pattern_convs(model, stem)
    patterns = Patterns(convs).to(next(model.parameters()).device)
    for name, conv in convs.items():
        conv.weight.copy_(patterns.of(name))
    return patterns


class FreezePatterns(Hook):
    """The patterns do not train: their gradients are dropped before the step (so neither momentum
    nor weight decay moves them) and the weights are restored from the patterns after it."""

    def __init__(self, convs: dict[str, nn.Conv2d], patterns: Patterns):
        self.convs, self.patterns = convs, patterns

    def before_step(self, model, optimizer) -> None:
        for conv in self.convs.values():
            conv.weight.grad = None

    @torch.no_grad()
    def after_step(self, model, optimizer) -> None:
        for name, conv in self.convs.items():
            conv.weight.copy_(self.patterns.of(name))


class PatternBinarization(Regime):
    tasks = ("classification",)

    @dataclass
    class Params:
        init_from: str = param("a kebench run folder or its model.pt to binarize (same arch and data); empty = "
                               "train first")
        train_epochs: int = param("epochs of the full-precision pass when init_from is empty; 0 = --epochs", ge=0)
        finetune_epochs: int = param("epochs of fine-tuning with the patterns frozen; 0 = --epochs", ge=0)
        stem: bool = param("also binarize the stem (the first k x k conv, which reads the image); kebench keeps "
                           "it in full precision by default")

    def load(self, run, source: str) -> None:
        path = Path(source)
        path = path / "model.pt" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"binarize: --init-from '{source}' is neither a kebench run folder with a model.pt nor a "
                            f"model.pt file.")
        saved = results.load_torch(path)
        arch = saved.get("arch") if isinstance(saved, dict) else None
        if arch != run.cfg.arch:
            raise UserError(f"binarize: {path} holds a '{arch}' model but this run's --arch is '{run.cfg.arch}'; "
                            f"pass --arch {arch}.")
        try:
            run.model.load_state_dict(saved["state_dict"])
        except RuntimeError as exc:
            raise UserError(f"binarize: {path} does not fit this run's model (other dataset or head?): "
                            f"{str(exc).splitlines()[0]}") from None

    def run(self, run) -> None:
        p, cfg = self.params, run.cfg
        model = run.model
        if not pattern_convs(model, p.stem):
            raise UserError(f"binarize: '{cfg.arch}' has no k x k convolution (k > 1) to binarize.")
        lengths = ([] if p.init_from else [p.train_epochs or cfg.epochs]) + [p.finetune_epochs or cfg.epochs]
        run.plan(passes=len(lengths), epochs=sum(lengths))  # train (unless loaded), then the pattern fine-tune
        if p.init_from:
            self.load(run, p.init_from)
            before = run.evaluate(model)
        else:
            before = run.fit(p.train_epochs or cfg.epochs, kind=PassKind.TRAIN, label=1)["metrics"]
        cost_before = inference_cost(model, run.data, run.device)
        patterns = run.state["patterns"] = binarize(model, p.stem)
        binarized = run.state["binarized_metrics"] = torch.tensor(run.evaluate(model)[run.primary], dtype=torch.float64)
        convs = pattern_convs(model, p.stem)

        def after(m):
            cost = inference_cost(m, run.data, run.device)
            return {f"{run.primary}_binarized": float(binarized), "size_bytes": cost["size_bytes"],
                    "params": cost["params"], "flops": cost["flops"]}

        record = run.fit(p.finetune_epochs or cfg.epochs, kind=PassKind.FINETUNE, label=2,
                         hooks=[FreezePatterns(convs, patterns)], after=after)
        m = record["metrics"]
        n_pattern = sum(c.weight.numel() for c in convs.values())
        n_all = sum(q.numel() for q in model.parameters())
        run.report_final({run.primary: m[run.primary], f"{run.primary}_before": before[run.primary],
                              f"{run.primary}_binarized": m[f"{run.primary}_binarized"],
                              "size_bytes_before": cost_before["size_bytes"], "size_bytes": m["size_bytes"],
                              "params": m["params"], "flops": m["flops"]})
        run.report_cost({"fp32": cost_before})
        run.report("binarize", {"pattern_layers": len(convs), "pattern_weights": n_pattern,
                                 "pattern_fraction": n_pattern / n_all, "init_from": p.init_from or None,
                                 "stem_binarized": p.stem,
                                 "compression": cost_before["size_bytes"] / m["size_bytes"]})
