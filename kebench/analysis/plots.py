"""`kebench plot`: figures from result folders, one panel per dataset, byte-for-byte reproducible.

Kinds (kebench's own; plugins contribute more through registry.yaml's `figures:`, e.g. AG-Evo's
`search`, and out-of-tree packages through `kebench.figures` entry points):
  generations  test accuracy across generations, dense (solid) and each sub-network a plugin declares
               (dotted: KE's slim), N1 baseline dashed
  cost         inference FLOPs vs accuracy, one point per method (declared sub-networks as their own points)
  hypotheses   mean |w| of the fit (solid) and reset (dashed) hypotheses across generations
  budget       accuracy vs cumulative training FLOPs: a curve per multi-pass regime (pass by pass),
               single-pass runs at their budgets as points

Every figure function takes loaded runs (`kebench.analysis.tables.load_runs`) and returns a matplotlib
`Figure` (built without pyplot, so no global state); `save_figure` writes PNG/PDF/SVG without
timestamps or version strings, so the same results always give the same bytes.
"""
from __future__ import annotations

import inspect
import math
from collections import defaultdict
from pathlib import Path

from kebench import registry
from kebench.context import NOT_THE_MODEL, PassKind
from kebench.errors import UserError
from kebench.analysis.tables.layout import prepare_entries
from kebench.analysis.tables.runs import PRIMARY, Names, expand, metric_title, signature

FORMATS = ("png", "pdf", "svg")
PANEL_COLUMNS = 3
PANEL_SIZE = (4.6, 3.6)  # inches per panel
DPI = 150
STYLE = {"font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 7,
         "svg.hashsalt": "kebench", "svg.fonttype": "path", "pdf.fonttype": 42}
METADATA = {"png": {"Software": None},
            "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
            "svg": {"Date": None, "Creator": None}}
HYPOTHESIS_KEYS = ("fit_abs_mean", "reset_abs_mean")


