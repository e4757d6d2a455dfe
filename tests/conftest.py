"""Shared test helpers: tiny models, tiny synthetic data, a temporary results folder. CPU only."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("KEBENCH_NO_PROGRESS", "1")


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(method='ce', **overrides) -> a resolved RunConfig on synthetic data with a tiny model."""
    from kebench.config import resolve

    def _make(method: str = "ce", plugin: dict | None = None, **overrides):
        base = {"data": "synthetic", "arch": "test_resnet", "epochs": 1, "batch_size": 16,
                "device": "cpu", "out": str(tmp_path / "results"), "method": method,
                "checkpoint_every_s": 0.0}
        base.update(overrides)
        return resolve(base, {}, plugin or {})

    return _make


@pytest.fixture
def run_cfg():
    """run_cfg(cfg) -> result dict, running quietly."""
    from kebench.engine import execute

    def _run(cfg, resume=False):
        return execute(cfg, resume=resume, show_progress=False)

    return _run
