"""A study's report: one self-contained HTML file, with the LaTeX and Markdown tables beside it.

    REPORT_DIR/report.html   tables, one-line summaries, figures (base64 PNG), missing runs, run list
    REPORT_DIR/tables.tex    every table (booktabs), as `kebench table --format latex` writes them
    REPORT_DIR/report.md     the same tables and summaries in Markdown, figures linked from figures/
    REPORT_DIR/figures/*.png

Tables and figures come from kebench.analysis.tables and kebench.analysis.plots (the `kebench table` / `kebench plot`
code); this module only selects runs, writes the summaries and lays the page out. It renders from
whatever results exist: a run that has not finished leaves its cells as "–" and is listed under
"Missing runs", so a long study can be looked at while it runs. The HTML needs no network.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from kebench.analysis import tables as T
from kebench.errors import UserError
from kebench.analysis.tables.render import _blank_repeats, _core, _header_levels
from kebench.analysis.tables.runs import MISSING, _filtered

PRIMARY = T.PRIMARY
#: Figures every report tries (the issue's three views); a study's own list adds to them.
BASE_FIGURES = ("generations", "budget", "cost")
CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:2em auto;max-width:1300px;
 padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#555}.summary{background:#eef6ee;border-left:4px solid #3a8a3a;padding:.5em .8em;margin:.6em 0}
.warn{background:#fff4e0;border-left:4px solid #d08a00;padding:.5em .8em;margin:.6em 0}
table.kb{border-collapse:collapse;margin:.6em 0;font-size:.86em}
table.kb th,table.kb td{border-bottom:1px solid #e3e3e3;padding:.25em .6em;text-align:right;white-space:nowrap}
table.kb th{background:#f4f4f6}table.kb td.head,table.kb th.head{text-align:left}
table.kb thead tr:not(:last-child) th{text-align:center}
table.kb tr.rule td{border-top:2px solid #999}td.missing{color:#b00;background:#fff0f0}td.empty{color:#aaa}
td .n{color:#888;font-size:.85em}sup{color:#a33}.best{font-weight:bold}.second{text-decoration:underline}
.notes{font-size:.82em;color:#555;margin:0 0 1em 1.2em}figure{margin:1em 0}figure img{max-width:100%}
figcaption{font-size:.9em;color:#444}.scroll{overflow-x:auto}
"""


@dataclass
class Section:
    """One table of the report: the built table (or why there is none) and its summary line."""

    spec: dict
    table: T.Table | None = None
    summary: str = ""
    problem: str = ""
    missing_note: str = ""
    runs: list = field(default_factory=list)


# ------------------------------------------------------------------------------ selecting runs
def _param(run: dict, key: str):
    cfg = run.get("config") or {}
    if key in cfg:
        return cfg[key]
    for params in (cfg.get("params") or {}).values():
        if key in (params or {}):
            return params[key]
    return None


def select(runs: list[dict], spec: dict, scale_set: dict) -> list[dict]:
    """The runs a table spec shows: methods/archs/datasets filters, `where` settings, and `match_set`
    (settings equal to the scale's `set`, e.g. the paper's epochs per pass, not the matched budgets)."""
    methods = T.split_list(spec.get("methods"))
    archs = T.split_list(spec.get("archs"))
    datasets = T.split_list(spec.get("datasets"))
    where = dict(spec.get("where") or {})
    where.update({k: scale_set[k] for k in spec.get("match_set") or [] if k in scale_set})
    chosen = []
    for r in runs:
        if _filtered(r, r.get("objective", ""), r.get("regime", ""), archs, datasets, methods):
            continue
        if any(str(_param(r, k)) != str(v) for k, v in where.items()):
            continue
        chosen.append(r)
    return chosen


# ------------------------------------------------------------------------------ summaries
def _pct(cell: T.Cell) -> str:
    return f"{100 * cell.mean:.2f}" + (f" ± {100 * cell.std:.2f}" if cell.std is not None else "") + " %"


