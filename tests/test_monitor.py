"""Live monitoring: metrics.csv beside metrics.jsonl on every run; TensorBoard event files (read back
with tensorboard's own EventAccumulator) when asked for, skipped cleanly without tensorboard."""
from __future__ import annotations

import json

import pandas as pd
import pytest


def test_metrics_csv_mirrors_the_jsonl(make_cfg, run_cfg, tmp_path):
    result = run_cfg(make_cfg("ce", epochs=2, eval_every=1))
    folder = tmp_path / "results" / result["run_id"]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    df = pd.read_csv(folder / "metrics.csv")
    assert len(df) == len(rows) == 2
    assert list(df["epoch"]) == [1, 2]
    assert df["loss"].tolist() == pytest.approx([r["loss"] for r in rows])
    assert df["test.top1"].tolist() == pytest.approx([r["test"]["top1"] for r in rows])  # nested keys flattened


def test_tensorboard_logs_epochs_passes_and_config(make_cfg, run_cfg, monkeypatch, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("KEBENCH_TENSORBOARD", "1")
    cfg = make_cfg("ke", {"generations": "2"}, epochs=2)
    result = run_cfg(cfg)
    assert result["status"] == "complete"
    logdir = tmp_path / "results" / result["run_id"] / "tensorboard"
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]  # 2 generations x 2 epochs, one step per epoch
    assert loss[-1].value == pytest.approx(json.loads(
        (logdir.parent / "metrics.jsonl").read_text().splitlines()[-1])["loss"], rel=1e-6)
    dense, slim = acc.Scalars("pass/top1"), acc.Scalars("pass/slim_top1")
    assert [e.step for e in dense] == [1, 2] and [e.step for e in slim] == [1, 2]
    assert [e.value for e in dense] == pytest.approx([p["metrics"]["top1"] for p in result["passes"]])
    assert [e.value for e in slim] == pytest.approx([p["metrics"]["slim_top1"] for p in result["passes"]])
    assert {"test/top1", "train/lr", "train/images_per_s"} <= set(scalars)
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "method: ce+ke" in text and "generations: 2" in text


def test_no_tensorboard_folder_unless_asked(make_cfg, run_cfg, monkeypatch, tmp_path):
    monkeypatch.delenv("KEBENCH_TENSORBOARD", raising=False)
    result = run_cfg(make_cfg("ce"))
    assert not (tmp_path / "results" / result["run_id"] / "tensorboard").exists()
