"""RunConfig: one validated dataclass.

Precedence (lowest first): RunConfig defaults < dataset defaults < plugin defaults from
registry.yaml < `--config file.yaml` < CLI flags. The resolved config is saved with each run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kebench import registry
from kebench.errors import UserError, unknown_choice
from kebench.params import SCALARS, check_defaults, check_value, declared, param, parse_params
from kebench.params import coerce as _coerce


#: LR schedules a pass may follow (run/loop.py implements them).
LR_SCHEDULES = ("cosine", "constant", "step")
#: Analyses of the final model a run may ask for (run/analyses.py computes them).
ANALYSES = ("naswot", "landscape")


@dataclass
class RunConfig:
    """The engine settings, each declared with `param` as plugin parameters are: its type, default,
    choices and range are checked by `validate` and make its `kebench run` flag (`--lr-schedule`)."""

    method: str = param("Comma list of methods; OBJECTIVE+REGIME composes (e.g. ce,smooth+ke). Default: ce.",
                        default="ce")
    arch: str = param("timm model name or googlenet. Default: the dataset's default network.", default="resnet18")
    data: str = param("Dataset name (kebench list datasets). Default: digits.", default="digits")
    data_root: str | None = param("Folder holding the dataset (or set KEBENCH_DATA).", default=None)
    data_options: dict = param("Dataset option KEY=VALUE (repeatable).", default={}, flag=False)  # --data-opt
    seed: int = param("Seeds to run, e.g. 0,1,2 or 0-4. Default: 0.", default=0, ge=0, flag=False)  # --seeds
    epochs: int = param("Epochs per pass (generation / phase).", default=12, gt=0,
                        rule="a positive number of epochs per pass")
    batch_size: int = param("Images per training batch.", default=64, gt=0)
    lr: float = param("Peak learning rate (SGD).", default=0.05, gt=0)
    momentum: float = param("SGD momentum.", default=0.9, ge=0, lt=1)
    weight_decay: float = param("SGD weight decay.", default=1e-4, ge=0)
    lr_schedule: str = param("LR schedule of each pass.", default="cosine", choices=LR_SCHEDULES)
    lr_milestones: list[float] = param("step schedule: comma list of fractions of each pass where the LR is "
                                       "multiplied by --lr-gamma (rethinking-network-pruning's CIFAR code: "
                                       "0.5,0.75).", default=[0.5, 0.75], gt=0, lt=1)
    lr_gamma: float = param("step schedule: LR factor at each milestone.", default=0.1, gt=0, le=1)
    warmup_epochs: int = param("Linear warm-up at the start of every restarted LR schedule (KE code; paper "
                               "datasets: 5, digits: 0); a pass caps it at a quarter of its length.", default=0,
                               ge=0, rule=">= 0 (each pass caps it at a quarter of its schedule)")
    lr_per: str = param("Set the LR once per epoch (KE code) or per step.", default="epoch", choices=("epoch", "step"))
    resolution: int | None = param("Network input size in pixels.", default=None, ge=8,
                                   rule=">= 8 pixels")  # None: the dataset's default
    train_fraction: float = param("Use this stratified fraction of the training split.", default=1.0, gt=0, le=1)
    eval_every: int = param("Also evaluate every K epochs (best epoch is then known).", default=0, ge=0,
                            rule=">= 0 (0 = end of pass only)")  # 0: evaluate at the end of each pass only
    device: str = param("auto, cpu, cuda or cuda:N.", default="auto")  # checked by validate (a pattern)
    amp: str = param("Mixed precision: auto (bf16 on CUDA), bf16, fp16 or off.", default="auto",
                     choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool | None = param("channels_last memory format (default: on for CUDA).", default=None)
    compile: bool = param("torch.compile the model (CUDA).", default=False)
    init: str = param("Generation-1 weights: timm (timm's / torchvision's own initialisation) or ke-official "
                      "(the official KE code's: kaiming normal fan_in, every BN gamma 1; docs/fidelity.md).",
                      default="timm", choices=("timm", "ke-official"))
    out: str = param("Results folder. Default: results/.", default="results")
    checkpoint_every_s: float = param("Mid-pass checkpoint interval in seconds (default 30).", default=30.0, ge=0)
    analyses: list[str] = param("Comma list of analyses of the final model: naswot (Mellor et al.'s score, "
                                "into result.json 'final'), landscape (Li et al.'s 2-D loss landscape, also at the "
                                "end of each LR step with --lr-schedule step; kebench plot --kind landscape).",
                                default=[])
    budget: str = param("matched: also run the single-pass baseline with the same total epochs.", default="paper",
                        choices=("paper", "matched"))  # paper: equal per-pass budget
    params: dict = field(default_factory=dict)  # {plugin: {key: value}} resolved plugin hyperparameters

    # -------------------------------------------------------------- derived
    @property
    def method_spec(self) -> registry.Method:
        return method_spec(self.method, self.data)

    def plugin_params(self, name: str) -> dict:
        return dict(self.params.get(name, {}))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def run_id(self) -> str:
        """Stable id from everything that changes the numbers (not where they are written or read
        from, nor which extra runs are asked for beside it). Every part is a safe file name."""
        d = identity(self.to_dict())
        digest = hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return "_".join([*(safe_name(v) for v in (self.method, self.arch, self.data)), f"s{self.seed}", digest])


def method_spec(method: str | None, data: str) -> registry.Method:
    """The objective and regime `method` names on dataset `data`: a bare regime (or no method at all)
    trains the default objective of the dataset's task (`Task.objective`: ce; triplet on retrieval)."""
    from kebench.data import get_spec, get_task

    objective = get_task(get_spec(data).task).objective
    return registry.parse_method(method or objective, default_objective=objective)


