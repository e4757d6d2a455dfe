"""Fair comparisons: a multi-pass run with --budget matched gets its equal-total-epochs baseline."""
from __future__ import annotations

import sys
import textwrap

import pytest

from kebench import registry
from kebench.config import matched_config
from kebench.run.engine import execute_all

THRICE = textwrap.dedent('''
    from kebench.plugin import Regime

    class Thrice(Regime):
        """Three passes of --epochs each, a stand-in for any multi-pass regime (KE-N3, BANs-N3)."""
        def run(self, run):
            for g in range(3):
                run.fit(kind="generation", label=g + 1)
''')


@pytest.fixture
def thrice(tmp_path, monkeypatch):
    (tmp_path / "thrice_regime.py").write_text(THRICE)
    monkeypatch.syspath_prepend(str(tmp_path))
    extended = tmp_path / "registry.yaml"
    extended.write_text(registry.registry_path().read_text().rstrip("\n") + "\n"
                        "  thrice:\n    entry: thrice_regime:Thrice\n    kind: regime\n")
    monkeypatch.setattr(registry, "registry_path", lambda: extended)
    registry.reload()
    yield
    sys.modules.pop("thrice_regime", None)
    registry.reload()


def test_matched_baseline_has_the_regimes_total_epochs(thrice, make_cfg):
    cfg = make_cfg("smooth+thrice", plugin={"alpha": "0.2"}, epochs=2, budget="matched", warmup_epochs=1)
    records = execute_all(cfg, show_progress=False)
    assert [r["method"] for r in records] == ["smooth+thrice", "smooth"]
    multi, single = records
    assert multi["training"]["epochs"] == 6 and len(multi["passes"]) == 3
    assert single["training"]["epochs"] == 6 and len(single["passes"]) == 1
    assert single["config"]["epochs"] == 6 and single["regime"] == "single"
    assert single["config"]["params"] == {"smooth": {"alpha": 0.2}, "single": {}}  # same objective settings
    assert single["config"]["warmup_epochs"] == 1 and single["config"]["lr"] == cfg.lr  # same schedule shape
    # Same images per epoch, so the same number of steps and (same model) the same training FLOPs.
    assert single["training"]["steps"] == multi["training"]["steps"]
    assert single["training"]["flops"] == multi["training"]["flops"]


def test_matched_baseline_is_shared_not_rerun(thrice, make_cfg):
    cfg = make_cfg("thrice", epochs=1, budget="matched")
    first = execute_all(cfg, show_progress=False)[1]
    assert first["run_id"] == matched_config(cfg, 3).run_id()
    again = execute_all(cfg, resume=True, show_progress=False)[1]
    assert again["run_id"] == first["run_id"] and again["wall_time_s"] == first["wall_time_s"]


def test_single_pass_paper_budget_runs_alone(make_cfg):
    records = execute_all(make_cfg("ce", budget="matched"), show_progress=False)
    assert len(records) == 1
