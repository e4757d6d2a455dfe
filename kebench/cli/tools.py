"""`kebench data check`, `kebench data download` and `kebench profile`: look at a dataset copy or an architecture without training."""
from __future__ import annotations

import json
import sys

import click

from kebench.cli.console import out
from kebench.errors import UserError


DOWNLOAD_HELP = ("Download each dataset into its data root first where kebench does not find it there "
                 "(public datasets only; see 'kebench data download --help').")


@click.group("data")
def data_cmd():
    """Check local copies of the datasets, or download the public ones."""


@data_cmd.command("check")
@click.argument("name")
@click.option("--data-root", help="Folder holding the dataset (or set KEBENCH_DATA).")
@click.option("--per-class", is_flag=True, help="Print the image count of every class in every split.")
@click.option("--strict", is_flag=True, help="Also fail when split sizes differ from the official copy.")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Decoding threads (0: one per core, at most 16).")
@click.option("--download", is_flag=True, help=DOWNLOAD_HELP)
def check_cmd(name, data_root, per_class, strict, workers, download):
    from rich.console import Console

    from kebench.data import check as data_check

    if download:
        data_root = str(fetch(name, data_root))
    sys.exit(data_check.check(name, data_root, per_class, strict, workers, Console(soft_wrap=True)))  # long paths stay on one line


@data_cmd.command("download")
@click.argument("names", nargs=-1, required=True)
@click.option("--data-root", help="Folder to download into (or set KEBENCH_DATA); created if missing.")
def download_cmd(names, data_root):
    """Download datasets into the data root, in the layout kebench reads.

    \b
    A dataset already there is not fetched again. CIFAR-10/100, MNIST, Flowers-102, FGVC-Aircraft,
    Tiny-ImageNet, CUB-200, Stanford Dogs and MIT-67 have public downloads; ImageNet and Stanford
    Cars do not (the error says where to get them and where to put the files).
    Example:  kebench data download cifar100 mnist --data-root ~/data
    """
    for name in names:
        root = fetch(name, data_root)
        out.print(f"'{name}' is ready under {root}; 'kebench data check {name} --data-root {root}' verifies it.",
                  highlight=False)


def fetch(name: str, data_root: str | None):
    """The one download path of every command: `download.ensure`, speaking on stderr."""
    from kebench.cli.console import err
    from kebench.data import download

    return download.ensure(name, data_root, say=lambda text: err.print(text, highlight=False))


def fetch_data(configs: list) -> None:
    """`--download` on run, sweep and study: each dataset the runs read from a data root, fetched once
    here before any run starts (on SLURM: on the submitting node, not in every job)."""
    from kebench.data.download import is_local

    for name, root in dict.fromkeys((cfg.data, cfg.data_root) for cfg in configs):
        if is_local(name):
            fetch(name, root)


@click.command("profile")
@click.option("--arch", default="resnet18", show_default=True, help="timm model name or googlenet.")
@click.option("--num-classes", type=int, default=1000, show_default=True)
@click.option("--split", default="kels", show_default=True, help="kels (the only split with a slim network).")
@click.option("--split-rate", type=float, default=0.8, show_default=True, help="s_r: fraction of channels kept.")
@click.option("--resolution", type=int, default=224, show_default=True, help="Input size in pixels.")
@click.option("--in-chans", type=int, default=3, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (for latency).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object {dense: {...}, slim: {...}}.")
def profile_cmd(arch, num_classes, split, split_rate, resolution, in_chans, device, as_json):
    """Dense vs slim KELS network: per-layer weight shapes, params, FLOPs and latency.

    \b
    FLOPs from torch.utils.flop_counter: one multiply-add = 2 FLOPs.
    Example:  kebench profile --arch resnet18 --num-classes 102 --split-rate 0.5 --json
    """
    from kebench.run.engine import pick_device
    from kebench.nets.models import create_model
    from kebench.nets.slim import profile

    if split != "kels":
        raise UserError(f"--split {split}: only KELS has a slim network (whole channels); WELS and WELS-Rand "
                        f"mask single weights, so their fit-hypothesis is not smaller. Use --split kels.")
    if not 0 < split_rate <= 1:
        raise UserError(f"--split-rate must be in (0, 1], got {split_rate}.")
    if num_classes < 1 or in_chans < 1 or resolution < 8:
        raise UserError("--num-classes and --in-chans must be >= 1 and --resolution >= 8.")
    dev = pick_device(device)
    model = create_model(arch, num_classes, in_chans)
    result = profile(model, split_rate, resolution, in_chans, dev, latency=not as_json)
    if as_json:
        click.echo(json.dumps({k: {"params": v["params"], "flops": v["flops"], "layers": v["layers"]}
                               for k, v in result.items()}))
        return
    _print_profile(arch, split_rate, resolution, dev, result)


def _print_profile(arch, rate, resolution, device, result) -> None:
    from rich.table import Table

    dense, slim = result["dense"], result["slim"]
    table = Table(title=f"{arch} at {resolution}px: dense vs KELS slim (s_r={rate})")
    for col in ("layer", "dense weight", "slim weight"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for name, shape in dense["layers"].items():
        s = slim["layers"].get(name)
        table.add_row(name, "x".join(map(str, shape)), "x".join(map(str, s)) if s else "–")
    table.add_section()
    table.add_row("params", f"{dense['params']:,}", f"{slim['params']:,} ({slim['params'] / dense['params']:.1%})")
    table.add_row("FLOPs (1 MAC = 2)", f"{dense['flops']:,}", f"{slim['flops']:,} ({slim['flops'] / dense['flops']:.1%})")
    table.add_row(f"latency ms ({device}, batch 1)", f"{dense['latency_ms']:.2f}", f"{slim['latency_ms']:.2f}")
    out.print(table)
