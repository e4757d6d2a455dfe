"""The `kd` table kind (Park et al.'s KD x pruning grid with the surplus), contributed by the
KD x pruning plugin through registry.yaml's `tables:` section."""
from __future__ import annotations

from collections import defaultdict

from kebench.errors import UserError
from kebench.analysis.tables import (ALPHA, COST_COLS, COST_NOTE, MARK_FROM_MEANS, MARK_PAIRED, MISSING, Cell, Col,
                                    Entry, Names, Row, Table, compare, cost_cells, fmt_setting, group_title, hashable,
                                    make_cell, marks_in, metric_title, one_sample, rank_column, signature,
                                    significance_note, sort_value, split_list, value_note)

#: KD x pruning pipelines (issue 7) in table order, with their column titles.
KD_PIPELINES = {"scratch": "Scratch", "pre_distill": "Pre-Distill", "post_distill": "Post-Distill",
                "pre_post": "Pre-Post", "self_distill": "Self-Distill"}
#: Pipelines whose first phase trains the unpruned network with KD, in the order they are trusted
#: for the "Unpruned KD" cell (Self-Distill first: the surplus is about its teacher).
KD_UNPRUNED_SOURCES = ("self_distill", "pre_post", "pre_distill")
PRUNE_KEYS = ("prune", "pruning", "prune_method")


def _kd_pipeline(run: dict) -> str | None:
    reg = (run.get("regime") or "").replace("-", "_")
    return reg if reg in KD_PIPELINES else None


def _kd_prune(run: dict) -> str:
    params = ((run.get("config") or {}).get("params") or {}).get(run.get("regime"), {}) or {}
    for k in PRUNE_KEYS:
        if params.get(k) is not None:
            return str(params[k])
    return "pruned"


