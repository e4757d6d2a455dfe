"""Renderers: a Table as LaTeX (booktabs), Markdown or CSV."""
from __future__ import annotations

from kebench.errors import unknown_choice
from kebench.analysis.tables.layout import Col, Row, Table
from kebench.analysis.tables.runs import MISSING
from kebench.analysis.tables.stats import MARK_WELCH, MARK_FROM_MEANS, MARK_PAIRED, Cell, _count

FORMATS = ("latex", "markdown", "csv")


def _core(cell: Cell, col: Col, decimals: int) -> str | None:
    """The number of a cell without decoration, e.g. '71.23 ± 0.45' (None when missing)."""
    if cell.text is not None:
        return cell.text
    if cell.mean is None:
        return None
    signed = col.kind == "delta" or cell.signed
    mean = f"{cell.mean * 100:+.{decimals}f}" if signed else f"{cell.mean * 100:.{decimals}f}"
    return mean if cell.std is None else f"{mean} ± {cell.std * 100:.{decimals}f}"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_UNICODE = {"<": "$<$", ">": "$>$", "|": "$|$", "–": "--", "−": "$-$", "Δ": r"$\Delta$", "±": r"$\pm$",
                "×": r"$\times$", "†": r"$^\dagger$", "‡": r"$^\ddagger$"}
_TEX_HEADERS = {"Acc_1": r"Acc$_1$", "Acc_g": r"Acc$_g$"}


def tex(text: str) -> str:
    """Escape plain text for LaTeX (specials, then the few unicode signs tables use)."""
    if text in _TEX_HEADERS:
        return _TEX_HEADERS[text]
    out = "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))
    for k, v in _TEX_UNICODE.items():
        out = out.replace(k, v)
    return out


def _tex_cell(cell: Cell, col: Col, decimals: int) -> str:
    core = _core(cell, col, decimals)
    if core is None:
        return "--"
    if cell.text is not None:
        return tex(core)
    math_core = core.replace("±", r"\pm")
    body = {1: rf"$\mathbf{{{math_core}}}$", 2: rf"\underline{{${math_core}$}}"}.get(cell.rank, f"${math_core}$")
    mark = {MARK_PAIRED: r"$^{*}$", MARK_WELCH: r"$^{\dagger}$",
            MARK_FROM_MEANS: r"$^{\ddagger}$"}.get(cell.mark, "")
    count = rf" {{\scriptsize({tex(_count(cell))})}}" if cell.n else ""
    return body + mark + count


def _md_cell(cell: Cell, col: Col, decimals: int) -> str:
    core = _core(cell, col, decimals)
    if core is None:
        return MISSING
    if cell.text is not None:
        return core
    body = {1: f"**{core}**", 2: f"<u>{core}</u>"}.get(cell.rank, core)
    mark = "\\*" if cell.mark == MARK_PAIRED else cell.mark
    return body + mark + (f" ({_count(cell)})" if cell.n else "")


def _header_levels(table: Table) -> list[list[tuple[str, int]]]:
    """Header rows of (title, span) over the value columns; shorter paths are bottom-aligned."""
    depth = max(len(c.path) for c in table.cols)
    paths = [("",) * (depth - len(c.path)) + tuple(c.path) for c in table.cols]
    levels = []
    for lvl in range(depth):
        spans = []
        for i, p in enumerate(paths):
            if spans and lvl < depth - 1 and paths[i - 1][: lvl + 1] == p[: lvl + 1] and p[lvl]:
                spans[-1] = (spans[-1][0], spans[-1][1] + 1)
            else:
                spans.append((p[lvl], 1))
        levels.append(spans)
    return levels


def _blank_repeats(rows: list[Row]) -> list[tuple]:
    """Row heads with a value left blank where it repeats the row above (all but the last dimension)."""
    heads, prev = [], None
    for r in rows:
        h = list(r.head)
        if prev is not None:
            for i in range(len(h) - 1):
                if h[: i + 1] == list(prev[: i + 1]):
                    h[i] = ""
                else:
                    break
        heads.append(tuple(h))
        prev = r.head
    return heads


def to_latex(table: Table) -> str:
    ncols = len(table.row_names) + len(table.cols)
    nrow = len(table.row_names)
    lines = [f"% kebench table --kind {table.kind}; needs \\usepackage{{booktabs}}",
             r"\begin{table}[htbp]", r"\centering", rf"\caption{{{tex(table.caption)}}}",
             rf"\label{{tab:kebench-{table.kind}}}",
             rf"\begin{{tabular}}{{{'l' * nrow}{'c' * len(table.cols)}}}", r"\toprule"]
    levels = _header_levels(table)
    for li, spans in enumerate(levels):
        last = li == len(levels) - 1
        cells = [tex(n) for n in table.row_names] if last else [""] * nrow
        rules, start = [], nrow + 1
        for title, span in spans:
            if span > 1:
                cells.append(rf"\multicolumn{{{span}}}{{c}}{{{tex(title)}}}")
            else:
                cells.append(tex(title))
            if not last and title:
                rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines.append(" & ".join(cells) + r" \\")
        if rules:
            lines.append(" ".join(rules))
    lines.append(r"\midrule")
    for head, row in zip(_blank_repeats(table.rows), table.rows):
        if row.rule_before:
            lines.append(r"\midrule")
        cells = [tex(h) for h in head] + [_tex_cell(c, col, table.decimals) for c, col in zip(row.cells, table.cols)]
        assert len(cells) == ncols
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"{\footnotesize"]
    lines += [tex(n) + r"\par" for n in table.notes]
    lines += ["}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_markdown(table: Table) -> str:
    titles = list(table.row_names) + [" ".join(p for p in c.path if p) for c in table.cols]
    align = [":--"] * len(table.row_names) + ["--:"] * len(table.cols)
    lines = [f"**{table.caption}**", "", "| " + " | ".join(titles) + " |", "| " + " | ".join(align) + " |"]
    for head, row in zip(_blank_repeats(table.rows), table.rows):
        cells = list(head) + [_md_cell(c, col, table.decimals) for c, col in zip(row.cells, table.cols)]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    lines.append("")
    lines += [f"- {n.replace('*', chr(92) + '*')}" for n in table.notes]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Tidy CSV: one line per cell, metric values as fractions, per-seed values listed."""
    import pandas as pd

    records = []
    for row in table.rows:
        for col, cell in zip(table.cols, row.cells):
            rec = dict(zip(table.row_names, row.head))
            rec.update({"column": " / ".join(p for p in col.path if p), "metric": col.metric,
                        "mean": cell.mean, "std": cell.std, "n": cell.n,
                        "seeds": ";".join(str(s) for s in cell.values),
                        "values": ";".join(f"{v:.10g}" for v in cell.values.values()),
                        "test": cell.test, "p_value": cell.p, "q_value": cell.q, "mark": cell.mark,
                        "rank": {1: "best", 2: "second"}.get(cell.rank, ""),
                        "text": _core(cell, col, table.decimals) or MISSING})
            records.append(rec)
    return pd.DataFrame.from_records(records).to_csv(index=False, lineterminator="\n", float_format="%.10g")


def render(table: Table, fmt: str) -> str:
    if fmt == "latex":
        return to_latex(table)
    if fmt == "markdown":
        return to_markdown(table)
    if fmt == "csv":
        return to_csv(table)
    raise unknown_choice("table format", fmt, list(FORMATS))

