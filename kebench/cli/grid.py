"""`kebench sweep` and `kebench study`: grids of runs, their executors and study reports."""
from __future__ import annotations

import json
import sys

import click

from kebench.analysis import study
from kebench.cli.tools import DOWNLOAD_HELP, fetch_data
from kebench.grid import EXECUTORS, sweep

EXECUTOR_OPTIONS = [
    click.option("--executor", type=click.Choice(EXECUTORS.names()), default="local",
                 show_default=True, help="local: worker processes here; inline: one run after another in this "
                                         "process (tiny CPU runs); slurm: a submitit job array; "
                                         "submitit-local: the slurm code path on this machine."),
    click.option("--retry-failed", is_flag=True, help="Run failed runs again (a failure is otherwise final)."),
    click.option("--workers", type=click.IntRange(min=1), help="local/submitit-local: runs at once. Default: one per GPU, else 1."),
    click.option("--gpus", help="local: GPU ids to use, e.g. 0,1,2,3. Default: all visible."),
    click.option("--gpus-per-run", type=click.IntRange(min=1), default=1, show_default=True,
                 help="local: GPUs per run; more than 1 trains each run with DDP."),
    click.option("--runs-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
                 help="local: pack N runs on each GPU (small datasets at batch 32 leave a large GPU mostly "
                      "idle); the default --workers becomes GPUs x N."),
    click.option("--partition", help="slurm: partition."),
    click.option("--time", "time_min", type=click.IntRange(min=1), default=240, show_default=True, help="slurm: minutes per job."),
    click.option("--gpus-per-job", type=click.IntRange(min=0), default=1, show_default=True,
                 help="slurm: GPUs per job; more than 1 trains the run with DDP across them."),
    click.option("--nproc", type=click.IntRange(min=1),
                 help="slurm/submitit-local: processes (DDP ranks) per run; on SLURM one task per rank, started "
                      "by srun. Default: --gpus-per-job (at least 1)."),
    click.option("--array-parallelism", type=click.IntRange(min=1), default=16, show_default=True, help="slurm: jobs running at once."),
    click.option("--cpus-per-task", type=click.IntRange(min=1), help="slurm: CPU cores per job."),
    click.option("--mem-gb", type=float, help="slurm: memory per job."),
    click.option("--slurm-opt", multiple=True, help="slurm: any other sbatch option KEY=VALUE (account=..., qos=...)."),
    click.option("--setup", multiple=True, help="slurm: shell line run before each job (e.g. 'module load cuda')."),
    click.option("--wait", is_flag=True, help="slurm: wait for the jobs and report their outcome."),
]


def with_options(options: list):
    """A decorator adding click options in the order listed (flags shared by several commands)."""
    def apply(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return apply


#: The executor flags `kebench sweep` and `kebench study run` share.
executor_options = with_options(EXECUTOR_OPTIONS)


@click.command("sweep")
@click.argument("spec_file", type=click.Path())
@click.option("--status", "show_status", is_flag=True, help="Show done / running / failed / pending and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --status: one JSON list on stdout.")
@click.option("--out", help="Results folder (overrides the file's 'out').")
@click.option("--set", "sets", multiple=True, help="KEY=VALUE for every run (overrides the file's 'set').")
@click.option("--download", is_flag=True, help=DOWNLOAD_HELP)
@executor_options
def sweep_cmd(spec_file, show_status, as_json, out, sets, download, **executor_opts):
    """Run a grid of runs; completed runs are skipped and interrupted ones resumed.

    \b
    sweep.yaml:
      grid: {method: [ce, ke], arch: [resnet18], data: [digits], seed: [0, 1, 2]}
      set: {epochs: 5, generations: 3}
      out: results/
    \b
    Examples:
      kebench sweep sweep.yaml --executor local --workers 2
      kebench sweep sweep.yaml --runs-per-gpu 4          # 4 runs share each GPU
      kebench sweep sweep.yaml --status
      kebench sweep sweep.yaml --executor slurm --partition gpu --time 240 --gpus-per-job 1 --array-parallelism 16
    """
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)  # no wrap at 80 columns in a log file
    spec = sweep.load_spec(spec_file)
    entries = sweep.expand(spec, out=out, sets=sweep.parse_sets(sets))
    if show_status:
        rows = sweep.status_rows(entries)
        if as_json:
            click.echo(json.dumps(rows, indent=1))
        else:
            sweep.print_status(rows, Console(highlight=False, width=None if sys.stdout.isatty() else 160))
        return
    from kebench.grid import executors  # torch and submitit: only when runs start

    if download:
        fetch_data([e.cfg for e in entries])
    code = executors.dispatch(entries, console, **executor_opts)
    rows = sweep.status_rows(entries)
    c = sweep.counts(rows)
    console.print(f"sweep: {len(rows)} runs: " + ", ".join(f"{c[s]} {s}" for s in sweep.STATES))
    sys.exit(code)


