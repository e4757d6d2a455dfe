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


def import_graph() -> dict[str, set[str]]:
    """module -> the kebench modules it imports anywhere in its body (a function-level import
    hides a cycle from Python but not from this graph)."""
    mods = _modules()

    def owner(name: str) -> str | None:  # `kebench.analysis.tables.runs.Names` -> kebench.analysis.tables.runs
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
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
