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
    scale = 1 if col.kind == "number" else 100  # metrics are fractions shown in %; a "number" as it is
    mean = f"{cell.mean * scale:+.{decimals}f}" if signed else f"{cell.mean * scale:.{decimals}f}"
    spread = cell.std if cell.half_width is None else cell.half_width
    return mean if spread is None else f"{mean} ± {spread * scale:.{decimals}f}"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_UNICODE = {"<": "$<$", ">": "$>$", "|": "$|$", "–": "--", "−": "$-$", "Δ": r"$\Delta$", "±": r"$\pm$",
                "×": r"$\times$", "·": r"$\cdot$", "√": r"$\surd$", "†": r"$^\dagger$", "‡": r"$^\ddagger$"}
_TEX_HEADERS = {"Acc_1": r"Acc$_1$", "Acc_g": r"Acc$_g$"}


def tex(text: str) -> str:
    """Escape plain text for LaTeX (specials, then the few unicode signs tables use); `code` is set in
    \\texttt, a command-line `--flag` keeps both hyphens (LaTeX would make '--' an en dash) and
    Acc_1 / Acc_g get their subscript."""
    if text in _TEX_HEADERS:
        return _TEX_HEADERS[text]
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick is just a character
        parts = [str(text).replace("`", "'")]
    out = []
    for i, part in enumerate(parts):
        piece = "".join(_TEX_ESCAPES.get(ch, ch) for ch in part).replace("--", "-{}-")
        for k, v in _TEX_UNICODE.items():
            piece = piece.replace(k, v)
        for k, v in _TEX_HEADERS.items():
            piece = piece.replace(tex_plain(k), v)
        out.append(rf"\texttt{{{piece}}}" if i % 2 else piece)
    return "".join(out)