#: Settings that do not change a run's numbers: where results go, where the data is read from (the
#: same files on another disk), the device string, checkpoint frequency, and whether the matched-budget
#: baseline is also run. They stay out of the run id, so moving the data never retrains a finished run.
NOT_IN_RUN_ID = ("out", "data_root", "device", "checkpoint_every_s", "budget")


#: Settings added after results existed: left out of the run id (and of a table's settings) while at
#: their default, so runs made before them keep their ids, resume and tabulate as before.
ID_OMITS_DEFAULT = ("init", "lr_milestones", "lr_gamma", "analyses")


def identity(config: dict) -> dict:
    """The settings of a config (as a dict, e.g. result.json's) that make its run id."""
    return {k: v for k, v in config.items()
            if k not in NOT_IN_RUN_ID and not (k in ID_OMITS_DEFAULT and v == _field_default(k))}


def safe_name(text, limit: int = 40) -> str:
    """`text` as one safe path component: [A-Za-z0-9.+,=-] only, no leading dot, at most `limit` chars.
    (The run id's hash keeps two names that map to the same safe name apart.)"""
    cleaned = re.sub(r"[^A-Za-z0-9.+,=-]+", "-", str(text)).strip(".-")
    return cleaned[:limit].rstrip(".-") or "x"


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_ENGINE_KEYS = set(FIELDS) - {"params", "method"}


