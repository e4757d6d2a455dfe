"""`kebench table`: folders of results -> the tables the KE and KD papers show, with statistics.

One pipeline for every kind of table:

    result.json files --load_runs--> runs --expand--> entries (one per run and generation shown)
        --_prepare--> labelled, de-duplicated entries with row/column keys
        --pandas groupby--> cells (mean, std, n, per-seed values) --> Table --render--> LaTeX/Markdown/CSV

Kinds: `classification` (KE paper Tables 2/3), `retrieval` (NMI / R@K groups per arch), `cost`
(dense N vs slim H: accuracy at generation 1 and g, FLOPs, params), `kd` (KD x pruning grid with the
surplus of Park et al., contributed by methods/kd_table.py through registry.yaml), `budget` (each
multi-pass row beside the single pass trained for the same total epochs) and `size` (accuracy,
params, storage in bytes, inference FLOPs and search/training cost of the reported network:
binarization before/after, architecture searches). Every comparison table carries the training cost
(epochs, TFLOPs) of its rows.
The field names each kind reads are listed in docs/tables.md.

Modules: runs.py (loading), stats.py (tests and marks), layout.py (the Table model and shared
layout), builtin.py and kinds.py (the kinds and their registry), render.py (formats). pandas and
scipy are imported inside functions: `kebench --help` must stay fast.
"""
from __future__ import annotations

import sys

from kebench.analysis.tables.kinds import build_table, kind_names
from kebench.analysis.tables.layout import Col, Row, Table, fmt_number
from kebench.analysis.tables.render import FORMATS, render, tex, to_csv, to_latex, to_markdown
from kebench.analysis.tables.runs import (PRIMARY, Names, _split_list, expand, load_runs, metric_title, parse_generations,
                                 signature)
from kebench.analysis.tables.stats import ALPHA, Cell, compare, make_cell, one_sample, significance

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
    runs, left_out = load_runs(paths, archs=_split_list(archs), datasets=_split_list(datasets),
                               methods=_split_list(methods))
    report_left_out(left_out, stderr)
    table = build_table(runs, kind, rows=rows, cols=cols, metric=metric, generations=parse_generations(generation),
                        names=names, alpha=alpha, decimals=decimals)
    for w in table.warnings:
        stderr.write(f"warning: {w}\n")
    return render(table, fmt)



__all__ = ["ALPHA", "FORMATS", "PRIMARY", "Cell", "Col", "Names", "Row", "Table", "build_table", "compare", "expand",
           "fmt_number", "kind_names", "load_runs", "make_cell", "make_table", "metric_title", "one_sample",
           "parse_generations", "render", "report_left_out", "signature", "significance", "tex", "to_csv", "to_latex",
           "to_markdown"]
