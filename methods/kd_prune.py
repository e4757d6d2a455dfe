"""KD × pruning pipelines (Park, Yoo, Kwak, "On the orthogonality of knowledge distillation with
other techniques"): train → prune → fine-tune, with distillation entering before and/or after.

    regime          unpruned student trained with   pruned student fine-tuned with
    scratch         CE                              CE
    pre-distill     KD from the teacher             CE
    post-distill    CE                              KD from the teacher
    pre-post        KD from the teacher             KD from the teacher
    self-distill    KD from the teacher             KD from its own unpruned self

The distillation is the method's objective: `kd+self-distill` (label) or `fd+self-distill` (feature).
The teacher is the same architecture, trained first in a pass of its own (kind "teacher"), or
loaded with `--teacher PATH`. Pruning (`--prune`): `l1-filter`, `slimming` (BN-γ L1 penalty while
training the unpruned student), `weight` (global magnitude over conv weights, masks held during
fine-tuning), or `none` (KD × augmentation alone). Structured pruning extracts a physically smaller
network. Every run records `top1` (pruned, fine-tuned), `unpruned_top1`, `teacher_top1` and
cost.unpruned / cost.pruned (params, FLOPs).

Fine-tuning (`--finetune-epochs/-lr/-schedule`) is a short low-LR pass, not a re-training: Park et
al. (through Eric-mingjie/rethinking-network-pruning) train 160 epochs and fine-tune 40 at a
constant LR 0.001; kebench's default fine-tune is that: constant 0.001 for a quarter of the
unpruned student's epochs (40 of 160), without warm-up (a cosine fine-tune restarts its schedule and
warms up like any restarted pass).

Resume: the teacher, the self-teacher and the pruned structure live in run.state; the structure
is read back with `run.resumed_state` on replay (it depends on trained weights).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from collections.abc import Mapping

import torch
from torch import nn
from torchvision.transforms.v2 import AutoAugmentPolicy

from kebench.context import PassKind
from kebench.nets import prune as P
from kebench import registry
from kebench.nets.cost import forward_flops
from kebench.run.distill import AugmentedCE, BatchAugment, auto_value, freeze, parse_augment
from kebench.errors import UserError
from kebench.nets.models import count_params
from kebench.plugin import Objective, Regime, WrappingObjective, param

PRUNE_METHODS = ("l1-filter", "slimming", "weight", "none")
STRUCTURED = ("l1-filter", "slimming")
FINETUNE_SCHEDULES = ("constant", "cosine")
AUTOAUGMENT_POLICIES = tuple(p.name.lower() for p in AutoAugmentPolicy)


class _Refused(Mapping):
    """`Regime.incompatible` for a rule rather than a list: refuses every objective `accept` rejects."""

    def __init__(self, accept, reason: str):
        self.accept, self.reason = accept, reason

    def __getitem__(self, name: str) -> str:
        if self.accept(name):
            raise KeyError(name)
        return self.reason.format(name=name)

    def __iter__(self):
        return iter([n for n in registry.names("objective") if not self.accept(n)])

    def __len__(self) -> int:
        return sum(1 for _ in self)


class SlimmingPenalty(WrappingObjective):
    """Wraps a pass's objective with network slimming's sparsity term s·Σ|γ| over BatchNorm scales
    (its gradient is the paper's grad += s·sign(γ); as a loss term it is also correct under AMP
    loss scaling)."""

    def __init__(self, base: Objective, strength: float):
        super().__init__(base)
        self.strength = strength

    def loss(self, model, x, y):
        loss, logits = super().loss(model, x, y)
        return loss + self.strength * P.bn_l1_penalty(model), logits


class PrunePipeline(Regime):
    """Shared body of the five pipelines; subclasses say where KD enters."""

    name = ""
    tasks = ("classification",)
    distill_before = False  # KD while training the unpruned student
    distill_after = False  # KD while fine-tuning the pruned student
    self_teacher = False  # the fine-tuning teacher is the unpruned student itself

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # The teacher contract: a pipeline that distils trains the teacher (unless the objective loaded
        # one) and hands it to its objective, which must therefore be one that needs a teacher.
        cls.provides_teacher = cls.distill_before or cls.distill_after

    @dataclass
    class Params:
        prune: str = param("l1-filter (Li et al. 2017) | slimming (Liu et al. 2017) | weight (global magnitude, "
                           "Han et al. 2015) | none (KD x augmentation alone)", choices=PRUNE_METHODS)
        prune_ratio: float = param("share of channels (structured) or conv weights (weight) removed", ge=0, lt=1)
        prune_tied: bool = param("also prune channel groups tied by residual adds (false: leave them whole, as "
                                 "Li et al. do for ResNets)")
        train_epochs: int = param("epochs of the unpruned student; 0 = --epochs", ge=0)
        finetune_epochs: int | None = param("epochs of fine-tuning the pruned student; null = finetune_fraction "
                                            "of the train pass", ge=1)
        finetune_fraction: float = param("fine-tune length as a share of the train pass (Park et al.: 40/160)",
                                         gt=0, le=1)
        finetune_lr: float = param("fine-tuning learning rate", gt=0)
        finetune_lr_relative: bool = param("read finetune_lr as a multiple of --lr (e.g. 0.01 with --lr 0.1 = "
                                           "Park et al.'s 0.001) rather than as an absolute LR")
        finetune_schedule: str = param("constant (no warm-up, Park et al.) | cosine (restarted from finetune_lr, "
                                       "warmed up)", choices=FINETUNE_SCHEDULES)
        sparsity: float | str = param("slimming's L1 weight on BN gamma; auto = sparsity_by_family",
                                      choices=("auto",), ge=0)
        sparsity_by_family: dict[str, float] = param("sparsity of 'auto' per arch family (Liu et al.)", ge=0)
        student_aug: str = param("none | autoaugment | cutmix | autoaugment+cutmix for the student's passes")
        autoaugment_policy: str = param("AutoAugment policy", choices=AUTOAUGMENT_POLICIES)
        cutmix_alpha: float = param("CutMix Beta(alpha, alpha) (Yun et al. 2019)", gt=0)
        cutmix_prob: float = param("share of batches CutMix is applied to", ge=0, le=1)

        def check(self):
            parse_augment(self.student_aug, "student")

    def __init__(self, params, run):
        super().__init__(params, run)
        p = self.params
        self.finetune_given = p.finetune_epochs
        aug = dict(mean=run.data.mean, std=run.data.std, policy=p.autoaugment_policy,
                   cutmix_alpha=p.cutmix_alpha, cutmix_prob=p.cutmix_prob)
        self.student_aug = BatchAugment(parse_augment(p.student_aug, "student"), **aug)
        self.teacher_aug = BatchAugment(parse_augment(getattr(p, "teacher_aug", "none"), "teacher"), **aug)
        self.sparsity = (auto_value(p.sparsity, run.cfg.arch, p.sparsity_by_family, "sparsity")
                         if p.prune == "slimming" else 0.0)

    # ------------------------------------------------------------------ phases
    def _epochs(self, key: str) -> int:
        return getattr(self.params, key, 0) or self.run_ctx.cfg.epochs

    def finetune_epochs(self) -> int:
        """--finetune-epochs, or finetune_fraction of the unpruned student's epochs (Park: 40 of 160)."""
        return self.finetune_given or max(1, round(self._epochs("train_epochs") * self.params.finetune_fraction))

    def finetune_lr(self) -> float:
        """The fine-tuning LR: finetune_lr, or finetune_lr x --lr under finetune_lr_relative."""
        p = self.params
        return p.finetune_lr * self.run_ctx.cfg.lr if p.finetune_lr_relative else p.finetune_lr

    def _teacher(self, run, distill: Objective) -> dict:
        """Train the teacher in its own pass (or use the one the objective loaded); returns facts for the record."""
        if distill.teacher is not None:  # --teacher PATH
            if self.teacher_aug:
                raise UserError("--teacher-aug applies when the pipeline trains the teacher; --teacher loads a "
                                "trained one. Drop one of the two.")
            return {"teacher": distill.teacher_source, "teacher_top1": run.evaluate(distill.teacher)["top1"]}
        teacher = run.build_model()
        run.state["kdp.teacher"] = teacher
        record = run.fit(self._epochs("teacher_epochs"), kind=PassKind.TEACHER, label=1, model=teacher,
                         objective=AugmentedCE({}, run, self.teacher_aug))
        distill.set_teacher(teacher)
        return {"teacher": "trained", "teacher_top1": record["metrics"]["top1"]}

    def run(self, run):
        p = self.params
        distill = run.objective if self.provides_teacher else None
        ce = AugmentedCE({}, run, self.student_aug)
        final, info = {}, {"pipeline": self.name, "prune": p.prune, "prune_ratio": p.prune_ratio,
                           "distill": run.method.objective.name if distill else None,
                           "student_aug": "+".join(self.student_aug.names) or "none",
                           "finetune": {"epochs": self.finetune_epochs(), "lr": self.finetune_lr(),
                                        "schedule": p.finetune_schedule}}
        lengths = ([self._epochs("teacher_epochs")] if distill is not None and distill.teacher is None else [])
        lengths += [self._epochs("train_epochs")] + ([self.finetune_epochs()] if p.prune != "none" else [])
        run.plan(passes=len(lengths), epochs=sum(lengths))  # teacher (unless --teacher), student, fine-tune
        if distill is not None:
            facts = self._teacher(run, distill)
            info.update(teacher=facts["teacher"], teacher_aug="+".join(self.teacher_aug.names) or "none")
            final["teacher_top1"] = facts["teacher_top1"]
            distill.set_augment(self.student_aug)

        # 1. the unpruned student (slimming adds its sparsity term here)
        before = distill if self.distill_before else ce
        if p.prune == "slimming":
            before = SlimmingPenalty(before, self.sparsity)
            info["sparsity"] = self.sparsity
        record = run.fit(self._epochs("train_epochs"), kind=PassKind.TRAIN, label=1, model=run.model, objective=before)
        final["unpruned_top1"] = record["metrics"]["top1"]
        unpruned_cost = self._cost(run.model, run)
        if p.prune == "none":
            run.report_cost({"unpruned": unpruned_cost})
            run.report_final(final)
            run.report("kd_pruning", info)
            return

        # 2. prune (the structure depends on trained weights: on replay it comes from the checkpoint)
        saved = run.resumed_state("kdp.prune")
        plan = saved if saved is not None else self._plan(run.model, run)
        run.state["kdp.prune"] = plan
        pruned, hooks = self._apply(run.model, plan, run)
        if "keep" in plan:
            info["kept_channels"] = {gid: len(idx) for gid, idx in plan["keep"].items()}
        if saved is None:
            final["pruned_top1_before_finetune"] = run.evaluate(pruned)["top1"]
        if self.distill_after and self.self_teacher:
            own = freeze(copy.deepcopy(run.model))
            run.state["kdp.self_teacher"] = own
            distill.set_teacher(own)
        info["teacher_after"] = ("self" if self.self_teacher else "teacher") if self.distill_after else None
        run.report_final(final)  # set before the last pass: checkpointed with it, so replay keeps it
        run.report("kd_pruning", info)

        # 3. fine-tune the pruned student
        after = distill if self.distill_after else ce
        constant = p.finetune_schedule == "constant"
        run.fit(self.finetune_epochs(), kind=PassKind.FINETUNE, label=1, model=pruned, objective=after, hooks=hooks,
                lr=self.finetune_lr(), schedule=p.finetune_schedule, warmup=0 if constant else None)

        pruned_cost = self._cost(pruned, run, sparse=p.prune == "weight")
        run.report_cost({"unpruned": unpruned_cost, "pruned": pruned_cost})
        run.report_final({"params_kept": pruned_cost.get("nonzero_params", pruned_cost["params"]) / unpruned_cost["params"],
                          "flops_kept": pruned_cost["flops"] / unpruned_cost["flops"]})
        P.save_pruned(run.dir / "pruned.pt", pruned, plan, arch=run.cfg.arch)

    # ------------------------------------------------------------------ pruning
    def _example(self, run) -> torch.Tensor:
        d = run.data
        return torch.zeros(2, d.in_chans, d.resolution, d.resolution, device=run.device)

    def _plan(self, model: nn.Module, run) -> dict:
        """What to remove, as plain tensors: keep-indices per channel group, or weight keep-masks."""
        p = self.params
        if p.prune == "weight":
            return {"method": "weight", "masks": P.global_conv_masks(model, p.prune_ratio)}
        example = self._example(run)
        if p.prune == "l1-filter":
            keep = P.l1_filter_keep(model, p.prune_ratio, example, tied=p.prune_tied)
        else:
            keep = P.slimming_keep(model, p.prune_ratio, example, tied=p.prune_tied)
        return {"method": p.prune, "keep": keep}

    def _apply(self, model: nn.Module, plan: dict, run):
        """The pruned student (a copy) and the hooks that hold its pruning during fine-tuning."""
        if plan["method"] == "weight":
            pruned = copy.deepcopy(model)
            masks = P.MaskSet({n: m.to(run.device) for n, m in plan["masks"].items()})
            run.state["kdp.masks"] = masks
            hook = P.MaskHook(pruned, masks)
            hook.apply()
            return pruned, [hook]
        pruned = P.extract_pruned(model, plan["keep"], self._example(run))
        pruned = pruned.to(run.device)
        if run.channels_last:
            pruned = pruned.to(memory_format=torch.channels_last)
        return pruned, []

    def _cost(self, model: nn.Module, run, sparse: bool = False) -> dict:
        d = run.data
        cost = {"params": count_params(model),
                "flops": forward_flops(model, (1, d.in_chans, d.resolution, d.resolution), run.device)}
        if sparse:
            convs = P.conv_weights(model)
            cost["nonzero_params"] = cost["params"] - sum(int((w == 0).sum()) for _, w in convs)
            cost["conv_sparsity"] = P.sparsity(w for _, w in convs)
        return cost


