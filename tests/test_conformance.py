"""Conformance over the registry: every registered plugin, alone and composed, trains one tiny run
that is killed at its first checkpoint, resumes to a valid result.json, and refuses a bad parameter
when the config is resolved; every table kind and figure kind a plugin contributes is built from
those tiny runs. Plugins and their contributions are read from registry.yaml, so a new one is
covered without editing this file; its declaration's `tiny=` values keep searches small here."""
from __future__ import annotations

import json
import math
import re

import pytest

from kebench import config, registry
from kebench.data import headline_metric
from kebench.errors import UserError
from kebench.params import declared

TASK_DATA = {"classification": "synthetic", "retrieval": "digits-retrieval"}
MULTI_PASS = "ke"  # the regime every objective is also composed with


def _cls(name):
    return config.plugin_class(registry.get(name))


def _task(objective: str, regime: str) -> str | None:
    """The task both plugins support (classification first), or None when they cannot compose."""
    obj, reg = _cls(objective), _cls(regime)
    if config.refusal(registry.get(objective), registry.get(regime)):  # incompatible, or the teacher contract
        return None
    for task in TASK_DATA:
        if all(c.tasks is None or task in c.tasks for c in (obj, reg)):
            return task
    return None


def _partner(regime: str) -> str:
    """The objective a regime is tested with: ce when it takes it, else the first that composes."""
    for name in ["ce", *registry.names("objective")]:
        if _task(name, regime):
            return name
    raise AssertionError(f"regime '{regime}' composes with no registered objective")


def compositions() -> list[tuple[str, str]]:
    """Each objective alone (under single) and under one multi-pass regime; each regime with its partner."""
    found = []
    for obj in registry.names("objective"):
        found += [(obj, reg) for reg in ("single", MULTI_PASS) if _task(obj, reg)]
    found += [(_partner(reg), reg) for reg in registry.names("regime")]
    return sorted(set(found))


@pytest.fixture(scope="session")
def teacher(tmp_path_factory):
    """A tiny trained model.pt for objectives that distil from a given teacher."""
    from kebench.run.engine import execute

    out = tmp_path_factory.mktemp("teacher")
    cfg = config.resolve({"data": "synthetic", "arch": "test_resnet", "epochs": 1, "batch_size": 16,
                          "device": "cpu", "out": str(out), "checkpoint_every_s": 0.0}, {}, {})
    assert execute(cfg, show_progress=False)["status"] == "complete"
    return str(out / cfg.run_id() / "model.pt")


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory):
    """One results folder for every composition's tiny run (run ids keep them apart), so the
    contributed table and figure kinds are built from what the conformance runs wrote."""
    return tmp_path_factory.mktemp("conformance") / "results"


def _config(objective: str, regime: str, out: str, teacher_path: str) -> config.RunConfig:
    """The composition's tiny config: 1 epoch, the declarations' tiny values, the engine settings a
    plugin's paper defaults fix (an arch, a batch size) left as the plugin wants them."""
    obj, reg = registry.get(objective), registry.get(regime)
    task = _task(objective, regime)
    engine = {"data": TASK_DATA[task], "epochs": 1, "device": "cpu", "out": out, "checkpoint_every_s": 0.0,
              "method": f"{objective}+{regime}", "arch": "test_resnet", "batch_size": 16}
    if task == "retrieval":
        engine.update(resolution=16, train_fraction=0.3)
    fixed = {k for spec in (obj, reg) for k in spec.defaults if k in config.FIELDS}
    engine = {k: v for k, v in engine.items() if k not in fixed}
    plugin = {}
    for spec in (obj, reg):
        for key, (_, f) in (declared(_cls(spec.name)) or {}).items():
            if f.metadata["tiny"] is not None:
                plugin[f"{spec.name}.{key}"] = f.metadata["tiny"]
    if getattr(_cls(objective), "needs_teacher", False) and not getattr(_cls(regime), "provides_teacher", False):
        plugin[f"{objective}.teacher"] = teacher_path
    return config.resolve(engine, {}, plugin)


def _valid_result(record: dict, cfg: config.RunConfig) -> None:
    assert record["status"] == "complete", record.get("error")
    assert record["run_id"] == cfg.run_id() and record["method"] == cfg.method
    assert record["passes"] and record["training"]["epochs"] == sum(p["epochs"] for p in record["passes"]) >= 1
    primary = headline_metric(record["task"])
    assert math.isfinite(record["final"][primary]) and 0 <= record["final"][primary] <= 1


