"""The plugin-facing surface: plugins touch only `RunContext`, report facts without clobbering the
result.json schema, return per-pass record entries under a declared key, and wrappers forward
every contract method."""
import re
from pathlib import Path

import pytest
import torch

from kebench.run import record
from kebench.context import RECORD, PassKind, RunContext
from kebench.run.engine import Run
from kebench.plugin import OBJECTIVE_CONTRACT, Objective, WrappingObjective

METHODS = Path(__file__).resolve().parent.parent / "methods"


def _surface() -> set[str]:
    names = set(RunContext.__annotations__)
    return names | {n for n, v in vars(RunContext).items() if callable(v) and not n.startswith("_")}


def test_plugins_touch_only_the_documented_run_surface():
    used = {}
    for path in METHODS.glob("*.py"):
        text = path.read_text()
        if "from kebench.plugin import" not in text:
            continue  # a table kind (methods/kd_table.py): its `run` is a result record, not the run
        for name in re.findall(r"(?<!kebench\.)\b(?:run|run_ctx)\.(\w+)", text):
            used.setdefault(name, set()).add(path.name)
    outside = {n: sorted(f) for n, f in used.items() if n not in _surface()}
    assert not outside, f"plugins use run attributes outside RunContext: {outside}"
    assert {"fit", "evaluate", "report", "report_final", "state", "cfg"} <= set(used)


def test_run_implements_run_context_and_report_refuses_schema_fields(make_cfg):
    run = Run(make_cfg("ke"), show_progress=False)
    assert isinstance(run, RunContext)
    for name in ("config", "final", "cost", "passes", "status"):
        with pytest.raises(ValueError, match=f"overwrite the result.json schema field '{name}'"):
            run.report(name, {})
    info = run.report("ke_info", {"a": 1})
    info["b"] = 2  # a reported dict may still be filled in
    assert run.reported("ke_info") == {"a": 1, "b": 2} and run.reported("nothing", 7) == 7
    assert run.report_final({"x": 1.0}) == {"x": 1.0}
    assert run.report_final({"y": 2.0}) == {"x": 1.0, "y": 2.0}
    run.report_cost({"slim": {"params": 3}})
    rec = record.build(run, status="failed")
    assert rec["ke_info"] == {"a": 1, "b": 2} and rec["final"] == {"x": 1.0, "y": 2.0}
    assert rec["cost"] == {"slim": {"params": 3}} and rec["config"] == run.cfg.to_dict()
    assert set(rec) - {"ke_info"} <= record.SCHEMA_FIELDS


def test_after_routes_record_entries_by_the_declared_key_only(make_cfg):
    run = Run(make_cfg("ce", epochs=1), show_progress=False)
    rec = run.fit(1, kind=PassKind.GENERATION,
                  after=lambda m: {"slim_top1": 0.5, RECORD: {"hypotheses": {"layers": 2}}})
    assert rec["kind"] == "generation" and type(rec["kind"]) is str
    assert rec["metrics"]["slim_top1"] == 0.5 and rec["hypotheses"] == {"layers": 2}
    with pytest.raises(TypeError, match=f"per-pass record entries go under after\\(\\)\\['{RECORD}'\\]"):
        run.fit(1, after=lambda m: {"hypotheses": {"layers": 2}})
    with pytest.raises(TypeError, match=r"\['metrics'\] that would overwrite"):
        run.fit(1, after=lambda m: {RECORD: {"metrics": {}}})


def test_a_wrapping_objective_forwards_every_contract_method():
    assert {"adapt_model", "batch_sampler", "shard", "hooks", "extra_parameters", "loss",
            "train_mode"} <= set(OBJECTIVE_CONTRACT)
    calls = []

    class Inner(Objective):
        def __init__(self):
            super().__init__({}, None)

    for name in OBJECTIVE_CONTRACT:
        setattr(Inner, name, lambda self, *a, _n=name, **k: calls.append(_n) or _n)

    class Adds(WrappingObjective):
        def loss(self, model, x, y):
            return super().loss(model, x, y) + "+term"

    inner = Inner()
    inner.tasks = ("retrieval",)
    wrapper = Adds(inner)
    assert wrapper.tasks == ("retrieval",)
    for name in OBJECTIVE_CONTRACT:
        out = getattr(wrapper, name)(torch.zeros(1), 1, 2)
        assert out == (name + "+term" if name == "loss" else name)
    assert calls == list(OBJECTIVE_CONTRACT)