# ---------------------------------------------------------------------------------------- helpers
def mean_of(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def std_of(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = mean_of(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def metric_of(run: dict, metric: str | None) -> str:
    return metric or PRIMARY.get(run.get("task", "classification"), "top1")


def axis_title(metric: str | None, run: dict) -> str:
    return f"{metric_title(metric_of(run, metric))} (%)"


def subnets() -> tuple[str, ...]:
    """The sub-networks plugins declare (registry `subnets:`, KE's slim): a run's `<subnet>_<metric>`
    pass metrics and `cost.<subnet>` are drawn beside the reported network's."""
    return registry.subnets()


def generation_passes(run: dict) -> list[dict]:
    return [p for p in run.get("passes") or [] if p.get("kind") == PassKind.GENERATION]


def curve_labels(runs: list[dict], names: Names) -> dict[str, str]:
    """run path -> legend label of its regime without a generation count (`CE + KE`), with the arch
    where a panel mixes archs and the settings that tell same-named groups apart (`split_rate=0.5`)."""
    base = {r["_path"]: names.method(r.get("objective", ""), r.get("regime", "")) for r in runs}
    archs = defaultdict(set)
    for r in runs:
        archs[r.get("dataset")].add(r.get("arch"))
    groups = defaultdict(list)
    for r in runs:
        groups[(base[r["_path"]], r.get("dataset"), r.get("arch"))].append(r)
    labels = {}
    for (b, dataset, arch), rs in groups.items():
        sigs = {r["_path"]: signature(r) for r in rs}
        keys = sorted(k for k in set().union(*sigs.values()) if len({s.get(k) for s in sigs.values()}) > 1)
        for r in rs:
            parts = ([arch] if len(archs[dataset]) > 1 else [])
            parts += [f"{k.rpartition('.')[2]}={sigs[r['_path']].get(k)}" for k in keys]
            labels[r["_path"]] = b + (f" ({', '.join(str(p) for p in parts)})" if parts else "")
    return labels


def panel_grid(fig_data: dict, title: str, sort: bool = True):
    """A figure with one axes per dataset (sorted, or in the order given); returns (fig, {dataset: ax})."""
    from matplotlib.figure import Figure

    datasets = sorted(fig_data, key=str) if sort else list(fig_data)
    if not datasets:
        raise UserError(title)
    ncols = min(len(datasets), PANEL_COLUMNS)
    nrows = math.ceil(len(datasets) / ncols)
    fig = Figure(figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    return fig, dict(zip(datasets, axes))


def series_color(i: int, n: int = 10):
    """Colour i of n series in a panel, all distinct: tab10 up to 10, tab20 up to 20 (dark shades
    first), then evenly spaced along the turbo colour map."""
    from matplotlib import colormaps

    if n <= 10:
        return colormaps["tab10"](i % 10)
    if n <= 20:
        return colormaps["tab20"]((2 * i) % 20 + (i >= 10))
    return colormaps["turbo"](0.05 + 0.9 * i / (n - 1))


def legend_beside(ax) -> None:
    """Beside the panel, never over it: a legend inside the axes can hide a point or a curve."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def panel_run(runs: list[dict], dataset) -> dict:
    """A run of this panel's dataset: its task names the panel's metric (r@1 for retrieval)."""
    return next((r for r in runs if r.get("dataset") == dataset), runs[0])


def few_ticks(axis) -> None:
    """At most 5 short labels: points that share one cost (a grid of methods on one arch) made the
    default locator label a tiny range with long numbers that overlapped."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=4))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}"))


def log_axis(ax) -> None:
    """Log x axis with plain-number labels on the major ticks only (minor labels overlapped)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 2 else (1.0, 2.0, 5.0), numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def figure_style():
    import matplotlib

    return matplotlib.rc_context(STYLE)


# ---------------------------------------------------------------------------------------- figures
def generations_figure(runs: list[dict], metric: str | None = None, names: Names | None = None):
    """Accuracy across generations: dense solid, slim dotted, the objective's N1 baseline dashed."""
    names = names or Names()
    multi = [r for r in runs if r.get("regime") != "single" and generation_passes(r)]
    labels = curve_labels(multi, names)
    curves = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))  # dataset -> label -> (net, g) -> values
    info = {}
    for r in multi:
        m = metric_of(r, metric)
        label = labels[r["_path"]]
        info[(r.get("dataset"), label)] = (r.get("objective"), r.get("arch"), (r.get("config") or {}).get("epochs"), m)
        for p in generation_passes(r):
            for net, key in (("dense", m), *((s, f"{s}_{m}") for s in subnets())):
                v = (p.get("metrics") or {}).get(key)
                if isinstance(v, (int, float)):
                    curves[r.get("dataset")][label][(net, p["index"])].append(v)
    with figure_style():
        fig, axes = panel_grid(curves, "No multi-generation results (passes of kind 'generation') to plot: run e.g. "
                                    "`kebench run --method ke --generations 3` first.")
        for dataset, ax in axes.items():
            baselines_done = {}
            several_archs = len({info[(dataset, label)][1] for label in curves[dataset]}) > 1
            n = len(curves[dataset])
            for i, label in enumerate(sorted(curves[dataset])):
                pts = curves[dataset][label]
                objective, arch, epochs, m = info[(dataset, label)]
                for net, style in (("dense", dict(ls="-", marker="o")), *((s, dict(ls=":", marker="s")) for s in subnets())):
                    gens = sorted(g for (n, g) in pts if n == net)
                    if not gens:
                        continue
                    y = [100 * mean_of(pts[(net, g)]) for g in gens]
                    sd = [100 * std_of(pts[(net, g)]) for g in gens]
                    ax.plot(gens, y, color=series_color(i, n), ms=3, lw=1.4, label=f"{label} ({net})", **style)
                    if any(sd):
                        ax.fill_between(gens, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)],
                                        color=series_color(i, n), alpha=0.15, lw=0)
                key = (objective, arch, epochs)
                if key in baselines_done:
                    continue
                base = [r for r in runs if r.get("regime") == "single" and r.get("objective") == objective
                        and r.get("arch") == arch and r.get("dataset") == dataset
                        and (r.get("config") or {}).get("epochs") == epochs
                        and isinstance((r.get("final") or {}).get(m), (int, float))]
                if base:
                    baselines_done[key] = True
                    ax.axhline(100 * mean_of([r["final"][m] for r in base]), color=series_color(i, n), ls="--", lw=1.0,
                               label=names.method(objective, "single") + (f" {arch}" if several_archs else ""))
            ax.set_title(str(dataset))
            ax.set_xlabel("Generation")
            ax.set_ylabel(axis_title(metric, panel_run(multi, dataset)))
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            legend_beside(ax)
    return fig