def _plugin_value(key: str, value, like, where: str):
    """A plugin parameter: typed by its registry default; a text default ('auto', a path) also takes a
    number, and an unset (null) default takes any single value, never a list or mapping."""
    if like is None:
        if value is not None and not isinstance(value, SCALARS):
            raise UserError(f"{where}: '{key}' expects a single value, got {value!r}.")
        return value
    if isinstance(like, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return _coerce(key, value, like, where)


def _field_default(name: str):
    f = FIELDS[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


_FIELD_TYPES = {"resolution": 0, "channels_last": True, "data_root": ""}


def _engine_value(key, value, where):
    like = _field_default(key)
    if like is None:  # an optional setting: null keeps its "not set" meaning
        if value is None:
            return None
        like = _FIELD_TYPES.get(key)
    return _coerce(key, value, like, where)


def load_yaml(path: str | Path, what: str = "Config file",
              hint: str = "Pass an existing YAML file to --config.") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist. {hint}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} '{path}' is not UTF-8 text (byte {exc.start}: {exc.reason}); save it "
                        f"as UTF-8 YAML.") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{what} '{path}' is not valid YAML: {exc}") from None
    except OSError as exc:
        raise UserError(f"{what} '{path}' cannot be read: {exc.strerror}.") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} '{path}' must hold a mapping of settings (key: value), got {type(data).__name__}.")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise UserError(f"{what} '{path}': setting names must be text, got {bad!r}; write e.g. "
                        f"'epochs: 5', not '5: ...'.")
    return data


def resolve(overrides: dict, file_cfg: dict | None = None, plugin_overrides: dict | None = None,
            source: str = "config file") -> RunConfig:
    """Build a validated RunConfig.

    overrides: engine settings from CLI flags (only the ones the user gave).
    file_cfg: mapping from --config (engine keys, flat plugin keys, or `params: {plugin: {...}}`).
    plugin_overrides: plugin hyperparameters from extra CLI flags, flat (`generations`) or
    qualified (`ke.generations`).
    """
    from kebench.data import get_spec

    file_cfg = dict(file_cfg or {})
    plugin_overrides = dict(plugin_overrides or {})
    file_params = file_cfg.pop("params", {}) or {}
    bad = [k for k in [*file_cfg, *plugin_overrides] if not isinstance(k, str)]
    if bad:
        raise UserError(f"{source}: setting names must be text, got {bad!r}.")
    if not isinstance(file_params, dict) or not all(isinstance(k, str) for k in file_params):
        raise UserError(f"{source}: 'params' must map plugin names to their settings "
                        f"(params: {{ke: {{generations: 3}}}}), got {file_params!r}.")
    values = {k: _field_default(k) for k in _ENGINE_KEYS}
    values["method"] = None

    # Identity of the run first: which dataset and method, so their defaults can be layered.
    for key in ("data", "method", "arch"):
        for layer, where in ((file_cfg, source), (overrides, "command line")):
            if layer.get(key) is not None:
                values[key] = _coerce(key, layer[key], "", where)
    spec = get_spec(values["data"])
    method = method_spec(values["method"], values["data"])
    values["method"] = method.name
    plugins = [method.objective, method.regime]

    # Dataset defaults, then plugin defaults (engine keys among them set the engine).
    params = {p.name: {} for p in plugins}
    for key, value in spec.defaults.items():
        values[key] = value
    for p in plugins:
        for key, value in p.defaults.items():
            if key in _ENGINE_KEYS:
                values[key] = value
            else:
                params[p.name][key] = value

    def set_plugin(key: str, value, where: str):
        if "." in key:
            pname, _, pkey = key.partition(".")
            # flags reach here with '-' turned into '_': 'eigen_d.population' names plugin eigen-d
            pname = next((n for n in params if n.replace("-", "_") == pname.replace("-", "_")), pname)
            if pname not in params:
                typed = pname.replace("_", "-")  # plugin names are spelled with '-' (pre-distill)
                raise UserError(
                    f"{where}: '{typed}.{pkey}' names plugin '{typed}', which is not part of method "
                    f"'{method.name}' (plugins: {', '.join(params)})."
                )
            owners = [pname] if pkey in params[pname] else []
        else:
            pkey = key
            owners = [n for n in params if pkey in params[n]]
        if not owners:
            raise unknown_setting(key, params, method.name, where, value)
        if len(owners) > 1:
            raise UserError(
                f"{where}: '{key}' is a setting of several plugins ({', '.join(owners)}); "
                f"qualify it, e.g. '{owners[0]}.{pkey}'."
            )
        shown = f"{owners[0]}.{pkey}" if "." in key else key
        params[owners[0]][pkey] = _plugin_value(shown, value, params[owners[0]][pkey], where)

    where = source
    for key, value in file_cfg.items():
        key = key.replace("-", "_")
        if key in _ENGINE_KEYS:
            values[key] = _engine_value(key, value, where)
        elif key != "method":
            set_plugin(key, value, where)
    for pname, kv in file_params.items():
        if not isinstance(kv, dict) or not all(isinstance(k, str) for k in kv):
            raise UserError(f"{source}: 'params.{pname}' must be a mapping of settings, got {kv!r}.")
        for key, value in kv.items():
            set_plugin(f"{pname}.{key}", value, where)

    where = "command line"
    for key, value in overrides.items():
        if key != "method" and value is not None:
            values[key] = _engine_value(key, value, where)
    for key, value in plugin_overrides.items():
        set_plugin(key.replace("-", "_"), value, where)

    for p in plugins:  # text from the command line takes its declared type, so `--x 40` and `x: 40` are one run
        cls = plugin_class(p)
        if declared(cls) is not None and any(isinstance(v, str) for v in params[p.name].values()):
            typed = parse_params(cls, params[p.name], p.name, f"method '{method.name}'")
            params[p.name] = {k: (getattr(typed, k) if isinstance(v, str) and not isinstance(getattr(typed, k), str)
                                  else v) for k, v in params[p.name].items()}
    cfg = RunConfig(**values, params=params)
    validate(cfg)
    return cfg


