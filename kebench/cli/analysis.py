"""`kebench table` and `kebench plot`: result folders -> tables and figures."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from kebench.analysis import plots
from kebench.analysis import tables
from kebench.errors import UserError
from kebench.analysis.tables import ALPHA, FORMATS, kind_names, make_table


@click.command("table")
@click.argument("result_dirs", nargs=-1, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="markdown", show_default=True)
@click.option("--kind", type=click.Choice(kind_names()),
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


@click.command("plot")
@click.argument("result_dirs", nargs=-1, type=click.Path())
@click.option("--kind", type=click.Choice(plots.figure_names()), default="generations", show_default=True)
@click.option("--out", "out_file", type=click.Path(), help="Figure file (.png, .pdf or .svg). Default: KIND.png.")
@click.option("--metric", help="Metric to plot (default: top1, or r@1 for retrieval).")
@click.option("--arch", multiple=True, help="Only these archs (repeatable or comma list).")
@click.option("--dataset", multiple=True, help="Only these datasets.")
@click.option("--method", multiple=True,
              help="Only these methods (`ce`, `smooth+ke`; a bare regime `ke` keeps all its objectives).")
def plot_cmd(result_dirs, kind, out_file, metric, arch, dataset, method):
    """Figures from result folders: generations, cost, hypotheses, budget or search (one panel per dataset).

    \b
    Examples:
      kebench plot results/ --kind generations --out generations.pdf
      kebench plot results/ --kind cost --out cost.png
      kebench plot results/ --kind hypotheses --out zero-mapping.pdf
      kebench plot results/ --kind budget --out budget.png
      kebench plot results/ --kind search --out search.png
    """
    if out_file:
        plots.figure_format(out_file)
    runs, left_out = tables.load_runs(result_dirs or ("results",), archs=tables.split_list(arch), datasets=tables.split_list(dataset),
                               methods=tables.split_list(method))
    tables.report_left_out(left_out, sys.stderr)
    metric = (tables.split_list(metric) or [None])[0]
    fig = plots.build_figure(runs, kind, metric)
    path = plots.save_figure(fig, out_file or f"{kind}.png")
    click.echo(f"wrote {path}", err=True)