def _cost_points(runs: list[dict], metric: str | None, names: Names):
    """dataset -> label -> {"x": inference GFLOPs, "y": accuracies}, and the entries behind them."""
    warnings: list[str] = []
    entries = [e for r in runs for e in expand(r, None, names)]
    if not entries:
        raise UserError("No complete results to plot.")
    archs = len({e.run.get("arch") for e in entries}) > 1
    _, _, entries = prepare_entries(entries, ["method"] + (["arch"] if archs else []), ["dataset"], names, warnings)
    points = defaultdict(lambda: defaultdict(lambda: {"x": [], "y": []}))
    for e in entries:
        m = metric_of(e.run, metric)
        cost = e.run.get("cost") or {}
        label = " / ".join(str(v) for v in e.row)
        # A pruning pipeline's final metric is its pruned network's: plot it at the pruned cost.
        evaluated = "pruned" if (cost.get("pruned") or {}).get("flops") else "dense"
        for net, key, suffix in ((evaluated, m, ""), *((s, f"{s}_{m}", f" ({s})") for s in subnets())):
            flops = (cost.get(net) or {}).get("flops")
            value = e.metrics.get(key)
            if flops and isinstance(value, (int, float)):
                points[e.col[0]][label + suffix]["x"].append(flops / 1e9)
                points[e.col[0]][label + suffix]["y"].append(value)
    return points, entries


def cost_positions(runs: list[dict], metric: str | None = None, names: Names | None = None) -> dict:
    """dataset -> the distinct inference costs (GFLOPs, 3 significant digits) its panel of the cost
    figure would place points at: with one or two, every method shares the same network (and its
    sub-network) and the panel says nothing that the tables do not."""
    points, _ = _cost_points(runs, metric, names or Names())
    return {d: sorted({float(f"{mean_of(p['x']):.3g}") for p in by_label.values()}) for d, by_label in points.items()}


def cost_figure(runs: list[dict], metric: str | None = None, names: Names | None = None):
    """Inference GFLOPs per image vs accuracy: one point per method (mean over seeds, ± std bars)."""
    names = names or Names()
    points, entries = _cost_points(runs, metric, names)
    with figure_style():
        fig, axes = panel_grid(points, "No results with inference cost (cost.dense.flops) and an accuracy to plot.")
        for dataset, ax in axes.items():
            n = len(points[dataset])
            for i, label in enumerate(sorted(points[dataset])):
                p = points[dataset][label]
                x, y, sd = mean_of(p["x"]), 100 * mean_of(p["y"]), 100 * std_of(p["y"])
                marker = "s" if label.endswith(tuple(f"({s})" for s in subnets())) else "o"
                ax.scatter([x], [y], color=series_color(i, n), marker=marker, s=28, label=label, zorder=3)
                if sd:
                    ax.errorbar([x], [y], yerr=[sd], fmt="none", ecolor=series_color(i, n), elinewidth=1, capsize=2)
            few_ticks(ax.xaxis)
            ax.set_title(str(dataset))
            ax.set_xlabel("Inference GFLOPs per image")
            ax.set_ylabel(axis_title(metric, panel_run([e.run for e in entries], dataset)))
            ax.grid(alpha=0.3)
            legend_beside(ax)
    return fig


def hypothesis_stats(p: dict) -> dict | None:
    """Mean |w| of fit and reset hypotheses of a pass: `pass.hypotheses` (or inside its metrics)."""
    for holder in (p.get("hypotheses"), (p.get("metrics") or {}).get("hypotheses"), p.get("metrics")):
        if isinstance(holder, dict) and all(isinstance(holder.get(k), (int, float)) for k in HYPOTHESIS_KEYS):
            return {k: holder[k] for k in HYPOTHESIS_KEYS}
    return None