def significance(cell: T.Cell) -> str:
    """'significant (paired-t, BH-adjusted p = 0.012)', 'not significant (...)' or why it was not tested.
    The table marks a cell where its Benjamini-Hochberg adjusted p (q) is below alpha; without q
    (too few runs for the family) the raw p is given."""
    q = getattr(cell, "q", None)
    if q is not None:
        return f"{'significant' if cell.mark else 'not significant'} ({cell.test}, BH-adjusted p = {q:.2g})"
    if cell.mark and cell.p is not None:
        return f"significant ({cell.test}, p = {cell.p:.2g})"
    if cell.mark:
        return f"significant ({cell.test})" if cell.test != "from-means" else "untested (no shared seeds)"
    if cell.p is not None:
        return f"not significant ({cell.test}, p = {cell.p:.2g})"
    if cell.test:
        return f"not tested ({cell.test}: constant values, no test statistic)"
    return "not tested (fewer than 2 seeds)"


def _row_name(row: T.Row) -> str:
    return " / ".join(str(h) for h in row.head if str(h))


def _col_name(col: T.Col) -> str:
    return " ".join(p for p in col.path if p) or T.metric_title(col.metric)


def _baseline_row(table: T.Table, row: T.Row) -> T.Row | None:
    """The N1 row of the same objective (and same other row settings) as a multi-pass row."""
    mi = table.row_names.index("Method") if "Method" in table.row_names else 0
    label = str(row.head[mi])
    if " + " not in label:
        return None
    obj = label.split(" + ")[0]
    # Other row dimensions must agree, except where the N1 row has no value (a KE setting such as
    # split_rate is "–" for a single pass).
    cands = [r for r in table.rows if str(r.head[mi]).startswith(f"{obj} (N1")
             and all(a == b or str(a) in (MISSING, "") for i, (a, b) in enumerate(zip(r.head, row.head)) if i != mi)]
    return next((r for r in cands if str(r.head[mi]) == f"{obj} (N1)"), cands[0] if cands else None)


def summarize_grid(table: T.Table) -> str:
    parts, above, below, sig_above, sig_below, pairs = [], 0, 0, 0, 0, 0
    metric_cols = [j for j, c in enumerate(table.cols) if c.kind == "metric" and c.rank]
    for j in metric_cols:
        filled = [r for r in table.rows if r.cells[j].mean is not None]
        if not filled:
            parts.append(f"{_col_name(table.cols[j])}: no results yet")
            continue
        best = max(filled, key=lambda r: r.cells[j].mean)
        cell = best.cells[j]
        text = f"{_col_name(table.cols[j])}: best {_row_name(best)} ({_pct(cell)})"
        base = _baseline_row(table, best)
        mi = table.row_names.index("Method") if "Method" in table.row_names else 0
        if base is not None and base.cells[j].mean is not None:
            d = 100 * (cell.mean - base.cells[j].mean)
            text += f", {d:+.2f} points over {_row_name(base)}, {significance(cell)}"
        elif " + " not in str(best.head[mi]):
            text += ", a single pass: no multi-pass regime beat it"
        parts.append(text)
        for r in filled:
            b = _baseline_row(table, r)
            if b is None or b.cells[j].mean is None or r is b:
                continue
            pairs += 1
            if r.cells[j].mean > b.cells[j].mean:
                above += 1
                sig_above += bool(r.cells[j].mark)
            elif r.cells[j].mean < b.cells[j].mean:
                below += 1
                sig_below += bool(r.cells[j].mark)
    line = "; ".join(parts) + "."
    if pairs:
        line += (f" Multi-pass rows vs their N1 baseline: {above} of {pairs} higher ({sig_above} significantly), "
                 f"{below} lower ({sig_below} significantly).")
    return line


