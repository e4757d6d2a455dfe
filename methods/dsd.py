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

from kebench.errors import UserError, unknown_choice
from kebench.plugin import Regime
from kebench.prune import MaskHook, MaskSet, magnitude_masks, prunable_weights, weight_sparsity
from kebench.values import check_fraction, optional_epochs

PHASES = ("dense", "sparse", "redense")
SCHEDULES = ("continuous", "restart")


class DSD(Regime):
    def __init__(self, params, run):
        super().__init__(params, run)
        self.fraction = check_fraction(self.params.prune_ratio, "prune_ratio", "dsd")
        ratio = list(self.params.phase_ratio)
        if len(ratio) != 3 or min(float(r) for r in ratio) <= 0:
            raise UserError(f"dsd: phase_ratio must be three positive numbers (dense, sparse, redense), got {ratio}.")
        self.ratio = [float(r) for r in ratio]
        self.given = [optional_epochs(getattr(self.params, f"{p}_epochs"), f"{p}_epochs", "dsd") for p in PHASES]
        if self.params.schedule not in SCHEDULES:
            raise unknown_choice("DSD schedule", self.params.schedule, list(SCHEDULES))
        if not 0 < float(self.params.redense_lr_factor) <= 1:
            raise UserError(f"dsd: redense_lr_factor must be in (0, 1], got {self.params.redense_lr_factor}.")

    def phase_epochs(self, epochs: int) -> list[int]:
        """Epochs of (dense, sparse, redense). A phase not given explicitly gets --epochs scaled by
        phase_ratio relative to the dense phase (paper: 200/100/100 with --epochs 200), at least 1."""
        return [g if g is not None else max(1, round(epochs * r / self.ratio[0]))
                for g, r in zip(self.given, self.ratio)]

    def run(self, run):
        lengths = self.phase_epochs(run.cfg.epochs)
        total = sum(lengths)
        masks = MaskSet.ones_like(prunable_weights(run.model))
        run.state["dsd_masks"] = masks  # registered before any fit: resume restores it mid-sparse-phase
        restart = self.params.schedule == "restart"
        redense_lr = run.cfg.lr * float(self.params.redense_lr_factor) if restart else run.cfg.lr
        run.extra["dsd"] = {"phases": dict(zip(PHASES, lengths)), "prune_ratio": self.fraction,
                            "schedule": self.params.schedule,
                            "lr_schedule_epochs": lengths if restart else total,
                            "peak_lr": {"dense": run.cfg.lr, "sparse": run.cfg.lr, "redense": redense_lr}}
        offset = 0
        for i, (phase, epochs) in enumerate(zip(PHASES, lengths)):
            hooks = []
            if phase == "sparse":
                masks.assign(magnitude_masks(run.model, self.fraction, per_layer=True))
                hook = MaskHook(run.model, masks)
                hook.apply()  # pruned weights start at exactly zero
                hooks.append(hook)
            if restart:  # its own schedule from its own peak
                record = run.fit(epochs, kind="phase", label=i + 1, hooks=hooks, after=weight_sparsity,
                                 lr=redense_lr if phase == "redense" else None)
            else:
                record = run.fit(epochs, kind="phase", label=i + 1, hooks=hooks, lr_window=(offset, total),
                                 after=weight_sparsity)
            record["phase"] = phase
            offset += epochs
