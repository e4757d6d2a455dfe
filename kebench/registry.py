"""The plugin registry: `registry.yaml` plus out-of-tree plugins from the `kebench.methods` entry points.

A plugin is an *objective* (what one training pass optimises) or a *regime* (how passes are
scheduled). `--method` composes them: `smooth+ke` is objective `smooth` under regime `ke`.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path

import yaml

from kebench.errors import UserError, article, unknown_choice

KINDS = ("objective", "regime")
ENTRY_POINT_GROUP = "kebench.methods"


@dataclass(frozen=True)
class PluginSpec:
    name: str
    entry: str  # "module:Class"
    kind: str  # objective | regime
    paper: str = ""
    defaults: dict = field(default_factory=dict)
    label: str = ""  # short name for table rows, e.g. "Smth", "KE"
    source: str = "registry.yaml"

    def load(self):
        """Import the plugin class. Only entries from registry.yaml / entry points ever get here."""
        module_name, _, attr = self.entry.partition(":")
        try:
            return getattr(import_plugin_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UserError(
                f"Plugin '{self.name}' ({self.source}) points at '{self.entry}', which cannot be "
                f"imported: {exc}. Check the 'entry' field (module:Class) and that the module is installed."
            ) from exc


def import_plugin_module(name: str):
    """Import a plugin module: `methods.X` in a source checkout, the installed `kebench.methods.X` otherwise
    (setup.py installs `methods/` under the kebench namespace, so no top-level `methods` collides)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if not name.startswith("methods.") or exc.name not in ("methods", name):
            raise
        return importlib.import_module(f"kebench.{name}")


def registry_path() -> Path:
    """registry.yaml at the project root (source checkout / editable install), else the copy installed
    inside the kebench package (setup.py's build step puts it there), found with importlib.resources."""
    here = Path(__file__).resolve().parent.parent / "registry.yaml"
    if here.exists():
        return here
    installed = resources.files("kebench") / "registry.yaml"
    if installed.is_file():
        return Path(str(installed))
    raise UserError(f"kebench's registry.yaml was not found at {here} or inside the installed kebench "
                    f"package ({installed}); reinstall kebench.")


def _spec_from_dict(name: str, raw: dict, source: str) -> PluginSpec:
    if not isinstance(raw, dict) or "entry" not in raw or raw.get("kind") not in KINDS:
        raise UserError(
            f"Plugin '{name}' in {source} is malformed: expected a mapping with 'entry: module:Class' "
            f"and 'kind: objective|regime', got {raw!r}."
        )
    return PluginSpec(
        name=name,
        entry=raw["entry"],
        kind=raw["kind"],
        paper=raw.get("paper", ""),
        defaults=dict(raw.get("defaults") or {}),
        label=raw.get("label", name),
        source=source,
    )


def _from_entry_points() -> dict[str, PluginSpec]:
    """Out-of-tree plugins: an entry point resolves to a class with `kind` (and optional `defaults`, `paper`)."""
    specs = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        raw = {
            "entry": ep.value,
            "kind": getattr(cls, "kind", None),
            "paper": getattr(cls, "paper", ""),
            "defaults": dict(getattr(cls, "defaults", {}) or {}),
            "label": getattr(cls, "label", ep.name),
        }
        specs[ep.name] = _spec_from_dict(ep.name, raw, f"entry point {ep.value}")
    return specs


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe loading that refuses a plugin defined twice (plain YAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # '<<: *anchor' merges are overridable by design
            key = key_node.value
            if key in seen:
                raise UserError(f"{self.name}: '{key}' is defined twice (line {key_node.start_mark.line + 1}); "
                                f"keep one definition.")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


@functools.lru_cache(maxsize=None)
def _document(path: str) -> dict:
    with open(path) as f:
        return yaml.load(f, Loader=_UniqueKeyLoader) or {}


@functools.lru_cache(maxsize=None)
def _load(path: str) -> dict[str, PluginSpec]:
    plugins = _document(path).get("plugins", {})
    specs = {name: _spec_from_dict(name, raw, path) for name, raw in plugins.items()}
    for name, spec in _from_entry_points().items():
        specs.setdefault(name, spec)  # registry.yaml wins over a same-named entry point
    return specs


def plugins() -> dict[str, PluginSpec]:
    return _load(str(registry_path()))


def table_entries() -> dict[str, str]:
    """Table kinds plugins contribute: registry.yaml's `tables:` (kind -> "module:function")."""
    return dict(_document(str(registry_path())).get("tables") or {})


def reload() -> None:
    """Forget cached plugins (tests that add entry points or edit the registry call this)."""
    _document.cache_clear()
    _load.cache_clear()


def names(kind: str | None = None) -> list[str]:
    return sorted(n for n, s in plugins().items() if kind is None or s.kind == kind)


def get(name: str) -> PluginSpec:
    specs = plugins()
    if name not in specs:
        raise unknown_choice("method", name, names())
    return specs[name]


@dataclass(frozen=True)
class Method:
    """An objective composed with a regime, e.g. smooth+ke."""

    objective: PluginSpec
    regime: PluginSpec

    @property
    def name(self) -> str:
        if self.regime.name == "single":
            return self.objective.name
        return f"{self.objective.name}+{self.regime.name}"


def parse_method(text: str, default_objective: str = "ce") -> Method:
    """`ce` -> ce under single; `ke` -> default objective under ke; `smooth+ke` -> both named."""
    parts = [p.strip() for p in text.split("+") if p.strip()]
    if not parts or len(parts) > 2:
        raise UserError(
            f"Method '{text}' is not understood: expected 'NAME' or 'OBJECTIVE+REGIME' "
            f"(e.g. 'ce', 'ke', 'smooth+ke'). Valid names: {', '.join(names())}."
        )
    specs = [get(p) for p in parts]
    if len(specs) == 1:
        spec = specs[0]
        if spec.kind == "objective":
            return Method(spec, get("single"))
        return Method(get(default_objective), spec)
    obj, reg = specs
    if obj.kind != "objective" or reg.kind != "regime":
        raise UserError(
            f"Method '{text}': expected OBJECTIVE+REGIME, but '{obj.name}' is {article(obj.kind)} {obj.kind} and "
            f"'{reg.name}' is {article(reg.kind)} {reg.kind}. Objectives: {', '.join(names('objective'))}. "
            f"Regimes: {', '.join(names('regime'))}."
        )
    return Method(obj, reg)
