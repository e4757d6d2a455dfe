"""The plugin-facing surface: plugins touch only `RunContext` and never import the engine, report facts
without clobbering the result.json schema, return per-pass record entries under a declared key, and
wrappers forward every contract method. Inside the run core, the loop, the checkpoint and the record
share the run's `RunState` instead of reaching into `Run`'s private attributes."""
import ast
import re
from pathlib import Path

import pytest
import torch

from kebench.run import record
from kebench.context import RECORD, PassKind, RunContext
from kebench.run.engine import Run
from kebench.plugin import OBJECTIVE_CONTRACT, Objective, WrappingObjective

METHODS = Path(__file__).resolve().parent.parent / "methods"
RUN_CORE = Path(__file__).resolve().parent.parent / "kebench" / "run"
#: The engine: what runs a config. Plugins see it only through kebench.context.
ENGINE = ("kebench.run.engine", "kebench.run.loop", "kebench.run.checkpoint", "kebench.run.record",
          "kebench.run.state", "kebench.run.launch")


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update({node.module, *(f"{node.module}.{a.name}" for a in node.names)})
    return names


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


def test_no_plugin_imports_the_engine():
    importers = {path.name: sorted(n for n in _imported(path) if n.startswith(ENGINE)) for path in METHODS.glob("*.py")}
    assert {f: n for f, n in importers.items() if n} == {}
    from kebench import context, errors
    from kebench.run import engine

    assert context.RunFailure is errors.RunFailure is engine.RunFailure  # what neuroevo raises, the engine records


def test_the_run_core_shares_run_state_not_private_attributes():
    """loop.py, checkpoint.py and record.py use no `run._x`: what they share with Run is its RunState."""
    for name in ("loop.py", "checkpoint.py", "record.py"):
        text = (RUN_CORE / name).read_text()
        assert not re.findall(r"\brun\._\w+", text), name
    assert "run.book" in (RUN_CORE / "checkpoint.py").read_text() and "run.book" in (RUN_CORE / "record.py").read_text()


def test_run_context_fields_have_real_types():
    hints = RunContext.__annotations__
    assert not [n for n, t in hints.items() if t in ("object", "list", "dict")]
    assert hints["cfg"] == "RunConfig" and hints["model"] == "nn.Module" and hints["data"] == "DataBundle"
    import typing

    from kebench import context

    resolved = typing.get_type_hints(RunContext, vars(context) | _type_names())
    from kebench.config import RunConfig

    assert resolved["cfg"] is RunConfig and resolved["rank"] is int


def _type_names() -> dict:
    from pathlib import Path as P

    import torch as T
    from torch import nn

    from kebench.config import RunConfig
    from kebench.data.pipeline import BatchStream
    from kebench.data.spec import DataBundle
    from kebench.plugin import Hook, Objective
    from kebench.registry import Method

    return {"Path": P, "torch": T, "nn": nn, "RunConfig": RunConfig, "BatchStream": BatchStream,
            "DataBundle": DataBundle, "Hook": Hook, "Objective": Objective, "Method": Method}


def test_run_state_is_what_a_checkpoint_restores(make_cfg, kill_run, run_cfg):
    """A run killed after its first pass resumes with the passes, best and facts of its RunState."""
    cfg = make_cfg("bans", plugin={"generations": 2})
    reference = run_cfg(cfg)
    run_dir = Path(cfg.out) / cfg.run_id()
    (run_dir / "result.json").unlink()
    kill_run(cfg, after=1)
    run = Run(cfg, resume=True, show_progress=False)
    resumed = run.execute()
    assert run.passes is run.book.passes and run.best is run.book.best
    assert run.book.resume is None and run.book.fits == 2 and run.book.elapsed() > 0
    assert resumed["passes"] == run.book.passes and resumed["best"] == run.book.best
    assert resumed["bans"] == run.book.facts["bans"] == reference["bans"]
    assert [p["metrics"]["top1"] for p in resumed["passes"]] == pytest.approx(
        [p["metrics"]["top1"] for p in reference["passes"]], abs=1e-6)


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
