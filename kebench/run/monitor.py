"""Live monitoring: metrics.csv beside metrics.jsonl (always) and optional TensorBoard logs.

TensorBoard is an engine hook (kebench.plugin.Hook) the run adds to every pass when
KEBENCH_TENSORBOARD=1 (`kebench run --tensorboard` sets it; sweeps and studies pass the environment
to their runs). It writes RUN_DIR/tensorboard/: per-epoch scalars (loss, train top-1, lr, images/s,
test metrics when evaluated), per-pass scalars (the metrics of each generation / phase, dense and
slim side by side in one chart) and the resolved config as text. Install it with
`pip install kebench[tensorboard]`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from kebench.errors import UserError
from kebench.plugin import Hook

ENV = "KEBENCH_TENSORBOARD"
TB_DIR = "tensorboard"


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _scalars(prefix: str, values: dict) -> dict:
    return {f"{prefix}/{k}": float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardHook(Hook):
    """Scalars per epoch (step = epochs trained so far in the run) and per pass (step = pass number)."""

    def __init__(self, run):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("TensorBoard logs were asked for (--tensorboard or KEBENCH_TENSORBOARD=1), but the "
                            "tensorboard package is not installed. Install it with: pip install -e '.[tensorboard]' "
                            f"(in a kebench checkout) or pip install tensorboard; or unset {ENV}.") from None
        from kebench.config import save_yaml

        self.writer = SummaryWriter(log_dir=str(Path(run.dir) / TB_DIR))
        self.epochs = 0
        self.passes = 0
        self.writer.add_text("config", "```\n" + save_yaml(run.cfg) + "```", 0)
        self.writer.add_custom_scalars({"kebench": {
            "dense vs slim per pass": ["Multiline", [f"pass/{run.primary}", f"pass/slim_{run.primary}"]],
            "loss": ["Multiline", ["train/loss"]]}})

    def epoch_end(self, model, epoch, metrics):
        self.epochs += 1
        values = _scalars("train", {k: metrics.get(k) for k in ("loss", "train_top1", "lr", "images_per_s")})
        values.update(_scalars("test", metrics.get("test") or {}))
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, self.epochs)

    def pass_end(self, record: dict) -> None:
        self.passes += 1
        for tag, v in _scalars("pass", record.get("metrics") or {}).items():
            self.writer.add_scalar(tag, v, self.passes)
        self.writer.add_scalar("pass/train_tflops", (record.get("train_flops") or 0) / 1e12, self.passes)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def hooks_for(run) -> list[Hook]:
    """The monitoring hooks a run adds to each of its passes (rank 0 only)."""
    return [TensorBoardHook(run)] if enabled() and run.rank == 0 else []


def write_csv(run_dir) -> None:
    """metrics.csv: the rows of metrics.jsonl flattened (test.top1, ...), rewritten atomically."""
    import pandas as pd

    from kebench.run import results

    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    text = pd.json_normalize(rows).to_csv(index=False, lineterminator="\n") if rows else ""
    results.write_text(Path(run_dir) / "metrics.csv", text)