#: Engine settings whose command-line flag is not `--<name>`.
CLI_FLAGS = {"seed": "--seeds", "data_options": "--data-opt"}


def _flag(key: str) -> str:
    return CLI_FLAGS.get(key, "--" + key.replace("_", "-"))


def unknown_setting(key: str, params: dict, method: str, where: str, value=None) -> UserError:
    """The error for a setting no plugin of `method` takes, naming what the user should type: the
    real flag (--seed -> --seeds), the methods the setting belongs to (generations -> ke, bans, ...)
    or the closest valid name; flags on the command line, keys in a file. `method` may name several
    ("ce, smooth"): `params` then maps each to its settings."""
    import difflib

    key = key.replace("-", "_")
    cli = where == "command line"
    shown = _flag(key) if cli else key
    if cli and key in CLI_FLAGS:
        example = "--seeds 1 (or a list: --seeds 0,1,2 or 0-4)" if key == "seed" else "--data-opt KEY=VALUE"
        return UserError(f"--{key.replace('_', '-')} is not a flag of kebench run: use {example}.")
    several = "," in method
    head = f"Unknown setting '{key.replace('_', '-') if cli else key}' ({where}"
    head += f"; none of the methods {method} takes it)." if several else ")."
    bare = key.rpartition(".")[2]
    own = "; ".join(f"{n}: {', '.join(_flag(k) if cli else k for k in params[n])}" for n in params if params[n])
    own = f" Method{'s' if several else ''} '{method}' take{'' if several else 's'} these plugin settings: {own or 'none'}."
    taken = set(params) | {p for m in method.split(",") for p in m.strip().split("+")}
    owners = sorted((n for n in registry.names() if bare in registry.get(n).defaults and n not in taken),
                    key=lambda n: (len(n), n))  # the short, well-known names first (ke before ke_dsd)
    if owners:
        listed = ", ".join(owners[:6]) + (", ..." if len(owners) > 6 else "")
        example = f"{_flag(bare)} {value if value is not None else '...'}" if cli else f"{bare}: ..."
        return UserError(f"{head} {bare.replace('_', '-')} belongs to {listed} (e.g. --method {owners[0]} {example})."
                         + own)
    names = {_flag(k) if cli else k: k for k in {*(k for d in params.values() for k in d), *_ENGINE_KEYS}}
    close = difflib.get_close_matches(shown, list(names), n=3, cutoff=0.6)
    return UserError(head + (f" Did you mean: {', '.join(close)}?" if close else "")
                     + f" Valid settings: {', '.join(sorted(names))}." + own)


