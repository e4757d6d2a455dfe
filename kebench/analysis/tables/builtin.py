"""The table kinds of kebench's core: classification, retrieval, budget and size (plugins contribute
others through registry.yaml's `tables:`, e.g. KE's `cost`, KD x pruning's `kd`).

A builder takes the runs and any of the keyword arguments `kebench.analysis.tables.kinds.build_table` passes
(rows, cols, metric, generations, names, alpha, decimals, kind); one that does not take `rows` or
`cols` has a fixed shape along that axis."""
from __future__ import annotations

from collections import Counter, defaultdict

from kebench.errors import UserError, unknown_choice
from kebench.analysis.tables.layout import (COST_COLS, COST_NOTE, Col, Row, Table, _baseline_labels, dim_title,
                                   group_title, prepare_entries, row_sorter, _swap, _task_runs, cost_cell,
                                   cost_cells, fmt_count, fmt_number)
from kebench.analysis.tables.runs import (BUDGET_FREE, MISSING, PRIMARY, RETRIEVAL_METRICS, Names, sort_value, split_list,
                                 expand, metric_title, signature)
from kebench.analysis.tables.stats import (ALPHA, CONFIDENCE, MARK_WELCH, MARK_FROM_MEANS, MARK_PAIRED, TESTS, Cell,
                                  marks_in, significance_note, value_note, cells_by_key, compare, make_cell,
                                  one_sample, rank_column, t_half_width)

def grid_table(runs: list[dict], kind: str, rows=None, cols=None, metric=None, generations=None,
               names: Names | None = None, alpha: float = ALPHA, decimals: int = 2) -> Table:
    """classification / retrieval: rows x (column groups x metrics) + training cost."""
    names = names or Names()
    task = kind
    runs = _task_runs(runs, task)
    rows = split_list(rows) or ["method"]
    cols = split_list(cols) or (["dataset"] if task == "classification" else ["arch"])
    metrics = split_list(metric) or ([PRIMARY[task]] if task == "classification" else list(RETRIEVAL_METRICS))
    warnings: list[str] = []
    entries = [e for r in runs for e in expand(r, generations, names)]
    if not entries:
        raise UserError(f"No results at generation {generations}: the runs found have fewer generations.")
    rows, cols, entries = prepare_entries(entries, rows, cols, names, warnings)
    row_keys = sorted({e.row for e in entries}, key=row_sorter(entries, rows, names))
    col_keys = sorted({e.col for e in entries}, key=row_sorter(entries, cols, names, "col"))
    present = {m for e in entries for m, v in e.metrics.items() if isinstance(v, (int, float))}
    for m in metrics:
        if m not in present:
            raise unknown_choice("metric", m, sorted(present), "Pass --metric with names from the results' `final`.")
    columns, grid = [], []
    cells = {m: cells_by_key(entries, m) for m in metrics}
    for ck in col_keys:
        for m in metrics:
            path = tuple(group_title(v) for v in ck) + ((metric_title(m),) if len(metrics) > 1 or not ck else ())
            columns.append(Col(path, m))
            grid.append((ck, m))
    # The baseline cell: the same cell with the method label swapped for its baseline's.
    base_of = _baseline_labels(entries)
    mr = rows.index("method") if "method" in rows else None
    mc = cols.index("method") if "method" in cols else None
    by_row = defaultdict(list)
    for e in entries:
        by_row[e.row].append(e)
    table_rows = []
    for rk in row_keys:
        row_cells = []
        for ck, m in grid:
            c = cells[m].get((rk, ck), Cell())
            label = rk[mr] if mr is not None else ck[mc] if mc is not None else None
            base_key = (_swap(rk, mr, base_of.get(label)) or rk, _swap(ck, mc, base_of.get(label)) or ck)
            base = cells[m].get(base_key) if label in base_of else None
            if c.n and base is not None and base.n:
                compare(c, base, alpha)
            row_cells.append(c)
        table_rows.append(Row(tuple(group_title(v) if d != "method" else v for d, v in zip(rows, rk)),
                              row_cells + cost_cells(by_row[rk])))
    across_rows = mc is not None and mr is None  # methods are the columns: rank along each row
    if across_rows:
        for r in table_rows:
            for m in metrics:
                rank_column([c for c, (_, m2) in zip(r.cells, grid) if m2 == m], decimals)
    else:
        for j in range(len(grid)):
            rank_column([r.cells[j] for r in table_rows], decimals)
    gen_text = ("the final generation" if generations is None else "every generation" if generations == "all"
                else "generation " + ", ".join(map(str, generations)))
    what = " / ".join(metric_title(m) for m in metrics)
    caption = (f"{'Classification' if task == 'classification' else 'Retrieval'}: {what} (%) on the test split at the "
               f"last epoch; multi-generation regimes at {gen_text}.")
    marks = marks_in(table_rows, alpha)
    notes = value_note(alpha, marks, "the method's baseline (same objective, single pass, same epochs per pass)")
    notes += significance_note(table_rows, alpha)
    shown = {e.label for e in entries}
    pairs = sorted((a, b) for a, b in base_of.items() if a in shown)
    if pairs and any(c.test in TESTS for r in table_rows for c in r.cells):
        notes.append("Baselines: " + "; ".join(f"{a} vs {b}" for a, b in pairs) + ".")
    notes += [f"Best per {'row' if across_rows else 'column'} in bold, second underlined.", COST_NOTE]
    return Table(kind, caption, tuple(dim_title(d) for d in rows), columns + list(COST_COLS), table_rows,
                 notes, decimals, warnings)


