"""KE's `cost` table kind (dense network N vs slim fit hypothesis H, the KE paper's Table 5 view),
contributed by the KE plugin through registry.yaml's `tables:` section."""
from __future__ import annotations

from kebench.analysis.tables import (ALPHA, COST_COLS, COST_NOTE, MARK_PAIRED, PRIMARY, Cell, Col, Names, Row, Table,
                                    cost_cell, cost_cells, dim_title, expand, make_cell, marks_in, metric_title,
                                    one_sample, prepare_entries, row_sorter, significance_note, split_list)
from kebench.context import PassKind
from kebench.errors import UserError


def cost_table(runs: list[dict], metric=None, generations=None, names: Names | None = None,
               alpha: float = ALPHA, decimals: int = 2) -> Table:
    """Dense N vs slim H of KE-style runs: Acc_1, Acc_g, Δacc, inference GFLOPs/params, reduction."""
    names = names or Names()
    metric = (split_list(metric) or [None])[0]
    chosen = []
    for r in runs:
        m = metric or PRIMARY.get(r.get("task", "classification"), "top1")
        gens = [p for p in r.get("passes") or [] if p.get("kind") == PassKind.GENERATION]
        if any(f"slim_{m}" in (p.get("metrics") or {}) for p in gens) and (r.get("cost") or {}).get("slim"):
            chosen.append(r)
    if not chosen:
        raise UserError("No results with a slim network: the cost table needs multi-generation runs (e.g. KE with "
                        "--split kels) whose passes record `slim_top1` (or slim_<metric>) and whose result has "
                        "`cost.slim`. See docs/tables.md.")
    warnings: list[str] = []
    entries = [e for r in chosen for e in expand(r, generations, names)]
    rows, _, entries = prepare_entries(entries, ["method"], [], names, warnings, auto_into="rows")
    row_keys = sorted({e.row for e in entries}, key=row_sorter(entries, rows, names))
    cols = [Col(("Acc_1",), "acc_1"), Col(("Acc_g",), "acc_g"), Col(("Δacc",), "delta_acc", "delta", False),
            Col(("GFLOPs",), "gflops", "cost", False), Col(("Params (M)",), "params_m", "cost", False),
            Col(("FLOPs red. (%)",), "flops_reduction", "cost", False),
            Col(("Params red. (%)",), "params_reduction", "cost", False)] + list(COST_COLS)

    def first_gen(e, key):
        for p in e.run.get("passes") or []:
            if p.get("kind") == PassKind.GENERATION and p.get("index") == 1:
                return (p.get("metrics") or {}).get(key)
        return None

    def inference(e, net, key):
        return ((e.run.get("cost") or {}).get(net) or {}).get(key)

    table_rows = []
    for rk in row_keys:
        es = [e for e in entries if e.row == rk]
        for net, title in (("dense", "Dense N"), ("slim", "Slim H")):
            m = metric or PRIMARY.get(es[0].run.get("task", "classification"), "top1")
            key = m if net == "dense" else f"slim_{m}"
            acc1 = make_cell({e.seed: first_gen(e, key) for e in es})
            accg = make_cell({e.seed: e.metrics.get(key) for e in es})
            delta = make_cell({e.seed: e.metrics[key] - first_gen(e, key) for e in es
                               if e.metrics.get(key) is not None and first_gen(e, key) is not None})
            if delta.n >= 2:
                one_sample(delta, alpha)
            flops = [inference(e, net, "flops") for e in es]
            params = [inference(e, net, "params") for e in es]
            cells = [acc1, accg, delta, cost_cell([f / 1e9 for f in flops if f is not None]),
                     cost_cell([p / 1e6 for p in params if p is not None])]
            if net == "dense":
                cells += [Cell(text="ref"), Cell(text="ref")]
            else:
                for k in ("flops", "params"):
                    cells.append(cost_cell([100 * (1 - inference(e, "slim", k) / inference(e, "dense", k))
                                            for e in es if inference(e, "slim", k) and inference(e, "dense", k)]))
            rule = net == "dense" and bool(table_rows)
            table_rows.append(Row((*rk, title), cells + cost_cells(es), rule_before=rule))
    notes = ["Mean ± std over seeds, in %; (n) = number of runs behind the cell; – = no run.",
             "Acc_1: accuracy after generation 1; Acc_g: after the generation in the row label; Δacc = Acc_g − Acc_1 "
             "per seed" + (f" ({MARK_PAIRED}: one-sample t-test over seeds against 0)."
                           if marks_in(table_rows, alpha) else "."),
             *significance_note(table_rows, alpha),
             "GFLOPs (per image, inference) and params of the evaluated network; reductions are relative to the dense "
             "network (ref).", COST_NOTE]
    caption = (f"Dense network N vs slim fit-hypothesis H: {metric_title(metric or 'top1')} (%) at generation 1 and g, "
               f"with inference cost.")
    return Table("cost", caption, tuple(dim_title(d) for d in rows) + ("Network",), cols, table_rows, notes, decimals,
                 warnings)
