"""The registry: `registry.yaml` plus out-of-tree packages' entry points, for plugins and for every
other extension point.

A plugin is an *objective* (what one training pass optimises) or a *regime* (how passes are
scheduled). `--method` composes them: `smooth+ke` is objective `smooth` under regime `ke`.

Datasets, networks, table kinds, figure kinds and executors are `Extensions`: kebench's own entries,
then registry.yaml's section of that name (`tables:`, `figures:`, ...), then the entry points of the
group `kebench.<section>` of installed packages. An entry is `name: module:attribute`, imported only
when that name is used (docs/extending.md).
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path

import yaml

from kebench.context import PassKind
from kebench.errors import UserError, unknown_choice

KINDS = ("objective", "regime")
#: The pass kinds every regime may use (`kebench.context.PassKind`); a plugin declares its others
#: under `passes:` in registry.yaml (or as the class attribute `passes` of an entry-point plugin).
CORE_PASSES = tuple(k.value for k in PassKind)
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
    passes: tuple = ()  # pass kinds of its own, beside CORE_PASSES (e.g. RePr's s1, s2, final)
    subnets: tuple = ()  # networks it evaluates beside the reported one: metrics `<subnet>_<metric>`, cost.<subnet>

    def load(self):
        """Import the plugin class. Only entries from registry.yaml / entry points ever get here."""
        return load_entry(self.entry, f"Plugin '{self.name}' ({self.source})", "the 'entry' field")


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
    for key in ("passes", "subnets"):
        given = raw.get(key) or ()
        if isinstance(given, str) or not all(isinstance(v, str) and v for v in given):
            raise UserError(f"Plugin '{name}' in {source}: '{key}' must be a list of names, got {given!r}.")
    clash = sorted(set(raw.get("passes") or ()) & set(CORE_PASSES))
    if clash:
        raise UserError(f"Plugin '{name}' in {source}: pass kind(s) {', '.join(clash)} are kebench's own "
                        f"({', '.join(CORE_PASSES)}); list only the plugin's other kinds under 'passes'.")
    return PluginSpec(
        name=name,
        entry=raw["entry"],
        kind=raw["kind"],
        paper=raw.get("paper", ""),
        defaults=dict(raw.get("defaults") or {}),
        label=raw.get("label", name),
        source=source,
        passes=tuple(raw.get("passes") or ()),
        subnets=tuple(raw.get("subnets") or ()),
    )


@functools.lru_cache(maxsize=None)
def _installed_entry_points():
    return metadata.entry_points()  # one scan of the installed packages for every group


def entry_points(group: str) -> tuple:
    """The entry points of an extension point's group, in name order (cached until `reload()`)."""
    return tuple(sorted(_installed_entry_points().select(group=group), key=lambda ep: ep.name))


