"""Loading: result folders -> runs -> entries (one per run and generation shown), with the
settings that tell two runs apart and the display names of plugins."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kebench import registry
from kebench.context import PassKind
from kebench.data.spec import TASKS
from kebench.config import NOT_IN_RUN_ID, identity
from kebench.errors import UserError

#: Headline metric per task, from the task records (kebench.data.spec.Task).
PRIMARY = {name: task.headline for name, task in TASKS.items()}
#: Columns of the retrieval table in the KE paper (Table 4): NMI, R@1, R@4.
RETRIEVAL_METRICS = ("nmi", "r@1", "r@4")
MISSING = "–"

#: Config entries that never tell two runs' numbers apart (where/how they ran, or already a table
#: dimension). `generations` is carried by the row label (KE-N3 vs KE-N10), so it is not one either.
IGNORED_CONFIG = {*NOT_IN_RUN_ID, "channels_last", "compile", "eval_every",  # how, not what
                  "method", "seed", "arch", "data", "params"}  # table dimensions
IGNORED_PARAMS = {"generations"}
#: Settings a matched single pass may differ in from its multi-pass row (its schedule is stretched).
BUDGET_FREE = {"epochs", "warmup_epochs"}
FIXED_DIMS = ("method", "objective", "regime", "arch", "dataset", "seed", "generation", "task")
DIM_TITLES = {"method": "Method", "objective": "Objective", "regime": "Regime", "arch": "Arch",
              "dataset": "Dataset", "seed": "Seed", "generation": "Generation", "task": "Task",
              "epochs": "Epochs"}
METRIC_TITLES = {"top1": "Top-1", "nmi": "NMI", "ensemble_top1": "Ensemble top-1", "naswot": "NASWOT",
                 "naswot_eig": "NASWOT (eigenvalues)"}


# ---------------------------------------------------------------------------------------- loading
def discover(paths) -> list[Path]:
    """Run folders (holding result.json or config.yaml) at or below each path, sorted."""
    found = set()
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise UserError(f"Result folder '{root}' does not exist. Pass folders that hold kebench run "
                            f"folders (what `kebench run --out DIR` wrote; default: results/).")
        if root.is_file() and root.name == "result.json":
            root = root.parent
        if (root / "result.json").is_file() or (root / "config.yaml").is_file():
            found.add(root)
            continue
        for name in ("result.json", "config.yaml"):
            found.update(p.parent for p in root.rglob(name))
    return sorted(found, key=str)


def method_matches(method: str, objective: str, regime: str, wanted) -> bool:
    """`--method` filter: an exact method name (`ce`, `smooth+ke`) or a bare regime (`ke`: any objective)."""
    for m in wanted:
        if m in (method, f"{objective}+{regime}") or ("+" not in m and m == regime):
            return True
    return False


def load_runs(paths, *, archs=(), datasets=(), methods=()) -> tuple[list[dict], list[tuple[str, str]]]:
    """Complete runs (result records with '_path') and the runs left out as (path, reason).

    Filters apply to both lists, so a failed run of a method the table does not show is not reported.
    """
    import yaml

    from kebench.grid.sweep import read_failure
    from kebench.run.results import load_result

    runs, left_out = [], []
    for d in discover(paths):
        rec, problem = load_result(d)
        if rec is None:
            cfg = {}
            if (d / "config.yaml").is_file():
                try:
                    cfg = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
                except (yaml.YAMLError, ValueError, OSError):
                    cfg = {}
            cfg = cfg if isinstance(cfg, dict) else {}
            meta = {"arch": cfg.get("arch"), "dataset": cfg.get("data"), "method": str(cfg.get("method", ""))}
            obj, _, reg = meta["method"].partition("+")
            if _filtered(meta, obj, reg or "single", archs, datasets, methods):
                continue
            failure = read_failure(d)  # a sweep run that stopped with an error before its result
            why = problem or (f"failed: {failure}" if failure else
                              "incomplete: no result.json (still running or interrupted; rerun with --resume)")
            left_out.append((str(d), why))
            continue
        if _filtered(rec, rec.get("objective", ""), rec.get("regime", ""), archs, datasets, methods):
            continue
        if rec.get("status") != "complete":
            left_out.append((str(d), f"{rec.get('status', 'no status')}: {rec.get('error', 'no error recorded')}"))
            continue
        runs.append({**rec, "_path": str(d)})
    return runs, left_out


def _filtered(rec, objective, regime, archs, datasets, methods) -> bool:
    return bool((archs and rec.get("arch") not in archs) or (datasets and rec.get("dataset") not in datasets)
                or (methods and not method_matches(rec.get("method", ""), objective, regime, methods)))


# ---------------------------------------------------------------------------------------- names
class Names:
    """Display labels and order of plugins, from registry.yaml's `label:` (a mapping can stand in)."""

    def __init__(self, labels: dict[str, str] | None = None):
        if labels is None:
            labels = {name: spec.label or name for name, spec in registry.plugins().items()}
        self.labels = dict(labels)
        self._order = {name: i for i, name in enumerate(self.labels)}

    def label(self, name: str) -> str:
        return self.labels.get(name, name)

    def order(self, name: str) -> tuple:
        return self._order.get(name, len(self._order)), name

    def method(self, objective: str, regime: str, generation: int | None = None) -> str:
        """Paper-style row label: `CE (N1)`, `CE + KE-N10`, `CS-KD + KE-N3`, `CE + DSD`."""
        obj = self.label(objective)
        if regime == "single":
            return f"{obj} ({self.label('single')})"
        reg = self.label(regime)
        return f"{obj} + {reg}-N{generation}" if generation else f"{obj} + {reg}"


