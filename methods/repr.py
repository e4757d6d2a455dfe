"""RePr: improved training of convolutional filters (Prakash et al., CVPR 2019).

Cycles of: train S1 epochs -> drop the `prune_ratio` most redundant conv filters (inter-filter
orthogonality, `kebench.nets.prune.orthogonality_scores`) -> train S2 epochs with them off ->
re-initialise them -> next cycle; a final phase trains the full network. All phases share one LR
schedule. Every pass record lists the filters each conv has on (`kept_filters`).

`--repr.ranking global` (default, as RePr and siahuat0727/RePr) ranks all filters in one list, so the
stem, the 1x1 shortcuts and whole early stages can lose all but one filter — the failure the KE
paper blames for RePr's weak small-data rows; `per-layer` drops the share from every layer alike.

"Off" means off: the dropped filters' weights (and bias), their gradients and momentum buffers,
and the gamma/beta of the BatchNorm channels that normalise them (found in the model graph; a
zeroed filter followed by BN would still emit beta) are held at zero after every step.

Re-initialisation: each dropped filter becomes a direction orthogonal to the kept filters and to
the dropped filters' own old values (Householder QR of [kept; old; random]), scaled to the layer's
initial per-filter norm; its BN channel gets the layer's initial gamma/beta and fresh running
statistics. Where a layer is too narrow (fewer free dimensions than filters), orthogonality to
the kept filters wins and the old values are honoured as far as dimensions allow; such layers are
listed under `repr.cycles[i].narrow_layers` in result.json.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kebench.context import RECORD
from kebench.errors import UserError
from kebench.plugin import Regime, param
from kebench.nets.prune import MaskHook, MaskSet, following_batchnorms, orthogonality_scores

#: RePr's pass kinds (declared under `passes:` in registry.yaml): cycle stages and the final pass.
S1, S2, FINAL = "s1", "s2", "final"

RANKINGS = ("global", "per-layer")


def rankable_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Conv layers whose filters RePr ranks: ordinary (groups=1) convs with at least two filters."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels > 1}


def select_filters(convs: dict[str, nn.Conv2d], rate: float, ranking: str) -> dict[str, torch.Tensor]:
    """Indices of the filters to drop per layer: the highest orthogonality scores.

    global: round(rate * all filters) taken from one ranking across layers; per-layer:
    round(rate * filters) per layer. A layer always keeps at least one filter."""
    scores = {n: orthogonality_scores(m.weight).cpu() for n, m in convs.items()}
    if ranking == "per-layer":
        drop = {}
        for n, s in scores.items():
            k = min(int(round(rate * len(s))), len(s) - 1)
            drop[n] = torch.sort(torch.argsort(-s, stable=True)[:k]).values
        return drop
    names = list(scores)
    flat = torch.cat([scores[n] for n in names])
    layer_of = torch.cat([torch.full((len(scores[n]),), i) for i, n in enumerate(names)])
    index_in = torch.cat([torch.arange(len(scores[n])) for n in names])
    budget = int(round(rate * len(flat)))
    taken = {n: [] for n in names}
    for j in torch.argsort(-flat, stable=True).tolist():
        if budget == 0:
            break
        n = names[int(layer_of[j])]
        if len(taken[n]) < len(scores[n]) - 1:
            taken[n].append(int(index_in[j]))
            budget -= 1
    return {n: torch.tensor(sorted(v), dtype=torch.long) for n, v in taken.items()}


@torch.no_grad()
def orthogonal_filters(kept: torch.Tensor, old: torch.Tensor, count: int, generator=None) -> tuple[torch.Tensor, bool]:
    """`count` unit vectors orthogonal to the rows of `kept` and of `old` (and to each other).

    Householder QR of A = [kept; old; random]^T: column j of Q is orthogonal to columns < j of A.
    A D-dimensional space has room for D orthogonal directions: the new vectors come first, then
    as many kept rows as fit, then old rows; vectors beyond D (more new filters than dimensions)
    are random unit vectors. Returns (rows, full), full=False if some constraint could not be met."""
    dim = kept.shape[1]
    n_new = min(count, dim)
    n_keep = min(len(kept), dim - n_new)
    n_old = min(len(old), dim - n_new - n_keep)
    noise = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    a = torch.cat([kept[:n_keep].double().cpu(), old[:n_old].double().cpu(), noise[:n_new]]).t()
    q, _ = torch.linalg.qr(a, mode="reduced")
    rows = torch.cat([q[:, n_keep + n_old:].t(), nn.functional.normalize(noise[n_new:], dim=1)])
    return rows, (n_new == count and n_keep == len(kept) and n_old == len(old))


class RePr(Regime):
    @dataclass
    class Params:
        s1: int | None = param("epochs of full training per cycle; null = s1_fraction x --epochs", ge=1)
        s2: int | None = param("epochs of sub-network training per cycle; null = s2_fraction x --epochs", ge=1)
        final: int | None = param("epochs after the last cycle; null = what the cycles leave of --epochs", ge=1)
        s1_fraction: float = param("S1 as a share of --epochs (KE paper: 50 of 200)", gt=0, le=1)
        s2_fraction: float = param("S2 as a share of --epochs (KE paper: 10 of 200)", gt=0, le=1)
        cycles: int = param("drop / re-initialise cycles", ge=1, tiny=1)
        prune_ratio: float = param("share of filters dropped each cycle", ge=0, lt=1)
        ranking: str = param("global: one ranking across layers (RePr) | per-layer", choices=RANKINGS)

    def __init__(self, params, run):
        super().__init__(params, run)
        p = self.params
        self.rate, self.cycles = p.prune_ratio, p.cycles
        self.given = {k: getattr(p, k) for k in ("s1", "s2", "final")}

    def schedule(self, epochs: int) -> tuple[int, int, int]:
        """(S1, S2, final) epochs. Not given: S1 = s1_fraction * --epochs, S2 = s2_fraction * --epochs
        (at least 1 each; paper 50 and 10 of 200) and the final phase takes what the cycles leave of
        --epochs (at least 1 epoch, so the re-initialised filters are trained before evaluation)."""
        s1 = self.given["s1"] or max(1, round(epochs * self.params.s1_fraction))
        s2 = self.given["s2"] or max(1, round(epochs * self.params.s2_fraction))
        final = self.given["final"] or max(1, epochs - self.cycles * (s1 + s2))
        return s1, s2, final

    def run(self, run):
        s1, s2, final = self.schedule(run.cfg.epochs)
        total = self.cycles * (s1 + s2) + final
        run.plan(passes=2 * self.cycles + 1, epochs=total)  # S1 and S2 per cycle, then the final pass
        model = run.model
        convs = rankable_convs(model)
        if not convs:
            raise UserError(f"repr ranks conv filters, but {run.cfg.arch} has no ordinary conv layer with 2+ filters.")
        example = torch.zeros(2, run.data.in_chans, run.data.resolution, run.data.resolution, device=run.device)
        followers = following_batchnorms(model, example)
        modules = dict(model.named_modules())
        # The layers' initial state (deterministic: the run builds the same model on resume).
        init_norm = {n: float(m.weight.detach().float().flatten(1).norm(dim=1).pow(2).mean().sqrt())
                     for n, m in convs.items()}
        bns = {bn for n in convs for bn, _ in followers.get(n, [])}
        init_bn = {bn: (modules[bn].weight.detach().clone(), modules[bn].bias.detach().clone())
                   for bn in bns if modules[bn].affine}

        masked = [(f"{n}.weight", m.weight) for n, m in convs.items()]
        masked += [(f"{n}.bias", m.bias) for n, m in convs.items() if m.bias is not None]
        masked += [(f"{bn}.{k}", getattr(modules[bn], k)) for bn in sorted(init_bn) for k in ("weight", "bias")]
        masks = MaskSet.ones_like(masked)
        old = torch.zeros(sum(m.weight.numel() for m in convs.values()), device=run.device)
        run.state["repr_masks"] = masks  # which filters are off (restored on resume inside S2)
        run.state["repr_old_filters"] = old  # conv weights at the drop, for the re-initialisation
        run.report("repr", {"s1": s1, "s2": s2, "final": final, "cycles": [], "ranking": self.params.ranking,
                             "prune_ratio": self.rate, "lr_schedule_epochs": total,
                             "filters": {n: m.out_channels for n, m in convs.items()}})

        def kept(_model):
            return self._dropped_record(masks, convs)

        offset = 0
        for c in range(1, self.cycles + 1):
            run.fit(s1, kind=S1, label=c, lr_window=(offset, total), after=kept)
            offset += s1
            drop = select_filters(convs, self.rate, self.params.ranking)
            old.copy_(torch.cat([m.weight.detach().flatten() for m in convs.values()]))
            masks.assign(self._filter_masks(masks, drop, convs, followers))
            hook = MaskHook(model, masks)
            hook.apply()
            n_dropped = sum(len(v) for v in drop.values())
            info = run.reported("repr")
            info["cycles"] = info["cycles"][: c - 1] + [{
                "cycle": c, "dropped": {n: len(v) for n, v in drop.items() if len(v)}, "total": n_dropped,
                "of": sum(m.out_channels for m in convs.values())}]
            run.fit(s2, kind=S2, label=c, hooks=[hook], lr_window=(offset, total), after=kept)
            offset += s2
            # Read the dropped filters back from the (possibly resumed) masks, then bring them back.
            drop = self._dropped(masks, convs)
            narrow = self._reinitialise(model, convs, drop, old, init_norm, followers, init_bn)
            run.reported("repr")["cycles"][c - 1]["narrow_layers"] = narrow
            masks.assign({})
        run.fit(final, kind=FINAL, label=self.cycles + 1, lr_window=(offset, total), after=kept)

    @staticmethod
    def _dropped(masks: MaskSet, convs) -> dict[str, torch.Tensor]:
        """Filters currently off, read from the masks (which a resumed run restores)."""
        return {n: torch.nonzero(~masks[f"{n}.weight"].flatten(1).any(1)).flatten().cpu() for n in convs}

    @classmethod
    def _dropped_record(cls, masks: MaskSet, convs) -> dict:
        """Pass record entries: filters off (a metric, and per layer where any) and, per conv, the
        filters on at the end of the pass (`kept_filters`: all of them outside S2)."""
        dropped = {n: len(v) for n, v in cls._dropped(masks, convs).items()}
        return {"filters_dropped": sum(dropped.values()),
                RECORD: {"dropped_filters": {n: k for n, k in dropped.items() if k},
                         "kept_filters": {n: m.out_channels - dropped[n] for n, m in convs.items()}}}

    @staticmethod
    def _filter_masks(masks: MaskSet, drop, convs, followers) -> dict[str, torch.Tensor]:
        out = {n: torch.ones_like(m) for n, m in masks.items()}
        for n, idx in drop.items():
            if not len(idx):
                continue
            idx = idx.to(out[f"{n}.weight"].device)
            out[f"{n}.weight"][idx] = False
            if f"{n}.bias" in out:
                out[f"{n}.bias"][idx] = False
            for bn, offset in followers.get(n, []):
                if f"{bn}.weight" in out:
                    out[f"{bn}.weight"][idx + offset] = False
                    out[f"{bn}.bias"][idx + offset] = False
        return out

    @staticmethod
    @torch.no_grad()
    def _reinitialise(model, convs, drop, old, init_norm, followers, init_bn) -> list[str]:
        modules = dict(model.named_modules())
        narrow, start = [], 0
        for n, conv in convs.items():
            w = conv.weight
            numel = w.numel()
            idx = drop[n]
            if len(idx):
                flat = w.detach().flatten(1)
                keep = torch.ones(len(flat), dtype=torch.bool)
                keep[idx] = False
                before = old[start:start + numel].view(len(flat), -1)
                rows, full = orthogonal_filters(flat[keep.to(flat.device)], before[idx.to(before.device)], len(idx))
                if not full:
                    narrow.append(n)
                rows = rows * init_norm[n]
                w[idx.to(w.device)] = rows.to(w.dtype).view(len(idx), *w.shape[1:]).to(w.device)
                if conv.bias is not None:
                    conv.bias[idx.to(w.device)] = 0
                for bn, offset in followers.get(n, []):
                    m = modules[bn]
                    ch = (idx + offset).to(m.running_mean.device if m.running_mean is not None else w.device)
                    if bn in init_bn:
                        m.weight[ch] = init_bn[bn][0][ch]
                        m.bias[ch] = init_bn[bn][1][ch]
                    if m.running_mean is not None:
                        m.running_mean[ch] = 0
                        m.running_var[ch] = 1
            start += numel
        return narrow
