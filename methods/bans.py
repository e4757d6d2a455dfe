"""Born-Again Networks (Furlanello et al., ICML 2018).

N generations of the same architecture. Generation 1 trains with the run's objective; every later
generation starts from a fresh random initialisation and distils from the previous generation:

    reference (default): loss = 0.8 * objective_loss + 0.2 * KLDivLoss()(log_softmax(s/T), softmax(t/T))
    hinton:              loss = 0.1 * objective_loss + 0.9 * T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean

Both are the shared `kebench.run.distill.kd_loss` (its two forms).

"reference" is nocotan/born_again_neuralnet since 2018-11, the code behind the KE paper's BANs row:
torch's default 'mean' reduction divides the KL sum by batch x classes and there is no T^2, so the
distillation gradient is weighted 0.2 / (0.8 * C * T) against CE's (1/8160 at 102 classes, T 20);
"hinton" weighs it 0.9 * T / 0.1 = 180 times CE's, 1.5e6 times more (docs/baselines.md).

The teacher is a frozen copy (eval mode, no gradients, same device) kept in `run.state`, so a
resumed run distils from the right teacher. The BAN ensemble (mean of the generations' softmax
outputs on the test split) is reported per generation as `ensemble_top1`; the per-generation test
probabilities live in `run.state` too.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from kebench.context import PassKind
from kebench.errors import UserError
from kebench.plugin import Objective, Regime, WrappingObjective, param
from kebench.run import metrics
from kebench.run.distill import kd_loss


LOSSES = ("reference", "hinton")  # forms of kebench.run.distill.kd_loss, the paper's reference first


class BornAgainStudent(WrappingObjective):
    """A BAN student's objective: any objective plus distillation from a frozen teacher (the previous
    generation), (1 - alpha) * objective + alpha * kd_loss(student, teacher, T, form).

    The distillation term is computed on every student forward pass the wrapped objective makes
    *with gradients* (CE: the batch; CS-KD: the anchors, not the no-grad partner pass), so the
    student runs no extra forward pass and composes with any objective."""

    def __init__(self, inner: Objective, teacher: nn.Module, alpha: float, temperature: float,
                 form: str = "hinton"):
        super().__init__(inner, {"alpha": alpha, "temperature": temperature, "loss": form})
        self.teacher = teacher

    def train_mode(self, model):
        super().train_mode(model)
        self.teacher.eval()

    def loss(self, model, x, y):
        captured = []

        def grab(module, args, out):
            if isinstance(out, torch.Tensor) and out.requires_grad and args:
                captured.append((args[0], out))

        handle = model.register_forward_hook(grab)
        try:
            base, logits = self.inner.loss(model, x, y)
        finally:
            handle.remove()
        if not captured:  # the objective did not call the model on a batch with gradients
            captured = [(x, model(x))]
        kd = torch.zeros((), device=base.device)
        count = 0
        for inputs, student in captured:
            with torch.no_grad():
                teacher = self.teacher(inputs)
            kd = kd + kd_loss(student, teacher, self.params.temperature, self.params.loss) * len(student)
            count += len(student)
        a = self.params.alpha
        return (1 - a) * base + a * kd / count, logits


class BornAgain(Regime):
    tasks = ("classification",)  # distils class probabilities; retrieval embeddings have none
    trains_own_teacher = True  # the previous generation: kd, fd and their --teacher PATH are refused

    @dataclass
    class Params:
        generations: int = param("born-again generations (each a student of the previous)", ge=1, tiny=2)
        loss: str = param("reference: nocotan's 0.8 CE + 0.2 KL (the KE paper's BANs row) | hinton: "
                          "(1-alpha) CE + alpha T^2 KL", choices=LOSSES)
        alpha: float | str = param("weight of the distillation term; auto = alpha_by_loss", choices=("auto",),
                                   ge=0, le=1)
        alpha_by_loss: dict[str, float] = param("alpha used by 'auto', per loss", ge=0, le=1)
        temperature: float = param("T softening teacher and student", gt=0)

        def check(self):
            if self.alpha == "auto" and self.loss not in self.alpha_by_loss:
                raise UserError(f"--alpha auto needs alpha_by_loss.{self.loss}; give --alpha NUMBER.")

    def __init__(self, params, run):
        super().__init__(params, run)
        p = self.params
        self.generations = p.generations
        self.alpha = p.alpha_by_loss[p.loss] if p.alpha == "auto" else p.alpha

    def run(self, run):
        p = self.params
        n_test = len(run.data.test)
        probs = torch.zeros(self.generations, n_test, run.data.num_classes)
        run.state["bans_probs"] = probs  # per-generation test softmax, checkpointed for the ensemble
        teacher = None
        for g in range(1, self.generations + 1):
            objective = None
            if g > 1:
                if teacher is None:
                    teacher = copy.deepcopy(run.model).requires_grad_(False).eval()
                    run.state["bans_teacher"] = teacher
                teacher.load_state_dict(run.model.state_dict())
                run.model.load_state_dict(run.build_model().state_dict())  # fresh random init (global RNG)
                objective = BornAgainStudent(run.objective, teacher, self.alpha, p.temperature, p.loss)

            def ensemble(model, g=g):
                out, labels = run.predict(model)
                probs[g - 1] = out.float().softmax(dim=1)
                return {"ensemble_top1": metrics.top1(probs[:g].mean(0), labels)}

            record = run.fit(run.cfg.epochs, kind=PassKind.GENERATION, label=g, objective=objective, after=ensemble)
        run.report("bans", {"loss": p.loss, "alpha": self.alpha, "temperature": p.temperature})
        run.report_final({"ensemble_top1": record["metrics"]["ensemble_top1"]})