def budget_table(runs: list[dict], cols=None, metric=None, generations=None, names: Names | None = None,
                 alpha: float = ALPHA, decimals: int = 2) -> Table:
    """Equal total budget: each multi-pass row, the single pass of the same objective trained for the
    same total epochs (what `--budget matched` writes), and their per-seed difference."""
    names = names or Names()
    task = Counter(r.get("task", "classification") for r in runs).most_common(1)[0][0] if runs else "classification"
    runs = _task_runs(runs, task)
    cols = split_list(cols) or ["dataset"]
    metrics = split_list(metric) or [PRIMARY[task]]
    warnings: list[str] = []
    entries = [e for r in runs for e in expand(r, generations, names)]
    multi = [e for e in entries if e.regime != "single"]
    single = [e for e in entries if e.regime == "single"]
    if not multi:
        raise UserError("The budget table needs multi-pass results (KE, BANs, DSD, ...) and single-pass runs with "
                        "the same total epochs: run e.g. `kebench run --method ke --generations 3 --budget matched`.")
    rows, cols, multi = prepare_entries(multi, ["method"], cols, names, warnings)
    if single:
        _, _, single = prepare_entries(single, ["method"], cols, names, warnings)

    def comparable(e):  # settings a matched single pass must share (its epochs are the total)
        return tuple(sorted((k, v) for k, v in signature(e.run).items()
                            if k not in BUDGET_FREE and not k.startswith(f"{e.regime}.")))

    pool = defaultdict(list)
    for s in single:
        pool[(s.objective, s.col, comparable(s), s.per_pass_epochs)].append(s)
    row_keys = sorted({e.row for e in multi}, key=row_sorter(multi, rows, names))
    groups, unmatched = [], []
    for rk in row_keys:
        es = [e for e in multi if e.row == rk]
        matched, by_flops = {}, False
        for e in es:
            plan = _match_plan(e)
            if plan.get("match") == "flops":  # a regime that changes the network: its seed's baseline
                if not e.last:
                    continue  # matched to the whole run, not to a generation on the way
                by_flops = True
                found = pool.get((e.objective, e.col, comparable(e), plan.get("epochs")), [])
                for s in [s for s in found if s.seed == e.seed] or found:
                    matched.setdefault((s.col, s.seed), s)
                continue
            for s in pool.get((e.objective, e.col, comparable(e), e.epochs), []):
                matched.setdefault((s.col, s.seed), s)
        if matched:
            groups.append((rk, es, list(matched.values()), by_flops))
        else:
            unmatched.append(rk[0])
    if not groups:
        raise UserError("No single-pass run has the same objective, settings and total epochs as a multi-pass result "
                        f"({', '.join(unmatched)}). Run the multi-pass method with `--budget matched` (it also trains "
                        "the single pass for the same total epochs), e.g. `kebench run --method ke --generations 3 "
                        "--budget matched`.")
    col_keys = sorted({e.col for _, es, *_ in groups for e in es}, key=lambda c: tuple(sort_value(v) for v in c))
    grid = [(ck, m) for ck in col_keys for m in metrics]
    columns = [Col(tuple(group_title(v) for v in ck) + ((metric_title(m),) if len(metrics) > 1 or not ck else ()), m)
               for ck, m in grid]
    table_rows = []
    for i, (rk, es, matched, by_flops) in enumerate(groups):
        total = Counter(e.epochs for e in es).most_common(1)[0][0]
        total_text = fmt_count(total) if isinstance(total, (int, float)) else MISSING
        if by_flops:  # the row says what was matched: the multi-pass run's training TFLOPs
            tflops = [e.flops / 1e12 for e in es if e.flops]
            total_text = f"{fmt_number(sum(tflops) / len(tflops))} TFLOPs" if tflops else "equal TFLOPs"
            m_label = f"{names.method(es[0].objective, 'single')[:-1]}, {total_text})"
        else:
            m_label = f"{names.method(es[0].objective, 'single')[:-1]}, {total_text} ep)"
        cells_multi, cells_single, cells_delta = [], [], []
        for ck, m in grid:
            a = make_cell({e.seed: e.metrics.get(m) for e in es if e.col == ck})
            b = make_cell({s.seed: s.metrics.get(m) for s in matched if s.col == ck})
            common = [s for s in a.values if s in b.values]
            if common:
                d = make_cell({s: a.values[s] - b.values[s] for s in common})
                one_sample(d, alpha)
            elif a.n and b.n:
                d = Cell(mean=a.mean - b.mean, n=0)
                tmp = Cell(values=a.values, n=a.n)
                compare(tmp, b, alpha)  # Welch's t when both sides have >= 2 runs
                if tmp.test:
                    d.test, d.p, d.n_test = tmp.test, tmp.p, tmp.n_test
                else:
                    d.mark, d.test = MARK_FROM_MEANS, "from-means"
            else:
                d = Cell()
            cells_multi.append(a)
            cells_single.append(b)
            d.signed = True
            cells_delta.append(d)
        table_rows.append(Row((rk[0],), cells_multi + cost_cells(es), rule_before=i > 0))
        table_rows.append(Row((m_label,), cells_single + cost_cells(matched)))
        table_rows.append(Row(("Δ (multi − single)",), cells_delta + [Cell(text=""), Cell(text="")]))
    for j in range(len(grid)):
        for r in table_rows:
            r.cells[j].rank = 0
    for j, (ck, m) in enumerate(grid):
        for k in range(0, len(table_rows), 3):
            a, b = table_rows[k].cells[j], table_rows[k + 1].cells[j]
            shown = [round(c.mean * 100, decimals) for c in (a, b) if c.mean is not None]
            if len(shown) == 2 and shown[0] != shown[1]:
                (a if a.mean > b.mean else b).rank = 1
    marks = marks_in(table_rows, alpha)
    notes = ["Mean ± std over seeds, in %; (n) = number of runs behind the cell; – = no run. The single-pass row is "
             "the same objective trained once for the multi-pass row's total epochs, same schedule shape "
             "(`kebench run ... --budget matched`); the better of each pair is in bold."]
    if MARK_PAIRED in marks:
        notes.append(f"Δ: per-seed difference; {MARK_PAIRED} paired t-test over the shared seeds.")
    if MARK_WELCH in marks:
        notes.append(f"{MARK_WELCH} no shared seeds: Welch's t-test of the difference in means.")
    notes += significance_note(table_rows, alpha)
    if MARK_FROM_MEANS in marks:
        notes.append(f"{MARK_FROM_MEANS} difference of the means (no shared seeds, too few runs to test).")
    if any(g[3] for g in groups):
        notes.append("A single-pass row labelled in TFLOPs is matched in training FLOPs, not epochs: the multi-pass "
                     "regime changes the network, so it trains the whole number of epochs whose FLOPs come "
                     "closest to the multi-pass run's (per seed; its epochs are in the Epochs column).")
    if unmatched:
        notes.append(f"Without a single pass of the same total epochs (run them with --budget matched): "
                     f"{', '.join(unmatched)}.")
    notes.append(COST_NOTE)
    caption = (f"Equal total training budget: {' / '.join(metric_title(m) for m in metrics)} (%) of each multi-pass "
               f"regime beside a single pass with the same total epochs.")
    return Table("budget", caption, ("Method",), columns + list(COST_COLS), table_rows, notes, decimals, warnings)


