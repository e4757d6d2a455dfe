"""`kebench table`: folders of results -> the tables the KE and KD papers show, with statistics.

One pipeline for every kind of table:

    result.json files --load_runs--> runs --expand--> entries (one per run and generation shown)
        --_prepare--> labelled, de-duplicated entries with row/column keys
        --pandas groupby--> cells (mean, std, n, per-seed values) --> Table --render--> LaTeX/Markdown/CSV

Kinds: `classification` (KE paper Tables 2/3), `retrieval` (NMI / R@K groups per arch), `cost`
(dense N vs slim H: accuracy at generation 1 and g, FLOPs, params), `kd` (KD x pruning grid with the
surplus of Park et al.), `budget` (each multi-pass row beside the single pass trained for the same
total epochs) and `size` (accuracy, params, storage in bytes, inference FLOPs and search/training
cost of the reported network: binarization before/after, architecture searches). Every comparison table carries the training cost (epochs, TFLOPs) of its rows.
The field names each kind reads are listed in docs/tables.md.

pandas and scipy are imported inside functions: `kebench --help` must stay fast.
"""
from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import click

from kebench.config import NOT_IN_RUN_ID
from kebench.context import PassKind
from kebench.errors import UserError, unknown_choice

KINDS = ("classification", "retrieval", "cost", "kd", "budget", "size")
FORMATS = ("latex", "markdown", "csv")
#: Primary metric per task (mirrors kebench.engine.PRIMARY; a test keeps them equal).
PRIMARY = {"classification": "top1", "retrieval": "r@1"}
#: Columns of the retrieval table in the KE paper (Table 4): NMI, R@1, R@4.
RETRIEVAL_METRICS = ("nmi", "r@1", "r@4")
#: Significance level of the marks (on Benjamini-Hochberg adjusted p-values over the cells a table
#: tests), and resamples of the bootstrap used when seeds differ.
ALPHA = 0.05
#: Fewest runs per side behind a mark: a paired t-test on 2 seeds has 1 degree of freedom, and two
#: seeds that differ by the same test-set quantum would always look significant.
MIN_SEEDS = 3
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # the bootstrap is seeded: the same results always give the same table
MARK_PAIRED, MARK_BOOTSTRAP, MARK_FROM_MEANS = "*", "†", "‡"
MISSING = "–"

#: Config entries that never tell two runs' numbers apart (where/how they ran, or already a table
#: dimension). `generations` is carried by the row label (KE-N3 vs KE-N10), so it is not one either.
IGNORED_CONFIG = {*NOT_IN_RUN_ID, "channels_last", "compile", "eval_every",  # how, not what
                  "method", "seed", "arch", "data", "params"}  # table dimensions
IGNORED_PARAMS = {"generations"}
#: Settings a matched single pass may differ in from its multi-pass row (its schedule is stretched).
BUDGET_FREE = {"epochs", "warmup_epochs"}
FIXED_DIMS = ("method", "objective", "regime", "arch", "dataset", "seed", "generation", "task")
DIM_TITLES = {"method": "Method", "objective": "Objective", "regime": "Regime", "arch": "Arch",
              "dataset": "Dataset", "seed": "Seed", "generation": "Generation", "task": "Task",
              "epochs": "Epochs"}
METRIC_TITLES = {"top1": "Top-1", "nmi": "NMI", "ensemble_top1": "Ensemble top-1"}

#: KD x pruning pipelines (issue 7) in table order, with their column titles.
KD_PIPELINES = {"scratch": "Scratch", "pre_distill": "Pre-Distill", "post_distill": "Post-Distill",
                "pre_post": "Pre-Post", "self_distill": "Self-Distill"}
#: Pipelines whose first phase trains the unpruned network with KD, in the order they are trusted
#: for the "Unpruned KD" cell (Self-Distill first: the surplus is about its teacher).
KD_UNPRUNED_SOURCES = ("self_distill", "pre_post", "pre_distill")
PRUNE_KEYS = ("prune", "pruning", "prune_method")


# ---------------------------------------------------------------------------------------- loading
def discover(paths) -> list[Path]:
    """Run folders (holding result.json or config.yaml) at or below each path, sorted."""
    found = set()
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise UserError(f"Result folder '{root}' does not exist. Pass folders that hold kebench run "
                            f"folders (what `kebench run --out DIR` wrote; default: results/).")
        if root.is_file() and root.name == "result.json":
            root = root.parent
        if (root / "result.json").is_file() or (root / "config.yaml").is_file():
            found.add(root)
            continue
        for name in ("result.json", "config.yaml"):
            found.update(p.parent for p in root.rglob(name))
    return sorted(found, key=str)


def method_matches(method: str, objective: str, regime: str, wanted) -> bool:
    """`--method` filter: an exact method name (`ce`, `smooth+ke`) or a bare regime (`ke`: any objective)."""
    for m in wanted:
        if m in (method, f"{objective}+{regime}") or ("+" not in m and m == regime):
            return True
    return False