def metric_title(metric: str) -> str:
    if metric in METRIC_TITLES:
        return METRIC_TITLES[metric]
    if metric.startswith("r@"):
        return "R@" + metric[2:]
    subnets = tuple((f"{n}_", n.capitalize()) for n in registry.subnets())  # KE's slim_top1: "Slim top-1"
    for prefix, word in (*subnets, ("unpruned_", "Unpruned"), ("ensemble_", "Ensemble")):
        if metric.startswith(prefix):
            return f"{word} {metric_title(metric[len(prefix):]).lower()}"
    return metric


# ---------------------------------------------------------------------------------------- entries
@dataclass
class Entry:
    """One measurement shown in a table: a run at one generation (or at its end)."""

    run: dict
    generation: int | None  # generation shown (None: the regime has no generations)
    last: bool  # the run ended at this generation
    metrics: dict
    epochs: float | None  # training cost up to this point
    flops: float | None
    base: str = ""  # label without the disambiguating suffix
    label: str = ""
    sig: dict = field(default_factory=dict)
    dims: dict = field(default_factory=dict)
    row: tuple = ()
    col: tuple = ()

    @property
    def objective(self) -> str:
        return self.run.get("objective", "")

    @property
    def regime(self) -> str:
        return self.run.get("regime", "")

    @property
    def seed(self):
        return self.run.get("seed")

    @property
    def per_pass_epochs(self):
        return (self.run.get("config") or {}).get("epochs")

    @property
    def path(self) -> str:
        return self.run.get("_path", "")


def hashable(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def signature(run: dict) -> dict:
    """The run's settings that can change its numbers, flat (`lr`, `ke.split_rate`)."""
    cfg = run.get("config") or {}
    flat = {k: hashable(v) for k, v in identity(cfg).items() if k not in IGNORED_CONFIG}
    for plugin, params in sorted((cfg.get("params") or {}).items()):
        for k, v in sorted((params or {}).items()):
            if k not in IGNORED_PARAMS:
                flat[f"{plugin}.{k}"] = hashable(v)
    return flat


def parse_generations(text: str | None):
    """`final` (default) -> None, `all` -> 'all', `3,10` -> [3, 10]."""
    if text is None or text.strip() in ("", "final", "last"):
        return None
    if text.strip() == "all":
        return "all"
    try:
        gens = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        gens = []
    if not gens or gens[0] < 1:
        raise UserError(f"--generation expects 'final', 'all' or generation numbers like '3' or '3,10', got '{text}'.")
    return gens


def expand(run: dict, generations=None, names: Names | None = None) -> list[Entry]:
    """Entries of one run: one per requested generation for multi-generation regimes, else one."""
    names = names or Names()
    passes = run.get("passes") or []
    training = run.get("training") or {}
    final = run.get("final") or {}
    gens = {p.get("index"): i for i, p in enumerate(passes) if p.get("kind") == PassKind.GENERATION}
    if not gens or run.get("regime") == "single":
        e = Entry(run, None, True, dict(final), training.get("epochs"), training.get("flops"))
        e.base = names.method(run.get("objective", ""), run.get("regime", ""))
        return [e]
    last = max(gens)
    if generations is None:
        wanted = [last]
    else:
        wanted = sorted(gens) if generations == "all" else [g for g in generations if g in gens]
    out = []
    for g in wanted:
        pos = gens[g]
        upto = passes[: pos + 1]
        if pos == len(passes) - 1:  # the run's last pass: run-level numbers apply (ensemble, totals)
            metrics = {**(passes[pos].get("metrics") or {}), **final}
            epochs, flops = training.get("epochs"), training.get("flops")
        else:
            metrics = dict(passes[pos].get("metrics") or {})
            epochs = sum(p.get("epochs") or 0 for p in upto)
            flops = sum(p.get("train_flops") or 0 for p in upto) if any("train_flops" in p for p in upto) else None
        e = Entry(run, g, g == last, metrics, epochs, flops)
        e.base = names.method(run.get("objective", ""), run.get("regime", ""), g)
        out.append(e)
    return out


def dim_value(e: Entry, dim: str, names: Names):
    """Value of a row/column dimension for an entry: a fixed name or any config / plugin setting."""
    if dim == "method":
        return e.label
    if dim in ("objective", "regime"):
        return names.label(getattr(e, dim))
    if dim in ("arch", "dataset", "seed", "task"):
        return e.run.get(dim)
    if dim == "generation":
        return e.generation if e.generation is not None else (1 if e.regime == "single" else None)
    cfg = e.run.get("config") or {}
    params = cfg.get("params") or {}
    if dim in cfg and dim != "params":
        return hashable(cfg[dim])
    if "." in dim:
        plugin, _, key = dim.partition(".")
        return hashable((params.get(plugin) or {}).get(key))
    for plugin in (e.regime, e.objective, *sorted(params)):
        if dim in (params.get(plugin) or {}):
            return hashable(params[plugin][dim])
    return None


def _known_dims(entries) -> list[str]:
    found = set(FIXED_DIMS)
    for e in entries:
        cfg = e.run.get("config") or {}
        found.update(k for k in cfg if k != "params")
        for plugin, params in (cfg.get("params") or {}).items():
            found.update(params or {})
            found.update(f"{plugin}.{k}" for k in params or {})
    return sorted(found)


def sort_value(v):
    if v is None:
        return (2, 0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, v, "")
    return (1, 0, str(v))



def split_list(text) -> list[str]:
    if not text:
        return []
    if isinstance(text, (list, tuple)):
        return [t for part in text for t in split_list(part)]
    return [t.strip() for t in str(text).split(",") if t.strip()]