def summarize_budget(table: T.Table) -> str:
    metric_cols = [j for j, c in enumerate(table.cols) if c.kind == "metric"]
    multi_wins = single_wins = sig_multi = sig_single = n = 0
    best = worst = None
    for k in range(0, len(table.rows) - 2, 3):
        multi, single, delta = table.rows[k:k + 3]
        for j in metric_cols:
            d = delta.cells[j]
            if d.mean is None:
                continue
            n += 1
            if d.mean > 0:
                multi_wins += 1
                sig_multi += bool(d.mark)
            elif d.mean < 0:
                single_wins += 1
                sig_single += bool(d.mark)
            where = f"{_row_name(multi)} vs {_row_name(single)}" + (
                f" on {_col_name(table.cols[j])}" if len(metric_cols) > 1 else "")
            if best is None or d.mean > best[0].mean:
                best = (d, where)
            if worst is None or d.mean < worst[0].mean:
                worst = (d, where)
    if not n:
        return "No matched pair has results on both sides yet."
    line = (f"At equal total epochs the multi-pass regime wins {multi_wins} of {n} comparisons "
            f"({sig_multi} significantly) and the single pass wins {single_wins} ({sig_single} significantly).")
    if best is not None and best[0].mean > 0:
        line += f" Largest gain: {best[1]}, Δ {100 * best[0].mean:+.2f} points, {significance(best[0])}."
    if worst is not None and worst[0].mean < 0:
        line += f" Largest loss: {worst[1]}, Δ {100 * worst[0].mean:+.2f} points, {significance(worst[0])}."
    return line


def summarize_kd(table: T.Table) -> str:
    cols = {c.metric: j for j, c in enumerate(table.cols)}
    parts = []
    for r in table.rows:
        pruned = [(table.cols[j].path[-1], r.cells[j]) for j in range(len(table.cols))
                  if table.cols[j].path[0] == "Pruned + fine-tuned" and r.cells[j].mean is not None]
        s = r.cells[cols["surplus"]]
        text = _row_name(r)
        if pruned:
            name, cell = max(pruned, key=lambda t: t[1].mean)
            text += f": best pruned pipeline {name} ({_pct(cell)})"
        else:
            u = r.cells[cols["unpruned_kd"]]
            if u.mean is not None:
                text += f": unpruned KD {_pct(u)} vs scratch {_pct(r.cells[cols['unpruned_scratch']])}" \
                    if r.cells[cols["unpruned_scratch"]].mean is not None else f": unpruned KD {_pct(u)}"
        if s.mean is not None:
            text += f", surplus {100 * s.mean:+.2f} points, {significance(s)}"
        parts.append(text)
    return "; ".join(parts) + "." if parts else "No rows yet."


def summarize_cost(table: T.Table) -> str:
    j_acc = next(j for j, c in enumerate(table.cols) if c.metric == "acc_g")
    j_flops = next(j for j, c in enumerate(table.cols) if c.metric == "flops_reduction")
    parts = []
    for k in range(0, len(table.rows) - 1, 2):
        dense, slim = table.rows[k], table.rows[k + 1]
        a, b = dense.cells[j_acc], slim.cells[j_acc]
        if a.mean is None or b.mean is None:
            continue
        name = " / ".join(str(h) for h in dense.head[:-1] if str(h))
        parts.append(f"{name}: slim {_pct(b)} vs dense {_pct(a)} ({100 * (b.mean - a.mean):+.2f} points) with "
                     f"{slim.cells[j_flops].text or '–'}% fewer inference FLOPs")
    return "; ".join(parts) + "." if parts else "No slim results yet."


def summarize_size(table: T.Table) -> str:
    """The most accurate row and the smallest one (the accuracy-for-size trade a search buys)."""
    j_acc = 0  # the size table's first column is the accuracy metric
    j_mb = next(j for j, c in enumerate(table.cols) if c.metric == "size_mb")
    rows = [r for r in table.rows if r.cells[j_acc].mean is not None and r.cells[j_mb].mean is not None]
    if not rows:
        return "No results yet."
    best = max(rows, key=lambda r: r.cells[j_acc].mean)
    small = min(rows, key=lambda r: r.cells[j_mb].mean)
    line = f"Most accurate: {_row_name(best)} ({_pct(best.cells[j_acc])}, {best.cells[j_mb].mean:.3g} MB)."
    if small is not best:
        line += f" Smallest: {_row_name(small)} ({small.cells[j_mb].mean:.3g} MB, {_pct(small.cells[j_acc])})."
    return line


