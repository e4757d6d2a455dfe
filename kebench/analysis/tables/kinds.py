"""Table kinds: kebench's own (`kebench.analysis.tables.builtin`) and those plugins contribute.

A plugin contributes a kind the way it contributes itself: a `tables:` entry in registry.yaml
(`kd: methods.kd_table:kd_table`, KE's `cost: methods.ke_tables:cost_table`) or, out of tree, an
entry point in the `kebench.tables` group (`registry.Extensions`, as every extension point).
The builder is imported only when its kind is built, so `kebench --help` and the other kinds never
import a plugin. A builder takes the runs and, by keyword, any of `BUILD_ARGS` it names; a builder
without `rows` (or `cols`) has a fixed shape along that axis and the option is refused for it.
"""
from __future__ import annotations

import inspect

from kebench import registry
from kebench.errors import UserError
from kebench.analysis.tables import builtin
from kebench.analysis.tables.layout import Table
from kebench.analysis.tables.runs import Names
from kebench.analysis.tables.stats import ALPHA

BUILD_ARGS = ("kind", "rows", "cols", "metric", "generations", "names", "alpha", "decimals")
BUILTIN = {"classification": builtin.grid_table, "retrieval": builtin.grid_table,
           "budget": builtin.budget_table, "size": builtin.size_table, "interval": builtin.interval_table}
#: The table-kind extension point: kebench's own, registry.yaml's `tables:`, `kebench.tables` entry points.
TABLES = registry.Extensions("table kind", "tables", BUILTIN)


def contributed() -> dict[str, str]:
    """kind -> "module:function" from registry.yaml's `tables:` and the entry points (the registry wins)."""
    return TABLES.contributed()


def kind_names() -> list[str]:
    """Every table kind, kebench's first (in table order), without importing any plugin."""
    return TABLES.names()


def builder(kind: str):
    return TABLES.get(kind)


def build_table(runs: list[dict], kind: str | None = None, *, rows=None, cols=None, metric=None, generations=None,
                names: Names | None = None, alpha: float = ALPHA, decimals: int = 2) -> Table:
    """Dispatch to the table kind (default: classification, or retrieval when only retrieval runs exist)."""
    if not runs:
        raise UserError("No complete results to tabulate. Point kebench table at the folder given to "
                        "`kebench run --out` (default results/) and check the filters.")
    kind = kind or ("retrieval" if all(r.get("task") == "retrieval" for r in runs) else "classification")
    build = builder(kind)
    takes = set(inspect.signature(build).parameters)
    refused = [axis for axis, value in (("rows", rows), ("cols", cols)) if value and axis not in takes]
    if refused and not {"rows", "cols"} & takes:
        raise UserError(f"The {kind} table has a fixed shape; --rows/--cols apply to classification, retrieval "
                        f"(and --cols to budget).")
    if refused:
        open_axes = " and ".join(f"--{a}" for a in ("rows", "cols") if a in takes)
        raise UserError(f"The {kind} table's {refused[0]} are fixed; {open_axes} and --metric apply.")
    given = dict(kind=kind, rows=rows, cols=cols, metric=metric, generations=generations, names=names, alpha=alpha,
                 decimals=decimals)
    return build(runs, **{k: v for k, v in given.items() if k in takes})
