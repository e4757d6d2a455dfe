"""`runs_frame` / `kebench export` (issue 24 item 12): every run under a folder as one tidy table, and
the docs' custom-figure example run as written."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from kebench.errors import UserError

DOCS = Path(__file__).parent.parent / "docs" / "tables.md"


@pytest.fixture
def runs(make_cfg, run_cfg, kill_run):
    """Two seeds of CE+KE-N2, one CE run, and one CE run interrupted after its first epoch."""
    records = [run_cfg(make_cfg("ke", plugin={"generations": 2}, epochs=1, seed=s)) for s in (0, 1)]
    records.append(run_cfg(make_cfg(epochs=1)))
    stopped = make_cfg(epochs=3, seed=5)
    kill_run(stopped, after=1)
    return records, stopped


def test_runs_frame_has_one_row_per_run_pass_and_metric(runs):
    from kebench.analysis.export import COLUMNS, runs_frame

    records, stopped = runs
    df = runs_frame(records[0]["config"]["out"])
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert df.run_id.nunique() == 4
    ce = df[df.run_id == records[2]["run_id"]]
    assert len(ce) == 2  # top1 of its one pass, and top1 of `final`
    assert ce.pass_kind.tolist() == ["pass", "final"] and ce["pass"].iloc[0] == 1 and pd.isna(ce["pass"].iloc[1])
    assert ce.value.tolist() == [records[2]["passes"][0]["metrics"]["top1"], records[2]["final"]["top1"]]
    assert ce.train_flops.iloc[0] == records[2]["training"]["flops"] and ce.status.iloc[0] == "complete"
    for rec in records[:2]:
        ke = df[df.run_id == rec["run_id"]]
        expected = sum(len([v for v in p["metrics"].values() if isinstance(v, float)]) for p in rec["passes"])
        expected += len([v for v in rec["final"].values() if isinstance(v, float)])
        assert len(ke) == expected
        top1 = ke[(ke.metric == "top1") & (ke.pass_kind == "generation")]
        assert top1.pass_label.tolist() == [1, 2]
        assert top1.value.tolist() == [p["metrics"]["top1"] for p in rec["passes"]]
        assert set(ke["ke.generations"]) == {2} and set(ke.seed) == {rec["seed"]} and set(ke.epochs) == {1}
    (row,) = df[df.run_id == stopped.run_id()].itertuples()
    assert row.status == "interrupted" and pd.isna(row.value) and row.seed == 5


def test_export_writes_the_same_table(runs, cli_run, tmp_path):
    from kebench.analysis.export import runs_frame

    records, _ = runs
    out = records[0]["config"]["out"]
    frame = runs_frame(out)
    code, _, err = cli_run(["export", out, "--out", str(tmp_path / "runs.csv")])
    assert code == 0, err
    assert re.search(rf"{len(frame)} rows from 4 runs", err)
    back = pd.read_csv(tmp_path / "runs.csv")
    assert back.shape == frame.shape and list(back.columns) == list(frame.columns)
    assert back.value.sum() == pytest.approx(frame.value.sum())
    code, _, _ = cli_run(["export", out, "--out", str(tmp_path / "runs.json")])
    assert code == 0 and len(json.loads((tmp_path / "runs.json").read_text())) == len(frame)
    code, _, err = cli_run(["export", out, "--out", str(tmp_path / "runs.xlsx")])
    assert code == 2 and "runs.csv" in err


def test_parquet_needs_pyarrow(runs, tmp_path, monkeypatch):
    import importlib.util

    from kebench.analysis import export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    with pytest.raises(UserError, match="pyarrow"):
        export.write(pd.DataFrame({"a": [1]}), tmp_path / "runs.parquet")
    assert not (tmp_path / "runs.parquet").exists()


def test_the_docs_figure_example_runs(runs, monkeypatch):
    records, _ = runs
    text = DOCS.read_text()
    block = text[text.index("<!-- example: runs_frame figure"):]
    code = block[block.index("```python") + len("```python"): block.index("```", block.index("```python") + 9)]
    monkeypatch.chdir(Path(records[0]["config"]["out"]).parent)  # the example reads results/
    scope: dict = {}
    exec(compile(code, str(DOCS), "exec"), scope)
    assert Path("top1_by_generation.png").stat().st_size > 1000
    curve = scope["curve"]
    ke = curve[curve.method == "ce+ke"]
    assert ke.pass_label.tolist() == [1, 2]
    first = [r["passes"][0]["metrics"]["top1"] for r in records[:2]]
    assert ke["mean"].iloc[0] == pytest.approx(sum(first) / 2)
    assert len(scope["ax"].containers) == 1  # one method has generations: one error-bar series