def summarize_interval(table: T.Table) -> str:
    """Per column, the highest and lowest row with their intervals, and whether those intervals overlap."""
    parts = []
    for j, col in enumerate(table.cols):
        if col.kind not in ("metric", "number"):
            continue
        filled = [r for r in table.rows if r.cells[j].mean is not None]
        if not filled:
            parts.append(f"{_col_name(col)}: no results yet")
            continue
        hi, lo = max(filled, key=lambda r: r.cells[j].mean), min(filled, key=lambda r: r.cells[j].mean)
        a, b = hi.cells[j], lo.cells[j]
        text = f"{_col_name(col)}: highest {_row_name(hi)} ({_core(a, col, table.decimals)}, n {a.n})"
        if hi is not lo:
            text += f", lowest {_row_name(lo)} ({_core(b, col, table.decimals)}, n {b.n})"
            if a.half_width is not None and b.half_width is not None:
                apart = a.mean - a.half_width > b.mean + b.half_width
                text += f"; their {T.CONFIDENCE:.0%} intervals {'do not overlap' if apart else 'overlap'}"
        parts.append(text)
    return "; ".join(parts) + "."


SUMMARIES = {"classification": summarize_grid, "retrieval": summarize_grid, "budget": summarize_budget,
             "kd": summarize_kd, "cost": summarize_cost, "size": summarize_size, "interval": summarize_interval}


# ------------------------------------------------------------------------------ HTML pieces
def prose_html(text: str) -> str:
    """Table text as HTML: escaped, `code` in <code>, Acc_1 / Acc_g with a subscript (as LaTeX has)."""
    import re

    out = html.escape(str(text))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\bAcc_([1g])\b", r"Acc<sub>\1</sub>", out)


def _cell_html(cell: T.Cell, col: T.Col, decimals: int, awaited: bool = True) -> str:
    core = _core(cell, col, decimals)
    if core is None:  # red only while runs are unfinished: once all are done, an empty cell is by design
        if awaited:
            return '<td class="missing" title="no result yet: a run of this study has not finished">–</td>'
        return '<td class="empty" title="not part of this study\'s grid">–</td>'
    if cell.text is not None:
        return f"<td>{html.escape(core)}</td>"
    cls = {1: "best", 2: "second"}.get(cell.rank, "")
    title = f' title="{html.escape(significance(cell))}"' if cell.test else ""
    mark = f"<sup>{html.escape(cell.mark)}</sup>" if cell.mark else ""
    n = f' <span class="n">({cell.n})</span>' if cell.n else ""
    return f'<td class="{cls}"{title}>{html.escape(core)}{mark}{n}</td>'


def table_html(table: T.Table, awaited: bool = True) -> str:
    """The table as HTML: grouped headers (colspan), ranks in bold/underline, marks; empty cells red
    while `awaited` (runs of the study have not finished), grey once every run is done."""
    levels = _header_levels(table)
    out = ['<div class="scroll"><table class="kb">', "<thead>"]
    for li, spans in enumerate(levels):
        last = li == len(levels) - 1
        heads = "".join(f'<th class="head">{html.escape(n) if last else ""}</th>' for n in table.row_names)
        cells = "".join(f'<th colspan="{span}">{prose_html(title)}</th>' for title, span in spans)
        out.append(f"<tr>{heads}{cells}</tr>")
    out.append("</thead><tbody>")
    for head, row in zip(_blank_repeats(table.rows), table.rows):
        cls = ' class="rule"' if row.rule_before else ""
        heads = "".join(f'<td class="head">{html.escape(str(h))}</td>' for h in head)
        cells = "".join(_cell_html(c, col, table.decimals, awaited) for c, col in zip(row.cells, table.cols))
        out.append(f"<tr{cls}>{heads}{cells}</tr>")
    out.append("</tbody></table></div>")
    out.append('<ul class="notes">' + "".join(f"<li>{prose_html(n)}</li>" for n in table.notes) + "</ul>")
    return "\n".join(out)


