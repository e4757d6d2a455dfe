"""Statistics of table cells: mean/std per cell, paired t-test or bootstrap against a baseline,
one-sample t-test of differences, Benjamini-Hochberg marks and ranking (scipy, pandas)."""
from __future__ import annotations

from dataclasses import dataclass, field

from kebench.analysis.tables.runs import Entry, sort_value

#: Significance level of the marks (on Benjamini-Hochberg adjusted p-values over the cells a table
#: tests), and resamples of the bootstrap used when seeds differ.
ALPHA = 0.05
#: Fewest runs per side behind a mark: a paired t-test on 2 seeds has 1 degree of freedom, and two
#: seeds that differ by the same test-set quantum would always look significant.
MIN_SEEDS = 3
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # the bootstrap is seeded: the same results always give the same table
MARK_PAIRED, MARK_BOOTSTRAP, MARK_FROM_MEANS = "*", "†", "‡"


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



def make_cell(values: dict) -> Cell:
    """Mean, sample std (n >= 2) and count of per-seed values; pandas does the arithmetic."""
    import pandas as pd

    values = {s: float(v) for s, v in sorted(values.items(), key=lambda kv: sort_value(kv[0])) if v is not None}
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


def value_note(alpha: float, tests: set, baseline_rule: str) -> list[str]:
    notes = ["Mean ± std over seeds, in %; (n) = number of runs behind the cell; – = no run."]
    if MARK_PAIRED in tests:
        notes.append(f"{MARK_PAIRED} paired t-test over the seeds both cells have, against {baseline_rule}.")
    if MARK_BOOTSTRAP in tests:
        notes.append(f"{MARK_BOOTSTRAP} bootstrap of the difference in means ({BOOTSTRAP_RESAMPLES} resamples), "
                     f"used where the seeds differ, against {baseline_rule}.")
    return notes


def significance_note(rows, alpha: float) -> list[str]:
    """How the marks were decided, and what (n; p=...) means, for the tables that test."""
    cells = [c for r in rows for c in r.cells]
    family = [c for c in cells if c.test in TESTS and c.p is not None and c.n_test >= MIN_SEEDS]
    notes = []
    if any(c.test in TESTS for c in cells):
        notes.append(f"Marks: Benjamini–Hochberg adjusted p < {alpha:g} over the {len(family)} cell(s) of this "
                     f"table tested on at least {MIN_SEEDS} runs per side; (n; p=...) = too few runs for a mark, "
                     f"the raw p; (n; p=–) = constant differences, no test.")
    return notes


def marks_in(rows, alpha: float = ALPHA) -> set:
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