def plugin_keys(method: str | None, data: str | None = None) -> set[str]:
    """The plugin settings `method` takes (on dataset `data`): flat names and `plugin.name` ones."""
    spec = method_spec(method, data or _field_default("data"))
    return {k for p in (spec.objective, spec.regime) for key in p.defaults if key not in _ENGINE_KEYS
            for k in (key, f"{p.name}.{key}")}


def split_plugin_flags(methods: list, flags: dict, data: str | None = None) -> dict:
    """Plugin flags of a multi-method command, per method: each method gets the flags its plugins
    take (`--method ce,bans --generations 2` gives bans 2 generations and leaves ce alone); a flag
    that no method takes is an error. A single method gets every flag (resolve() checks them)."""
    if len(methods) < 2:
        return {m: dict(flags) for m in methods}
    keys = {m: plugin_keys(m, data) for m in methods}
    for flag in flags:
        if not any(flag in k for k in keys.values()):
            names = ", ".join(str(m) for m in methods)
            params = {f"{m}": {k: None for k in ks if "." not in k} for m, ks in keys.items()}
            raise unknown_setting(flag, params, names, "command line", flags[flag])
    return {m: {f: v for f, v in flags.items() if f in keys[m]} for m in methods}


def validate(cfg: RunConfig) -> None:
    from kebench.data import get_spec
    from kebench.nets.models import check_arch

    get_spec(cfg.data).parse_options(cfg.data_options)
    check_arch(cfg.arch)
    for key, f in FIELDS.items():  # the declared types, choices and ranges
        meta, value = f.metadata, getattr(cfg, key)
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise unknown_choice(key.replace("_", "-") + " value", str(value), list(meta["choices"]))
        problem = check_value(key, value, meta) if meta else None
        if problem:
            raise UserError(problem + ".")
    if list(cfg.lr_milestones) != sorted(cfg.lr_milestones):
        raise UserError(f"--lr-milestones must be increasing fractions of each pass, e.g. 0.5,0.75; got "
                        f"{cfg.lr_milestones}.")
    unknown = [a for a in cfg.analyses if a not in ANALYSES]
    if unknown:
        raise UserError(f"--analyses {', '.join(map(str, unknown))} is not known; choose from {', '.join(ANALYSES)}.")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got '{cfg.device}'.")
    method = cfg.method_spec
    task = get_spec(cfg.data).task
    for plugin in (method.objective, method.regime):
        cls = plugin_class(plugin)
        if declared(cls) is not None:  # typed, in range, cross-field rules: before any folder exists
            # (checked only: the stored values, and so run ids, stay as given; the plugin parses them again)
            parse_params(cls, cfg.plugin_params(plugin.name), plugin.name, f"method '{cfg.method}'")
        tasks = getattr(cls, "tasks", None)
        if tasks is not None and task not in tasks:
            raise UserError(
                f"Method '{cfg.method}': '{plugin.name}' works for {', '.join(tasks)} tasks, but dataset "
                f"'{cfg.data}' is a {task} dataset. Pick a {'/'.join(tasks)} dataset or another method."
            )
    reason = refusal(method.objective, method.regime)
    if reason:
        raise UserError(f"Method '{cfg.method}' is refused: {reason}")
    problem = teacher_problem(method, cfg.plugin_params(method.objective.name))
    if problem:
        raise UserError(problem)


def _declares(spec: registry.PluginSpec, flag: str) -> bool:
    """Whether a plugin declares a contract flag (`needs_teacher`, `provides_teacher`); False when it cannot load."""
    try:
        return bool(getattr(spec.load(), flag, False))
    except UserError:
        return False