def figure_png(fig) -> bytes:
    from kebench.analysis import plots

    buf = io.BytesIO()
    with plots.figure_style():
        fig.savefig(buf, format="png", dpi=plots.DPI, metadata=plots.METADATA["png"])
    return buf.getvalue()


def run_rows(runs: list[dict], left_out: list[tuple[str, str]]) -> list[dict]:
    """Provenance of every run: id, config hash, status, metric, versions, commit, device, wall time."""
    rows = []
    for r in sorted(runs, key=lambda r: (r.get("method", ""), r.get("arch", ""), r.get("dataset", ""),
                                         r.get("seed", 0), r.get("run_id", ""))):
        primary = PRIMARY.get(r.get("task", "classification"), "top1")
        v = (r.get("final") or {}).get(primary)
        versions = r.get("versions") or {}
        rows.append({
            "run": r.get("run_id", Path(r["_path"]).name), "config hash": r.get("run_id", "").rpartition("_")[2],
            "method": r.get("method", ""), "arch": r.get("arch", ""), "data": r.get("dataset", ""),
            "seed": r.get("seed", ""), "epochs": (r.get("training") or {}).get("epochs", ""),
            "status": r.get("status", ""), "metric": f"{primary} {100 * v:.2f}" if isinstance(v, (int, float)) else "–",
            "versions": " ".join(f"{k} {versions[k]}" for k in ("kebench", "torch", "timm") if k in versions),
            "git commit": (r.get("git_commit") or "–")[:10], "device": r.get("device", "–"),
            "precision": precision_text(r), "init": (r.get("config") or {}).get("init", "timm"),
            "wall time (s)": f"{r.get('wall_time_s', 0):.1f}"})
    for path, why in left_out:
        rows.append({"run": Path(path).name, "config hash": Path(path).name.rpartition("_")[2], "method": "",
                     "arch": "", "data": "", "seed": "", "epochs": "", "status": why, "metric": "–", "versions": "",
                     "git commit": "", "device": "", "precision": "", "init": "", "wall time (s)": ""})
    return rows


def precision_text(run: dict) -> str:
    """'fp32', 'bf16 autocast', 'fp32 (TF32 convs)' from result.json's provenance; '–' for runs
    written before kebench recorded it (unknown: on CUDA those ran bf16 autocast unless --amp off)."""
    p = run.get("provenance") or {}
    if "precision" not in p:
        return "–"
    text = p["precision"] + (" autocast" if p.get("autocast") else "")
    tf32 = [name for key, name in (("tf32_convolutions", "convs"), ("tf32_matmul", "matmuls")) if p.get(key)]
    return text + (f" (TF32 {', '.join(tf32)})" if tf32 else "")


