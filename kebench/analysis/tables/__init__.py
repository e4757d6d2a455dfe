"""`kebench table`: folders of results -> the tables the KE and KD papers show, with statistics.

One pipeline for every kind of table:

    result.json files --load_runs--> runs --expand--> entries (one per run and generation shown)
        --prepare_entries--> labelled, de-duplicated entries with row/column keys
        --pandas groupby--> cells (mean, std, n, per-seed values) --> Table --render--> LaTeX/Markdown/CSV

Kinds: `classification` (KE paper Tables 2/3), `retrieval` (NMI / R@K groups per arch), `budget` (each
multi-pass row beside the single pass trained for the same total epochs), `size` (accuracy,
params, storage in bytes, inference FLOPs and search/training cost of the reported network:
binarization before/after, architecture searches) and `interval` (mean ± the 99% Student-t
interval over seeds: Park et al.'s NASWOT Table 6) are kebench's own; plugins contribute `cost`
(KE: dense N vs slim H, methods/ke_tables.py) and `kd` (KD x pruning grid with the surplus of Park
et al., methods/kd_table.py) through registry.yaml's `tables:`, built with the public table-kind API
below (`TABLE_KIND_API`). Every comparison table carries the training cost (epochs, TFLOPs) of its rows.
The field names each kind reads are listed in docs/tables.md.

Modules: runs.py (loading), stats.py (tests and marks), layout.py (the Table model and shared
layout), builtin.py and kinds.py (the kinds and their registry), render.py (formats). pandas and
scipy are imported inside functions: `kebench --help` must stay fast.
"""
from __future__ import annotations

import sys

from kebench.analysis.tables.kinds import TABLES, build_table, kind_names
from kebench.analysis.tables.layout import (COST_COLS, COST_NOTE, Col, Row, Table, cost_cell, cost_cells, dim_title,
                                            fmt_count, fmt_number, fmt_setting, group_title, prepare_entries,
                                            row_sorter)
from kebench.analysis.tables.render import FORMATS, render, tex, to_csv, to_latex, to_markdown
from kebench.analysis.tables.runs import (MISSING, PRIMARY, RETRIEVAL_METRICS, Entry, Names, expand, hashable,
                                          load_runs, metric_title, parse_generations, signature, sort_value,
                                          split_list)
from kebench.analysis.tables.stats import (ALPHA, CONFIDENCE, MARK_WELCH, MARK_FROM_MEANS, MARK_PAIRED, Cell, compare,
                                           make_cell, marks_in, one_sample, rank_column, significance,
                                           significance_note, t_half_width, value_note)


def report_left_out(left_out: list[tuple[str, str]], stream) -> None:
    """List the runs `load_runs` left out (and why) on `stream`, for the user to see."""
    if left_out:
        stream.write(f"left out {len(left_out)} run(s) that did not complete:\n")
        for path, why in left_out:
            stream.write(f"  {path}: {why}\n")


def make_table(paths, *, fmt: str = "markdown", kind: str | None = None, rows=None, cols=None, metric=None,
               archs=(), datasets=(), methods=(), generation: str | None = None, alpha: float = ALPHA,
               decimals: int = 2, names: Names | None = None, stderr=None) -> str:
    """Everything `kebench table` does: load, build, render; left-out runs are listed on stderr."""
    stderr = stderr or sys.stderr
    runs, left_out = load_runs(paths, archs=split_list(archs), datasets=split_list(datasets),
                               methods=split_list(methods))
    report_left_out(left_out, stderr)
    table = build_table(runs, kind, rows=rows, cols=cols, metric=metric, generations=parse_generations(generation),
                        names=names, alpha=alpha, decimals=decimals)
    for w in table.warnings:
        stderr.write(f"warning: {w}\n")
    return render(table, fmt)



#: The table-kind API: everything a table kind (kebench's own or a plugin's, e.g. methods/kd_table.py)
#: builds with. A contributed kind imports these names from `kebench.analysis.tables` and nothing
#: private (tests/test_layout.py checks methods/); docs/extending.md shows one.
TABLE_KIND_API = ["ALPHA", "CONFIDENCE", "COST_COLS", "COST_NOTE", "MARK_WELCH", "MARK_FROM_MEANS", "MARK_PAIRED", "MISSING",
                  "PRIMARY", "RETRIEVAL_METRICS", "Cell", "Col", "Entry", "Names", "Row", "Table", "compare",
                  "cost_cell", "cost_cells", "dim_title", "expand", "fmt_count", "fmt_number", "fmt_setting",
                  "group_title", "hashable", "make_cell", "marks_in", "metric_title", "one_sample",
                  "prepare_entries", "rank_column", "row_sorter", "signature", "significance", "significance_note",
                  "sort_value", "split_list", "t_half_width", "value_note"]

__all__ = [*TABLE_KIND_API, "FORMATS", "TABLES", "build_table", "kind_names", "load_runs", "make_table",
           "parse_generations", "render", "report_left_out", "tex", "to_csv", "to_latex", "to_markdown"]
