"""DSD: Dense-Sparse-Dense training (Han et al., ICLR 2017).

Train dense; prune every layer's smallest-magnitude weights (per layer, `prune_ratio` of each weight
tensor) and train with the mask held on weights, gradients and momentum; drop the mask and train
dense again. `schedule`:

* continuous (default): the three phases share ONE learning-rate schedule (`lr_window`), as the KE
  paper ran DSD (200/100/100 epochs in one schedule) — what separates DSD from KE+DSD
  (`methods/ke_dsd.py`), where every generation restarts it. The mask is taken mid-schedule.
* restart: Han et al.'s DSD: every phase its own schedule (and warm-up), the dense network annealed
  before it is pruned, the re-dense phase at `redense_lr_factor` (1/10) of the peak LR.
"""
from __future__ import annotations

from dataclasses import dataclass

from kebench.errors import UserError
from kebench.plugin import Regime, param
from kebench.nets.prune import MaskHook, MaskSet, magnitude_masks, prunable_weights, weight_sparsity

#: DSD's pass kind (declared under `passes:` in registry.yaml).
PHASE = "phase"

PHASES = ("dense", "sparse", "redense")
SCHEDULES = ("continuous", "restart")


class DSD(Regime):
    @dataclass
    class Params:
        dense_epochs: int | None = param("dense phase epochs; null = --epochs", ge=1)
        sparse_epochs: int | None = param("sparse phase epochs; null = --epochs x phase_ratio[1] / phase_ratio[0]",
                                          ge=1)
        redense_epochs: int | None = param("re-dense phase epochs; null = --epochs x phase_ratio[2] / phase_ratio[0]",
                                           ge=1)
        phase_ratio: list[float] = param("relative lengths of the dense, sparse and re-dense phases", gt=0)
        prune_ratio: float = param("share of each layer's weights pruned by magnitude in the sparse phase",
                                   ge=0, lt=1)
        schedule: str = param("continuous: one LR schedule over the three phases (the KE paper's DSD) | "
                              "restart: each phase its own (Han et al.)", choices=SCHEDULES)
        redense_lr_factor: float = param("re-dense peak LR as a share of --lr under schedule restart", gt=0, le=1)

        def check(self):
            if len(self.phase_ratio) != 3:
                raise UserError(f"--phase-ratio must be three positive numbers (dense, sparse, redense), "
                                f"got {self.phase_ratio}.")

    def __init__(self, params, run):
        super().__init__(params, run)
        self.fraction = self.params.prune_ratio
        self.ratio = list(self.params.phase_ratio)
        self.given = [getattr(self.params, f"{p}_epochs") for p in PHASES]

    def phase_epochs(self, epochs: int) -> list[int]:
        """Epochs of (dense, sparse, redense). A phase not given explicitly gets --epochs scaled by
        phase_ratio relative to the dense phase (paper: 200/100/100 with --epochs 200), at least 1."""
        return [g if g is not None else max(1, round(epochs * r / self.ratio[0]))
                for g, r in zip(self.given, self.ratio)]

    def run(self, run):
        lengths = self.phase_epochs(run.cfg.epochs)
        total = sum(lengths)
        run.plan(passes=len(lengths), epochs=total)
        masks = MaskSet.ones_like(prunable_weights(run.model))
        run.state["dsd_masks"] = masks  # registered before any fit: resume restores it mid-sparse-phase
        restart = self.params.schedule == "restart"
        redense_lr = run.cfg.lr * self.params.redense_lr_factor if restart else run.cfg.lr
        run.report("dsd", {"phases": dict(zip(PHASES, lengths)), "prune_ratio": self.fraction,
                            "schedule": self.params.schedule,
                            "lr_schedule_epochs": lengths if restart else total,
                            "peak_lr": {"dense": run.cfg.lr, "sparse": run.cfg.lr, "redense": redense_lr}})
        offset = 0
        for i, (phase, epochs) in enumerate(zip(PHASES, lengths)):
            hooks = []
            if phase == "sparse":
                masks.assign(magnitude_masks(run.model, self.fraction, per_layer=True))
                hook = MaskHook(run.model, masks)
                hook.apply()  # pruned weights start at exactly zero
                hooks.append(hook)
            if restart:  # its own schedule from its own peak
                record = run.fit(epochs, kind=PHASE, label=i + 1, hooks=hooks, after=weight_sparsity,
                                 lr=redense_lr if phase == "redense" else None)
            else:
                record = run.fit(epochs, kind=PHASE, label=i + 1, hooks=hooks, lr_window=(offset, total),
                                 after=weight_sparsity)
            record["phase"] = phase
            offset += epochs