def _plain_table(rows: list[dict], cls: str = "kb") -> str:
    if not rows:
        return "<p>None.</p>"
    keys = list(rows[0])
    out = [f'<div class="scroll"><table class="{cls}"><thead><tr>'
           + "".join(f'<th class="head">{html.escape(k)}</th>' for k in keys) + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="head">{html.escape(str(r[k]))}</td>' for k in keys) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


# ------------------------------------------------------------------------------ the report
def build_sections(study, scale: str, runs: list[dict], pending: int) -> list[Section]:
    scale_set = study.spec(scale)["set"]
    sections = []
    for spec in study.tables:
        sec = Section(spec)
        sec.runs = select(runs, spec, scale_set)
        try:
            if not sec.runs:
                raise UserError("No finished runs for this table yet.")
            sec.table = T.build_table(sec.runs, spec["kind"], rows=spec.get("rows"), cols=spec.get("cols"),
                                      metric=spec.get("metric"),
                                      generations=T.parse_generations(spec.get("generation")))
            sec.summary = SUMMARIES[spec["kind"]](sec.table)
        except UserError as exc:
            sec.problem = str(exc)
        if pending:
            sec.missing_note = (f"{pending} run(s) of this study have not finished: cells that need them show "
                                f"'–' or are not there yet (see Missing runs).")
        sections.append(sec)
    return sections


def build_figures(study, scale: str, runs: list[dict]) -> list[tuple[str, str, bytes | None, str]]:
    """(kind, caption, PNG bytes or None, why not) for the base figures and the study's own. The
    budget figure shows every run (the single passes at each budget are its point); the others show
    the runs of the study's first table, so extra-budget baselines do not crowd them."""
    from kebench.analysis import plots

    kinds = list(dict.fromkeys([*BASE_FIGURES, *study.figures]))
    main = select(runs, study.tables[0], study.spec(scale)["set"]) if study.tables else runs
    out = []
    for kind in kinds:
        try:
            shown = runs if kind == "budget" or not main else main
            if kind == "cost" and max(map(len, (xs := plots.cost_positions(shown)).values()), default=0) <= 2:
                costs = "; ".join(f"{d}: {' or '.join(f'{x:g}' for x in v)}" for d, v in sorted(xs.items()))
                out.append((kind, plots.figure_title(kind), None, (
                    f"left out: the networks evaluated cost one or two amounts of inference GFLOPs per image "
                    f"({costs}), so each panel would show its points in one or two columns; the tables give "
                    f"the accuracies.")))
                continue
            fig = plots.build_figure(shown, kind)
            out.append((kind, plots.figure_title(kind), figure_png(fig), ""))
        except UserError as exc:
            if kind in study.figures:  # a figure the study asks for: say why it is missing
                out.append((kind, plots.figure_title(kind), None, str(exc)))
    return out


def settings_block(study, scale: str) -> str:
    """The study file's settings this report was made from, as YAML (the scale's note, grid and set,
    the tables and figures). Embedded in the report so a test can hold a committed report to the
    study file that ships (tests/test_study_reports.py)."""
    import yaml

    s = study.scales.get(scale, {})
    block = {"study": study.name, "scale": scale, "note": s.get("note", ""), "grid": s.get("grid"),
             "set": s.get("set") or {}, "tables": study.tables, "figures": study.figures}
    return yaml.safe_dump(block, sort_keys=False, allow_unicode=True, width=100)


def extra_runs(status: list[dict], runs: list[dict]) -> int:
    """Finished runs in the study's folder beyond the ones its grid names: the equal-budget
    baselines that `budget: matched` runs also train (counted with their run by the status)."""
    named = {r["run_id"] for r in status}
    return sum(1 for r in runs if r.get("run_id") not in named and r.get("status") == "complete")


def _runs_line(status: list[dict], extra: int) -> str:
    counts = {s: sum(r["state"] == s for r in status) for s in ("done", "running", "failed", "pending")}
    line = f"{len(status)} expected; " + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k == "done")
    if extra:
        line += f"; plus {extra} matched-budget baseline run(s) they trained"
    return line + "."