def load_runs(paths, *, archs=(), datasets=(), methods=()) -> tuple[list[dict], list[tuple[str, str]]]:
    """Complete runs (result records with '_path') and the runs left out as (path, reason).

    Filters apply to both lists, so a failed run of a method the table does not show is not reported.
    """
    import yaml

    from kebench.results import load_result

    runs, left_out = [], []
    for d in discover(paths):
        rec, problem = load_result(d)
        if rec is None:
            cfg = {}
            if (d / "config.yaml").is_file():
                try:
                    cfg = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
                except (yaml.YAMLError, ValueError, OSError):
                    cfg = {}
            cfg = cfg if isinstance(cfg, dict) else {}
            meta = {"arch": cfg.get("arch"), "dataset": cfg.get("data"), "method": str(cfg.get("method", ""))}
            obj, _, reg = meta["method"].partition("+")
            if _filtered(meta, obj, reg or "single", archs, datasets, methods):
                continue
            why = problem or "incomplete: no result.json (still running or interrupted; rerun with --resume)"
            left_out.append((str(d), why))
            continue
        if _filtered(rec, rec.get("objective", ""), rec.get("regime", ""), archs, datasets, methods):
            continue
        if rec.get("status") != "complete":
            left_out.append((str(d), f"{rec.get('status', 'no status')}: {rec.get('error', 'no error recorded')}"))
            continue
        runs.append({**rec, "_path": str(d)})
    return runs, left_out


def _filtered(rec, objective, regime, archs, datasets, methods) -> bool:
    return bool((archs and rec.get("arch") not in archs) or (datasets and rec.get("dataset") not in datasets)
                or (methods and not method_matches(rec.get("method", ""), objective, regime, methods)))


# ---------------------------------------------------------------------------------------- names
class Names:
    """Display labels and order of plugins, from registry.yaml's `label:` (a mapping can stand in)."""

    def __init__(self, labels: dict[str, str] | None = None):
        if labels is None:
            from kebench import registry

            labels = {name: spec.label or name for name, spec in registry.plugins().items()}
        self.labels = dict(labels)
        self._order = {name: i for i, name in enumerate(self.labels)}

    def label(self, name: str) -> str:
        return self.labels.get(name, name)

    def order(self, name: str) -> tuple:
        return self._order.get(name, len(self._order)), name

    def method(self, objective: str, regime: str, generation: int | None = None) -> str:
        """Paper-style row label: `CE (N1)`, `CE + KE-N10`, `CS-KD + KE-N3`, `CE + DSD`."""
        obj = self.label(objective)
        if regime == "single":
            return f"{obj} ({self.label('single')})"
        reg = self.label(regime)
        return f"{obj} + {reg}-N{generation}" if generation else f"{obj} + {reg}"


def metric_title(metric: str) -> str:
    if metric in METRIC_TITLES:
        return METRIC_TITLES[metric]
    if metric.startswith("r@"):
        return "R@" + metric[2:]
    for prefix, word in (("slim_", "Slim"), ("unpruned_", "Unpruned"), ("ensemble_", "Ensemble")):
        if metric.startswith(prefix):
            return f"{word} {metric_title(metric[len(prefix):]).lower()}"
    return metric


# ---------------------------------------------------------------------------------------- entries
@dataclass
class Entry:
    """One measurement shown in a table: a run at one generation (or at its end)."""

    run: dict
    generation: int | None  # generation shown (None: the regime has no generations)
    last: bool  # the run ended at this generation
    metrics: dict
    epochs: float | None  # training cost up to this point
    flops: float | None
    base: str = ""  # label without the disambiguating suffix
    label: str = ""
    sig: dict = field(default_factory=dict)
    dims: dict = field(default_factory=dict)
    row: tuple = ()
    col: tuple = ()

    @property
    def objective(self) -> str:
        return self.run.get("objective", "")

    @property
    def regime(self) -> str:
        return self.run.get("regime", "")

    @property
    def seed(self):
        return self.run.get("seed")

    @property
    def per_pass_epochs(self):
        return (self.run.get("config") or {}).get("epochs")

    @property
    def path(self) -> str:
        return self.run.get("_path", "")


