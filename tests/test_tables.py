"""kebench table: golden files for every kind x format, plus the numbers behind them checked by hand.

Fixtures: tests/golden/runs/ (hand-made result.json files, written by tests/golden/make_fixtures.py).
Regenerate the golden tables after an intended change with KEBENCH_UPDATE_GOLDEN=1.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import statistics
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kebench.analysis import tables
from kebench.errors import UserError
from kebench.analysis.tables.stats import _count

import latex_page

GOLDEN = Path(__file__).parent / "golden"
RUNS = GOLDEN / "runs"
# Fixed labels: the golden files must not change when another plugin's registry entry does.
LABELS = {"ce": "CE", "smooth": "Smth", "cskd": "CS-KD", "triplet": "Triplet", "kd": "KD", "fd": "FD",
          "single": "N1", "ke": "KE", "bans": "BANs", "dsd": "DSD"}
CASES = {  # name -> (fixture folder, make_table keyword arguments)
    "classification": ("classification", {"kind": "classification"}),
    "classification_gen3-10": ("classification", {"kind": "classification", "generation": "3,10"}),
    "retrieval": ("retrieval", {"kind": "retrieval"}),
    "cost": ("classification", {"kind": "cost"}),
    "kd": ("kd", {"kind": "kd"}),
    "budget": ("budget", {"kind": "budget"}),
    "size": ("classification", {"kind": "size"}),
    "interval": ("classification", {"kind": "interval", "metric": "top1", "cols": "dataset"}),
}
EXT = {"latex": "tex", "markdown": "md", "csv": "csv"}


@pytest.fixture(scope="module")
def names():
    return tables.Names(LABELS)


def make(folder, names, fmt="csv", **kw):
    err = io.StringIO()
    text = tables.make_table([RUNS / folder], fmt=fmt, names=names, stderr=err, **kw)
    return text, err.getvalue()


def csv_frame(folder, names, **kw) -> pd.DataFrame:
    text, _ = make(folder, names, "csv", **kw)
    return pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""], dtype={"text": str})


def cell(df, row, column, rowcol="Method"):
    hit = df[(df[rowcol] == row) & (df["column"] == column)]
    assert len(hit) == 1, (row, column, df[[rowcol, "column"]].values.tolist())
    return hit.iloc[0]


def fixture_value(folder, method, dataset, seed, key="top1", generation=None, prune=None):
    for path in sorted((RUNS / folder).glob("*/result.json")):
        r = json.loads(path.read_text())
        if prune and r["config"]["params"][r["regime"]]["prune"] != prune:
            continue
        if r["method"] == method and r["dataset"] == dataset and r["seed"] == seed and r["status"] == "complete":
            if generation is None:
                return r["final"][key]
            return next(p["metrics"][key] for p in r["passes"]
                        if p["kind"] == "generation" and p["index"] == generation)
    raise KeyError((method, dataset, seed))


# ------------------------------------------------------------------------------------------ golden files
@pytest.mark.parametrize("fmt", list(EXT))
@pytest.mark.parametrize("case", list(CASES))
def test_golden(case, fmt, names):
    folder, kw = CASES[case]
    text, _ = make(folder, names, fmt, **kw)
    path = GOLDEN / f"{case}.{EXT[fmt]}"
    if os.environ.get("KEBENCH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path}; run with KEBENCH_UPDATE_GOLDEN=1 once"
    assert text == path.read_text()
    again, _ = make(folder, names, fmt, **kw)
    assert again == text  # deterministic


# ------------------------------------------------------------------------------------------ numbers
def test_cells_are_mean_and_sample_std_over_seeds(names):
    df = csv_frame("classification", names)
    c = cell(df, "CE + KE-N10", "flowers102")
    values = [fixture_value("classification", "ce+ke", "flowers102", s) for s in (0, 1, 2)]
    assert c["n"] == 3 and c["seeds"] == "0;1;2"  # the failed seed-3 run is not averaged in
    assert c["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
    assert c["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert c["text"] == f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def test_failed_and_incomplete_runs_are_listed_on_stderr_not_averaged(names):
    _, err = make("classification", names, "markdown")
    assert "left out 2 run(s)" in err
    assert "ce+ke_resnet18_flowers102_s3_paper_200: failed: non-finite loss" in err
    assert "cskd+ke_resnet18_flowers102_s0_incomplete: incomplete: no result.json" in err
    df = csv_frame("classification", names)
    assert "CS-KD + KE-N10" not in set(df["Method"])


def test_missing_and_one_seed_cells(names):
    md, _ = make("classification", names, "markdown")
    row = next(line for line in md.splitlines() if line.startswith("| CE + KE-N3 |"))
    assert row.split(" | ")[1:3] == ["**58.41** (1)", "–"]  # one seed: no ± ; no flowers102 run: –
    tex, _ = make("classification", names, "latex")
    assert r"CE + KE-N3 & $\mathbf{58.41}$ {\scriptsize(1)} & -- & 600 & 3360 \\" in tex


def test_best_bold_second_underlined(names):
    df = csv_frame("classification", names)
    flowers = df[(df["column"] == "flowers102") & df["mean"].notna()].sort_values("mean", ascending=False)
    assert list(flowers["rank"].fillna("")[:3]) == ["best", "second", ""]
    assert flowers.iloc[0]["Method"] == "CE + KE-N10" and flowers.iloc[1]["Method"] == "CE + BANs-N3"
    tex, _ = make("classification", names, "latex")
    # 2 seeds: no mark, the raw p beside n
    assert r"\underline{$76.26 \pm 0.20$} {\scriptsize(2; p=0.018)}" in tex


def test_paired_t_test_against_the_n1_baseline(names):
    df = csv_frame("classification", names)
    c = cell(df, "CE + KE-N10", "flowers102")
    ke = [fixture_value("classification", "ce+ke", "flowers102", s) for s in (0, 1, 2)]
    ce = [fixture_value("classification", "ce", "flowers102", s) for s in (0, 1, 2)]
    assert c["test"] == "paired-t"
    assert c["p_value"] == pytest.approx(stats.ttest_rel(ke, ce).pvalue, rel=1e-6)
    assert c["mark"] == "*" and c["p_value"] < 0.05
    assert pd.isna(cell(df, "CE (N1)", "flowers102")["test"]) or cell(df, "CE (N1)", "flowers102")["test"] == ""


def test_welch_t_test_when_seeds_differ(names):
    """Seeds 2, 3 against the Smth (N1) baseline's 0, 1: Welch's t on the two unpaired samples. (The
    bootstrap this replaced printed 'p<0.0001' for 2 vs 2, a p no test on 4 numbers can back.)"""
    df = csv_frame("classification", names)
    c = cell(df, "Smth + KE-N3", "flowers102")
    assert c["seeds"] == "2;3" and c["test"] == "welch-t"
    ke = [fixture_value("classification", "smooth+ke", "flowers102", s, generation=3) for s in (2, 3)]
    base = [fixture_value("classification", "smooth", "flowers102", s) for s in (0, 1)]
    assert c["p_value"] == pytest.approx(stats.ttest_ind(ke, base, equal_var=False).pvalue, rel=1e-6)
    assert pd.isna(c["mark"])  # 2 runs a side: no mark, however far apart
    md, _ = make("classification", names, "markdown")
    assert f"| Smth + KE-N3 | – | 74.12 ± 0.28 (2; p={c['p_value']:.2g}) |" in md


def _cell(*values, seeds=None):
    return tables.make_cell(dict(zip(seeds or range(len(values)), values)))


def test_two_seeds_with_a_constant_difference_are_not_significant():
    """Two seeds one test-set quantum apart (the same difference twice) used to get p = 0 and a star."""
    a, b = _cell(0.7010, 0.7210), _cell(0.7000, 0.7200)
    tables.compare(a, b, 0.05)
    assert a.test == "paired-t" and a.p is None and a.n_test == 2
    assert tables.significance([a], 0.05) == [] and a.mark == ""
    assert _count(a) == "2; p=–"
    d = _cell(0.01, 0.01, 0.01)  # also with 3 seeds: a constant difference has no t-test
    tables.one_sample(d, 0.05)
    assert d.p is None and tables.significance([d], 0.05) == [] and d.mark == ""


def test_marks_need_three_seeds_and_are_benjamini_hochberg_adjusted():
    base = _cell(0.70, 0.71, 0.72, 0.69)
    cells = [_cell(*(v + shift + 0.002 * i for i, v in enumerate(base.values.values())))
             for shift in (0.02, 0.0015, 0.002, 0.001)]
    two = _cell(0.75, 0.762, seeds=[0, 1])
    for c in cells + [two]:
        tables.compare(c, base, 0.05)
    raw = [c.p for c in cells]
    assert all(c.test == "paired-t" and c.n_test == 4 for c in cells) and two.n_test == 2
    family = tables.significance(cells + [two], 0.05)
    assert family == cells  # the 2-seed cell is not tested for a mark ...
    assert two.mark == "" and _count(two) == f"2; p={two.p:.2g}" and two.p < 0.05  # ... its p is shown
    q = stats.false_discovery_control(raw, method="bh")
    assert [c.q for c in cells] == pytest.approx(list(q))
    assert [c.mark for c in cells] == ["*" if v < 0.05 else "" for v in q]
    # the correction matters here: some raw p < 0.05 lose their mark
    assert any(p < 0.05 <= v for p, v in zip(raw, q)) and cells[0].mark == "*"


def test_welch_marks_with_three_runs_a_side():
    a, b = _cell(0.80, 0.81, 0.82, seeds=[3, 4, 5]), _cell(0.70, 0.71, 0.72)
    tables.compare(a, b, 0.05)
    assert a.test == "welch-t" and a.n_test == 3
    assert a.p == pytest.approx(stats.ttest_ind([0.80, 0.81, 0.82], [0.70, 0.71, 0.72], equal_var=False).pvalue)
    tables.significance([a], 0.05)
    assert a.mark == "†" and _count(a) == "3"


def test_constant_differences_are_detected_up_to_rounding():
    """Differences equal up to float rounding (0.8 - 0.7 vs 0.9 - 0.8) are constant: no t, no p.
    Exact float equality missed them and printed a huge t as p ~ 0."""
    a, b = _cell(0.8, 0.9, 0.6), _cell(0.7, 0.8, 0.5)
    assert len({x - y for x, y in zip(a.values.values(), b.values.values())}) > 1  # not bitwise equal
    tables.compare(a, b, 0.05)
    assert a.test == "paired-t" and a.p is None and a.mark == "" and _count(a) == "3; p=–"
    c, d = _cell(0.8, 0.8, 0.8, seeds=[3, 4, 5]), _cell(0.7, 0.7 + 1e-13, 0.7)  # Welch: both sides constant
    tables.compare(c, d, 0.05)
    assert c.test == "welch-t" and c.p is None
    e = _cell(0.8, 0.81, 0.82, seeds=[3, 4, 5])  # one constant side still has a Welch statistic
    tables.compare(e, d, 0.05)
    with warnings.catch_warnings():  # scipy warns about the constant side, then computes Welch's t
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = stats.ttest_ind([0.8, 0.81, 0.82], [0.7, 0.7, 0.7], equal_var=False).pvalue
    assert e.p == pytest.approx(expected)


def test_tiny_p_values_are_printed_with_a_floor():
    a, b = _cell(0.90, 0.9001, seeds=[3, 4]), _cell(0.10, 0.1001)  # 2 vs 2, far apart: t ~ 10^4
    tables.compare(a, b, 0.05)
    assert a.p < 1e-3 and _count(a) == "2; p<0.001"
    assert tables.stats.format_p(0.0123) == "p=0.012"


ALPHA, SIMULATIONS = 0.05, 40_000


def _rates(n, paired, effect, rng):
    """Share of SIMULATIONS comparisons of n seeds a side (paired: n differences ~ N(effect, 1); unpaired:
    N(effect, 1) against N(0, 1)) whose p < ALPHA, through the p-values the tables use."""
    from kebench.analysis.tables.stats import p_values

    a = rng.normal(effect, 1.0, (SIMULATIONS, n))
    p = p_values(a, np.zeros_like(a), paired=True) if paired else p_values(a, rng.normal(0.0, 1.0, a.shape))
    return float(np.mean(p < ALPHA))


@pytest.mark.parametrize("paired", [True, False], ids=["paired", "unpaired"])
@pytest.mark.parametrize("n", [3, 5, 10])
def test_false_positive_rate_is_at_most_alpha_under_the_null(n, paired):
    """Both cells from one distribution: the share marked is alpha within Monte-Carlo error (paired t
    is exact under normality) or below it (Welch is slightly conservative at small n). The bootstrap
    this replaced marked 20% of 3-vs-3 and 12% of 5-vs-5 comparisons."""
    rate = _rates(n, paired, 0.0, np.random.default_rng(n + 100 * paired))
    mc = 4 * (ALPHA * (1 - ALPHA) / SIMULATIONS) ** 0.5  # 4 Monte-Carlo standard errors: 0.0044
    assert rate <= ALPHA + mc
    if paired:
        assert rate >= ALPHA - mc
    else:
        assert rate >= {3: 0.025, 5: 0.035, 10: 0.04}[n]  # conservative, not blind


@pytest.mark.parametrize("n", [3, 5, 10])
def test_paired_power_matches_the_noncentral_t(n):
    """Power at a 1-sigma effect: the simulated share equals the noncentral-t value (docs/tables.md)."""
    rate = _rates(n, True, 1.0, np.random.default_rng(7 + n))
    df, crit = n - 1, stats.t.ppf(1 - ALPHA / 2, n - 1)
    exact = stats.nct.sf(crit, df, n ** 0.5) + stats.nct.cdf(-crit, df, n ** 0.5)
    assert rate == pytest.approx(exact, abs=4 * (exact * (1 - exact) / SIMULATIONS) ** 0.5)


def test_null_tables_rarely_mark_a_row():
    """Through compare/significance as `kebench table` runs them: 2000 single-comparison tables whose
    row and baseline (3 runs each on different seeds) come from one N(80%, 1%). The bootstrap marked
    27 of 40 such tables."""
    rng = np.random.default_rng(3)
    marked = 0
    for _ in range(2000):
        row = _cell(*rng.normal(0.80, 0.01, 3), seeds=[3, 4, 5])
        base = _cell(*rng.normal(0.80, 0.01, 3))
        tables.compare(row, base, ALPHA)
        tables.significance([row], ALPHA)
        marked += row.mark == "†"
    assert marked / 2000 <= ALPHA + 4 * (ALPHA * (1 - ALPHA) / 2000) ** 0.5


def test_generation_option_reads_passes_and_cumulative_cost(names):
    df = csv_frame("classification", names, generation="3,10")
    n3 = cell(df, "CE + KE-N3", "flowers102")
    gen3 = [fixture_value("classification", "ce+ke", "flowers102", s, generation=3) for s in (0, 1, 2)]
    assert n3["mean"] == pytest.approx(statistics.mean(gen3), abs=1e-12)
    assert cell(df, "CE + KE-N3", "Epochs")["text"] == "600"  # 3 of the N10 run's 10 x 200 epochs
    assert cell(df, "CE + KE-N10", "Epochs")["text"] == "2000"
    assert cell(df, "CE + KE-N3", "aircraft")["n"] == 1  # the N3 run itself
    assert tables.parse_generations("all") == "all" and tables.parse_generations("final") is None
    with pytest.raises(UserError, match="--generation expects"):
        tables.parse_generations("three")


def test_settings_that_differ_are_named_in_the_label(names, tmp_path):
    for p in (RUNS / "classification").glob("ce+ke_*flowers102_s[01]_*"):
        shutil.copytree(p, tmp_path / p.name)
        r = json.loads((p / "result.json").read_text())
        r["config"]["params"]["ke"]["split_rate"] = 0.5
        r["run_id"] += "_sr05"
        (tmp_path / (p.name + "_sr05")).mkdir()
        (tmp_path / (p.name + "_sr05") / "result.json").write_text(json.dumps(r))
    df = pd.read_csv(io.StringIO(tables.make_table([tmp_path], fmt="csv", names=names, stderr=io.StringIO())))
    assert sorted(set(df["Method"])) == ["CE + KE-N10 (split_rate=0.5)", "CE + KE-N10 (split_rate=0.8)"]
    by_rate = pd.read_csv(io.StringIO(tables.make_table([tmp_path], fmt="csv", names=names, rows="method",
                                                        cols="split_rate", stderr=io.StringIO())))
    assert set(by_rate["column"]) == {"0.5", "0.8", "Epochs", "TFLOPs"}
    assert set(by_rate["Method"]) == {"CE + KE-N10"}


def test_duplicate_runs_are_counted_once_and_reported(names, tmp_path):
    src = next((RUNS / "classification").glob("ce_resnet18_flowers102_s0_*"))
    shutil.copytree(src, tmp_path / "a" / src.name)
    shutil.copytree(src, tmp_path / "b" / src.name)
    err = io.StringIO()
    text = tables.make_table([tmp_path], fmt="csv", names=names, stderr=err)
    assert "duplicate result for CE (N1) seed 0" in err.getvalue()
    assert pd.read_csv(io.StringIO(text)).iloc[0]["n"] == 1


def test_retrieval_column_groups_per_arch(names):
    tex, _ = make("retrieval", names, "latex")
    assert r"\multicolumn{3}{c}{googlenet} & \multicolumn{3}{c}{resnet50}" in tex
    assert r"\cmidrule(lr){2-4} \cmidrule(lr){5-7}" in tex
    df = csv_frame("retrieval", names)
    c = cell(df, "Triplet + KE-N3", "resnet50 / NMI")
    nmi = [fixture_value("retrieval", "triplet+ke", "cub200", s, "nmi") for s in (0, 1)]
    assert c["mean"] == pytest.approx(statistics.mean(nmi), abs=1e-12)
    assert cell(df, "Triplet + KE-N3", "googlenet / R@1")["n"] == 0


def test_cost_table_dense_vs_slim(names):
    df = csv_frame("classification", names, kind="cost")
    dense = df[(df["Method"] == "CE + KE-N10") & (df["Network"] == "Dense N")].set_index("column")
    slim = df[(df["Method"] == "CE + KE-N10") & (df["Network"] == "Slim H")].set_index("column")
    g1 = [fixture_value("classification", "ce+ke", "flowers102", s, "slim_top1", 1) for s in (0, 1, 2)]
    g10 = [fixture_value("classification", "ce+ke", "flowers102", s, "slim_top1", 10) for s in (0, 1, 2)]
    assert slim.loc["Acc_1", "mean"] == pytest.approx(statistics.mean(g1), abs=1e-12)
    assert slim.loc["Δacc", "mean"] == pytest.approx(statistics.mean(g10) - statistics.mean(g1), abs=1e-12)
    assert slim.loc["GFLOPs", "text"] == "2.33" and dense.loc["GFLOPs", "text"] == "3.63"
    assert slim.loc["FLOPs red. (%)", "text"] == f"{100 * (1 - 2.33 / 3.63):.1f}"
    assert dense.loc["FLOPs red. (%)", "text"] == "ref"
    assert set(df["Method"]) == {"CE + KE-N3", "CE + KE-N10", "Smth + KE-N3"}  # only runs with a slim network


def test_kd_table_surplus(names):
    df = csv_frame("kd", names, kind="kd")
    label = df[(df["Pruning"] == "l1-filter") & (df["Distillation"] == "KD")].set_index("column")

    def v(method, s, key="top1"):
        return fixture_value("kd", method, "digits", s, key, prune="l1-filter")

    per_seed = [(v("kd+self-distill", s) - v("ce+scratch", s))
                - (v("kd+self-distill", s, "unpruned_top1") - v("ce+scratch", s, "unpruned_top1")) for s in (0, 1)]
    assert label.loc["Surplus", "mean"] == pytest.approx(statistics.mean(per_seed), abs=1e-12)
    assert label.loc["Surplus", "test"] == "one-sample-t"
    assert label.loc["Surplus", "p_value"] == pytest.approx(stats.ttest_1samp(per_seed, 0).pvalue, rel=1e-6)
    assert label.loc["Pruned + fine-tuned / Scratch", "mean"] == pytest.approx(
        statistics.mean(v("ce+scratch", s) for s in (0, 1)), abs=1e-12)
    slim = df[df["Pruning"] == "slimming"].set_index("column")
    assert slim.loc["Surplus", "mark"] == "‡" and slim.loc["Surplus", "test"] == "from-means"
    none = df[df["Pruning"] == "none"].set_index("column")
    assert none.loc["Surplus", "text"] == "–" and none.loc["Pruned + fine-tuned / Scratch", "text"] == "–"
    assert none.loc["Unpruned / KD", "n"] == 1
    feature = df[(df["Pruning"] == "l1-filter") & (df["Distillation"] == "FD")].set_index("column")
    assert feature.loc["Pruned + fine-tuned / Post-Distill", "text"] == "–"  # missing cell
    assert label.loc["Epochs", "text"] == "60–100"  # scratch 40+20; KD pipelines add a 40-epoch teacher


def test_budget_table_matches_single_pass_by_total_epochs(names):
    df = csv_frame("budget", names, kind="budget")
    assert list(df[df["column"] == "digits"]["Method"]) == ["CE + KE-N3", "CE (N1, 15 ep)", "Δ (multi − single)"]
    ke = [fixture_value("budget", "ce+ke", "digits", s) for s in (0, 1)]
    matched = [json.loads((RUNS / "budget" / f"ce_resnet18_digits_s{s}_matched_15" / "result.json").read_text())
               ["final"]["top1"] for s in (0, 1)]
    delta = cell(df, "Δ (multi − single)", "digits")
    assert delta["mean"] == pytest.approx(statistics.mean(a - b for a, b in zip(ke, matched)), abs=1e-12)
    assert delta["test"] == "one-sample-t"
    assert delta["p_value"] == pytest.approx(stats.ttest_rel(ke, matched).pvalue, rel=1e-6)
    assert cell(df, "CE (N1, 15 ep)", "synthetic")["text"] == "–"  # no single pass on that dataset
    assert cell(df, "CE (N1, 15 ep)", "Epochs")["text"] == "15"
    assert cell(df, "CE + KE-N3", "Epochs")["text"] == "15"
    md, _ = make("budget", names, "markdown", kind="budget")
    assert "| Δ (multi − single) | -0.95 ± 0.23 (2; p=0.11) | – |  |  |" in md
    assert "Without a single pass of the same total epochs (run them with --budget matched): Smth + KE-N3." in md
    alls = csv_frame("budget", names, kind="budget", generation="all")
    assert list(alls[alls["column"] == "digits"]["Method"])[3:5] == ["CE + KE-N2", "CE (N1, 10 ep)"]
    with pytest.raises(UserError, match="--budget matched"):
        make("budget", names, kind="budget", methods="smooth+ke")


# ------------------------------------------------------------------------------------------ LaTeX
def check_latex_structure(text: str) -> None:
    """Balanced braces and environments, booktabs rules in order, every row as wide as the tabular."""
    body = re.sub(r"\\[{}$%&_#]", "", text)
    body = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("%"))
    depth = 0
    for ch in body:
        depth += ch == "{"
        depth -= ch == "}"
        assert depth >= 0, "unbalanced }"
    assert depth == 0, "unbalanced {"
    assert body.count("$") % 2 == 0
    envs = re.findall(r"\\(begin|end)\{(\w+)\}", body)
    stack = []
    for kind, name in envs:
        if kind == "begin":
            stack.append(name)
        else:
            assert stack.pop() == name
    assert not stack
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", text).group(1)
    inner = text.split(r"\toprule", 1)[1].split(r"\bottomrule", 1)[0]
    assert text.index(r"\toprule") < text.index(r"\midrule") < text.index(r"\bottomrule")
    rows = [r.strip() for r in inner.split(r"\\") if r.strip()]
    rows = [re.sub(r"^(\\(midrule|cmidrule\(lr\)\{\d+-\d+\})\s*)+", "", r).strip() for r in rows]
    rows = [r for r in rows if r]
    for row in rows:
        cells = re.split(r"(?<!\\)&", row)
        width = sum(int(m.group(1)) if (m := re.match(r"\s*\\multicolumn\{(\d+)\}", c)) else 1 for c in cells)
        assert width == len(spec), (row, width, len(spec))


@pytest.mark.parametrize("case", list(CASES))
def test_latex_structure(case, names):
    folder, kw = CASES[case]
    text, _ = make(folder, names, "latex", **kw)
    check_latex_structure(text)
    assert r"\usepackage{booktabs}" in text.splitlines()[0]


def test_latex_checker_catches_broken_rows():
    good, _ = make("classification", tables.Names(LABELS), "latex")
    with pytest.raises(AssertionError):
        check_latex_structure(good.replace(r"CE (N1) & ", r"CE (N1) & & ", 1))
    with pytest.raises(AssertionError):
        check_latex_structure(good.replace(r"\mathbf{", r"\mathbf{{", 1))




def test_every_shipped_table_kind_is_compiled():
    assert set(tables.kind_names()) <= {kw["kind"] for _, kw in CASES.values()}


@pytest.mark.skipif(latex_page.PDFLATEX is None, reason=latex_page.SKIP_REASON)
@pytest.mark.parametrize("case", list(CASES))
def test_latex_compiles_and_fits_a_two_column_page(case, names, tmp_path):
    """Issue 24.8: every kind compiles with pdflatex on a two-column paper's page, and every tabular is
    at most \\textwidth wide (at most \\columnwidth in a one-column `table`), measured by TeX itself;
    nothing overflows; notes are left-aligned."""
    folder, kw = CASES[case]
    text, _ = make(folder, names, "latex", **kw)
    page = latex_page.compile_tables(text, tmp_path)
    floats = re.findall(r"\\begin\{(table\*?)\}", text)
    assert len(page["tabulars"]) == len(floats) >= 1
    for env, width in zip(floats, page["tabulars"]):
        limit = page["textwidth"] if env == "table*" else page["columnwidth"]
        assert width <= limit, f"{case}: a {env} tabular is {width:.0f} pt wide, more than {limit:.0f} pt"
    assert page["overfull"] == [], page["overfull"]
    assert "\\resizebox" not in text  # the last resort is not needed by any shipped kind
    assert "{\\footnotesize\\raggedright" in text


def test_a_table_too_wide_for_the_page_is_split_into_parts(names, tmp_path):
    """The KD x pruning grid (10 value columns) does not fit 6.875 in: it becomes two table* parts,
    each repeating the row heads, the notes once at the end; without (n) counts, a note says so."""
    text, _ = make("kd", names, "latex", kind="kd")
    assert text.count("\\begin{table*}") == 2 and "(part 1 of 2)" in text and "(part 2 of 2)" in text
    first, second = text.split("\\end{table*}")[:2]
    assert "Pre-Distill" in first and "Surplus" in second and "Surplus" not in first
    assert "Mean $\\pm$ std" in second and "Mean $\\pm$ std" not in first
    assert "(n) counts left out to fit the page" in second
    assert "\\label{tab:kebench-kd-1}" in first and "\\label{tab:kebench-kd-2}" in second


def test_latex_text_keeps_flags_code_and_subscripts():
    """Backticks, '--' of a command-line flag and Acc_1 do not leak into LaTeX as such."""
    assert tables.tex("run `kebench run --budget matched` (Acc_1, Acc_g)") == \
        "run \\texttt{kebench run -{}-budget matched} (Acc$_1$, Acc$_g$)"
    assert tables.tex("60–100") == "60--100"


# ------------------------------------------------------------------------------------------ CLI and registry
def test_registry_labels_make_paper_style_rows():
    from kebench import registry

    n = tables.Names()
    assert n.method("ce", "single") == "CE (N1)"
    assert n.method("smooth", "single") == "Smth (N1)"
    assert n.method("ce", "bans", 10) == "CE + BANs-N10"
    if "ke" in registry.plugins():
        assert n.method("cskd", "ke", 3) == "CS-KD + KE-N3"
        assert n.method("smooth", "ke", 3) == "Smth + KE-N3"


def test_primary_metric_comes_from_the_task_records():
    from kebench.data import TASKS, headline_metric

    assert tables.PRIMARY == {"classification": "top1", "retrieval": "r@1"}
    assert all(tables.PRIMARY[name] == task.headline == headline_metric(name) for name, task in TASKS.items())
    assert headline_metric(None) == headline_metric("no-such-task") == "top1"  # a record without a known task


def test_cli_table_and_errors(capsys, tmp_path):
    from kebench.cli import main

    main(["table", str(RUNS / "classification"), "--format", "csv", "--method", "ce,ke", "--dataset", "flowers102"])
    captured = capsys.readouterr()
    df = pd.read_csv(io.StringIO(captured.out))
    assert set(df["column"]) == {"flowers102", "Epochs", "TFLOPs"}
    assert set(df["Method"]) == {"CE (N1)", "CE + KE-N10", "Smth + KE-N3"}  # a bare regime: all its objectives
    assert "ce+ke_resnet18_flowers102_s3_paper_200: failed" in captured.err
    main(["table", str(RUNS / "kd"), "--kind", "kd", "--format", "latex", "--out", str(tmp_path / "kd.tex")])
    assert (tmp_path / "kd.tex").read_text().startswith("% kebench table --kind kd")
    with pytest.raises(SystemExit) as exc:
        main(["table", str(RUNS / "classification"), "--rows", "nosuchthing"])
    assert exc.value.code == 2
    assert "Unknown table dimension 'nosuchthing'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["table", str(tmp_path / "missing")])
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["table", str(RUNS / "classification"), "--metric", "top5"])
    assert exc.value.code == 2 and "Unknown metric 'top5'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["table", str(RUNS / "retrieval"), "--kind", "kd"])
    assert exc.value.code == 2 and "No KD x pruning results" in capsys.readouterr().err


def test_real_runs_tabulate(make_cfg, run_cfg, tmp_path):
    """Results written by the engine itself (not hand-made) go through every format."""
    for method in ("ce", "smooth"):
        for seed in (0, 1):
            run_cfg(make_cfg(method, seed=seed))
    out = tmp_path / "results"
    df = pd.read_csv(io.StringIO(tables.make_table([out], fmt="csv", stderr=io.StringIO())))
    assert set(df["Method"]) == {"CE (N1)", "Smth (N1)"}
    ce = df[(df["Method"] == "CE (N1)") & (df["column"] == "synthetic")].iloc[0]
    finals = [json.loads(p.read_text())["final"]["top1"] for p in sorted(out.glob("ce_*/result.json"))]
    assert ce["n"] == 2 and ce["mean"] == pytest.approx(statistics.mean(finals), abs=1e-12)
    epochs = df[(df["Method"] == "CE (N1)") & (df["column"] == "Epochs")].iloc[0]
    assert epochs["text"] == "1"
    check_latex_structure(tables.make_table([out], fmt="latex", stderr=io.StringIO()))


def test_real_ke_run_gives_generation_rows_and_slim_cost(make_cfg, run_cfg, tmp_path):
    """The fields this module reads are the ones methods/ke.py and the engine write."""
    from kebench import registry

    if "ke" not in registry.plugins():
        pytest.skip("the ke regime is not registered")
    run_cfg(make_cfg("ke", plugin={"generations": 2}))
    run_cfg(make_cfg("ce"))
    out = tmp_path / "results"
    record = json.loads(next(out.glob("ce+ke_*/result.json")).read_text())
    df = pd.read_csv(io.StringIO(tables.make_table([out], fmt="csv", generation="1,2", stderr=io.StringIO())),
                     dtype={"text": str})
    n1 = df[(df["Method"] == "CE + KE-N1") & (df["column"] == "synthetic")].iloc[0]
    assert n1["mean"] == pytest.approx(record["passes"][0]["metrics"]["top1"], abs=1e-12)
    assert df[(df["Method"] == "CE + KE-N1") & (df["column"] == "Epochs")].iloc[0]["text"] == "1"
    assert df[(df["Method"] == "CE + KE-N2") & (df["column"] == "Epochs")].iloc[0]["text"] == "2"
    cost = pd.read_csv(io.StringIO(tables.make_table([out], fmt="csv", kind="cost", stderr=io.StringIO())))
    slim = cost[(cost["Network"] == "Slim H") & (cost["column"] == "Acc_g")].iloc[0]
    assert slim["mean"] == pytest.approx(record["passes"][1]["metrics"]["slim_top1"], abs=1e-12)
    red = cost[(cost["Network"] == "Slim H") & (cost["column"] == "Params red. (%)")].iloc[0]
    assert float(red["text"]) == pytest.approx(
        100 * (1 - record["cost"]["slim"]["params"] / record["cost"]["dense"]["params"]), abs=0.1)
    from kebench.analysis import plots

    runs, _ = tables.load_runs([out])
    fig = plots.hypotheses_figure(runs)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["CE + KE: fit", "CE + KE: reset"]


def test_methods_as_columns_rank_along_rows_and_keep_significance(names):
    df = csv_frame("classification", names, rows="dataset", cols="method")
    flowers = df[(df["Dataset"] == "flowers102") & df["mean"].notna() & (df["metric"] == "top1")]
    assert list(flowers["column"]) == ["CE (N1)", "CE + KE-N10", "CE + BANs-N3", "CE + DSD", "Smth (N1)",
                                       "Smth + KE-N3"]  # registry order, not alphabetical
    best = flowers.sort_values("mean", ascending=False)
    assert list(best["rank"].fillna("")[:3]) == ["best", "second", ""]
    assert cell(df, "flowers102", "CE + KE-N10", "Dataset")["test"] == "paired-t"


def test_a_plugin_contributes_a_table_kind(tmp_path, monkeypatch, names):
    """registry.yaml's `tables:` names a function; it is offered as a kind, built with the keywords it
    takes, and --rows is refused for it because it takes none."""
    from kebench import registry

    (tmp_path / "toy_tables.py").write_text(
        "from kebench.analysis.tables import Col, Row, Table, make_cell\n"
        "def toy(runs, metric=None, decimals=2):\n"
        "    cell = make_cell({r['seed']: r['final'][metric or 'top1'] for r in runs})\n"
        "    return Table('toy', 'Toy', ('All',), [Col(('Top-1',), 'top1')], [Row(('all',), [cell])], [], decimals)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    extended = tmp_path / "registry.yaml"
    extended.write_text(registry.registry_path().read_text().replace("tables:\n", "tables:\n  toy: toy_tables:toy\n", 1))
    monkeypatch.setattr(registry, "registry_path", lambda: extended)
    registry.reload()
    try:
        assert tables.kind_names()[-2:] == ["kd", "toy"]
        runs, _ = tables.load_runs([RUNS / "classification"])
        table = tables.build_table(runs, "toy", decimals=1, names=names)
        assert table.kind == "toy" and table.rows[0].cells[0].n == len({r["seed"] for r in runs}) == 4
        header, row = tables.to_csv(table).splitlines()
        assert header.startswith("All,column,metric,mean") and row.startswith("all,Top-1,top1,")
        with pytest.raises(UserError, match="toy table has a fixed shape"):
            tables.build_table(runs, "toy", rows="method")
    finally:
        registry.reload()


@pytest.mark.skipif(latex_page.PDFLATEX is None, reason=latex_page.SKIP_REASON)
def test_resizebox_is_the_last_resort_for_a_part_that_cannot_fit(tmp_path):
    """Row labels alone wider than the page: the only table that gets \\resizebox, scaled to
    \\textwidth (graphicx named in the header comment); nothing overflows."""
    label = "a very long method label " * 6
    rows = [tables.Row((label,), [_cell(0.5 + i / 100, 0.6) for i in range(3)])]
    table = tables.Table("classification", "Wide rows", ("Method",), [tables.Col((f"d{i}",), "top1") for i in range(3)],
                         rows)
    text = tables.to_latex(table)
    assert text.count("\\resizebox{\\textwidth}{!}{%") == 1 and "needs \\usepackage{booktabs, graphicx}" in text
    page = latex_page.compile_tables(text, tmp_path)
    assert page["tabulars"][0] > page["textwidth"] and page["overfull"] == []


# ------------------------------------------------------------------------------------------ interval (Park Table 6)
def test_interval_table_half_width_is_the_99_percent_student_t_one(names):
    """Park et al. Table 6: the NASWOT score over five trained models, mean ± the two-sided 99% interval."""
    from kebench.analysis import report

    runs, _ = tables.load_runs([RUNS / "classification"], methods=["ce"], datasets=["flowers102"])
    scores = [-1210.5, -1198.25, -1225.0]  # seeds 0, 1, 2
    for r in runs:
        r["final"]["naswot"] = scores[r["seed"]]
    table = tables.build_table(runs, "interval", names=names)
    (row,) = table.rows
    c = row.cells[0]
    # by hand: mean -1211.25, s = sqrt(((0.75)^2 + (13)^2 + (13.75)^2) / 2) = 13.4327..., t(0.995, 2) = 9.924843
    s = math.sqrt((0.75 ** 2 + 13 ** 2 + 13.75 ** 2) / 2)
    assert c.n == 3 and c.mean == pytest.approx(-1211.25) and c.std == pytest.approx(s)
    assert c.half_width == pytest.approx(9.924843 * s / math.sqrt(3), rel=1e-6)  # 76.97
    assert table.cols[0].path == ("resnet18",) and table.cols[0].kind == "number"
    md, tex_, html = tables.render(table, "markdown"), tables.render(table, "latex"), report.table_html(table)
    shown = f"-1211.25 ± {c.half_width:.2f}"
    assert f"| {shown} (3) |" in md and "99% Student-t confidence interval" in md
    assert rf"$-1211.25 \pm {c.half_width:.2f}$ {{\scriptsize(3)}}" in tex_
    assert f'{shown} <span class="n">(3)</span>' in html
    csv = pd.read_csv(io.StringIO(tables.render(table, "csv")))
    assert csv["half_width"][0] == pytest.approx(c.half_width) and csv["mean"][0] == pytest.approx(-1211.25)
    assert "intervals" not in report.summarize_interval(table)  # one row: nothing to compare it with
    # five runs: t(0.995, 4) = 4.604094; one run: its value alone, no interval
    five = tables.make_cell(dict(enumerate([1.0, 2.0, 4.0, 3.0, 5.0])))
    assert tables.t_half_width(five) == pytest.approx(4.604094 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert tables.t_half_width(tables.make_cell({0: 1.0})) is None
    for r in runs:
        del r["final"]["naswot"]
    with pytest.raises(UserError, match="--analyses naswot"):  # runs made without the analysis
        tables.build_table(runs, "interval")
