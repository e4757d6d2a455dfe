"""A plugin author's path: one module + a registry entry or an entry point, run end to end."""
from __future__ import annotations

import sys
import textwrap

import pytest

from kebench import registry
from kebench.errors import UserError

PLUGIN_SOURCE = textwrap.dedent('''
    import torch.nn.functional as F
    from kebench.plugin import Objective, Regime

    class SquaredHinge(Objective):
        """A toy objective: multi-class squared hinge on the logits."""
        kind = "objective"
        defaults = {"margin": 1.0}

        def loss(self, model, x, y):
            logits = model(x)
            target = F.one_hot(y, logits.shape[1]).float() * 2 - 1
            return F.relu(self.params.margin - target * logits).pow(2).mean(), logits

    class Twice(Regime):
        """Two passes; the second one's record says it saw the first."""
        kind = "regime"
        defaults = {"repeats": 2}
        passes = ("round",)  # its own pass kind, declared (an entry point's class attribute)

        def run(self, run):
            for i in range(self.params.repeats):
                run.fit(kind="round", label=i + 1)
''')


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "toy_plugins.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("toy_plugins", None)
    registry.reload()


def test_plugin_from_registry_entry(plugin_module, monkeypatch, make_cfg, run_cfg):
    original = registry.registry_path()
    extended = plugin_module / "registry.yaml"
    extended.write_text(original.read_text().rstrip("\n") + "\n"
                        "  hinge:\n"
                        "    entry: toy_plugins:SquaredHinge\n"
                        "    kind: objective\n"
                        "    defaults: {margin: 0.5}\n")
    monkeypatch.setattr(registry, "registry_path", lambda: extended)
    registry.reload()
    cfg = make_cfg("hinge", plugin={"margin": "2.0"}, epochs=2)
    assert cfg.params["hinge"] == {"margin": 2.0}
    result = run_cfg(cfg)
    assert result["status"] == "complete" and result["objective"] == "hinge"
    assert result["final"]["top1"] > 0.5  # 4 learnable classes: well above chance (0.25)


def test_plugin_from_entry_point(plugin_module, make_cfg, run_cfg):
    dist = plugin_module / "toy_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[kebench.methods]\nhinge = toy_plugins:SquaredHinge\ntwice = toy_plugins:Twice\n")
    registry.reload()
    assert registry.get("twice").source.startswith("entry point")
    cfg = make_cfg("hinge+twice", plugin={"repeats": "3"})
    result = run_cfg(cfg)
    assert result["method"] == "hinge+twice"
    assert [(p["kind"], p["index"]) for p in result["passes"]] == [("round", 1), ("round", 2), ("round", 3)]
    assert result["training"]["epochs"] == 3


def test_broken_entry_is_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "registry.yaml"
    bad.write_text("plugins:\n  oops:\n    entry: no_such_module:Thing\n    kind: objective\n")
    monkeypatch.setattr(registry, "registry_path", lambda: bad)
    registry.reload()
    try:
        with pytest.raises(Exception, match="cannot be imported"):
            registry.get("oops").load()
    finally:
        registry.reload()


