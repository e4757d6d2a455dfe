"""kebench plot: every kind renders to a non-empty PNG with the expected lines and points, and the
same results always give the same bytes (PNG, PDF, SVG). Fixtures: tests/golden/runs/."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from matplotlib.collections import PathCollection

from kebench.analysis import plots
from kebench.analysis import tables

RUNS = Path(__file__).parent / "golden" / "runs"
LABELS = {"ce": "CE", "smooth": "Smth", "triplet": "Triplet", "single": "N1", "ke": "KE", "bans": "BANs", "dsd": "DSD"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def names():
    return tables.Names(LABELS)


@pytest.fixture(scope="module")
def classification():
    runs, left_out = tables.load_runs([RUNS / "classification"])
    assert len(left_out) == 2  # the failed and the incomplete run never reach a figure
    return runs


def panels(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


def labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def points(ax) -> dict:
    return {c.get_label(): c.get_offsets().tolist() for c in ax.collections if isinstance(c, PathCollection)}


def render(fig, tmp_path, name="fig.png") -> bytes:
    path = plots.save_figure(fig, tmp_path / name)
    data = path.read_bytes()
    assert len(data) > 10_000
    return data


def test_generations_plot(classification, names, tmp_path):
    fig = plots.generations_figure(classification, names=names)
    assert render(fig, tmp_path).startswith(PNG_MAGIC)
    p = panels(fig)
    assert sorted(p) == ["aircraft", "flowers102"]
    assert sorted(labels(p["flowers102"])) == sorted([
        "CE + BANs (dense)", "CE + KE (dense)", "CE + KE (slim)", "Smth + KE (dense)", "Smth + KE (slim)",
        "CE (N1)", "Smth (N1)"])  # the BANs ensemble is not a slim network; N1 baselines drawn once each
    assert labels(p["aircraft"]) == ["CE + KE (dense)", "CE + KE (slim)", "CE (N1)"]
    lines = {line.get_label(): line for line in p["flowers102"].get_lines()}
    dense = lines["CE + KE (dense)"]
    assert list(dense.get_xdata()) == list(range(1, 11)) and dense.get_linestyle() == "-"
    assert lines["CE + KE (slim)"].get_linestyle() == ":"
    base = lines["CE (N1)"]
    assert base.get_linestyle() == "--"
    ce = [json.loads(f.read_text())["final"]["top1"]
          for f in (RUNS / "classification").glob("ce_*flowers102*/result.json")]
    assert base.get_ydata()[0] == pytest.approx(100 * statistics.mean(ce))
    g10 = [json.loads(f.read_text())["passes"][9]["metrics"]["top1"]
           for f in (RUNS / "classification").glob("ce+ke_*flowers102_s[012]_*/result.json")]
    assert dense.get_ydata()[-1] == pytest.approx(100 * statistics.mean(g10))


def test_cost_plot(classification, names, tmp_path):
    fig = plots.cost_figure(classification, names=names)
    assert render(fig, tmp_path).startswith(PNG_MAGIC)
    pts = points(panels(fig)["flowers102"])
    assert sorted(pts) == sorted(["CE (N1)", "CE + KE-N10", "CE + KE-N10 (slim)", "CE + BANs-N3", "CE + DSD",
                                  "Smth (N1)", "Smth + KE-N3", "Smth + KE-N3 (slim)"])
    assert all(len(v) == 1 for v in pts.values())  # one point per method
    assert pts["CE + KE-N10 (slim)"][0][0] == pytest.approx(2.33)  # slim GFLOPs
    assert pts["CE + KE-N10"][0][0] == pytest.approx(3.63)
    assert len(points(panels(fig)["aircraft"])) == 3


def test_hypotheses_plot(classification, names, tmp_path):
    fig = plots.hypotheses_figure(classification, names=names)
    assert render(fig, tmp_path).startswith(PNG_MAGIC)
    p = panels(fig)
    assert labels(p["flowers102"]) == ["CE + KE: fit", "CE + KE: reset", "Smth + KE: fit", "Smth + KE: reset"]
    fit = p["flowers102"].get_lines()[0]
    assert len(fit.get_xdata()) == 10 and fit.get_linestyle() == "-"
    assert p["flowers102"].get_lines()[1].get_linestyle() == "--"
    # KE records the means directly in the pass metrics (methods/ke.py): that shape is read too.
    run = json.loads(next((RUNS / "classification").glob("ce+ke_*aircraft*/result.json")).read_text())
    for p_ in run["passes"]:
        p_["metrics"].update(p_.pop("hypotheses"))
    run["_path"] = "x"
    fig2 = plots.hypotheses_figure([run], names=names)
    assert labels(panels(fig2)["aircraft"]) == ["CE + KE: fit", "CE + KE: reset"]


def test_budget_plot(names, tmp_path):
    runs, _ = tables.load_runs([RUNS / "budget"])
    fig = plots.budget_figure(runs, names=names)
    assert render(fig, tmp_path).startswith(PNG_MAGIC)
    ax = panels(fig)["digits"]
    assert labels(ax) == ["CE + KE", "Smth + KE"]
    pts = points(ax)
    assert list(pts) == ["CE (N1) (single pass)"]
    assert len(pts["CE (N1) (single pass)"]) == 3  # budgets of 5, 10 and 15 epochs
    ke = ax.get_lines()[0]
    totals = [json.loads(f.read_text())["training"]["flops"] / 1e12
              for f in (RUNS / "budget").glob("ce+ke_*digits*/result.json")]
    assert ke.get_xdata()[-1] == pytest.approx(statistics.mean(totals))  # cumulative training FLOPs
    assert len(ke.get_xdata()) == 3 and ax.get_xscale() == "log"


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_same_inputs_same_bytes(classification, names, tmp_path, fmt):
    a = render(plots.hypotheses_figure(classification, names=names), tmp_path, f"a.{fmt}")
    b = render(plots.hypotheses_figure(classification, names=names), tmp_path, f"b.{fmt}")
    assert a == b
    if fmt == "pdf":
        assert b"CreationDate" not in a
    if fmt == "svg":
        assert b"<dc:date>" not in a


def test_plot_cli_and_errors(tmp_path, capsys):
    from kebench.cli import main

    out = tmp_path / "gen.png"
    main(["plot", str(RUNS / "classification"), "--kind", "generations", "--out", str(out), "--dataset", "aircraft"])
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert "left out" not in capsys.readouterr().err  # the failed run is a flowers102 run
    with pytest.raises(SystemExit) as exc:
        main(["plot", str(RUNS / "budget"), "--kind", "hypotheses", "--out", str(tmp_path / "h.png")])
    assert exc.value.code == 2 and "hypothesis statistics" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["plot", str(RUNS / "budget"), "--kind", "budget", "--out", str(tmp_path / "h.jpg")])
    assert exc.value.code == 2 and ".png, .pdf or .svg" in capsys.readouterr().err


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_each_panel_labels_its_own_task(classification, names):
    """A retrieval panel next to a classification panel says R@1, not the first run's Top-1."""
    retrieval, _ = tables.load_runs([RUNS / "retrieval"])
    for kind in ("cost", "budget", "generations"):
        fig = plots.build_figure(classification + retrieval, kind, names=names)
        ylabels = {title: ax.get_ylabel() for title, ax in panels(fig).items()}
        tasks = {r["dataset"]: r["task"] for r in classification + retrieval if r["dataset"] in ylabels}
        assert {tasks[d] for d in ylabels} == {"classification", "retrieval"}, kind
        for d, label in ylabels.items():
            assert label == ("R@1 (%)" if tasks[d] == "retrieval" else "Top-1 (%)"), (kind, d)