def hypotheses_figure(runs: list[dict], names: Names | None = None):
    """Mean |w| of the fit (solid) and reset (dashed) hypotheses across generations."""
    names = names or Names()
    multi = [r for r in runs if any(hypothesis_stats(p) for p in generation_passes(r))]
    labels = curve_labels(multi, names)
    curves = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in multi:
        for p in generation_passes(r):
            h = hypothesis_stats(p)
            if h:
                for k in HYPOTHESIS_KEYS:
                    curves[r.get("dataset")][labels[r["_path"]]][(k, p["index"])].append(h[k])
    with figure_style():
        fig, axes = panel_grid(curves, "No generation passes with hypothesis statistics (fit_abs_mean, reset_abs_mean) "
                                    "to plot: the hypotheses plot reads KE runs.")
        for dataset, ax in axes.items():
            n = len(curves[dataset])
            for i, label in enumerate(sorted(curves[dataset])):
                pts = curves[dataset][label]
                for key, ls, word in (("fit_abs_mean", "-", "fit"), ("reset_abs_mean", "--", "reset")):
                    gens = sorted(g for (k, g) in pts if k == key)
                    ax.plot(gens, [mean_of(pts[(key, g)]) for g in gens], color=series_color(i, n), ls=ls, marker="o", ms=3,
                            lw=1.4, label=f"{label}: {word}")
            ax.set_title(str(dataset))
            ax.set_xlabel("Generation")
            ax.set_ylabel("mean |w|")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            legend_beside(ax)
    return fig


def budget_figure(runs: list[dict], metric: str | None = None, names: Names | None = None):
    """Accuracy vs cumulative training TFLOPs: multi-pass curves, single-pass budgets as points."""
    names = names or Names()
    multi = [r for r in runs if r.get("regime") != "single" and len(r.get("passes") or []) > 1]
    labels = curve_labels(multi, names)
    curves = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: {"x": [], "y": []})))
    for r in multi:
        m, total = metric_of(r, metric), 0.0
        for i, p in enumerate(r.get("passes") or []):
            total += p.get("train_flops") or 0
            v = (p.get("metrics") or {}).get(m)
            # A teacher pass (KD pipelines) costs compute but measures another network: no point.
            if isinstance(v, (int, float)) and total and p.get("kind") not in NOT_THE_MODEL:
                pt = curves[r.get("dataset")][labels[r["_path"]]][i]
                pt["x"].append(total / 1e12)
                pt["y"].append(v)
    singles = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: {"x": [], "y": []})))
    archs = defaultdict(set)
    for r in runs:
        archs[r.get("dataset")].add(r.get("arch"))
    for r in runs:
        flops = (r.get("training") or {}).get("flops")
        v = (r.get("final") or {}).get(metric_of(r, metric))
        if r.get("regime") == "single" and flops and isinstance(v, (int, float)):
            label = names.method(r.get("objective", ""), "single")
            if len(archs[r.get("dataset")]) > 1:
                label += f" {r.get('arch')}"
            pt = singles[r.get("dataset")][label][(r.get("training") or {}).get("epochs")]
            pt["x"].append(flops / 1e12)
            pt["y"].append(v)
    datasets = {d: True for d in list(curves) + list(singles)}
    with figure_style():
        fig, axes = panel_grid(datasets, "No results with training FLOPs (training.flops, passes[].train_flops) to plot.")
        for dataset, ax in axes.items():
            i, n, notes = 0, len(curves[dataset]) + len(singles[dataset]), []
            for label in sorted(curves[dataset]):
                pts = curves[dataset][label]
                order = sorted(pts)
                ax.plot([mean_of(pts[k]["x"]) for k in order], [100 * mean_of(pts[k]["y"]) for k in order],
                        color=series_color(i, n), marker="o", ms=3, lw=1.4, label=label)
                i += 1
            for label in sorted(singles[dataset]):
                pts = singles[dataset][label]
                budgets = sorted(pts, key=lambda e: (e is None, e))
                xs = [mean_of(pts[b]["x"]) for b in budgets]
                ys = [100 * mean_of(pts[b]["y"]) for b in budgets]
                ax.scatter(xs, ys, color=series_color(i, n), marker="D", s=24, zorder=3, label=f"{label} (single pass)")
                for b, x, y in zip(budgets, xs, ys):
                    notes.append(ax.annotate(f"{b} ep", (x, y), textcoords="offset points", xytext=(4, -9),
                                             fontsize=6, annotation_clip=True))
                i += 1
            log_axis(ax)
            ax.set_title(str(dataset))
            ax.set_xlabel("Cumulative training TFLOPs")
            ax.set_ylabel(axis_title(metric, panel_run(runs, dataset)))
            ax.grid(alpha=0.3, which="both")
            legend_beside(ax)
            declutter(fig, ax, notes)
    return fig


