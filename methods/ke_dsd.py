"""KE + DSD (Taha et al., CVPR 2021, appendix): generations that alternate dense and sparse training.

Odd generations train dense; each even generation starts by computing a per-layer mask of the
`prune_ratio` smallest-magnitude weights of the current network, zeroes those weights and holds them at
zero (weights, gradients, momentum) after every step of that generation. Every generation is a
separate `fit`: fresh optimizer and a restarted LR schedule (unlike DSD's single schedule).
"""
from __future__ import annotations

from dataclasses import dataclass

from kebench.context import PassKind
from kebench.plugin import Regime, param
from kebench.nets.prune import MaskHook, MaskSet, magnitude_masks, prunable_weights, weight_sparsity


class KEDSD(Regime):
    @dataclass
    class Params:
        generations: int = param("generations; even ones train sparse", ge=1, tiny=2)
        prune_ratio: float = param("share of each layer's weights masked by magnitude in a sparse generation",
                                   ge=0, lt=1)

    def __init__(self, params, run):
        super().__init__(params, run)
        self.fraction = self.params.prune_ratio
        self.generations = self.params.generations

    def run(self, run):
        masks = MaskSet.ones_like(prunable_weights(run.model))
        run.state["ke_dsd_masks"] = masks  # restored on resume inside a sparse generation
        for g in range(1, self.generations + 1):
            sparse = g % 2 == 0
            hooks = []
            if sparse:
                masks.assign(magnitude_masks(run.model, self.fraction, per_layer=True))
                hook = MaskHook(run.model, masks)
                hook.apply()  # pruned weights start from zero
                hooks.append(hook)
            record = run.fit(run.cfg.epochs, kind=PassKind.GENERATION, label=g, hooks=hooks, after=weight_sparsity)
            record["phase"] = "sparse" if sparse else "dense"
