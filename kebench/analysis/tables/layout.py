"""Layout shared by every table kind: the Table/Col/Row model, labelled and de-duplicated entries,
row sorting, baselines, cost cells and the notes under a table."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from kebench.errors import UserError, unknown_choice
from kebench.analysis.tables.runs import (DIM_TITLES, MISSING, Entry, Names, _known_dims, sort_value, dim_value,
                                 signature)
from kebench.analysis.tables.stats import Cell

@dataclass
class Col:
    path: tuple  # header levels, outermost first; the last is the leaf title
    metric: str = ""
    kind: str = "metric"  # metric (x100, ranked) | delta (x100, signed) | cost (text) | number (as it is)
    rank: bool = True


@dataclass
class Row:
    head: tuple
    cells: list
    rule_before: bool = False


@dataclass
class Table:
    kind: str
    caption: str
    row_names: tuple
    cols: list
    rows: list
    notes: list = field(default_factory=list)
    decimals: int = 2
    warnings: list = field(default_factory=list)



def fmt_number(x: float) -> str:
    """Cost numbers with three significant digits and no exponent for the usual range."""
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_count(x: float) -> str:
    """Epochs: whole numbers without decimals."""
    return f"{x:.0f}" if float(x).is_integer() else fmt_number(x)


def cost_cell(values: list, fmt=fmt_number) -> Cell:
    """A cost cell: the value when all runs agree, else the range `lo–hi`."""
    values = [v for v in values if v is not None]
    if not values:
        return Cell()
    lo, hi = min(values), max(values)
    text = fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}{MISSING}{fmt(hi)}"
    return Cell(mean=sum(values) / len(values), n=len(values), text=text)


def cost_cells(entries: list[Entry]) -> list[Cell]:
    """Training epochs and TFLOPs of the runs behind a row (per-column means, then value or range)."""
    per_col = defaultdict(list)
    for e in entries:
        per_col[e.col].append(e)
    epochs, tflops = [], []
    for es in per_col.values():
        ep = [e.epochs for e in es if e.epochs is not None]
        fl = [e.flops for e in es if e.flops]
        epochs.append(sum(ep) / len(ep) if ep else None)
        tflops.append(sum(fl) / len(fl) / 1e12 if fl else None)
    cells = [cost_cell(epochs, fmt_count), cost_cell(tflops)]
    cells[0].n = sum(e.epochs is not None for e in entries)
    cells[1].n = sum(bool(e.flops) for e in entries)
    return cells


COST_COLS = [Col(("Epochs",), "train_epochs", "cost", False), Col(("TFLOPs",), "train_tflops", "cost", False)]
COST_NOTE = ("Epochs and TFLOPs: training cost of one run up to the generation shown (torch's FLOP counter, "
             "1 multiply-add = 2 FLOPs); a range where the runs behind a row differ (e.g. per dataset).")



def fmt_setting(key: str, value, short: str) -> str:
    if key == "epochs":
        return f"{value} ep"
    if isinstance(value, float):
        value = f"{value:g}"
    return f"{short}={value}"


def _with_suffix(base: str, parts: list[str]) -> str:
    if not parts:
        return base
    if base.endswith(")"):
        return f"{base[:-1]}, {', '.join(parts)})"
    return f"{base} ({', '.join(parts)})"


def _entry_sort(e: Entry, names: Names) -> tuple:
    return (names.order(e.objective), e.regime != "single", names.order(e.regime), e.generation or 0, e.label)


def prepare_entries(entries: list[Entry], rows: list[str], cols: list[str], names: Names, warnings: list[str],
             auto_into: str = "cols") -> tuple[list[str], list[str], list[Entry]]:
    """Give entries labels (disambiguated where runs differ in settings), row/column keys; de-duplicate.

    Dimensions that vary but are not shown (arch, dataset) join the table so cells never pool
    different set-ups; so does `method` when several methods remain.
    """
    rows, cols = list(rows), list(cols)
    auto = [d for d in ("arch", "dataset") if d not in rows + cols and len({e.run.get(d) for e in entries}) > 1]
    if auto_into == "cols":
        cols = auto + cols
    else:
        rows = rows + auto
    if "method" not in rows + cols and len({e.base for e in entries}) > 1:
        rows = ["method"] + rows
    known = _known_dims(entries)
    for d in rows + cols:
        if d not in known:
            raise unknown_choice("table dimension", d, known, "Give --rows/--cols as a comma list of these names.")
    dims = [d for d in rows + cols if d != "method"]
    for e in entries:
        e.dims = {d: dim_value(e, d, names) for d in dims}
        e.sig = {k: v for k, v in signature(e.run).items()
                 if not any(k == d or k.endswith("." + d) for d in dims)}
    groups = defaultdict(list)
    for e in entries:
        groups[(e.base, tuple(sorted(e.dims.items(), key=lambda kv: kv[0])))].append(e)
    suffix_keys = defaultdict(set)
    for (base, _), es in groups.items():
        keys = set().union(*(e.sig for e in es))
        suffix_keys[base].update(k for k in keys if len({e.sig.get(k) for e in es}) > 1)
    for e in entries:
        keys = sorted(suffix_keys[e.base])
        shorts = Counter(k.rpartition(".")[2] for k in keys)
        parts = [fmt_setting(k, e.sig.get(k), k.rpartition(".")[2] if shorts[k.rpartition(".")[2]] == 1 else k)
                 for k in keys]
        e.label = _with_suffix(e.base, parts)
        e.row = tuple(e.label if d == "method" else e.dims[d] for d in rows)
        e.col = tuple(e.label if d == "method" else e.dims[d] for d in cols)
    kept: dict[tuple, Entry] = {}
    for e in sorted(entries, key=lambda e: (not e.last, e.run.get("run_id", ""), e.path)):
        key = (e.row, e.col, e.seed)
        if key in kept:
            other = kept[key]
            if e.last and other.last or e.run.get("run_id") == other.run.get("run_id"):
                warnings.append(f"duplicate result for {e.label} seed {e.seed}: using {other.path}, "
                                f"leaving out {e.path}")
            continue
        kept[key] = e
    return rows, cols, list(kept.values())




def _task_runs(runs: list[dict], task: str) -> list[dict]:
    chosen = [r for r in runs if r.get("task", "classification") == task]
    if not chosen:
        tasks = sorted({r.get("task", "?") for r in runs})
        raise UserError(f"No complete {task} results to tabulate (found tasks: {', '.join(tasks) or 'none'}). "
                        f"Check the folders and filters, or pick --kind "
                        f"{'retrieval' if task == 'classification' else 'classification'}.")
    return chosen


def dim_title(d: str) -> str:
    return DIM_TITLES.get(d, d)


def group_title(v) -> str:
    return MISSING if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def row_sorter(entries: list[Entry], dims: list[str], names: Names, attr: str = "row"):
    """Sort key of row (or column) keys: methods in registry order, other values naturally."""
    first = {}
    for e in sorted(entries, key=lambda e: _entry_sort(e, names)):
        first.setdefault(getattr(e, attr), e)

    def key(row):
        e = first[row]
        return tuple(_entry_sort(e, names) if d == "method" else sort_value(v) for d, v in zip(dims, row))
    return key


def _baseline_labels(entries: list[Entry]) -> dict:
    """method label -> its baseline's label: the same objective under `single` with the same epochs per
    pass (the papers' equal per-generation budget); where several qualify, the closest settings win."""
    info = {}
    for e in entries:
        info.setdefault(e.label, {"objective": e.objective, "regime": e.regime, "epochs": Counter(), "sig": e.sig})
        info[e.label]["epochs"][e.per_pass_epochs] += 1
    out = {}
    for label, r in info.items():
        if r["regime"] == "single":
            continue
        epochs = r["epochs"].most_common(1)[0][0]
        cands = [(label2, r2) for label2, r2 in info.items() if r2["regime"] == "single"
                 and r2["objective"] == r["objective"] and epochs in r2["epochs"]]
        if cands:
            def closeness(item):
                sig = item[1]["sig"]
                return (-sum(1 for k, v in sig.items() if k != "epochs" and r["sig"].get(k) == v), item[0])
            out[label] = min(cands, key=closeness)[0]
    return out


def _swap(key: tuple, pos: int | None, label: str | None) -> tuple | None:
    if pos is None or label is None:
        return None
    return key[:pos] + (label,) + key[pos + 1:]