def test_every_registered_plugin_declares_its_parameters():
    for name in registry.names():
        fields = declared(_cls(name))
        assert fields is not None, f"{name} has no Params declaration"
        for key, (_, f) in fields.items():
            assert f.metadata["help"], f"{name}.{key} has no help text"


@pytest.mark.filterwarnings("ignore:triplet. dataset 'digits-retrieval' has only:UserWarning")
@pytest.mark.parametrize("objective,regime", compositions(), ids=lambda v: v)
def test_plugin_trains_resumes_and_writes_a_valid_result(objective, regime, tiny_results, teacher, kill_run, run_cfg):
    cfg = _config(objective, regime, str(tiny_results), teacher)
    kill_run(cfg, after=1)  # dies right after its first checkpoint
    record = run_cfg(cfg, resume=True)
    _valid_result(record, cfg)
    on_disk = json.loads((tiny_results / cfg.run_id() / "result.json").read_text())
    assert on_disk["status"] == "complete" and on_disk["passes"] == record["passes"]


def _contributed() -> list[tuple[str, str]]:
    return ([("table", k) for k in registry.section("tables")] + [("figure", k) for k in registry.section("figures")])


@pytest.mark.filterwarnings("ignore:triplet. dataset 'digits-retrieval' has only:UserWarning")
@pytest.mark.parametrize("what,kind", _contributed(), ids=lambda v: v)
def test_contributed_kind_builds_from_the_tiny_runs(what, kind, tiny_results, teacher, run_cfg):
    """Every table kind (KD x pruning's `kd`, KE's `cost`) and figure kind (AG-Evo's `search`) a plugin
    contributes through registry.yaml builds from the compositions' tiny runs (those the test above
    left are reused; alone, this trains them) and renders in every format."""
    from kebench.analysis import plots, tables

    for objective, regime in compositions():
        cfg = _config(objective, regime, str(tiny_results), teacher)
        assert run_cfg(cfg, resume=True)["status"] == "complete"  # a finished run is skipped
    runs, left_out = tables.load_runs([tiny_results])
    assert left_out == [] and len(runs) == len(compositions())
    if what == "table":
        table = tables.build_table(runs, kind, names=tables.Names())
        filled = [c for row in table.rows for c in row.cells if c.n]
        assert table.kind == kind and table.rows and filled, f"the {kind} table has no filled cell"
        for fmt in tables.FORMATS:
            assert tables.render(table, fmt).strip()
    else:
        fig = plots.build_figure(runs, kind)
        assert any(ax.has_data() for ax in fig.axes), f"the {kind} figure draws nothing"
        assert plots.figure_title(kind)


def _bad_values(fields: dict) -> list[tuple[str, object]]:
    """One value per declared parameter that the declaration must refuse (outside its choices or range,
    or of the wrong type); free text has none."""
    bad = []
    for key, (tp, f) in fields.items():
        m = f.metadata
        if m["choices"]:
            bad.append((key, "no-such-choice"))
        elif m["ge"] is not None or m["gt"] is not None:
            low = m["ge"] if m["ge"] is not None else m["gt"]
            bad.append((key, low - 1 if m["ge"] is not None else low))
        elif m["le"] is not None or m["lt"] is not None:
            bad.append((key, (m["le"] if m["le"] is not None else m["lt"]) + 1))
        elif tp is bool:
            bad.append((key, "maybe"))
    return bad


@pytest.mark.parametrize("name", registry.names())
def test_bad_parameter_is_refused_at_resolve_time(name, tmp_path):
    spec = registry.get(name)
    objective, regime = (name, "single") if spec.kind == "objective" else (_partner(name), name)
    engine = {"data": TASK_DATA[_task(objective, regime)], "method": f"{objective}+{regime}",
              "out": str(tmp_path / "results")}
    refused = 0
    for key, value in _bad_values(declared(_cls(name))):
        if isinstance(spec.defaults[key], (list, dict)):
            continue  # a number where a list or mapping belongs is refused by its type
        flag = key.replace("_", "-")  # the message names the plugin and the parameter
        with pytest.raises(UserError, match=rf"{re.escape(name)}(: --{flag} |\.{key}' )"):
            config.resolve(engine, {}, {f"{name}.{key}": value})
        refused += 1
    assert refused or not _bad_values(declared(_cls(name))), name
    assert not (tmp_path / "results").exists()