def test_many_series_keep_distinct_colours():
    for n in (10, 12, 20, 25):
        colours = {plots.series_color(i, n) for i in range(n)}
        assert len(colours) == n


def test_budget_legend_outside_and_log_labels_do_not_overlap(names):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    runs, _ = tables.load_runs([RUNS / "budget"])
    fig = plots.budget_figure(runs, names=names)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = panels(fig)["digits"]
    legend = ax.get_legend()
    assert not _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer))  # hides nothing
    shown = [t for t in ax.get_xticklabels(which="both") if t.get_visible() and t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in shown]
    assert len(shown) >= 2
    assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(t.get_text() for t in ax.get_xticklabels(which="major") if t.get_visible())
    assert not [t for t in ax.get_xticklabels(which="minor") if t.get_text()]


def test_cost_plot_puts_pruned_networks_at_their_pruned_cost(names):
    runs, _ = tables.load_runs([RUNS / "kd"])
    pts = points(panels(plots.cost_figure(runs, names=names))["digits"])
    assert pts and all(x == pytest.approx(0.017) for v in pts.values() for x, _ in v)  # cost.pruned, not unpruned


def test_cost_plot_tick_labels_do_not_overlap(names):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    runs, _ = tables.load_runs([RUNS / "kd"])  # every pipeline at one pruned cost: a degenerate x range
    fig = plots.cost_figure(runs, names=names)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    ax = panels(fig)["digits"]
    boxes = [t.get_window_extent(canvas.get_renderer()) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    assert len(boxes) >= 2
    assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_budget_point_labels_stay_inside_the_axes_and_do_not_overlap(names):
    """Issue 24.3: the "N ep" labels of single-pass budgets never overlap one another nor leave the axes
    (a label that cannot be placed is dropped: the points and the legend say the rest)."""
    import copy

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    runs, _ = tables.load_runs([RUNS / "budget"])
    crowded = []  # the same budgets again at nearly the same FLOPs: labels that would pile up
    for r in runs:
        if r.get("regime") == "single":
            twin = copy.deepcopy(r)
            twin["objective"] = "smooth"
            twin["training"]["flops"] *= 1.01
            crowded.append(twin)
    for case in (runs, runs + crowded):
        fig = plots.budget_figure(case, names=names)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        ax = panels(fig)["digits"]
        inside = ax.get_window_extent(renderer)
        notes = [t for t in ax.texts if t.get_text().endswith(" ep")]
        boxes = [t.get_window_extent(renderer) for t in notes]
        assert notes and all(inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1
                             for b in boxes)
        assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # crowded: labels were moved off their default place (right, below the point) or dropped
    assert len(notes) < 6 or any(tuple(t.get_position()) != (4, -9) for t in notes)