class Scratch(PrunePipeline):
    """Train with CE, prune, fine-tune with CE: the no-KD baseline of every comparison."""

    name = "scratch"
    incompatible = _Refused(lambda n: n == "ce", "Scratch uses no distillation and trains with plain CE; run "
                                                 "'scratch' (objective ce), not '{name}+scratch'.")


@dataclass
class TeacherParams(PrunePipeline.Params):
    """The pipelines that distil also train (or load) a teacher."""

    teacher_epochs: int = param("epochs of the teacher's pass; 0 = --epochs", ge=0)
    teacher_aug: str = param("none | autoaugment | cutmix | autoaugment+cutmix for the teacher's pass")

    def check(self):
        super().check()
        parse_augment(self.teacher_aug, "teacher")


@dataclass
class FinetuneKDParams(TeacherParams):
    """Pipelines that distil while fine-tuning need something pruned to fine-tune."""

    def check(self):
        super().check()
        if self.prune == "none":
            raise UserError(f"--prune none leaves nothing to fine-tune, but this pipeline distils while "
                            f"fine-tuning the pruned network: pick a pruning method ({', '.join(PRUNE_METHODS[:-1])}). "
                            f"KD without pruning is kd+pre-distill --prune none (or kd --teacher PATH).")


class PreDistill(PrunePipeline):
    name = "pre-distill"
    distill_before = True
    Params = TeacherParams


class PostDistill(PrunePipeline):
    name = "post-distill"
    distill_after = True
    Params = FinetuneKDParams


class PrePost(PrunePipeline):
    name = "pre-post"
    distill_before = distill_after = True
    Params = FinetuneKDParams


class SelfDistill(PrunePipeline):
    name = "self-distill"
    distill_before = distill_after = True
    self_teacher = True
    Params = FinetuneKDParams
