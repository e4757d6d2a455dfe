"""Statistics of table cells: mean/std per cell, paired t-test (shared seeds) or Welch's t-test
(seeds differ) against a baseline, one-sample t-test of differences, Benjamini-Hochberg marks and
ranking (scipy, pandas).

Why t-tests: at the 3-10 seeds studies use, a percentile bootstrap of the difference in means is
anti-conservative (under the null it marked 20% of 3-vs-3 comparisons at alpha 0.05), and an exact
permutation test cannot mark anything at 3 seeds (its smallest two-sided p is 2/2^n paired: 0.25 at
n = 3, 0.0625 at 5, 0.031 at 6; 2/C(2n, n) unpaired: 0.1 at 3 vs 3, 0.029 at 4 vs 4). The paired
and Welch t-tests hold the false-positive rate at or below alpha at 3, 5 and 10 seeds
(tests/test_tables.py simulates it; docs/tables.md reports the power)."""
from __future__ import annotations

from dataclasses import dataclass, field

from kebench.analysis.tables.runs import Entry, sort_value

#: Significance level of the marks (on Benjamini-Hochberg adjusted p-values over the cells a table tests).
ALPHA = 0.05
#: Fewest runs per side behind a mark: a paired t-test on 2 seeds has 1 degree of freedom, and two
#: seeds that differ by the same test-set quantum would always look significant.
MIN_SEEDS = 3
#: Differences (or values) whose spread is below this share of their magnitude count as constant:
#: accuracies are test-set quanta, and (a - b) of floats is "the same" only up to rounding.
CONSTANT_RTOL = 1e-9
#: Smallest p a table prints: t-test p-values below it rest on the normal tails alone.
P_FLOOR = 0.001
MARK_PAIRED, MARK_WELCH, MARK_FROM_MEANS = "*", "†", "‡"
#: Confidence of the `interval` table's intervals: Park et al. Table 6 give their NASWOT scores so.
CONFIDENCE = 0.99


@dataclass
class Cell:
    values: dict = field(default_factory=dict)  # seed -> value (fractions for metrics)
    mean: float | None = None
    std: float | None = None
    n: int = 0
    mark: str = ""
    test: str = ""  # paired-t | welch-t | one-sample-t | from-means
    p: float | None = None  # raw p-value (None: not tested, or constant differences)
    q: float | None = None  # Benjamini-Hochberg adjusted over the table's tested cells
    n_test: int = 0  # runs per side behind the test (shared seeds; the smaller side for Welch's t)
    rank: int = 0  # 1 best, 2 second in its column
    text: str | None = None  # preformatted (cost cells)
    signed: bool = False  # a difference: shown with its sign
    half_width: float | None = None  # of a confidence interval of the mean (`interval` table): shown instead of std



def make_cell(values: dict) -> Cell:
    """Mean, sample std (n >= 2) and count of per-seed values; pandas does the arithmetic."""
    import pandas as pd

    values = {s: float(v) for s, v in sorted(values.items(), key=lambda kv: sort_value(kv[0])) if v is not None}
    if not values:
        return Cell()
    s = pd.Series(list(values.values()), dtype="float64")
    return Cell(values=values, mean=float(s.mean()), std=float(s.std(ddof=1)) if len(s) > 1 else None, n=len(s))


def t_half_width(cell: Cell, confidence: float = CONFIDENCE) -> float | None:
    """Half-width of the two-sided Student-t confidence interval of the cell's mean:
    t_{(1 + confidence) / 2, n - 1} * s / sqrt(n), s the sample std (scipy.stats.t); None below 2 runs."""
    import math

    from scipy import stats

    if cell.n < 2 or cell.std is None:
        return None
    return float(stats.t.ppf((1 + confidence) / 2, cell.n - 1) * cell.std / math.sqrt(cell.n))


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


def _constant(x, axis=-1):
    """Whether the values along `axis` are equal up to rounding (spread <= CONSTANT_RTOL x magnitude)."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    scale = np.maximum(np.abs(x).max(axis=axis), 1.0)
    return np.ptp(x, axis=axis) <= CONSTANT_RTOL * scale


def p_values(a, b=None, *, paired: bool = False):
    """Two-sided p-values along the last axis (vectorised: tables call it on one comparison, the
    simulation in tests/test_tables.py on 10^5 at once). b None: one-sample t-test of `a` against 0;
    paired: paired t-test of a against b; else Welch's t-test. NaN where the test has no statistic:
    constant differences (paired, one-sample) or both sides constant (Welch)."""
    import warnings

    import numpy as np
    from scipy import stats

    a = np.asarray(a, dtype=float)
    ramp = np.arange(a.shape[-1], dtype=float)  # stands in for constant samples: scipy never sees 0/0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)  # a near-constant side
        if b is None or paired:
            d = a if b is None else a - np.asarray(b, dtype=float)
            flat = _constant(d)
            p = stats.ttest_1samp(np.where(flat[..., None], ramp, d), 0.0, axis=-1).pvalue
        else:
            b = np.asarray(b, dtype=float)
            flat = _constant(a) & _constant(b)
            p = stats.ttest_ind(np.where(flat[..., None], ramp, a), np.where(flat[..., None], ramp, b),
                                equal_var=False, axis=-1).pvalue
    return np.where(flat, np.nan, p)


def _p(value) -> float | None:
    value = float(value)
    return None if value != value else value


def compare(cell: Cell, base: Cell, alpha: float) -> None:
    """Test whether `cell` differs from `base`: paired t-test over shared seeds (>= 2), else Welch's
    t-test when both have >= 2 runs. Sets test, p and n_test; the marks come from `significance`,
    once all cells of a table are tested."""
    common = [s for s in cell.values if s in base.values]
    if len(common) >= 2:
        a = [cell.values[s] for s in common]
        b = [base.values[s] for s in common]
        cell.test, cell.n_test = "paired-t", len(common)
        cell.p = _p(p_values(a, b, paired=True))  # constant differences: no t, no p (not p = 0)
    elif cell.n >= 2 and base.n >= 2:
        a, b = list(cell.values.values()), list(base.values.values())
        cell.test, cell.n_test = "welch-t", min(len(a), len(b))
        cell.p = _p(p_values(a, b))


def one_sample(cell: Cell, alpha: float) -> None:
    """Test a difference cell's per-seed values against 0 (one-sample t-test, n >= 2); marks: `significance`."""
    if cell.n < 2:
        return
    cell.test, cell.n_test = "one-sample-t", cell.n
    cell.p = _p(p_values(list(cell.values.values())))


TESTS = {"paired-t": MARK_PAIRED, "one-sample-t": MARK_PAIRED, "welch-t": MARK_WELCH}


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
    if MARK_WELCH in tests:
        notes.append(f"{MARK_WELCH} Welch's t-test (unequal variances), used where the seeds differ, "
                     f"against {baseline_rule}.")
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
    return f"{cell.n}; {format_p(cell.p)}"


def format_p(p: float) -> str:
    """'p=0.018', or 'p<0.001' below P_FLOOR (a t-test on a handful of seeds cannot back more digits)."""
    return f"p<{P_FLOOR:g}" if p < P_FLOOR else f"p={p:.2g}"