def render_html(study, scale: str, sections: list[Section], figures, status: list[dict], run_list: list[dict],
                extra: int = 0) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(study.title)} ({e(scale)})</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>{e(study.title)}</h1>",
             f'<p class="meta">Study <code>{e(study.name)}</code>, scale <b>{e(scale)}</b>. Reproduces: {e(study.paper)}.</p>',
             f"<p>{e(study.about)}</p>", f'<p class="meta">Settings: {e(study.note(scale))}</p>',
             f'<p class="meta">Runs: {e(_runs_line(status, extra))}</p>', "<h2>Summary</h2><ul>"]
    for sec in sections:
        title = sec.spec.get("title") or sec.spec["kind"]
        parts.append(f"<li><b>{e(title)}</b>: {e(sec.summary or sec.problem)}</li>")
    parts.append("</ul>")
    for i, sec in enumerate(sections, 1):
        parts.append(f'<h2 id="table-{i}">Table {i}: {e(sec.spec.get("title") or sec.spec["kind"])}</h2>')
        if sec.missing_note:
            parts.append(f'<p class="warn">{e(sec.missing_note)}</p>')
        if sec.table is None:
            parts.append(f'<p class="warn">{e(sec.problem)}</p>')
            continue
        parts.append(f'<p class="summary">{e(sec.summary)}</p>')
        parts.append(f"<p><i>{e(sec.table.caption)}</i></p>")
        parts.append(table_html(sec.table, awaited=bool(sec.missing_note)))
        for w in sec.table.warnings:
            parts.append(f'<p class="warn">warning: {e(w)}</p>')
    parts.append("<h2>Figures</h2>")
    for kind, caption, png, why in figures:
        if png is None:
            parts.append(f'<p class="warn">{e(kind)}: {e(why)}</p>')
            continue
        data = base64.b64encode(png).decode()
        parts.append(f'<figure id="fig-{kind}"><img alt="{e(kind)} figure" src="data:image/png;base64,{data}">'
                     f"<figcaption>{e(caption)}</figcaption></figure>")
    missing = [r for r in status if r["state"] != "done"]
    parts.append(f'<h2 id="missing">Missing runs ({len(missing)})</h2>')
    parts.append(_plain_table([{k: r[k] for k in ("run_id", "method", "arch", "data", "seed", "state", "detail")}
                               for r in missing]))
    parts.append(f'<h2 id="runs">Runs and provenance ({len(run_list)})</h2>')
    parts.append(_plain_table(run_list))
    parts.append('<h2 id="settings">Study settings</h2>')
    parts.append(f'<pre class="settings">{e(settings_block(study, scale))}</pre>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(study, scale: str, sections: list[Section], figures, status: list[dict], extra: int = 0) -> str:
    lines = [f"# {study.title} ({scale} scale)", "", f"Reproduces: {study.paper}.", "", study.about, "",
             f"Settings: {study.note(scale)}", "", f"Runs: {_runs_line(status, extra)}", ""]
    for i, sec in enumerate(sections, 1):
        lines += [f"## Table {i}: {sec.spec.get('title') or sec.spec['kind']}", ""]
        if sec.table is None:
            lines += [f"_{sec.problem}_", ""]
            continue
        lines += [f"**Summary:** {sec.summary}", "", T.to_markdown(sec.table)]
    shown = [(k, c) for k, c, png, _ in figures if png is not None]
    if figures:
        lines += ["## Figures", ""] + [f"![{c}](figures/{k}.png)\n" for k, c in shown]
        lines += [f"_{k} figure: {why}_\n" for k, _, png, why in figures if png is None]
    lines += ["## Study settings", "", "```yaml", settings_block(study, scale).rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


def write_report(study, scale: str, *, out=None, report_dir=None, sets=None) -> Path:
    """Render the report of one scale of a study from its results folder; returns the HTML path."""
    from kebench.run import results
    from kebench.analysis import study as studymod

    res_dir = studymod.results_dir(study.name, scale, out)
    status = studymod.expected_runs(study, scale, out, sets)
    runs, left_out = (T.load_runs([res_dir]) if res_dir.exists() else ([], []))
    pending = sum(r["state"] != "done" for r in status)
    sections = build_sections(study, scale, runs, pending)
    figures = build_figures(study, scale, runs) if runs else []
    target = Path(report_dir) if report_dir else res_dir / "report"
    target.mkdir(parents=True, exist_ok=True)
    extra = extra_runs(status, runs)
    page = render_html(study, scale, sections, figures, status, run_rows(runs, left_out), extra)
    results.write_text(target / "report.html", page)
    tex = [T.to_latex(s.table) for s in sections if s.table is not None]
    results.write_text(target / "tables.tex", "\n".join(tex) if tex else "% no tables yet\n")
    results.write_text(target / "report.md", render_markdown(study, scale, sections, figures, status, extra))
    for kind, _, png, _ in figures:
        if png is not None:
            results._atomic(target / "figures" / f"{kind}.png", lambda f, b=png: f.write(b))
    for path in [*target.glob("*.*"), *target.glob("figures/*.png")]:
        path.chmod(0o644)  # a report is for reading (served, shared); temp files are created 0600
    return target / "report.html"