def _from_entry_points() -> dict[str, PluginSpec]:
    """Out-of-tree plugins: an entry point resolves to a class with `kind` (and optional `defaults`,
    `paper`, `label`, `passes`, `subnets`)."""
    specs = {}
    for ep in entry_points(ENTRY_POINT_GROUP):
        cls = ep.load()
        raw = {
            "entry": ep.value,
            "kind": getattr(cls, "kind", None),
            "paper": getattr(cls, "paper", ""),
            "defaults": dict(getattr(cls, "defaults", {}) or {}),
            "label": getattr(cls, "label", ep.name),
            "passes": tuple(getattr(cls, "passes", ()) or ()),
            "subnets": tuple(getattr(cls, "subnets", ()) or ()),
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


def section(name: str) -> dict[str, str]:
    """A registry.yaml section other than `plugins:` (`tables:`, `figures:`, ...): name -> "module:attribute"."""
    entries = _document(str(registry_path())).get(name) or {}
    if not isinstance(entries, dict) or not all(isinstance(v, str) and ":" in v for v in entries.values()):
        raise UserError(f"registry.yaml's '{name}:' section must map names to 'module:attribute' entries, "
                        f"got {entries!r}.")
    return dict(entries)


def reload() -> None:
    """Forget cached plugins and entry points (tests that add entry points or edit the registry call this)."""
    _document.cache_clear()
    _load.cache_clear()
    _installed_entry_points.cache_clear()


def pass_kinds(method: "Method") -> tuple[str, ...]:
    """The pass kinds a method's passes may have: kebench's own and those its two plugins declare."""
    return (*CORE_PASSES, *method.objective.passes, *method.regime.passes)


def subnets() -> tuple[str, ...]:
    """Every sub-network name a plugin declares (`subnets:`), for the tables and figures that show
    such networks beside the reported one (KE's slim fit hypothesis: `slim_top1`, `cost.slim`)."""
    return tuple(dict.fromkeys(n for spec in plugins().values() for n in spec.subnets))


def load_entry(entry: str, what: str, where: str):
    """Import `module:attribute` (plugin modules: `methods.X` or the installed `kebench.methods.X`)."""
    module_name, _, attr = entry.partition(":")
    try:
        return getattr(import_plugin_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{what} points at '{entry}', which cannot be imported: {exc}. Check {where} "
                        f"(module:attribute) and that the module is installed.") from exc


class Extensions:
    """One extension point: a name -> thing map made of kebench's own entries, registry.yaml's
    `<section>:` and the `kebench.<section>` entry points of installed packages, in that order of
    precedence (a contribution never replaces one of kebench's own names). Entries are objects or
    "module:attribute" text, imported only when their name is used.

    builtin: a mapping, or a function returning one (called on every lookup, so things that register
    themselves when their module is imported, such as datasets, are seen)."""

    def __init__(self, what: str, section: str, builtin=None, check=None, sort: bool = False):
        self.what = what  # "dataset", "table kind", ...: how messages name one entry
        self.section = section  # registry.yaml section and entry-point group suffix
        self.group = f"kebench.{section}"
        self._builtin = builtin if builtin is not None else {}
        self._check = check or self._callable  # check(name, thing) raises UserError for a malformed contribution
        self._sort = sort  # list every name sorted (else kebench's own in their order, then the rest sorted)

    def builtin(self) -> dict:
        return dict(self._builtin() if callable(self._builtin) else self._builtin)

    def _callable(self, name: str, thing) -> None:
        if not callable(thing):
            raise UserError(f"{self.what[0].upper()}{self.what[1:]} '{name}' must name a function, got {thing!r:.200}.")

    def contributed(self) -> dict[str, str]:
        """name -> "module:attribute" from registry.yaml and entry points (registry.yaml wins),
        without kebench's own names."""
        found = {ep.name: ep.value for ep in entry_points(self.group)}
        found.update(section(self.section))
        own = self.builtin()
        return {k: v for k, v in found.items() if k not in own}

    def entries(self) -> dict:
        return {**self.builtin(), **self.contributed()}

    def names(self) -> list[str]:
        """kebench's own names first (in their order), then the contributed ones, sorted; or all sorted."""
        own = list(self.builtin())
        names = own + sorted(self.contributed())
        return sorted(names) if self._sort else names

    def __contains__(self, name: str) -> bool:
        return name in self.entries()

    def get(self, name: str):
        entries = self.entries()
        if name not in entries:
            raise unknown_choice(self.what, name, self.names())
        thing = entries[name]
        if isinstance(thing, str):
            where = ("kebench's own entries" if name in self.builtin()
                     else f"registry.yaml's `{self.section}:` entry" if name in section(self.section)
                     else f"the entry point '{name}' of group {self.group}")
            thing = load_entry(thing, f"{self.what[0].upper()}{self.what[1:]} '{name}'", where)
            self._check(name, thing)
        return thing


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
            f"Method '{text}': expected OBJECTIVE+REGIME, but '{obj.name}' is a {obj.kind} and "
            f"'{reg.name}' is a {reg.kind}. Objectives: {', '.join(names('objective'))}. "
            f"Regimes: {', '.join(names('regime'))}."
        )
    return Method(obj, reg)