def landscape_figure(runs: list[dict], metric: str | None = None, names: Names | None = None):
    """Filter-normalised 2-D loss landscapes (Li et al. 2018; Park et al. Table 7): one contour
    panel per landscape a run recorded (`kebench run --analyses landscape`): one per LR step of its
    step-schedule passes (`analyses.landscape_steps`), and its final model's (`analyses.landscape`)
    unless that is the last step's (a pruned student fine-tuned at a constant LR adds it). One run
    per setting, its lowest seed (the others' random directions differ: their surfaces do not
    average). Every panel shares one colour scale, so their basins compare by colour."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from kebench.run.analyses import final_is_last_step

    import json

    names = names or Names()
    found, drawn = {}, set()
    for r in sorted(runs, key=lambda r: (str(r.get("dataset")), str(r.get("method")), r.get("seed", 0))):
        setting = json.dumps({k: v for k, v in (r.get("config") or {}).items() if k not in ("seed", "out")},
                             sort_keys=True, default=str)
        if (r.get("method"), r.get("arch"), r.get("dataset"), setting) in drawn:
            continue  # one trained model per setting (its lowest seed), as Park et al. draw one
        recorded = r.get("analyses") or {}
        if recorded.get("landscape"):
            drawn.add((r.get("method"), r.get("arch"), r.get("dataset"), setting))
        run_title = (f"{names.method(r.get('objective', ''), r.get('regime', ''))} / {r.get('arch')} / "
                     f"{r.get('dataset')} / s{r.get('seed', 0)}")
        steps = recorded.get("landscape_steps") or []
        for step in steps:
            found[f"{run_title}\n{step['kind']} {step['label']}, epoch {step['epoch']}, lr {step['lr']:.3g}"] = step
        if recorded.get("landscape") and not final_is_last_step(r.get("passes") or [], steps):
            found[run_title + ("\nfinal model" if steps else "")] = recorded["landscape"]
    logs = {title: np.log10(np.asarray(land["loss"], dtype=float).clip(min=1e-8)) for title, land in found.items()}
    with figure_style():
        fig, axes = panel_grid(found, "No run recorded a loss landscape: run with --analyses landscape.", sort=False)
        lo = min(float(v.min()) for v in logs.values())
        hi = max(max(float(v.max()) for v in logs.values()), lo + 1e-6)
        levels, norm = np.linspace(lo, hi, 13), Normalize(lo, hi)
        for title, ax in axes.items():
            land = found[title]
            cs = ax.contour(land["alpha"], land["beta"], logs[title], levels=levels, norm=norm, cmap="viridis",
                            linewidths=0.8)
            ax.clabel(cs, fontsize=6, fmt="%.2f")
            ax.plot([0], [0], marker="*", color="black", markersize=6)
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("direction 1 (filter-normalised)")
            ax.set_ylabel("direction 2")
            ax.set_aspect("equal")
        fig.colorbar(ScalarMappable(norm=norm, cmap=colormaps["viridis"]), ax=list(axes.values()),
                     label="log10 loss (one scale for every panel)", shrink=0.8)
        fig.suptitle("log10 loss around the weights at the end of each LR step (step schedules) or of training; "
                     "the lowest seed of each setting")
    return fig


landscape_figure.title = ("Filter-normalised 2-D loss landscapes (log10 loss) at the end of each LR step of a step "
                          "schedule, and of the final model; the lowest seed of each setting, one colour scale")


def declutter(fig, ax, labels: list) -> None:
    """Keep the point labels that lie inside the axes and overlap no label kept before them (the
    points and the legend say the rest); a label that does not fit beside its point (right, left,
    below, above) is dropped."""
    if not labels:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # the constrained layout places the axes first
    renderer = canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    kept = []
    for label in labels:
        for offset in ((4, -9), (-4, -9), (4, 4), (-4, 4)):
            label.set_position(offset)
            label.set_horizontalalignment("left" if offset[0] > 0 else "right")
            box = label.get_window_extent(renderer)
            if (inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
                    and not any(box.overlaps(k) for k in kept)):
                kept.append(box)
                break
        else:
            label.remove()


#: The figure-kind extension point: kebench's own, registry.yaml's `figures:`, `kebench.figures` entry
#: points. A figure kind is a function (runs, *, any of metric, names) -> matplotlib Figure; its
#: `title` attribute (else its docstring's first line) heads it in a study report.
FIGURES = registry.Extensions("figure kind", "figures", {
    "generations": generations_figure, "cost": cost_figure, "hypotheses": hypotheses_figure, "budget": budget_figure,
    "landscape": landscape_figure})
generations_figure.title = ("Generation curves: accuracy after each generation, dense network (solid) and slim "
                            "fit-hypothesis (dotted); the single-pass baseline dashed")
budget_figure.title = ("Accuracy vs cumulative training FLOPs: multi-pass regimes pass by pass, single passes as "
                       "points")
cost_figure.title = "Accuracy vs inference cost (GFLOPs per image); slim networks as their own points"
hypotheses_figure.title = "Mean |w| of the fit and reset hypotheses across generations"


def figure_names() -> list[str]:
    """Every figure kind, kebench's first, without importing any plugin."""
    return FIGURES.names()