def _match_plan(entry) -> dict:
    """What `--budget matched` matched for a multi-pass run (kebench/run/budget.py's matched.json in its
    folder): {"match": "epochs" | "flops", "epochs": the baseline's epochs, ...}; {} when unknown."""
    import json
    from pathlib import Path

    try:
        return json.loads((Path(entry.path) / "matched.json").read_text()) if entry.path else {}
    except (OSError, ValueError):
        return {}


def size_table(runs: list[dict], metric=None, names: Names | None = None, decimals: int = 2) -> Table:
    """Accuracy vs model size: per method and arch, the reported network's top-1, params, bytes and
    GFLOPs (`cost.dense`), with the run's training cost (for a search: every individual's). A run
    that also records its full-precision network (`cost.fp32`, binarize) gets a row for it too."""
    names = names or Names()
    metric = (split_list(metric) or ["top1"])[0]
    warnings: list[str] = []
    entries = [e for r in _task_runs(runs, "classification") for e in expand(r, None, names)]
    if not entries:
        raise UserError("No classification results for the size table.")
    rows, _, entries = prepare_entries(entries, ["method", "arch"], [], names, warnings, auto_into="rows")
    row_keys = sorted({e.row for e in entries}, key=row_sorter(entries, rows, names))
    cols = [Col((metric_title(metric),), metric), Col(("Params (M)",), "params_m", "cost", False),
            Col(("Size (MB)",), "size_mb", "cost", False), Col(("GFLOPs",), "gflops", "cost", False),
            Col(("Device-h",), "device_hours", "cost", False)] + list(COST_COLS)

    def net_cost(e, net, key):
        return ((e.run.get("cost") or {}).get(net) or {}).get(key)

    table_rows = []
    for rk in row_keys:
        es = [e for e in entries if e.row == rk]
        versions = [("fp32", f"{metric}_before", " (fp32)")] if any(net_cost(e, "fp32", "params") for e in es) else []
        for net, key, suffix in versions + [("dense", metric, "")]:
            acc = make_cell({e.seed: e.metrics.get(key) for e in es})
            cells = [acc, cost_cell([net_cost(e, net, "params") / 1e6 for e in es if net_cost(e, net, "params")]),
                     cost_cell([net_cost(e, net, "size_bytes") / 1e6 for e in es if net_cost(e, net, "size_bytes")]),
                     cost_cell([net_cost(e, net, "flops") / 1e9 for e in es if net_cost(e, net, "flops")])]
            if suffix:  # the network before binarization: its cost is part of the run's below
                cells += [Cell(), Cell(), Cell()]
            else:
                cells.append(cost_cell([(e.run.get("training") or {}).get("device_hours") for e in es]))
                cells += cost_cells(es)
            head = (rk[0] + suffix, *rk[1:])
            table_rows.append(Row(tuple(group_title(v) if d != "method" else v for d, v in zip(rows, head)), cells))
    rank_column([r.cells[0] for r in table_rows], decimals)
    notes = ["Mean ± std over seeds, in %; (n) = number of runs behind the cell; – = no run.",
             "Params, Size (parameter storage: 4 bytes per weight, 1 bit + one fp32 scale per filter for binarized "
             "k×k patterns) and GFLOPs (per image, inference) of the reported network: for an architecture search "
             "the best individual, for binarize the pattern network; '(fp32)' rows: before binarization.",
             "Device-h, Epochs and TFLOPs: the whole run's training cost (a search: every individual trained, "
             "extinct ones up to their landmark).", COST_NOTE]
    caption = f"Accuracy and size: {metric_title(metric)} (%) of the reported network with its size and cost."
    return Table("size", caption, tuple(dim_title(d) for d in rows), cols, table_rows, notes, decimals, warnings)