def refusal(objective: registry.PluginSpec, regime: registry.PluginSpec) -> str | None:
    """Why `objective` cannot run under `regime` whatever their settings, or None: the regime's own
    `incompatible` reasons, then the teacher contract (a regime that trains its own teachers runs no
    objective that needs one; a regime that provides a teacher runs only objectives that need one)."""
    reason = getattr(regime.load(), "incompatible", {}).get(objective.name)
    if reason:
        return reason
    if _declares(regime, "trains_own_teacher") and _declares(objective, "needs_teacher"):
        tasks = getattr(regime.load(), "tasks", None)
        free = [n for n in registry.names("objective") if not _declares(registry.get(n), "needs_teacher")
                and not refusal(registry.get(n), regime)
                and (tasks is None or set(tasks) & set(getattr(registry.get(n).load(), "tasks", None) or tasks))]
        return (f"{regime.label or regime.name} already distils every generation from the previous one, a "
                f"teacher it trains itself, while '{objective.name}' distils from a teacher of its own (the "
                f"model.pt of --teacher PATH), so each student would be distilled from two teachers and the "
                f"run would measure neither method. To distil from a trained model, run '{objective.name}' "
                f"alone (one pass, under 'single') with --teacher PATH; for born-again generations, run "
                f"'{regime.name}' with an objective that needs no teacher: "
                f"{', '.join(f'{n}+{regime.name}' for n in free)}.")
    if _declares(regime, "provides_teacher") and not _declares(objective, "needs_teacher"):
        takers = [n for n in registry.names("objective") if _declares(registry.get(n), "needs_teacher")]
        return (f"'{regime.name}' trains a teacher for its objective to distil from, so its objective must be one "
                f"that needs a teacher: write {' or '.join(f'{n}+{regime.name}' for n in takers)}, "
                f"not '{objective.name}+{regime.name}'.")
    return None


def teacher_problem(method: registry.Method, params: dict) -> str | None:
    """The teacher contract for one config: an objective that needs a teacher gets one from its
    `teacher` setting or from a regime that provides one. Returns what is wrong, or None."""
    if not _declares(method.objective, "needs_teacher") or _declares(method.regime, "provides_teacher"):
        return None
    name = method.objective.name
    fields = declared(method.objective.load())
    if fields is not None and "teacher" not in fields:
        return (f"Plugin '{name}' ({method.objective.source}) needs a teacher (needs_teacher) but declares no "
                f"'teacher' setting to load one from; declare `teacher: str = param(...)` in its Params.")
    if params.get("teacher"):
        return None
    providers = [n for n in registry.names("regime") if _declares(registry.get(n), "provides_teacher")]
    return (f"'{method.name}' distils from a teacher but none was given. Pass --teacher PATH (the model.pt of an "
            f"earlier kebench run with the same arch and data), or use a regime that trains the teacher first"
            + (f" ({', '.join(f'{name}+{r}' for r in providers)})." if providers else "."))


def plugin_class(spec: registry.PluginSpec) -> type:
    """The plugin's class, with its registry entry checked against the parameters it declares."""
    cls = spec.load()
    check_defaults(cls, spec.name, spec.defaults, _ENGINE_KEYS, spec.source)
    return cls


def save_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def from_dict(d: dict) -> RunConfig:
    known = {k: v for k, v in d.items() if k in FIELDS}
    return RunConfig(**known)


def matched_config(cfg: RunConfig, total_epochs: int) -> RunConfig:
    """The single-pass baseline for a multi-pass run: same objective, same total epochs, with the
    schedule (cosine, warm-up) stretched over the whole budget. Its id does not depend on which
    multi-pass run asked for it, so KE-N3 and BANs-N3 at equal budgets share one baseline."""
    objective = cfg.method_spec.objective.name
    return dataclasses.replace(
        cfg, method=objective, epochs=total_epochs, budget="paper",
        params={objective: dict(cfg.params.get(objective, {})), "single": {}},
    )
