"""Analyses of a trained network that a run can ask for (`--analyses naswot,landscape`), as Park,
Yoo and Kwak use them to explain why KD and pruning or augmentation add up:

* `naswot`: the NAS-without-training score of Mellor et al. (2021) on a batch of training images: the
  per-sample input Jacobians J_i = d(sum_c f_c(x_i))/dx_i, their correlation matrix Sigma_J over the
  batch, and as the score the log-determinant of that kernel (higher: the network tells the inputs
  apart more); also the first version's eigenvalue score -sum(log(l + k) + 1/(l + k)), k = 1e-5.
  Recorded in result.json's `final` (`naswot`, `naswot_eig`), so a table can show it as a metric
  and average it over seeds.
* `landscape`: the filter-normalised 2-D loss landscape of Li et al. (2018) around the final
  weights: two random directions, each filter rescaled to the norm of the weight's filter (BN and
  bias directions zeroed), training loss on a fixed batch over an (n x n) grid of alpha, beta in
  [-1, 1]. Recorded under result.json's `analyses.landscape`; `kebench plot --kind landscape` draws it.
  A pass trained with `--lr-schedule step` also records one at the end of each of its LR steps (the
  last epoch before each milestone, and its last epoch: Park et al. Table 7), under
  `analyses.landscape_steps`, each labelled with its pass, epoch and LR. They are taken by a hook the
  engine adds to such passes (`StepLandscapes`) and kept in the run's `RunState`, which checkpoints
  carry, so a resumed run reports the landscapes its interrupted attempt took.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from kebench.config import ANALYSES  # noqa: F401  (declared with the --analyses setting)
from kebench.errors import UserError
from kebench.plugin import Hook

NASWOT_BATCH = 128  # Mellor et al. score a batch of 128
NASWOT_K = 1e-5
LANDSCAPE_STEPS = 11  # grid points per axis (alpha, beta in [-1, 1])
LANDSCAPE_BATCH = 256


def jacobian_kernel(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sigma_J: the correlation matrix [N, N] of the flattened per-sample input Jacobians of the
    summed outputs (one backward pass: in eval mode the samples do not interact)."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    j = grad.reshape(len(x), -1).double()
    return torch.corrcoef(j)


def naswot(model: nn.Module, x: torch.Tensor) -> dict:
    was = model.training
    model.eval()
    try:
        kernel = jacobian_kernel(model, x)
    finally:
        model.train(was)
    kernel = torch.nan_to_num(kernel, nan=0.0)  # a constant Jacobian row (dead network) has no correlation
    sign, logdet = torch.linalg.slogdet(kernel)
    eig = torch.linalg.eigvalsh(kernel).clamp(min=0)
    eig_score = -float(torch.sum(torch.log(eig + NASWOT_K) + 1 / (eig + NASWOT_K)))
    return {"naswot": float(logdet) if sign > 0 else -math.inf, "naswot_eig": eig_score, "naswot_batch": len(x)}


def filter_normalised_direction(model: nn.Module, gen: torch.Generator) -> list[torch.Tensor]:
    """Li et al.'s direction: Gaussian, each filter (output slice) scaled to the norm of the weight's
    filter; 1-D parameters (BN, biases) get no direction."""
    out = []
    for p in model.parameters():
        d = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device, p.dtype)
        if p.dim() <= 1:
            d.zero_()
        else:
            dn = d.reshape(len(d), -1).norm(dim=1).clamp_min(1e-12)
            pn = p.detach().reshape(len(p), -1).norm(dim=1)
            d.mul_((pn / dn).view(-1, *([1] * (p.dim() - 1))))
        out.append(d)
    return out


@torch.no_grad()
def loss_landscape(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = LANDSCAPE_STEPS,
                   seed: int = 0) -> dict:
    """Cross-entropy on (x, y) at theta + a*d1 + b*d2 over a steps x steps grid of a, b in [-1, 1]
    (eval mode: BN uses its running statistics)."""
    probe = copy.deepcopy(model).eval()
    base = [p.detach().clone() for p in probe.parameters()]
    gen = torch.Generator().manual_seed(seed)
    d1, d2 = filter_normalised_direction(probe, gen), filter_normalised_direction(probe, gen)
    coords = torch.linspace(-1, 1, steps).tolist()
    loss = []
    for b in coords:
        row = []
        for a in coords:
            for p, p0, u, v in zip(probe.parameters(), base, d1, d2):
                p.copy_(p0 + a * u + b * v)
            row.append(float(F.cross_entropy(probe(x).float(), y)))
        loss.append(row)
    return {"alpha": coords, "beta": coords, "loss": loss, "batch": len(x), "seed": seed,
            "directions": "filter-normalised Gaussian (Li et al. 2018), BN and biases fixed"}


def probe_batch(run) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed training images (and labels) both analyses score, un-augmented (the evaluation view):
    a seed-determined sample of the training split, the same for every model of the run. Training
    images, as the sources score them: Li et al.'s code computes the landscape's loss on the training
    set, and Mellor et al. score a training mini-batch. Only the sample reaches the device."""
    from kebench.data.pipeline import BatchStream

    split = run.data.train
    n = min(len(split), max(NASWOT_BATCH, LANDSCAPE_BATCH))
    gen = torch.Generator().manual_seed(run.cfg.seed)
    index = torch.randperm(len(split), generator=gen)[:n].sort().values
    stream = BatchStream(run.data, split.subset(index), batch_size=n, device=run.device, train=False)
    return stream.load(torch.arange(n))