def figure_title(kind: str) -> str:
    build = FIGURES.get(kind)
    return getattr(build, "title", None) or (build.__doc__ or kind).strip().splitlines()[0]


def build_figure(runs: list[dict], kind: str, metric: str | None = None, names: Names | None = None):
    if not runs:
        raise UserError("No complete results to plot. Point kebench plot at the folder given to `kebench run --out` "
                        "(default results/) and check the filters.")
    build = FIGURES.get(kind)
    takes = set(inspect.signature(build).parameters)
    return build(runs, **{k: v for k, v in (("metric", metric), ("names", names)) if k in takes})


def figure_format(path) -> str:
    """The file format named by a figure path's extension (checked before any work is done)."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UserError(f"--out must end in .png, .pdf or .svg (the formats matplotlib writes "
                        f"byte-reproducibly here), got '{Path(path).name}'.")
    return fmt


def save_figure(fig, path) -> Path:
    """Write PNG/PDF/SVG with no dates or software versions in the file: same figure, same bytes."""
    path = Path(path)
    fmt = figure_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with figure_style():
        fig.savefig(path, format=fmt, dpi=DPI, metadata=METADATA[fmt])
    return path


#: The figure-kind API: what a figure kind (kebench's own or a plugin's, e.g. methods/agevo_figures.py)
#: builds with, beside `kebench.analysis.tables`' run helpers (docs/extending.md).
FIGURE_KIND_API = ["PANEL_SIZE", "axis_title", "curve_labels", "few_ticks", "figure_style", "generation_passes",
                   "legend_beside", "log_axis", "mean_of", "metric_of", "panel_grid", "panel_run", "series_color",
                   "std_of", "subnets"]

__all__ = [*FIGURE_KIND_API, "FIGURES", "build_figure", "figure_names", "figure_title", "save_figure",
           "generations_figure", "cost_figure", "hypotheses_figure", "budget_figure"]
