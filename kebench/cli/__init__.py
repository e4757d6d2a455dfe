"""kebench's command line: run, list (and the commands later issues add)."""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import typing


def _interrupted_while_starting(signum, frame):
    """Ctrl-C while the CLI is still importing (torch takes a second or more): one line, exit 130."""
    sys.stderr.write("Interrupted while starting; nothing was run.\n")
    os._exit(130)


def _is_cli() -> bool:
    prog = sys.argv[0] if sys.argv else ""
    return os.path.basename(prog) == "kebench" or prog.endswith(os.path.join("kebench", "__main__.py"))


_STARTING = (_is_cli() and threading.current_thread() is threading.main_thread()
             and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
if _STARTING:
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import click
from rich.markup import escape
from rich.table import Table

from kebench import config as configmod
from kebench import registry
from kebench.cli.analysis import export_cmd, plot_cmd, table_cmd
from kebench.cli.console import err, out
from kebench.cli.grid import study_cmd, sweep_cmd, with_options
from kebench.cli.tools import DOWNLOAD_HELP, data_cmd, fetch_data, profile_cmd
from kebench.data.spec import headline_metric
from kebench.errors import UserError
from kebench.run.guard import RunInterrupted
from kebench.params import coerce, declared, range_text, type_text
from kebench.grid.sweep import parse_seeds


def parse_extra(args: list[str]) -> dict:
    """`--generations 3 --split-rate=0.5 --ke.split wels` -> {'generations': '3', ...}."""
    found, i = {}, 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise UserError(f"Unexpected argument '{tok}'. Plugin settings are given as --name VALUE "
                            f"(e.g. --generations 3); see 'kebench run --help'.")
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 1
        else:
            value = "true"
        found[key.replace("-", "_")] = value
        i += 1
    return found


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "–" if v is None else str(v)


def print_summary(records: list[dict]) -> None:
    table = Table(title="kebench results", show_lines=False)
    metric_keys = []  # headline metrics; per-generation (N3_...) and diagnostic values are in the pass tables
    for r in records:
        for k, v in r.get("final", {}).items():
            if k not in metric_keys and isinstance(v, (int, float)) and not re.match(r"N\d+_|.*_abs_mean$", k):
                metric_keys.append(k)
    for col in ("method", "arch", "data", "seed", "status", *metric_keys, "best", "epochs", "TFLOPs", "time (s)"):
        table.add_column(col, justify="right" if col not in ("method", "arch", "data", "status") else "left")
    for r in records:
        best = r.get("best") or {}
        primary = headline_metric(r.get("task"))
        primary = primary if primary in best else None
        table.add_row(
            r["method"], r["arch"], r["dataset"], str(r["seed"]), r["status"],
            *[_fmt(r.get("final", {}).get(k)) for k in metric_keys],
            f"{best[primary]:.4f}" if primary else "–",
            str(r.get("training", {}).get("epochs", "–")),
            f"{r.get('training', {}).get('flops', 0) / 1e12:.2f}", f"{r.get('wall_time_s', 0):.1f}",
        )
    out.print(table)
    for r in records:
        passes = r.get("passes", [])
        if len(passes) > 1:
            ptable = Table(title=f"{r['method']} seed {r['seed']}: per pass")
            keys = []
            for p in passes:
                keys += [k for k in p["metrics"] if k not in keys]
            for col in ("pass", *keys):
                ptable.add_column(col, justify="right")
            for p in passes:
                ptable.add_row(f"{p['kind']} {p['index']}", *[_fmt(p["metrics"].get(k)) for k in keys])
            out.print(ptable)
        if r["status"] != "complete":
            err.print(f"[red]run {r['run_id']} failed:[/red] {escape(str(r.get('error')))}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kebench")
def cli():
    """kebench: which training regime wins on small data, and at what cost."""


def engine_option(name: str, f):
    """The `kebench run` flag of one declared engine setting (config.RunConfig): `--lr-schedule` from
    `lr_schedule`, typed by its declaration, its choices a click.Choice, a `--x/--no-x` pair for a
    true/false setting; no default, so only the settings given on the command line override."""
    tp = typing.get_type_hints(configmod.RunConfig)[name]
    members = [t for t in (typing.get_args(tp) or (tp,)) if t is not type(None)]
    flag = "--" + name.replace("_", "-")
    meta = f.metadata
    kw = {"help": meta["help"]} if meta["help"] else {}
    if members == [bool]:
        return click.option(f"{flag}/--no-{flag[2:]}", default=None, **kw)
    if meta["choices"] is not None:
        return click.option(flag, type=click.Choice(list(meta["choices"])), **kw)
    return click.option(flag, type={int: int, float: float}.get(members[0]), **kw)


#: Engine flags whose shape is not one setting's: `--data-opt KEY=VALUE` (repeatable, -> data_options)
#: and `--seeds 0-4` (several runs, one per seed).
SPECIAL_OPTIONS = {
    "data_options": click.option("--data-opt", multiple=True, help=configmod.FIELDS["data_options"].metadata["help"]),
    "seed": click.option("--seeds", default=None, help=configmod.FIELDS["seed"].metadata["help"]),
}

RUN_OPTIONS = [
    *(SPECIAL_OPTIONS[name] if not f.metadata.get("flag", True) else engine_option(name, f)
      for name, f in configmod.FIELDS.items() if f.metadata),
    click.option("--config", "config_file", type=click.Path(), help="YAML file of settings (CLI flags win)."),
    click.option("--resume", is_flag=True, help="Continue interrupted runs from their checkpoints; skip completed ones."),
    click.option("--restart", is_flag=True, help="Start interrupted runs over, discarding their checkpoints."),
    click.option("--force", is_flag=True, help="Train completed runs again, replacing their results "
                                               "(by default a completed run is skipped)."),
    click.option("--quiet", is_flag=True, help="No progress output."),
]


run_options = with_options(RUN_OPTIONS)


def build_configs(kw: dict, extra: list[str]) -> list[configmod.RunConfig]:
    file_cfg = configmod.load_yaml(kw.pop("config_file")) if kw.get("config_file") else {}
    for key, like in (("method", ""), ("data", ""), ("seed", 0), ("data_options", {})):  # read before resolve()
        if file_cfg.get(key) is not None:
            file_cfg[key] = coerce(key, file_cfg[key], like, "config file")
    data_opts = {}
    for item in kw.pop("data_opt", ()) or ():
        if "=" not in item:
            raise UserError(f"--data-opt expects KEY=VALUE, got '{item}'.")
        k, v = item.split("=", 1)
        data_opts[k.strip()] = v.strip()
    if data_opts:
        kw["data_options"] = {**file_cfg.get("data_options", {}), **data_opts}
    seeds_text = kw.pop("seeds")
    seeds = parse_seeds(seeds_text) if seeds_text else [file_cfg.pop("seed", 0)]
    methods = [m.strip() for m in (kw.pop("method") or file_cfg.pop("method", None) or "").split(",") if m.strip()] or [None]
    plugin_flags = configmod.split_plugin_flags(methods, parse_extra(extra), kw.get("data") or file_cfg.get("data"))
    configs = []
    for method in methods:
        for seed in seeds:
            overrides = {k: v for k, v in kw.items() if v is not None}
            overrides.update(method=method, seed=seed)
            configs.append(configmod.resolve(overrides, file_cfg, plugin_flags[method]))
    return configs


def note_capped_warmup(configs: list) -> None:
    """Say once when --warmup-epochs is more than a pass's schedule allows (a quarter of it)."""
    from kebench.run.loop import effective_warmup

    for cfg in configs:
        capped = effective_warmup(cfg.warmup_epochs, cfg.epochs)
        if capped < cfg.warmup_epochs:
            err.print(f"note: a warm-up of {cfg.warmup_epochs} epochs is capped at {capped} in each {cfg.epochs}-epoch "
                      f"pass (at most a quarter of a pass's schedule warms up).", highlight=False)
            return


def plan_reruns(configs: list, *, resume: bool, restart: bool, force: bool) -> list[tuple]:
    """What to do with each config given what an earlier attempt left: (cfg, resume, skipped). A
    complete run is skipped unless forced (executed with resume=True, which returns its record and
    still runs a missing matched baseline). An interrupted run is never silently thrown away: without
    --resume or --restart the command is refused, naming where each checkpoint stands."""
    from kebench.run.engine import prior_state

    if resume and (restart or force):
        raise UserError(f"--resume continues interrupted runs; {'--restart' if restart else '--force'} "
                        f"starts them over. Give one of them.")
    plan, blocked = [], []
    for cfg in configs:
        state, detail = prior_state(cfg)
        where = f"{cfg.out}/{cfg.run_id()}"
        if state == "complete" and not force:
            if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
                err.print(f"skipped {cfg.run_id()}: already complete ({detail}, {where}/result.json); "
                          f"add --force to train it again.", highlight=False)
            plan.append((cfg, True, True))
        elif state == "interrupted" and not (resume or restart or force):
            blocked.append(f"{where} (stopped at {detail})")
        else:
            plan.append((cfg, resume, False))
    if blocked:
        raise UserError(f"{len(blocked)} run(s) were interrupted and have a checkpoint: {'; '.join(blocked)}. "
                        f"Rerun with --resume to continue from there, or with --restart to discard the "
                        f"checkpoint and start over.")
    return plan


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, tok in enumerate(argv):
        if tok == flag and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(flag + "="):
            return tok.split("=", 1)[1]
    return None


def _type_name(value) -> str:
    return {bool: "BOOL", int: "INTEGER", float: "FLOAT", str: "TEXT", dict: "MAPPING", list: "LIST",
            type(None): "VALUE"}.get(type(value), type(value).__name__.upper())


class RunCommand(click.Command):
    """`kebench run --method ke --help` also lists the settings of the method's plugins."""

    def parse_args(self, ctx, args):
        ctx.meta["kebench.argv"] = list(args)  # --help is eager: read --method from the raw arguments
        return super().parse_args(ctx, args)

    def format_options(self, ctx, formatter):
        """--help names the default network of the dataset asked for (--data, else digits)."""
        from kebench import data as datasets

        name = _flag_value(ctx.meta.get("kebench.argv", []), "--data") or configmod.RunConfig.data
        try:
            arch = datasets.get_spec(name).defaults.get("arch", configmod.RunConfig.arch)
        except UserError:
            arch = None
        for param in self.params:
            if param.name == "arch" and arch:
                param.help = f"timm model name or googlenet. Default: {arch} (the default network of {name})."
        super().format_options(ctx, formatter)

    def format_epilog(self, ctx, formatter):
        super().format_epilog(ctx, formatter)
        argv = ctx.meta.get("kebench.argv", [])
        methods = [m for m in (_flag_value(argv, "--method") or "").split(",") if m.strip()]
        if not methods:
            formatter.write_paragraph()
            formatter.write_text("Add --method NAME to --help to list that method's own settings.")
            return
        engine_keys = set(configmod.FIELDS)
        for name in methods:
            try:
                spec = configmod.method_spec(name.strip(), _flag_value(argv, "--data") or "digits")
            except UserError as exc:
                formatter.write_paragraph()
                formatter.write_text(str(exc))
                continue
            rows = []
            for plugin in (spec.objective, spec.regime):
                fields = declared(configmod.plugin_class(plugin)) or {}
                for key, value in plugin.defaults.items():
                    flag = f"--{key.replace('_', '-')}"
                    if key in fields:  # the declaration: type, choices or range, what it means
                        tp, f = fields[key]
                        allowed = "one of " + ", ".join(map(str, f.metadata["choices"])) if f.metadata["choices"] else ""
                        limits = "; ".join(x for x in (allowed, range_text(f.metadata)) if x)
                        rows.append((f"{flag} {type_text(tp)}", f"{f.metadata['help']}. Default {value!r}"
                                     + (f"; {limits}" if limits else "") + f" ({plugin.name}.{key})"))
                        continue
                    where = "engine setting" if key in engine_keys else f"{plugin.name}.{key}"
                    rows.append((f"{flag} {_type_name(value)}", f"default {value!r} ({where}; {plugin.label})"))
            with formatter.section(f"Settings of method {spec.name} (registry.yaml paper defaults)"):
                formatter.write_dl(rows or [("(none)", "this method has no settings of its own")])


@cli.command(cls=RunCommand, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@run_options
@click.option("--nproc", type=int, default=None,
              help="Train each run with N processes (DDP: one per GPU, gloo on CPU); like "
                   "'torchrun --nproc_per_node N -m kebench run ...'.")
@click.option("--tensorboard", is_flag=True,
              help="Also write TensorBoard logs to each run's tensorboard/ folder (pip install -e '.[tensorboard]'; "
                   "same as KEBENCH_TENSORBOARD=1).")
@click.option("--download", is_flag=True, help=DOWNLOAD_HELP)
@click.pass_context
def run(ctx, resume, restart, force, quiet, nproc, tensorboard, download, **kw):
    """Train and evaluate. Plugin settings are extra flags, e.g. `--method ke --generations 3`.

    \b
    Examples:
      kebench run                                  # CE, test_resnet, digits (40 px, 5 epochs)
      kebench run --method smooth+ke --generations 3 --split-rate 0.5
      kebench run --method ce,ke --seeds 0,1,2 --data aircraft --data-root ~/data
    """
    import os

    from kebench.run import distributed
    from kebench.run import launch
    from kebench.run.engine import execute_all

    if tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("--tensorboard writes TensorBoard logs, but the tensorboard package is not installed. "
                            "Install it with: pip install -e '.[tensorboard]' (in a kebench checkout) or "
                            "pip install tensorboard.")
        os.environ["KEBENCH_TENSORBOARD"] = "1"  # also reaches DDP worker processes
    configs = build_configs(kw, ctx.args)
    note_capped_warmup(configs)
    plan = plan_reruns(configs, resume=resume, restart=restart, force=force)
    if download:
        fetch_data([cfg for cfg, _, skipped in plan if not skipped])
    records = []
    for k, (cfg, how, skipped) in enumerate(plan, 1):
        if len(plan) > 1 and not quiet and not skipped:
            err.print(f"[bold]run {k}/{len(plan)}[/bold]: {cfg.method} seed {cfg.seed} ({cfg.arch}, {cfg.data})",
                      highlight=False)
        if nproc and nproc > 1 and not skipped:
            records += launch.launch(cfg, nproc, resume=how, show_progress=not quiet)
        else:  # a skipped run returns its record (and trains a missing matched baseline)
            records += execute_all(cfg, resume=how, show_progress=not quiet)
    if distributed.rank() != 0:  # under torchrun, rank 0 reports
        sys.exit(1 if any(r["status"] != "complete" for r in records) else 0)
    print_summary(records)
    for r in records:
        err.print(f"[dim]wrote {r['config']['out']}/{r['run_id']}/result.json[/dim]")
    if any(r["status"] != "complete" for r in records):
        sys.exit(1)


@cli.command("list")
@click.argument("what", type=click.Choice(["methods", "archs", "datasets"]))
@click.argument("pattern", required=False)
def list_cmd(what, pattern):
    """List methods, archs (timm + googlenet; wildcard PATTERN) or datasets."""
    import fnmatch

    if what == "methods":
        table = Table("name", "kind", "defaults", "paper")
        for name in registry.names():
            if pattern and not fnmatch.fnmatch(name, pattern):
                continue
            s = registry.get(name)
            table.add_row(name, s.kind, ", ".join(f"{k}={v}" for k, v in s.defaults.items()), s.paper)
        out.print(table)
        out.print("Compose as OBJECTIVE+REGIME, e.g. smooth+ke; a bare objective runs under 'single', "
                  "a bare regime uses 'ce'.")
    elif what == "archs":
        from kebench.nets.models import list_archs

        for name in list_archs(pattern):
            click.echo(name)
    else:
        from kebench import data

        table = Table("name", "task", "description")
        for name in data.names():
            if pattern and not fnmatch.fnmatch(name, pattern):
                continue
            spec = data.get_spec(name)
            table.add_row(name, spec.task, spec.description)
        out.print(table)


# --- the commands of kebench/cli/analysis.py, grid.py and tools.py ---

for command in (data_cmd, table_cmd, plot_cmd, export_cmd, profile_cmd, sweep_cmd, study_cmd):
    cli.add_command(command)


def main(argv=None):
    if _STARTING and signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here a KeyboardInterrupt is caught below
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="kebench")
    except click.exceptions.Abort:
        err.print("Aborted.")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except RunInterrupted as exc:
        err.print(f"[yellow]interrupted:[/yellow] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("Interrupted; rerun the same command with --resume to continue.")
        sys.exit(130)
    except OSError as exc:  # a disk fault outside the run folder's own writes (tables, plots, sweep logs)
        from kebench.run.results import storage_error

        error = storage_error(exc)
        if error is None:
            raise
        err.print(f"[bold red]error:[/bold red] {escape(str(error))}", highlight=False)
        sys.exit(error.exit_code)
