"""AG-Evo's `search` figure kind (architecture searches: agevo, eigen, eigen-d), contributed through
registry.yaml's `figures:` section: per dataset, the best individual's test accuracy (top) and size in
parameters (bottom, log) after each generation, against cumulative training FLOPs."""
from __future__ import annotations

from kebench.analysis.plots import PANEL_SIZE, curve_labels, figure_style, legend_beside, series_color
from kebench.analysis.tables import Names, metric_title
from kebench.errors import UserError


def search_figure(runs: list[dict], metric: str | None = None, names: Names | None = None):
    """Per dataset: the best individual's accuracy (top) and parameters (bottom) over the search,
    one curve per search run (`search.history` of agevo/eigen results), x = cumulative training TFLOPs."""
    from matplotlib.figure import Figure

    names = names or Names()
    searches = [r for r in runs if (r.get("search") or {}).get("history")]
    if not searches:
        raise UserError("No architecture-search results (result.json with `search.history`, from agevo/eigen) "
                        "to plot.")
    if metric not in (None, "top1", "val_top1"):
        raise UserError(f"--metric for the search plot is top1 or val_top1, got '{metric}'.")
    labels = curve_labels(searches, names)
    datasets = sorted({r.get("dataset") for r in searches}, key=str)
    with figure_style():
        fig = Figure(figsize=(PANEL_SIZE[0] * len(datasets), PANEL_SIZE[1] * 1.6), layout="constrained")
        axes = fig.subplots(2, len(datasets), squeeze=False, sharex="col")
        for j, dataset in enumerate(datasets):
            top, bottom = axes[0, j], axes[1, j]
            for i, r in enumerate(sorted((r for r in searches if r.get("dataset") == dataset),
                                         key=lambda r: (labels[r["_path"]], str(r.get("seed"))))):
                history = r["search"]["history"]
                xs = [h["train_flops"] / 1e12 for h in history]
                label = labels[r["_path"]] + (f" seed {r.get('seed')}" if len(searches) > 1 else "")
                top.plot(xs, [100 * h[metric or "top1"] for h in history], color=series_color(i), marker="o", ms=3,
                         lw=1.4, label=label)
                bottom.plot(xs, [h["params"] for h in history], color=series_color(i), marker="s", ms=3, lw=1.4,
                            label=label)
            top.set_title(str(dataset))
            top.set_ylabel(f"Best individual: {metric_title(metric or 'top1')} (%)")
            bottom.set_ylabel("Best individual: parameters")
            bottom.set_yscale("log")
            bottom.set_xlabel("Cumulative training TFLOPs (search cost)")
            for ax in (top, bottom):
                ax.grid(alpha=0.3, which="both")
            legend_beside(top)
    return fig


search_figure.title = "Architecture search: the best individual's accuracy and size against cumulative search FLOPs"
