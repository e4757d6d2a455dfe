"""Analyses of a trained network that a run can ask for (`--analyses naswot,landscape`), as Park,
Yoo and Kwak use them to explain why KD and pruning or augmentation add up:

* `naswot`: the NAS-without-training score of Mellor et al. (2021) on a batch of test images: the
  per-sample input Jacobians J_i = d(sum_c f_c(x_i))/dx_i, their correlation matrix Sigma_J over the
  batch, and as the score the log-determinant of that kernel (higher: the network tells the inputs
  apart more); also the first version's eigenvalue score -sum(log(l + k) + 1/(l + k)), k = 1e-5.
  Recorded in result.json's `final` (`naswot`, `naswot_eig`), so a table can show it as a metric
  and average it over seeds.
* `landscape`: the filter-normalised 2-D loss landscape of Li et al. (2018) around the final
  weights: two random directions, each filter rescaled to the norm of the weight's filter (BN and
  bias directions zeroed), training loss on a fixed batch over an (n x n) grid of alpha, beta in
  [-1, 1]. Recorded under result.json's `analyses.landscape`; `kebench plot --kind landscape` draws it.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from kebench.config import ANALYSES  # noqa: F401  (declared with the --analyses setting)
from kebench.errors import UserError

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


def run_analyses(run, names) -> tuple[dict, dict]:
    """(metrics for result.json's `final`, records for its `analyses`) of run.model on the test split."""
    from kebench.data.pipeline import BatchStream

    if not names:
        return {}, {}
    if run.task != "classification":
        raise UserError(f"--analyses {','.join(names)} scores a classifier; dataset '{run.cfg.data}' is a "
                        f"{run.task} dataset.")
    stream = BatchStream(run.data, run.data.test, batch_size=max(NASWOT_BATCH, LANDSCAPE_BATCH), device=run.device,
                         train=False)
    n = min(len(run.data.test), max(NASWOT_BATCH, LANDSCAPE_BATCH))
    gen = torch.Generator().manual_seed(run.cfg.seed)
    index = torch.randperm(len(run.data.test), generator=gen)[:n].sort().values
    x, y = stream.load(index)
    final, records = {}, {}
    model = run.model
    if "naswot" in names:
        final.update(naswot(model, x[:NASWOT_BATCH]))
    if "landscape" in names:
        records["landscape"] = loss_landscape(model, x[:LANDSCAPE_BATCH], y[:LANDSCAPE_BATCH], seed=run.cfg.seed)
    return final, records
