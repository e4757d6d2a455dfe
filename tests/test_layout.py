"""The code's layout: no import cycle among kebench's modules (module-level and function-level
imports alike), domain modules free of click, and every module importable."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kebench"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def runtime_nodes(tree: ast.AST):
    """Every node of a module except those under `if TYPE_CHECKING:` (imports for type hints only, as
    the typed RunContext protocol names the config and data types it hands out: no runtime edge)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", getattr(child.test, "attr", None)) == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph() -> dict[str, set[str]]:
    """module -> the kebench modules it imports anywhere in its body (a function-level import
    hides a cycle from Python but not from this graph), except annotation-only imports under
    `if TYPE_CHECKING:`."""
    mods = _modules()

    def owner(name: str) -> str | None:  # `kebench.analysis.tables.runs.Names` -> kebench.analysis.tables.runs
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(owner(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                deps.update(owner(f"{base}.{a.name}") or owner(base) for a in node.names)
        graph[mod] = deps - {None, mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "kebench.run.engine" in graph["kebench.run.launch"]  # module level
    assert "kebench.analysis.report" in graph["kebench.cli.grid"]  # inside a command body
    assert "kebench.analysis.tables.runs" in graph["kebench.analysis.tables.stats"]  # `from kebench.analysis.tables.runs import X`
    assert "kebench.errors" in graph["kebench.context"] and "kebench.config" not in graph["kebench.context"]  # type-only
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_click_lives_in_the_cli_layer():
    users = sorted(mod for mod, path in _modules().items()
                   if not mod.startswith("kebench.cli") and "import click" in path.read_text(encoding="utf-8"))
    assert users == []


@pytest.mark.parametrize("mod", sorted(m for m in _modules() if not m.endswith("__main__")))
def test_every_module_imports(mod):
    importlib.import_module(mod)


def test_installed_layout_finds_every_plugin(tmp_path, monkeypatch):
    """Installed, the plugins are `kebench.methods` (setup.py's package_dir) and no top-level `methods`
    exists: every registry entry and contributed table kind still loads, so no plugin imports another
    through `methods.`."""
    import sys

    import kebench
    from kebench import registry
    from kebench.analysis.tables import kinds

    (tmp_path / "methods").symlink_to(ROOT / "methods")
    monkeypatch.setattr(kebench, "__path__", [*kebench.__path__, str(tmp_path)])
    for name in [m for m in sys.modules if m == "methods" or m.startswith(("methods.", "kebench.methods"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "methods", None)  # `import methods` now fails as when installed
    try:
        loaded = {name: spec.load() for name, spec in registry.plugins().items()}
        assert loaded and all(cls.__module__.startswith("kebench.methods.") for cls in loaded.values())
        assert kinds.builder("kd").__module__ == "kebench.methods.kd_table"
    finally:
        for name in [m for m in sys.modules if m.startswith("kebench.methods")]:
            del sys.modules[name]


#: kebench's layers, lowest first: a module imports from its own layer and the ones below, never above.
#: The plugin contract (plugin, context, registry: pure declarations and the registry helper every
#: extension point uses) sits with the foundation, because data and nets register into it and nets'
#: surgery hooks are plugin Hooks; config (the resolved RunConfig) sits above data and nets, whose
#: dataset defaults and architectures it checks. Plugins (methods/) sit above everything but the CLI,
#: and the core reaches them only through the registry's text entries.
LAYERS = (
    ("foundation", ("kebench", "kebench.version", "kebench.errors", "kebench.params", "kebench.context",
                    "kebench.plugin", "kebench.registry")),
    ("data", ("kebench.data",)),
    ("nets", ("kebench.nets",)),
    ("config", ("kebench.config",)),
    ("run", ("kebench.run",)),
    ("grid", ("kebench.grid",)),
    ("analysis", ("kebench.analysis",)),
    ("cli", ("kebench.cli", "kebench.__main__")),
)
#: Leaf modules of run/ that data and nets use (atomic file writes, the device and thread policies
#: the batch pipeline follows): below every layer that imports them, they import nothing but the foundation.
SHARED_LEAVES = {"kebench.run.results": "atomic writes of data caches and pruned/slim networks",
                 "kebench.run.device": "the device policy the batch pipeline follows",
                 "kebench.run.threads": "the CPU thread policy the batch pipeline follows"}


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or (p != "kebench" and module.startswith(p + ".")) for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS (and to docs/design.md)")


def test_imports_point_down_the_layers():
    graph = import_graph()
    upward = sorted(f"{mod} ({LAYERS[layer_of(mod)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
                    for mod, deps in graph.items() for dep in deps
                    if dep not in SHARED_LEAVES and layer_of(dep) > layer_of(mod))
    assert upward == []
    foundation = {m for m in graph if layer_of(m) == 0}
    for leaf in SHARED_LEAVES:
        assert graph[leaf] <= foundation, f"{leaf} must import only the foundation, imports {graph[leaf] - foundation}"


def test_layer_check_sees_an_upward_import():
    assert layer_of("kebench.nets.models") < layer_of("kebench.run.engine") < layer_of("kebench.cli")
    assert layer_of("kebench.registry") == 0 and layer_of("kebench.analysis.tables.kinds") == 6


def test_the_core_imports_no_plugin():
    """The core knows no method: it reaches plugins (and what they contribute: table and figure kinds,
    networks, pass kinds) only through registry.yaml / entry points, never by importing `methods`."""
    found = []
    for mod, path in _modules().items():
        for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{mod}: {n}" for n in names if n.split(".")[0] == "methods" or n.startswith("kebench.methods")]
    assert found == []


def test_plugin_pass_kinds_are_declared_not_core():
    """context.PassKind holds only the kinds every regime may use; each method-specific kind is declared
    by exactly the plugins whose module passes it to run.fit (registry.yaml `passes:`)."""
    import re

    from kebench import registry
    from kebench.context import PassKind

    assert [k.value for k in PassKind] == list(registry.CORE_PASSES) == ["pass", "generation", "teacher", "train",
                                                                         "finetune"]
    declared = {n: set(s.passes) for n, s in registry.plugins().items() if s.passes}
    assert declared == {"dsd": {"phase"}, "repr": {"s1", "s2", "final"}, "neuroevo": {"seed", "member"},
                        "agevo": {"individual"}, "eigen": {"individual"}, "eigen-d": {"individual"}}
    for name, kinds in declared.items():
        source = (ROOT / (registry.get(name).entry.partition(":")[0].replace(".", "/") + ".py")).read_text()
        for kind in kinds:
            assert re.search(rf'"{kind}"', source), f"{name} declares pass kind {kind} but its module never names it"


def test_contributed_table_kinds_use_only_the_public_api():
    """A plugin's table or figure kind builds with public names (`kebench.analysis.tables.TABLE_KIND_API`,
    `kebench.analysis.plots.FIGURE_KIND_API`): no `_private` import from kebench in methods/."""
    from kebench import registry

    contributed = {*registry.section("tables").values(), *registry.section("figures").values()}
    modules = {entry.partition(":")[0] for entry in contributed}
    assert modules == {"methods.kd_table", "methods.ke_tables", "methods.agevo_figures"}
    private = []
    for module in sorted(modules):
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
        private += [f"{module}: {node.module}.{a.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and (node.module or "").startswith("kebench") for a in node.names if a.name.startswith("_")]
    assert private == []