class StepLandscapes(Hook):
    """The landscape at the end of each LR step of one step-schedule pass (Park et al. Table 7): after
    the epochs `ends` (1-based within the pass), and after the last epoch trained when a hook ends the
    pass early. Appended to `run.book.landscapes`, which the checkpoint written after the epoch holds."""

    def __init__(self, run, ends: list[int]):
        self.run, self.ends = run, set(ends)
        self.batch = None
        self.model, self.row, self.taken = None, None, set()

    def epoch_end(self, model, epoch, metrics):
        self.model, self.row = model, metrics
        if epoch in self.ends:
            self.take(model, metrics)

    def pass_end(self, record: dict) -> None:
        if record.get("stopped") and self.row is not None and self.row["epoch"] not in self.taken:
            self.take(self.model, self.row)  # an early end closes its LR step too

    def take(self, model, row: dict) -> None:
        if self.batch is None:
            self.batch = probe_batch(self.run)
        x, y = self.batch
        land = loss_landscape(model, x[:LANDSCAPE_BATCH], y[:LANDSCAPE_BATCH], seed=self.run.cfg.seed)
        self.run.book.landscapes.append({"pass": row["pass"] + 1, "kind": row["kind"], "label": row["label"],
                                         "epoch": row["epoch"], "lr": row["lr"], **land})
        self.taken.add(row["epoch"])


def pass_hooks(run, kind: str, lr, epochs: int) -> list[Hook]:
    """The analysis hooks of one pass of `kind`, `epochs` epochs under LR plan `lr`: per-step landscapes
    for a step schedule when `--analyses landscape` is asked for (other schedules: the final model's
    only), except in a pass that trains another network than the reported one (a teacher)."""
    from kebench.context import NOT_THE_MODEL

    if ("landscape" not in run.cfg.analyses or lr.schedule != "step" or kind in NOT_THE_MODEL
            or run.task != "classification"):
        return []
    return [StepLandscapes(run, lr.step_ends(epochs))]


def final_is_last_step(passes: list[dict], steps: list[dict]) -> bool:
    """Whether the last per-step landscape was taken at the end of the run's last pass (the final
    model's landscape then shows the same weights; a figure need not draw both)."""
    return bool(passes and steps) and steps[-1]["pass"] == len(passes) and steps[-1]["epoch"] == passes[-1]["epochs"]


def run_analyses(run, names) -> tuple[dict, dict]:
    """(metrics for result.json's `final`, records for its `analyses`) of the run's reported network
    on training images, with the per-step landscapes the run's step-schedule passes took."""
    if not names:
        return {}, {}
    if run.task != "classification":
        raise UserError(f"--analyses {','.join(names)} scores a classifier; dataset '{run.cfg.data}' is a "
                        f"{run.task} dataset.")
    x, y = probe_batch(run)
    final, records = {}, {}
    model = run.reported_network()  # a KD x pruning pipeline's pruned, fine-tuned student, not run.model
    if "naswot" in names:
        final.update(naswot(model, x[:NASWOT_BATCH]))
    if "landscape" in names:
        records["landscape"] = loss_landscape(model, x[:LANDSCAPE_BATCH], y[:LANDSCAPE_BATCH], seed=run.cfg.seed)
        if run.book.landscapes:
            records["landscape_steps"] = list(run.book.landscapes)
    return final, records