@click.group("study")
def study_cmd():
    """Paper studies: run a shipped grid and write its report (HTML + LaTeX + Markdown)."""


@study_cmd.command("list")
def list_cmd():
    """The studies shipped with kebench."""
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "reproduces", "scales")
    for n in study.names():
        s = study.load(n)
        table.add_row(n, f"{s.title}\n[dim]{s.paper}[/dim]", ", ".join(sorted(s.scales)))
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _common(f):
    f = click.option("--set", "sets", multiple=True, help="KEY=VALUE for every run (e.g. data_root=~/data).")(f)
    f = click.option("--out", help="Results folder. Default: results/studies/NAME/SCALE.")(f)
    f = click.option("--scale", type=click.Choice(study.SCALES), default="mini", show_default=True,
                     help="mini: embedded data on a CPU in minutes; paper: the paper's settings; standin: a "
                          "smaller dataset in place of one the paper used (evolution: Tiny-ImageNet for ImageNet).")(f)
    return click.argument("name")(f)


@study_cmd.command("run")
@_common
@click.option("--report-dir", help="Report folder. Default: OUT/report.")
@click.option("--status", "show_status", is_flag=True, help="Show the study's run states and exit.")
@click.option("--download", is_flag=True, help=DOWNLOAD_HELP)
@executor_options
@click.pass_context
def run_cmd(ctx, name, scale, out, sets, report_dir, show_status, download, **executor_opts):
    """Run a study's grid (finished runs are skipped, interrupted ones resumed), then write its report.

    \b
    Examples:
      kebench study run ke-table2                       # mini scale, one run after another here
      kebench study run ke-table2 --scale paper --set data_root=~/data --executor slurm --partition gpu
      kebench study run park-kd-pruning --workers 2
    """
    from rich.console import Console

    from kebench.grid import executors
    from kebench.analysis import report

    console = Console(stderr=True, highlight=False, soft_wrap=True)  # no wrap at 80 columns in a log file
    chosen = study.load(name)
    todo = study.entries(chosen, scale, out, sweep.parse_sets(sets))
    if show_status:
        sweep.print_status(sweep.status_rows(todo), Console(highlight=False, width=None if sys.stdout.isatty() else 160))
        return
    if scale == "mini" and ctx.get_parameter_source("executor") == click.core.ParameterSource.DEFAULT:
        executor_opts["executor"] = "inline"  # tiny CPU runs: one process, torch imported once
    console.print(f"study {name} ({scale}): {chosen.note(scale)}")
    if download:
        fetch_data([e.cfg for e in todo])
    code = executors.dispatch(todo, console, what="study", **executor_opts)
    rows = sweep.status_rows(todo)
    c = sweep.counts(rows)
    console.print(f"study: {len(rows)} runs: " + ", ".join(f"{c[s]} {s}" for s in sweep.STATES))
    path = report.write_report(chosen, scale, out=out, report_dir=report_dir, sets=sweep.parse_sets(sets))
    console.print(f"wrote {path}")
    sys.exit(code)


@study_cmd.command("report")
@_common
@click.option("--report-dir", help="Report folder. Default: OUT/report.")
def report_cmd(name, scale, out, sets, report_dir):
    """Re-render a study's report from whatever results exist (missing runs and cells are marked)."""
    from kebench.analysis import report

    path = report.write_report(study.load(name), scale, out=out, report_dir=report_dir, sets=sweep.parse_sets(sets))
    click.echo(f"wrote {path}", err=True)