def test_readme_plugin_example_runs(tmp_path, monkeypatch, make_cfg, run_cfg):
    """The README's 'add your own method' example works exactly as printed."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Add your own method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    entry = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    (tmp_path / "readme_focal.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = entry.replace("methods.focal:Focal", "readme_focal:Focal")
    extended = tmp_path / "registry.yaml"
    extended.write_text(registry.registry_path().read_text().rstrip("\n") + "\n"
                        + "\n".join(ln for ln in entry.splitlines() if not ln.startswith("#")) + "\n")
    monkeypatch.setattr(registry, "registry_path", lambda: extended)
    registry.reload()
    try:
        cfg = make_cfg("focal", plugin={"gamma": "1.5"}, epochs=2)
        assert cfg.params["focal"] == {"gamma": 1.5}
        result = run_cfg(cfg)
        assert result["status"] == "complete" and result["final"]["top1"] > 0.5
    finally:
        sys.modules.pop("readme_focal", None)
        registry.reload()


def test_plugin_defined_twice_is_refused(tmp_path, monkeypatch):
    twice = tmp_path / "registry.yaml"
    twice.write_text("plugins:\n  ce:\n    entry: methods.ce:CrossEntropy\n    kind: objective\n"
                     "  ce:\n    entry: methods.ce:CrossEntropy\n    kind: objective\n")
    monkeypatch.setattr(registry, "registry_path", lambda: twice)
    registry.reload()
    try:
        with pytest.raises(Exception, match="'ce' is defined twice"):
            registry.plugins()
    finally:
        registry.reload()


DECLARED_SOURCE = textwrap.dedent('''
    from dataclasses import dataclass

    import torch.nn.functional as F
    from kebench.plugin import Objective, param

    class Margin(Objective):
        @dataclass
        class Params:
            margin: float = param("hinge margin", gt=0)
            power: int = param("exponent of the hinge", ge=1)

        def loss(self, model, x, y):
            logits = model(x)
            target = F.one_hot(y, logits.shape[1]).float() * 2 - 1
            return F.relu(self.params.margin - target * logits).pow(self.params.power).mean(), logits
''')


@pytest.mark.parametrize("defaults, fragment", [
    ("{margin: 1.0, power: 2, colour: red}", "defaults name colour, which declared_plugins.Margin.Params does not declare"),
    ("{margin: 1.0}", "no paper default for power"),
    ("{margin: 1.0, power: two}", "'power' expects an integer"),
    ("{margin: -1.0, power: 2}", "margin: --margin must be > 0, got -1.0"),
])
def test_registry_entry_is_checked_against_the_declaration(defaults, fragment, tmp_path, monkeypatch, make_cfg):
    (tmp_path / "declared_plugins.py").write_text(DECLARED_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    extended = tmp_path / "registry.yaml"
    extended.write_text(registry.registry_path().read_text().rstrip("\n") + "\n  margin:\n"
                        "    entry: declared_plugins:Margin\n    kind: objective\n"
                        f"    defaults: {defaults}\n")
    monkeypatch.setattr(registry, "registry_path", lambda: extended)
    registry.reload()
    try:
        with pytest.raises(UserError) as exc:
            make_cfg("margin")
        assert "margin" in str(exc.value) and fragment in str(exc.value)
    finally:
        sys.modules.pop("declared_plugins", None)
        registry.reload()


def test_declared_parameters_reach_the_plugin_typed(tmp_path, monkeypatch, make_cfg, run_cfg):
    (tmp_path / "declared_plugins.py").write_text(DECLARED_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    extended = tmp_path / "registry.yaml"
    extended.write_text(registry.registry_path().read_text().rstrip("\n") + "\n  margin:\n"
                        "    entry: declared_plugins:Margin\n    kind: objective\n"
                        "    defaults: {margin: 1.0, power: 2}\n")
    monkeypatch.setattr(registry, "registry_path", lambda: extended)
    registry.reload()
    try:
        with pytest.raises(UserError, match=r"margin: --power must be >= 1, got 0 \(exponent of the hinge\)"):
            make_cfg("margin", plugin={"power": "0"})
        cfg = make_cfg("margin", plugin={"margin": "2"})
        from declared_plugins import Margin

        plugin = Margin(cfg.plugin_params("margin"), None)
        assert plugin.params.margin == 2.0 and isinstance(plugin.params.margin, float)
        assert plugin.params.power == 2 and isinstance(plugin.params.power, int)
        assert run_cfg(cfg)["status"] == "complete"
    finally:
        sys.modules.pop("declared_plugins", None)
        registry.reload()


def test_a_pass_kind_must_be_declared(tmp_path, monkeypatch, make_cfg, run_cfg):
    """A plugin's own pass kinds are declared in its registry entry (`passes:`); fit refuses another,
    naming the kinds it may use, and accepts it once declared."""
    (tmp_path / "lap_plugins.py").write_text(textwrap.dedent('''
        from kebench.plugin import Regime

        class Laps(Regime):
            def run(self, run):
                run.fit(kind="lap", label=1)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    extended = tmp_path / "registry.yaml"
    entry = "\n  laps:\n    entry: lap_plugins:Laps\n    kind: regime\n"
    base = registry.registry_path()
    extended.write_text(base.read_text().rstrip("\n") + entry)
    monkeypatch.setattr(registry, "registry_path", lambda: extended)
    registry.reload()
    try:
        with pytest.raises(UserError, match=r"Method 'ce\+laps' trains a pass of kind 'lap', which neither kebench "
                                            r"nor its plugins declare \(declared: pass, generation, teacher, train, "
                                            r"finetune\)"):
            run_cfg(make_cfg("laps"))
        extended.write_text(base.read_text().rstrip("\n") + entry + "    passes: [lap]\n")
        registry.reload()
        assert registry.pass_kinds(registry.parse_method("laps")) == (*registry.CORE_PASSES, "lap")
        result = run_cfg(make_cfg("laps"))
        assert [(p["kind"], p["index"]) for p in result["passes"]] == [("lap", 1)]
        extended.write_text(base.read_text().rstrip("\n") + entry + "    passes: [generation]\n")
        registry.reload()
        with pytest.raises(UserError, match="pass kind\\(s\\) generation are kebench's own"):
            registry.plugins()
    finally:
        sys.modules.pop("lap_plugins", None)
        registry.reload()