def is_fraction(metric: str) -> bool:
    """Whether a metric is a fraction a table shows in % (accuracies, NMI, Recall@K), not a score as it is."""
    return metric.endswith("top1") or metric in RETRIEVAL_METRICS or metric.startswith("r@") or metric in PRIMARY.values()


def interval_table(runs: list[dict], rows=None, cols=None, metric=None, generations=None, names: Names | None = None,
                   decimals: int = 2) -> Table:
    """Mean ± half-width of the two-sided 99% Student-t confidence interval over seeds, with n: how
    Park et al. (Table 6) report the NASWOT score of five trained models (`--analyses naswot`; the
    default metric). Rows x (column groups x metrics); scores are shown as they are, fractions in %."""
    names = names or Names()
    runs = _task_runs(runs, "classification")
    rows = split_list(rows) or ["method"]
    cols = split_list(cols) or ["arch"]
    metrics = split_list(metric) or ["naswot"]
    warnings: list[str] = []
    entries = [e for r in runs for e in expand(r, generations, names)]
    if not entries:
        raise UserError(f"No results at generation {generations}: the runs found have fewer generations.")
    rows, cols, entries = prepare_entries(entries, rows, cols, names, warnings)
    present = {m for e in entries for m, v in e.metrics.items() if isinstance(v, (int, float))}
    for m in metrics:
        if m not in present:
            raise unknown_choice("metric", m, sorted(present), "The NASWOT score is recorded by runs made with "
                                 "`--analyses naswot`; pass --metric with names from the results' `final`.")
    row_keys = sorted({e.row for e in entries}, key=row_sorter(entries, rows, names))
    col_keys = sorted({e.col for e in entries}, key=row_sorter(entries, cols, names, "col"))
    grid = [(ck, m) for ck in col_keys for m in metrics]
    columns = [Col(tuple(group_title(v) for v in ck) + ((metric_title(m),) if len(metrics) > 1 or not ck else ()), m,
                   "metric" if is_fraction(m) else "number", rank=False) for ck, m in grid]
    cells = {m: cells_by_key(entries, m) for m in metrics}
    by_row = defaultdict(list)
    for e in entries:
        by_row[e.row].append(e)
    table_rows = []
    for rk in row_keys:
        row_cells = []
        for ck, m in grid:
            c = cells[m].get((rk, ck), Cell())
            c.half_width = t_half_width(c, CONFIDENCE)
            row_cells.append(c)
        table_rows.append(Row(tuple(group_title(v) if d != "method" else v for d, v in zip(rows, rk)),
                              row_cells + cost_cells(by_row[rk])))
    p = (1 + CONFIDENCE) / 2
    notes = [f"Mean ± half-width of the two-sided {CONFIDENCE:.0%} Student-t confidence interval of the mean over "
             f"seeds: t({p:g}, n − 1) · s / √n, s the sample std (scipy.stats.t); (n) = number of runs behind the "
             f"cell; a cell of one run shows its value alone; – = no run."]
    if any(is_fraction(m) for m in metrics):
        notes.append(f"{', '.join(metric_title(m) for m in metrics if is_fraction(m))} in %; "
                     f"other scores as recorded.")
    if "naswot" in metrics or "naswot_eig" in metrics:
        notes.append("NASWOT: log-determinant of the correlation matrix of the per-sample input Jacobians over a "
                     "batch of training images (Mellor et al. 2021; `--analyses naswot`); higher = the network tells "
                     "the inputs apart more.")
    notes.append(COST_NOTE)
    what = " / ".join(metric_title(m) for m in metrics)
    caption = f"{what}: mean over seeds with its {CONFIDENCE:.0%} confidence interval (Student's t)."
    return Table("interval", caption, tuple(dim_title(d) for d in rows), columns + list(COST_COLS), table_rows,
                 notes, decimals, warnings)
