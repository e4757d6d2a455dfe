"""Fair comparisons: a multi-pass run with --budget matched gets its equal-total-epochs baseline."""
from __future__ import annotations

import sys
import textwrap

import pytest

from kebench import registry
from kebench.config import matched_config
from kebench.run.engine import epoch_train_flops, execute_all

THRICE = textwrap.dedent('''
    from kebench.plugin import Regime

    class Thrice(Regime):
        """Three passes of --epochs each, a stand-in for any multi-pass regime (KE-N3, BANs-N3)."""
        def run(self, run):
            for g in range(3):
                run.fit(kind="generation", label=g + 1)

    class Narrow(Regime):
        """Three passes of a network much smaller than --arch: a stand-in for a search or neuroevolution."""
        changes_network = True

        def run(self, run):
            from torch import nn

            net = nn.Sequential(nn.Conv2d(run.data.in_chans, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                nn.Linear(2, run.data.num_classes)).to(run.device)
            for g in range(3):
                run.fit(kind="generation", label=g + 1, model=net)
''')


@pytest.fixture
def thrice(tmp_path, monkeypatch):
    (tmp_path / "thrice_regime.py").write_text(THRICE)
    monkeypatch.syspath_prepend(str(tmp_path))
    extended = tmp_path / "registry.yaml"
    extended.write_text(registry.registry_path().read_text().rstrip("\n") + "\n"
                        "  thrice:\n    entry: thrice_regime:Thrice\n    kind: regime\n"
                        "  narrow:\n    entry: thrice_regime:Narrow\n    kind: regime\n")
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


def test_a_regime_that_changes_the_network_is_matched_in_training_flops(thrice, make_cfg):
    """Issue 24.5: equal epochs of a much smaller network are far less work; the baseline trains the
    whole number of epochs whose training FLOPs come closest to the run's, the choice is recorded in
    matched.json (read by the sweep's status), and the budget table labels the row in TFLOPs."""
    import json
    from pathlib import Path

    from kebench.analysis import tables
    from kebench.grid import sweep
    from kebench.run import budget

    cfg = make_cfg("narrow", epochs=2, budget="matched")
    multi, single = execute_all(cfg, show_progress=False)
    per_epoch = epoch_train_flops(matched_config(cfg, 1))
    assert multi["training"]["epochs"] == 6 and multi["training"]["flops"] < per_epoch  # < 1 epoch of test_resnet
    plan = json.loads((Path(cfg.out) / cfg.run_id() / budget.MATCH_FILE).read_text())
    assert plan == {"match": "flops", "epochs": 1, "run_flops": multi["training"]["flops"], "epoch_flops": per_epoch,
                    "baseline": single["run_id"]}
    assert single["training"]["epochs"] == 1 and single["training"]["flops"] == per_epoch  # counted alike
    assert sweep.state_of(sweep.SweepRun(cfg, {}))[0] == "done"  # the status finds the FLOPs-matched baseline
    table = tables.build_table(tables.load_runs([Path(cfg.out)])[0], "budget")
    label = table.rows[1].head[0]
    assert label.endswith(" TFLOPs)") and label.startswith("CE (N1, ")
    assert any("matched in training FLOPs" in n for n in table.notes)
    assert table.rows[1].cells[-2].text == "1"  # the baseline's epochs, in the Epochs column


def test_a_regime_that_keeps_the_network_is_matched_in_epochs(thrice, make_cfg):
    import json
    from pathlib import Path

    from kebench.run import budget

    cfg = make_cfg("thrice", epochs=1, budget="matched")
    execute_all(cfg, show_progress=False)
    plan = json.loads((Path(cfg.out) / cfg.run_id() / budget.MATCH_FILE).read_text())
    assert plan == {"match": "epochs", "epochs": 3, "baseline": matched_config(cfg, 3).run_id()}