def _hashable(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def signature(run: dict) -> dict:
    """The run's settings that can change its numbers, flat (`lr`, `ke.split_rate`)."""
    cfg = run.get("config") or {}
    flat = {k: _hashable(v) for k, v in cfg.items() if k not in IGNORED_CONFIG}
    for plugin, params in sorted((cfg.get("params") or {}).items()):
        for k, v in sorted((params or {}).items()):
            if k not in IGNORED_PARAMS:
                flat[f"{plugin}.{k}"] = _hashable(v)
    return flat


def parse_generations(text: str | None):
    """`final` (default) -> None, `all` -> 'all', `3,10` -> [3, 10]."""
    if text is None or text.strip() in ("", "final", "last"):
        return None
    if text.strip() == "all":
        return "all"
    try:
        gens = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        gens = []
    if not gens or gens[0] < 1:
        raise UserError(f"--generation expects 'final', 'all' or generation numbers like '3' or '3,10', got '{text}'.")
    return gens


def expand(run: dict, generations=None, names: Names | None = None) -> list[Entry]:
    """Entries of one run: one per requested generation for multi-generation regimes, else one."""
    names = names or Names()
    passes = run.get("passes") or []
    training = run.get("training") or {}
    final = run.get("final") or {}
    gens = {p.get("index"): i for i, p in enumerate(passes) if p.get("kind") == PassKind.GENERATION}
    if not gens or run.get("regime") == "single":
        e = Entry(run, None, True, dict(final), training.get("epochs"), training.get("flops"))
        e.base = names.method(run.get("objective", ""), run.get("regime", ""))
        return [e]
    last = max(gens)
    if generations is None:
        wanted = [last]
    else:
        wanted = sorted(gens) if generations == "all" else [g for g in generations if g in gens]
    out = []
    for g in wanted:
        pos = gens[g]
        upto = passes[: pos + 1]
        if pos == len(passes) - 1:  # the run's last pass: run-level numbers apply (ensemble, totals)
            metrics = {**(passes[pos].get("metrics") or {}), **final}
            epochs, flops = training.get("epochs"), training.get("flops")
        else:
            metrics = dict(passes[pos].get("metrics") or {})
            epochs = sum(p.get("epochs") or 0 for p in upto)
            flops = sum(p.get("train_flops") or 0 for p in upto) if any("train_flops" in p for p in upto) else None
        e = Entry(run, g, g == last, metrics, epochs, flops)
        e.base = names.method(run.get("objective", ""), run.get("regime", ""), g)
        out.append(e)
    return out


def dim_value(e: Entry, dim: str, names: Names):
    """Value of a row/column dimension for an entry: a fixed name or any config / plugin setting."""
    if dim == "method":
        return e.label
    if dim in ("objective", "regime"):
        return names.label(getattr(e, dim))
    if dim in ("arch", "dataset", "seed", "task"):
        return e.run.get(dim)
    if dim == "generation":
        return e.generation if e.generation is not None else (1 if e.regime == "single" else None)
    cfg = e.run.get("config") or {}
    params = cfg.get("params") or {}
    if dim in cfg and dim != "params":
        return _hashable(cfg[dim])
    if "." in dim:
        plugin, _, key = dim.partition(".")
        return _hashable((params.get(plugin) or {}).get(key))
    for plugin in (e.regime, e.objective, *sorted(params)):
        if dim in (params.get(plugin) or {}):
            return _hashable(params[plugin][dim])
    return None


def _known_dims(entries) -> list[str]:
    found = set(FIXED_DIMS)
    for e in entries:
        cfg = e.run.get("config") or {}
        found.update(k for k in cfg if k != "params")
        for plugin, params in (cfg.get("params") or {}).items():
            found.update(params or {})
            found.update(f"{plugin}.{k}" for k in params or {})
    return sorted(found)


def _sort_value(v):
    if v is None:
        return (2, 0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, v, "")
    return (1, 0, str(v))


def _fmt_setting(key: str, value, short: str) -> str:
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


def _prepare(entries: list[Entry], rows: list[str], cols: list[str], names: Names, warnings: list[str],
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
        parts = [_fmt_setting(k, e.sig.get(k), k.rpartition(".")[2] if shorts[k.rpartition(".")[2]] == 1 else k)
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


# ---------------------------------------------------------------------------------------- cells
@dataclass
class Cell:
    values: dict = field(default_factory=dict)  # seed -> value (fractions for metrics)
    mean: float | None = None
    std: float | None = None
    n: int = 0
    mark: str = ""
    test: str = ""  # paired-t | bootstrap | one-sample-t | from-means
    p: float | None = None  # raw p-value (None: not tested, or constant differences)
    q: float | None = None  # Benjamini-Hochberg adjusted over the table's tested cells
    n_test: int = 0  # runs per side behind the test (shared seeds; the smaller side for the bootstrap)
    rank: int = 0  # 1 best, 2 second in its column
    text: str | None = None  # preformatted (cost cells)
    signed: bool = False  # a difference: shown with its sign


@dataclass
class Col:
    path: tuple  # header levels, outermost first; the last is the leaf title
    metric: str = ""
    kind: str = "metric"  # metric (x100, ranked) | delta (x100, signed) | cost (text) | number
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


def make_cell(values: dict) -> Cell:
    """Mean, sample std (n >= 2) and count of per-seed values; pandas does the arithmetic."""
    import pandas as pd

    values = {s: float(v) for s, v in sorted(values.items(), key=lambda kv: _sort_value(kv[0])) if v is not None}
    if not values:
        return Cell()
    s = pd.Series(list(values.values()), dtype="float64")
    return Cell(values=values, mean=float(s.mean()), std=float(s.std(ddof=1)) if len(s) > 1 else None, n=len(s))


def cells_by_key(entries: list[Entry], metric: str, value=None) -> dict:
    """(row, col) -> Cell for one metric, grouping entries with pandas."""
    import pandas as pd

    value = value or (lambda e: e.metrics.get(metric))
    records = [{"row": e.row, "col": e.col, "seed": e.seed, "value": value(e)} for e in entries]
    records = [r for r in records if isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool)]
    if not records:
        return {}
    df = pd.DataFrame.from_records(records)
    df["key"] = list(zip(df["row"], df["col"]))
    return {key: make_cell(dict(zip(g["seed"].tolist(), g["value"].tolist())))
            for key, g in df.groupby("key", sort=False)}


def compare(cell: Cell, base: Cell, alpha: float) -> None:
    """Test whether `cell` differs from `base`: paired t-test over shared seeds (>= 2), else a
    bootstrap of the difference in means when both have >= 2 runs. Sets test, p and n_test; the
    marks come from `significance`, once all cells of a table are tested."""
    import numpy as np
    from scipy import stats

    common = [s for s in cell.values if s in base.values]
    if len(common) >= 2:
        a = np.array([cell.values[s] for s in common])
        b = np.array([base.values[s] for s in common])
        cell.test, cell.n_test = "paired-t", len(common)
        # constant differences: t is 0/0 or infinite, no p-value (not p = 0)
        cell.p = None if np.all(a - b == (a - b)[0]) else float(stats.ttest_rel(a, b).pvalue)
    elif cell.n >= 2 and base.n >= 2:
        a, b = np.array(list(cell.values.values())), np.array(list(base.values.values()))
        res = stats.bootstrap((a, b), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis), vectorized=True,
                              n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=1 - alpha, method="percentile",
                              rng=np.random.default_rng(BOOTSTRAP_SEED))
        dist = res.bootstrap_distribution
        cell.test, cell.n_test = "bootstrap", min(len(a), len(b))
        # two-sided percentile-bootstrap p-value: twice the smaller tail beyond 0
        cell.p = float(min(1.0, 2 * min(np.mean(dist <= 0), np.mean(dist >= 0))))


def one_sample(cell: Cell, alpha: float) -> None:
    """Test a difference cell's per-seed values against 0 (one-sample t-test, n >= 2); marks: `significance`."""
    import numpy as np
    from scipy import stats

    if cell.n < 2:
        return
    v = np.array(list(cell.values.values()))
    cell.test, cell.n_test = "one-sample-t", cell.n
    cell.p = None if np.all(v == v[0]) else float(stats.ttest_1samp(v, 0.0).pvalue)


TESTS = {"paired-t": MARK_PAIRED, "one-sample-t": MARK_PAIRED, "bootstrap": MARK_BOOTSTRAP}


def significance(cells: list[Cell], alpha: float) -> list[Cell]:
    """Mark the cells of one table: Benjamini-Hochberg (`scipy.stats.false_discovery_control`) over
    every cell tested with >= MIN_SEEDS runs per side, a mark where the adjusted p < alpha. Cells
    tested on fewer runs keep their raw p (shown beside n) and get no mark. Returns the family."""
    from scipy.stats import false_discovery_control

    family = [c for c in cells if c.test in TESTS and c.p is not None and c.n_test >= MIN_SEEDS]
    for c in cells:
        if c.test in TESTS:
            c.mark, c.q = "", None
    if family:
        for c, q in zip(family, false_discovery_control([c.p for c in family], method="bh")):
            c.q = float(q)
            c.mark = TESTS[c.test] if q < alpha else ""
    return family


def rank_column(cells: list[Cell], decimals: int) -> None:
    """Best (1) and second (2) by the displayed value; bold needs >= 2 values, underline >= 3."""
    shown = [round(c.mean * 100, decimals) for c in cells if c.mean is not None]
    levels = sorted(set(shown), reverse=True)
    for c in cells:
        if c.mean is None:
            continue
        v = round(c.mean * 100, decimals)
        if len(shown) >= 2 and v == levels[0]:
            c.rank = 1
        elif len(shown) >= 3 and len(levels) > 1 and v == levels[1]:
            c.rank = 2


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


def _value_note(alpha: float, tests: set, baseline_rule: str) -> list[str]:
    notes = ["Mean ± std over seeds, in %; (n) = number of runs behind the cell; – = no run."]
    if MARK_PAIRED in tests:
        notes.append(f"{MARK_PAIRED} paired t-test over the seeds both cells have, against {baseline_rule}.")
    if MARK_BOOTSTRAP in tests:
        notes.append(f"{MARK_BOOTSTRAP} bootstrap of the difference in means ({BOOTSTRAP_RESAMPLES} resamples), "
                     f"used where the seeds differ, against {baseline_rule}.")
    return notes


def _significance_note(rows, alpha: float) -> list[str]:
    """How the marks were decided, and what (n; p=...) means, for the tables that test."""
    cells = [c for r in rows for c in r.cells]
    family = [c for c in cells if c.test in TESTS and c.p is not None and c.n_test >= MIN_SEEDS]
    notes = []
    if any(c.test in TESTS for c in cells):
        notes.append(f"Marks: Benjamini–Hochberg adjusted p < {alpha:g} over the {len(family)} cell(s) of this "
                     f"table tested on at least {MIN_SEEDS} runs per side; (n; p=...) = too few runs for a mark, "
                     f"the raw p; (n; p=–) = constant differences, no test.")
    return notes


def _marks(rows, alpha: float = ALPHA) -> set:
    significance([c for r in rows for c in r.cells], alpha)
    return {c.mark for r in rows for c in r.cells if c.mark}


def _count(cell: Cell) -> str:
    """The cell's run count, with the raw p where a test ran on too few runs for a mark."""
    if not cell.n:
        return ""
    if cell.test not in TESTS or (cell.n_test >= MIN_SEEDS and cell.p is not None):
        return f"{cell.n}"
    if cell.p is None:
        return f"{cell.n}; p=–"
    if cell.test == "bootstrap" and cell.p == 0:  # no resample crossed 0
        return f"{cell.n}; p<{1 / BOOTSTRAP_RESAMPLES:g}"
    return f"{cell.n}; p={cell.p:.2g}"


# ---------------------------------------------------------------------------------------- kinds
def _split_list(text) -> list[str]:
    if not text:
        return []
    if isinstance(text, (list, tuple)):
        return [t for part in text for t in _split_list(part)]
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _task_runs(runs: list[dict], task: str) -> list[dict]:
    chosen = [r for r in runs if r.get("task", "classification") == task]
    if not chosen:
        tasks = sorted({r.get("task", "?") for r in runs})
        raise UserError(f"No complete {task} results to tabulate (found tasks: {', '.join(tasks) or 'none'}). "
                        f"Check the folders and filters, or pick --kind "
                        f"{'retrieval' if task == 'classification' else 'classification'}.")
    return chosen


def _dim_title(d: str) -> str:
    return DIM_TITLES.get(d, d)


def _group_title(v) -> str:
    return MISSING if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _row_sorter(entries: list[Entry], dims: list[str], names: Names, attr: str = "row"):
    """Sort key of row (or column) keys: methods in registry order, other values naturally."""
    first = {}
    for e in sorted(entries, key=lambda e: _entry_sort(e, names)):
        first.setdefault(getattr(e, attr), e)

    def key(row):
        e = first[row]
        return tuple(_entry_sort(e, names) if d == "method" else _sort_value(v) for d, v in zip(dims, row))
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


def grid_table(runs: list[dict], kind: str, rows=None, cols=None, metrics=None, generations=None,
               names: Names | None = None, alpha: float = ALPHA, decimals: int = 2) -> Table:
    """classification / retrieval: rows x (column groups x metrics) + training cost."""
    names = names or Names()
    task = kind
    runs = _task_runs(runs, task)
    rows = _split_list(rows) or ["method"]
    cols = _split_list(cols) or (["dataset"] if task == "classification" else ["arch"])
    metrics = _split_list(metrics) or ([PRIMARY[task]] if task == "classification" else list(RETRIEVAL_METRICS))
    warnings: list[str] = []
    entries = [e for r in runs for e in expand(r, generations, names)]
    if not entries:
        raise UserError(f"No results at generation {generations}: the runs found have fewer generations.")
    rows, cols, entries = _prepare(entries, rows, cols, names, warnings)
    row_keys = sorted({e.row for e in entries}, key=_row_sorter(entries, rows, names))
    col_keys = sorted({e.col for e in entries}, key=_row_sorter(entries, cols, names, "col"))
    present = {m for e in entries for m, v in e.metrics.items() if isinstance(v, (int, float))}
    for m in metrics:
        if m not in present:
            raise unknown_choice("metric", m, sorted(present), "Pass --metric with names from the results' `final`.")
    columns, grid = [], []
    cells = {m: cells_by_key(entries, m) for m in metrics}
    for ck in col_keys:
        for m in metrics:
            path = tuple(_group_title(v) for v in ck) + ((metric_title(m),) if len(metrics) > 1 or not ck else ())
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
        table_rows.append(Row(tuple(_group_title(v) if d != "method" else v for d, v in zip(rows, rk)),
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
    marks = _marks(table_rows, alpha)
    notes = _value_note(alpha, marks, "the method's baseline (same objective, single pass, same epochs per pass)")
    notes += _significance_note(table_rows, alpha)
    shown = {e.label for e in entries}
    pairs = sorted((a, b) for a, b in base_of.items() if a in shown)
    if pairs and any(c.test in TESTS for r in table_rows for c in r.cells):
        notes.append("Baselines: " + "; ".join(f"{a} vs {b}" for a, b in pairs) + ".")
    notes += [f"Best per {'row' if across_rows else 'column'} in bold, second underlined.", COST_NOTE]
    return Table(kind, caption, tuple(_dim_title(d) for d in rows), columns + list(COST_COLS), table_rows,
                 notes, decimals, warnings)


def cost_table(runs: list[dict], metric=None, generations=None, names: Names | None = None,
               alpha: float = ALPHA, decimals: int = 2) -> Table:
    """Dense N vs slim H of KE-style runs: Acc_1, Acc_g, Δacc, inference GFLOPs/params, reduction."""
    names = names or Names()
    metric = (_split_list(metric) or [None])[0]
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
    rows, _, entries = _prepare(entries, ["method"], [], names, warnings, auto_into="rows")
    row_keys = sorted({e.row for e in entries}, key=_row_sorter(entries, rows, names))
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
                           if _marks(table_rows, alpha) else "."),
             *_significance_note(table_rows, alpha),
             "GFLOPs (per image, inference) and params of the evaluated network; reductions are relative to the dense "
             "network (ref).", COST_NOTE]
    caption = (f"Dense network N vs slim fit-hypothesis H: {metric_title(metric or 'top1')} (%) at generation 1 and g, "
               f"with inference cost.")
    return Table("cost", caption, tuple(_dim_title(d) for d in rows) + ("Network",), cols, table_rows, notes, decimals,
                 warnings)


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
    m = (_split_list(metric) or ["top1"])[0]
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
        sig.update({f"pipeline.{k}": _hashable(v) for k, v in sorted(rp.items()) if k not in PRUNE_KEYS})
        e.dims = {"pipeline": pipe, "prune": _kd_prune(r), "arch": r.get("arch"), "dataset": r.get("dataset")}
        e.col = (pipe,)  # the cost column shows the range over a row's pipelines
        e.sig = sig
        e.base = "" if pipe == "scratch" else names.label(r.get("objective", ""))
        if pipe != "scratch":
            obj = ((r.get("config") or {}).get("params") or {}).get(r.get("objective")) or {}
            e.sig = {**sig, **{f"{r.get('objective')}.{k}": _hashable(v) for k, v in sorted(obj.items())}}
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
        return ", ".join(_fmt_setting(k, e.sig.get(k), k.rpartition(".")[2])
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
    key_order = sorted(rows_by_key, key=lambda k: (_sort_value(k[0]), _sort_value(k[1]), str(k[2]), str(k[3]),
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
        head = ((_group_title(k[0]),) if vary_arch else ()) + ((_group_title(k[1]),) if vary_data else ()) \
            + (str(k[2]), k[4]) + ((k[5] or MISSING,) if suffix else ())
        table_rows.append(Row(head, cells + cost_cells(behind)))
    for j in range(len(KD_PIPELINES) + 2):
        if cols[j].rank:
            rank_column([r.cells[j] for r in table_rows], decimals)
    marks = _marks(table_rows, alpha)
    notes = _value_note(alpha, marks, "Pruned Scratch (Unpruned KD: against Unpruned Scratch)")
    notes += _significance_note(table_rows, alpha)
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


def budget_table(runs: list[dict], cols=None, metrics=None, generations=None, names: Names | None = None,
                 alpha: float = ALPHA, decimals: int = 2) -> Table:
    """Equal total budget: each multi-pass row, the single pass of the same objective trained for the
    same total epochs (what `--budget matched` writes), and their per-seed difference."""
    names = names or Names()
    task = Counter(r.get("task", "classification") for r in runs).most_common(1)[0][0] if runs else "classification"
    runs = _task_runs(runs, task)
    cols = _split_list(cols) or ["dataset"]
    metrics = _split_list(metrics) or [PRIMARY[task]]
    warnings: list[str] = []
    entries = [e for r in runs for e in expand(r, generations, names)]
    multi = [e for e in entries if e.regime != "single"]
    single = [e for e in entries if e.regime == "single"]
    if not multi:
        raise UserError("The budget table needs multi-pass results (KE, BANs, DSD, ...) and single-pass runs with "
                        "the same total epochs: run e.g. `kebench run --method ke --generations 3 --budget matched`.")
    rows, cols, multi = _prepare(multi, ["method"], cols, names, warnings)
    if single:
        _, _, single = _prepare(single, ["method"], cols, names, warnings)

    def comparable(e):  # settings a matched single pass must share (its epochs are the total)
        return tuple(sorted((k, v) for k, v in signature(e.run).items()
                            if k not in BUDGET_FREE and not k.startswith(f"{e.regime}.")))

    pool = defaultdict(list)
    for s in single:
        pool[(s.objective, s.col, comparable(s), s.per_pass_epochs)].append(s)
    row_keys = sorted({e.row for e in multi}, key=_row_sorter(multi, rows, names))
    groups, unmatched = [], []
    for rk in row_keys:
        es = [e for e in multi if e.row == rk]
        matched = {}
        for e in es:
            for s in pool.get((e.objective, e.col, comparable(e), e.epochs), []):
                matched.setdefault((s.col, s.seed), s)
        if matched:
            groups.append((rk, es, list(matched.values())))
        else:
            unmatched.append(rk[0])
    if not groups:
        raise UserError("No single-pass run has the same objective, settings and total epochs as a multi-pass result "
                        f"({', '.join(unmatched)}). Run the multi-pass method with `--budget matched` (it also trains "
                        "the single pass for the same total epochs), e.g. `kebench run --method ke --generations 3 "
                        "--budget matched`.")
    col_keys = sorted({e.col for _, es, _ in groups for e in es}, key=lambda c: tuple(_sort_value(v) for v in c))
    grid = [(ck, m) for ck in col_keys for m in metrics]
    columns = [Col(tuple(_group_title(v) for v in ck) + ((metric_title(m),) if len(metrics) > 1 or not ck else ()), m)
               for ck, m in grid]
    table_rows = []
    for i, (rk, es, matched) in enumerate(groups):
        total = Counter(e.epochs for e in es).most_common(1)[0][0]
        total_text = fmt_count(total) if isinstance(total, (int, float)) else MISSING
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
                compare(tmp, b, alpha)  # bootstrap when both sides have >= 2 runs
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
    marks = _marks(table_rows, alpha)
    notes = ["Mean ± std over seeds, in %; (n) = number of runs behind the cell; – = no run. The single-pass row is "
             "the same objective trained once for the multi-pass row's total epochs, same schedule shape "
             "(`kebench run ... --budget matched`); the better of each pair is in bold."]
    if MARK_PAIRED in marks:
        notes.append(f"Δ: per-seed difference; {MARK_PAIRED} paired t-test over the shared seeds.")
    if MARK_BOOTSTRAP in marks:
        notes.append(f"{MARK_BOOTSTRAP} no shared seeds: bootstrap of the difference in means.")
    notes += _significance_note(table_rows, alpha)
    if MARK_FROM_MEANS in marks:
        notes.append(f"{MARK_FROM_MEANS} difference of the means (no shared seeds, too few runs to test).")
    if unmatched:
        notes.append(f"Without a single pass of the same total epochs (run them with --budget matched): "
                     f"{', '.join(unmatched)}.")
    notes.append(COST_NOTE)
    caption = (f"Equal total training budget: {' / '.join(metric_title(m) for m in metrics)} (%) of each multi-pass "
               f"regime beside a single pass with the same total epochs.")
    return Table("budget", caption, ("Method",), columns + list(COST_COLS), table_rows, notes, decimals, warnings)


def build_table(runs: list[dict], kind: str | None = None, *, rows=None, cols=None, metric=None, generations=None,
                names: Names | None = None, alpha: float = ALPHA, decimals: int = 2) -> Table:
    """Dispatch to the table kind (default: classification, or retrieval when only retrieval runs exist)."""
    if not runs:
        raise UserError("No complete results to tabulate. Point kebench table at the folder given to "
                        "`kebench run --out` (default results/) and check the filters.")
    kind = kind or ("retrieval" if all(r.get("task") == "retrieval" for r in runs) else "classification")
    if kind not in KINDS:
        raise unknown_choice("table kind", kind, list(KINDS))
    if kind in ("cost", "kd", "size") and (rows or cols):
        raise UserError(f"The {kind} table has a fixed shape; --rows/--cols apply to classification, retrieval "
                        f"(and --cols to budget).")
    if kind == "budget" and rows:
        raise UserError("The budget table's rows are fixed (each multi-pass row, its matched single pass, Δ); "
                        "--cols and --metric apply.")
    if kind in ("classification", "retrieval"):
        return grid_table(runs, kind, rows, cols, metric, generations, names, alpha, decimals)
    if kind == "cost":
        return cost_table(runs, metric, generations, names, alpha, decimals)
    if kind == "kd":
        return kd_table(runs, metric, names, alpha, decimals)
    if kind == "size":
        return size_table(runs, metric, names, decimals)
    return budget_table(runs, cols, metric, generations, names, alpha, decimals)


def size_table(runs: list[dict], metric=None, names: Names | None = None, decimals: int = 2) -> Table:
    """Accuracy vs model size: per method and arch, the reported network's top-1, params, bytes and
    GFLOPs (`cost.dense`), with the run's training cost (for a search: every individual's). A run
    that also records its full-precision network (`cost.fp32`, binarize) gets a row for it too."""
    names = names or Names()
    metric = (_split_list(metric) or ["top1"])[0]
    warnings: list[str] = []
    entries = [e for r in _task_runs(runs, "classification") for e in expand(r, None, names)]
    if not entries:
        raise UserError("No classification results for the size table.")
    rows, _, entries = _prepare(entries, ["method", "arch"], [], names, warnings, auto_into="rows")
    row_keys = sorted({e.row for e in entries}, key=_row_sorter(entries, rows, names))
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
            table_rows.append(Row(tuple(_group_title(v) if d != "method" else v for d, v in zip(rows, head)), cells))
    rank_column([r.cells[0] for r in table_rows], decimals)
    notes = ["Mean ± std over seeds, in %; (n) = number of runs behind the cell; – = no run.",
             "Params, Size (parameter storage: 4 bytes per weight, 1 bit + one fp32 scale per filter for binarized "
             "k×k patterns) and GFLOPs (per image, inference) of the reported network: for an architecture search "
             "the best individual, for binarize the pattern network; '(fp32)' rows: before binarization.",
             "Device-h, Epochs and TFLOPs: the whole run's training cost (a search: every individual trained, "
             "extinct ones up to their landmark).", COST_NOTE]
    caption = f"Accuracy and size: {metric_title(metric)} (%) of the reported network with its size and cost."
    return Table("size", caption, tuple(_dim_title(d) for d in rows), cols, table_rows, notes, decimals, warnings)


# ---------------------------------------------------------------------------------------- rendering
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
    mark = {MARK_PAIRED: r"$^{*}$", MARK_BOOTSTRAP: r"$^{\dagger}$",
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


def make_table(paths, *, fmt: str = "markdown", kind: str | None = None, rows=None, cols=None, metric=None,
               archs=(), datasets=(), methods=(), generation: str | None = None, alpha: float = ALPHA,
               decimals: int = 2, names: Names | None = None, stderr=None) -> str:
    """Everything `kebench table` does: load, build, render; left-out runs are listed on stderr."""
    stderr = stderr or sys.stderr
    runs, left_out = load_runs(paths, archs=_split_list(archs), datasets=_split_list(datasets),
                               methods=_split_list(methods))
    if left_out:
        stderr.write(f"left out {len(left_out)} run(s) that did not complete:\n")
        for path, why in left_out:
            stderr.write(f"  {path}: {why}\n")
    table = build_table(runs, kind, rows=rows, cols=cols, metric=metric, generations=parse_generations(generation),
                        names=names, alpha=alpha, decimals=decimals)
    for w in table.warnings:
        stderr.write(f"warning: {w}\n")
    return render(table, fmt)


@click.command("table")
@click.argument("result_dirs", nargs=-1, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="markdown", show_default=True)
@click.option("--kind", type=click.Choice(KINDS),
              help="Table kind. Default: classification (retrieval when all results are retrieval).")
@click.option("--rows", help="Row dimensions, comma list (method, dataset, arch, split_rate, any setting). "
                            "Default: method.")
@click.option("--cols", help="Column dimensions. Default: dataset (classification), arch (retrieval).")
@click.option("--metric", help="Metric(s) from the results' `final`: top1, slim_top1, nmi, r@1, ... (comma list).")
@click.option("--arch", multiple=True, help="Only these archs (repeatable or comma list).")
@click.option("--dataset", multiple=True, help="Only these datasets.")
@click.option("--method", multiple=True,
              help="Only these methods (`ce`, `smooth+ke`; a bare regime `ke` keeps all its objectives).")
@click.option("--generation", default="final", show_default=True,
              help="Generation(s) of multi-generation regimes to show: final, all, or e.g. 3,10 (one row each).")
@click.option("--alpha", type=float, default=ALPHA, show_default=True, help="Significance level of the marks.")
@click.option("--decimals", type=int, default=2, show_default=True)
@click.option("--out", "out_file", type=click.Path(), help="Write the table here instead of stdout.")
def table_cmd(result_dirs, fmt, kind, rows, cols, metric, arch, dataset, method, generation, alpha, decimals, out_file):
    """Paper-ready tables from result folders (mean ± std over seeds, significance, training cost).

    \b
    Examples:
      kebench table results/ --format latex > table2.tex
      kebench table results/ --generation 3,10 --metric top1,slim_top1
      kebench table results/ --kind retrieval --metric nmi,r@1,r@4
      kebench table results/ --kind cost | --kind kd | --kind budget | --kind size
    """
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, got {alpha}.")
    text = make_table(result_dirs or ("results",), fmt=fmt, kind=kind, rows=rows, cols=cols, metric=metric,
                      archs=arch, datasets=dataset, methods=method, generation=generation, alpha=alpha,
                      decimals=decimals)
    if out_file:
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        Path(out_file).write_text(text)
        click.echo(f"wrote {out_file}", err=True)
    else:
        click.echo(text, nl=False)