def kd_table(runs: list[dict], metric=None, names: Names | None = None, alpha: float = ALPHA,
             decimals: int = 2) -> Table:
    """KD x pruning (Park et al.): unpruned scratch/KD, fine-tuned pruned pipelines and the surplus
    (Self-Distill − Finetuned scratch) − (Unpruned KD − Unpruned scratch), wherever its cells exist."""
    names = names or Names()
    m = (split_list(metric) or ["top1"])[0]
    um = f"unpruned_{m}"
    kd_runs = [r for r in runs if _kd_pipeline(r)]
    if not kd_runs:
        raise UserError("No KD x pruning results: the kd table reads runs whose regime is one of "
                        f"{', '.join(KD_PIPELINES)} (see docs/tables.md for the fields it needs).")
    shared = set.intersection(*(set((((r.get("config") or {}).get("params") or {}).get(r["regime"]) or {}))
                                for r in kd_runs)) - set(PRUNE_KEYS)
    warnings: list[str] = []
    entries = []
    for r in kd_runs:
        pipe = _kd_pipeline(r)
        e = Entry(r, None, True, dict(r.get("final") or {}), (r.get("training") or {}).get("epochs"),
                  (r.get("training") or {}).get("flops"))
        rp = ((r.get("config") or {}).get("params") or {}).get(r["regime"]) or {}
        sig = {k: v for k, v in signature(r).items() if "." not in k}
        sig.update({f"pipeline.{k}": hashable(v) for k, v in sorted(rp.items()) if k not in PRUNE_KEYS})
        e.dims = {"pipeline": pipe, "prune": _kd_prune(r), "arch": r.get("arch"), "dataset": r.get("dataset")}
        e.col = (pipe,)  # the cost column shows the range over a row's pipelines
        e.sig = sig
        e.base = "" if pipe == "scratch" else names.label(r.get("objective", ""))
        if pipe != "scratch":
            obj = ((r.get("config") or {}).get("params") or {}).get(r.get("objective")) or {}
            e.sig = {**sig, **{f"{r.get('objective')}.{k}": hashable(v) for k, v in sorted(obj.items())}}
        entries.append(e)
    # Disambiguate rows of the same prune method and KD kind whose settings differ.
    vary_arch = len({e.dims["arch"] for e in entries}) > 1
    vary_data = len({e.dims["dataset"] for e in entries}) > 1
    groups = defaultdict(list)
    for e in entries:
        groups[(e.dims["prune"], e.base, e.dims["pipeline"], e.dims["arch"], e.dims["dataset"])].append(e)
    suffix = set()
    for es in groups.values():
        keys = set().union(*(e.sig for e in es))
        suffix.update(k for k in keys if len({e.sig.get(k) for e in es}) > 1)
    suffix = sorted(suffix)

    def setting_key(e):  # what must agree between a KD row and its scratch partner (settings both have)
        return tuple((k, e.sig.get(k)) for k in suffix if "." not in k or k.partition(".")[2] in shared
                     and k.startswith("pipeline."))

    def settings_text(e):
        return ", ".join(fmt_setting(k, e.sig.get(k), k.rpartition(".")[2])
                         for k in suffix if e.sig.get(k) is not None)

    rows_by_key = defaultdict(lambda: defaultdict(list))
    scratch = defaultdict(list)
    for e in entries:
        place = (e.dims["arch"], e.dims["dataset"], e.dims["prune"], setting_key(e))
        if e.dims["pipeline"] == "scratch":
            scratch[place].append(e)
        else:
            rows_by_key[(*place, e.base, settings_text(e))][e.dims["pipeline"]].append(e)
    for place in scratch:  # scratch runs without a KD partner still get a row
        if not any(k[:4] == place for k in rows_by_key):
            rows_by_key[(*place, MISSING, settings_text(scratch[place][0]))]
    row_names = (("Arch",) if vary_arch else ()) + (("Dataset",) if vary_data else ()) + ("Pruning", "Distillation")
    if suffix:
        row_names += ("Settings",)
    # The scratch columns are the reference every row is compared with: not ranked.
    cols = [Col(("Unpruned", "Scratch"), "unpruned_scratch", rank=False), Col(("Unpruned", "KD"), "unpruned_kd")]
    cols += [Col(("Pruned + fine-tuned", title), pipe, rank=pipe != "scratch") for pipe, title in KD_PIPELINES.items()]
    cols += [Col(("", "Surplus"), "surplus", "delta", False)] + list(COST_COLS)

    def dedupe(es):
        seen = {}
        for e in sorted(es, key=lambda e: (e.run.get("run_id", ""), e.path)):
            if e.seed in seen:
                warnings.append(f"duplicate result for {e.run.get('method')} seed {e.seed}: using {seen[e.seed].path}, "
                                f"leaving out {e.path}")
                continue
            seen[e.seed] = e
        return list(seen.values())

    table_rows = []
    key_order = sorted(rows_by_key, key=lambda k: (sort_value(k[0]), sort_value(k[1]), str(k[2]), str(k[3]),
                                                   names.order(k[4]) if k[4] != MISSING else (1e9, ""), k[5]))
    done_scratch = set()
    for k in key_order:
        place = k[:4]
        sc = scratch.get(place, [])
        if place not in done_scratch:
            sc = dedupe(sc)
            done_scratch.add(place)
            scratch[place] = sc
        pipes = {p: dedupe(es) for p, es in rows_by_key[k].items()}
        u_scratch = make_cell({e.seed: e.metrics.get(um) for e in sc})
        u_kd_vals = {}
        for src in KD_UNPRUNED_SOURCES:
            for e in pipes.get(src, []):
                if e.metrics.get(um) is not None:
                    u_kd_vals.setdefault(e.seed, e.metrics[um])
        u_kd = make_cell(u_kd_vals)
        # --prune none (KD x augmentation alone) has no pruned network: its `top1` is the unpruned one.
        prunes = k[2] != "none"
        pruned = {"scratch": make_cell({e.seed: e.metrics.get(m) for e in sc} if prunes else {})}
        for p in list(KD_PIPELINES)[1:]:
            pruned[p] = make_cell({e.seed: e.metrics.get(m) for e in pipes.get(p, [])} if prunes else {})
        if u_kd.n and u_scratch.n:
            compare(u_kd, u_scratch, alpha)
        for p in list(KD_PIPELINES)[1:]:
            if pruned[p].n and pruned["scratch"].n:
                compare(pruned[p], pruned["scratch"], alpha)
        parts = (pruned["self_distill"], pruned["scratch"], u_kd, u_scratch)
        seeds = [s for s in parts[0].values if all(s in c.values for c in parts)]
        if seeds:
            self_d, scratch_p, kd_u, scratch_u = (c.values for c in parts)
            surplus = make_cell({s: (self_d[s] - scratch_p[s]) - (kd_u[s] - scratch_u[s]) for s in seeds})
            one_sample(surplus, alpha)
        elif all(c.n for c in parts):
            surplus = Cell(mean=(parts[0].mean - parts[1].mean) - (parts[2].mean - parts[3].mean), n=0,
                           mark=MARK_FROM_MEANS, test="from-means")
        else:
            surplus = Cell()
        cells = [u_scratch, u_kd, *(pruned[p] for p in KD_PIPELINES), surplus]
        behind = sc + [e for es in pipes.values() for e in es]
        head = ((group_title(k[0]),) if vary_arch else ()) + ((group_title(k[1]),) if vary_data else ()) \
            + (str(k[2]), k[4]) + ((k[5] or MISSING,) if suffix else ())
        table_rows.append(Row(head, cells + cost_cells(behind)))
    for j in range(len(KD_PIPELINES) + 2):
        if cols[j].rank:
            rank_column([r.cells[j] for r in table_rows], decimals)
    marks = marks_in(table_rows, alpha)
    notes = value_note(alpha, marks, "Pruned Scratch (Unpruned KD: against Unpruned Scratch)")
    notes += significance_note(table_rows, alpha)
    surplus_col = len(KD_PIPELINES) + 2
    tested = any(r.cells[surplus_col].test == "one-sample-t" and r.cells[surplus_col].mark for r in table_rows)
    notes.append("Surplus = (Self-Distill − Scratch) − (Unpruned KD − Unpruned Scratch), per seed where all four "
                 "exist" + (f" ({MARK_PAIRED} on the surplus: one-sample t-test against 0)" if tested else "")
                 + (f"; {MARK_FROM_MEANS} from the cell means, no seed has all four." if MARK_FROM_MEANS in marks else ".")
                 + " Positive: KD and pruning gains add up with synergy.")
    notes += ["Best per column in bold, second underlined.",
              COST_NOTE.replace("up to the generation shown", "(all phases)")]
    caption = (f"Knowledge distillation × pruning: {metric_title(m)} (%) of the unpruned and the pruned, "
               f"fine-tuned networks.")
    return Table("kd", caption, row_names, cols, table_rows, notes, decimals, warnings)