def tex_plain(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def _tex_cell(cell: Cell, col: Col, decimals: int, counts: bool = True) -> str:
    core = _core(cell, col, decimals)
    if core is None:
        return "--"
    if cell.text is not None:
        return tex(core)
    math_core = core.replace("±", r"\pm")
    body = {1: rf"$\mathbf{{{math_core}}}$", 2: rf"\underline{{${math_core}$}}"}.get(cell.rank, f"${math_core}$")
    mark = {MARK_PAIRED: r"$^{*}$", MARK_WELCH: r"$^{\dagger}$",
            MARK_FROM_MEANS: r"$^{\ddagger}$"}.get(cell.mark, "")
    count = rf" {{\scriptsize({tex(_count(cell))})}}" if cell.n and counts else ""
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


# ------------------------------------------------------------------------------ LaTeX that fits the page
#: The page a table must fit: a two-column paper (CVPR/ICCV-style 6.875 in text width, 3.3 in columns),
#: in TeX points. A table that fits a column is a `table`, one that needs the page a `table*`.
TEXTWIDTH_PT, COLUMNWIDTH_PT = 496.8, 237.1
#: (font size command, its size in pt, \tabcolsep in pt, show "(n)" counts) tried in order.
_STYLES = (("\\small", 9.0, 6.0, True), ("\\footnotesize", 8.0, 4.0, True), ("\\footnotesize", 8.0, 3.0, False))
_SCRIPT_PT = 7.0  # \scriptsize of a 10 pt document, whatever the size around it
_NARROW = set("ijlt.,:;'!|()[]{}/-")
_WIDE = set("mwMW%±×−+=<>")


def _text_width(text: str, size: float, bold: bool = False) -> float:
    """Width of text set in Computer Modern at `size` pt, in pt: a per-character estimate that errs on
    the wide side (the test measures the real width with pdflatex)."""
    em = 0.0
    for ch in text:
        em += (0.3 if ch in _NARROW else 0.9 if ch in _WIDE or ch.isupper() else 0.33 if ch == " "
               else 0.5 if ch.isdigit() else 0.52)
    return em * size * (1.1 if bold else 1.0) + (2.2 * size / 10 * text.count("±") * 2)


def _cell_width(cell: Cell, col: Col, decimals: int, size: float, counts: bool) -> float:
    core = _core(cell, col, decimals)
    if core is None:
        return _text_width("–", size)
    w = _text_width(core, size, bold=cell.rank == 1 and cell.text is None)
    if cell.mark and cell.text is None:
        w += _text_width("*", size * 0.7)
    if counts and cell.n and cell.text is None:
        w += _text_width(" (" + _count(cell) + ")", _SCRIPT_PT)
    return w


def _natural_width(table: Table, style) -> float:
    """Estimated width of the table's tabular in one style (see _STYLES)."""
    _, size, sep, counts = style
    heads = _blank_repeats(table.rows)
    widths = [max([_text_width(n, size)] + [_text_width(str(h[i]), size) for h in heads])
              for i, n in enumerate(table.row_names)]
    levels = _header_levels(table)
    leaf = [t for t, _ in levels[-1]] if levels else [""] * len(table.cols)
    widths += [max([_text_width(leaf[j], size)] + [_cell_width(r.cells[j], c, table.decimals, size, counts)
                                                   for r in table.rows]) for j, c in enumerate(table.cols)]
    nrow = len(table.row_names)
    for spans in levels[:-1]:  # a group title wider than its columns widens the last of them
        start = nrow
        for title, span in spans:
            have = sum(widths[start:start + span]) + 2 * sep * (span - 1)
            need = _text_width(title, size)
            if need > have:
                widths[start + span - 1] += need - have
            start += span
    return sum(widths) + 2 * sep * len(widths)


def _part(table: Table, cols: list[int]) -> Table:
    """The table restricted to some value columns (every row, with its head)."""
    import dataclasses

    rows = [dataclasses.replace(r, cells=[r.cells[j] for j in cols]) for r in table.rows]
    return dataclasses.replace(table, cols=[table.cols[j] for j in cols], rows=rows)


def _groups(table: Table) -> list[list[int]]:
    """Value columns grouped by their outermost header (a spanned group stays in one part)."""
    groups: list[list[int]] = []
    for j, c in enumerate(table.cols):
        top = c.path[0] if len(c.path) > 1 else None
        if groups and top is not None and len(table.cols[groups[-1][-1]].path) > 1 \
                and table.cols[groups[-1][-1]].path[0] == top:
            groups[-1].append(j)
        else:
            groups.append([j])
    return groups


def layout_latex(table: Table) -> tuple[str, object, list[list[int]], bool]:
    """How the table goes on a two-column page: (environment, style, value columns of each part,
    resized). A table that fits a column is a `table`; one that fits the page a `table*`, in the
    first style that fits (smaller type, tighter columns, "(n)" counts moved to a note); one still
    too wide is split into parts along its column groups (a group wider than the page column by
    column); a table whose row heads and any one column are wider than the page is scaled down
    whole with \resizebox, the last resort."""
    everything = [list(range(len(table.cols)))]
    for style in _STYLES:
        if _natural_width(table, style) <= COLUMNWIDTH_PT:
            return "table", style, everything, False
    for style in _STYLES:
        if _natural_width(table, style) <= TEXTWIDTH_PT:
            return "table*", style, everything, False
    style = _STYLES[-1]
    if min(_natural_width(_part(table, [j]), style) for j in range(len(table.cols))) > TEXTWIDTH_PT:
        return "table*", style, everything, True  # the row heads alone are too wide: parts would not help
    parts: list[list[int]] = []
    for group in _groups(table):
        pieces = [group] if _natural_width(_part(table, group), style) <= TEXTWIDTH_PT else [[j] for j in group]
        for piece in pieces:
            if parts and _natural_width(_part(table, parts[-1] + piece), style) <= TEXTWIDTH_PT:
                parts[-1] += piece
            else:
                parts.append(list(piece))
    resized = any(_natural_width(_part(table, p), style) > TEXTWIDTH_PT for p in parts)
    return "table*", style, parts, resized


def _tabular(table: Table, counts: bool) -> list[str]:
    ncols = len(table.row_names) + len(table.cols)
    nrow = len(table.row_names)
    lines = [rf"\begin{{tabular}}{{{'l' * nrow}{'c' * len(table.cols)}}}", r"\toprule"]
    levels = _header_levels(table)
    levels = [lv for k, lv in enumerate(levels) if k == len(levels) - 1 or any(t for t, _ in lv)]  # a part's blank group row
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
        cells = [tex(h) for h in head] + [_tex_cell(c, col, table.decimals, counts)
                                          for c, col in zip(row.cells, table.cols)]
        assert len(cells) == ncols
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines


def _counts_note(table: Table) -> str:
    found = {_count(c) for r in table.rows for c in r.cells if c.n and c.text is None}
    if not found:
        return ""
    if len(found) == 1:
        return f"(n) counts left out to fit the page: {found.pop()} run(s) behind every cell."
    return ("(n) counts left out to fit the page: the runs behind each cell (and raw p where there are too few "
            "for a mark) are in the Markdown and CSV tables.")


def to_latex(table: Table) -> str:
    """Booktabs LaTeX that fits a two-column paper (see layout_latex); notes left-aligned below."""
    env, (font, _, sep, counts), parts, resized = layout_latex(table)
    needs = "booktabs" + (", graphicx" if resized else "")
    lines = [f"% kebench table --kind {table.kind}; needs \\usepackage{{{needs}}}"]
    notes = list(table.notes)
    if not counts and (note := _counts_note(table)):
        notes.append(note)
    for k, cols in enumerate(parts, 1):
        part = _part(table, cols) if len(parts) > 1 else table
        caption = table.caption + (f" (part {k} of {len(parts)})" if len(parts) > 1 else "")
        label = f"tab:kebench-{table.kind}" + (f"-{k}" if len(parts) > 1 else "")
        lines += [rf"\begin{{{env}}}[htbp]", r"\centering", font, rf"\setlength{{\tabcolsep}}{{{sep:g}pt}}",
                  rf"\caption{{{tex(caption)}}}", rf"\label{{{label}}}"]
        body = _tabular(part, counts)
        if resized and _natural_width(part, _STYLES[-1]) > TEXTWIDTH_PT:
            body = [r"\resizebox{\textwidth}{!}{%", *body, "}"]
        lines += body
        if k == len(parts):
            lines += [r"\par\smallskip", r"{\footnotesize\raggedright"]
            lines += [tex(n) + r"\par" for n in notes]
            lines += ["}"]
        lines += [rf"\end{{{env}}}", ""]
    return "\n".join(lines[:-1]) + "\n"


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
    intervals = any(c.half_width is not None for r in table.rows for c in r.cells)  # the `interval` table's
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
            if intervals:
                rec["half_width"] = cell.half_width
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

