"""Every run under a folder as one tidy pandas DataFrame, for your own analysis in a notebook.

    from kebench.analysis.export import runs_frame
    df = runs_frame("results/")          # one row per run x pass x metric
    df[df.metric == "top1"].groupby(["method", "pass"]).value.mean()

Columns: who the run is (run_id, method, objective, regime, arch, dataset, task, seed, status, error,
path), what it trained (pass: 1, 2, ... in training order, or missing for the run's `final` metrics;
pass_kind, pass_label, pass_epochs, pass_train_flops, pass_wall_time_s), the number (metric, value),
its cost (train_flops, train_epochs, wall_time_s, device_hours, params, inference_flops) and its
settings: every engine setting of config.yaml (epochs, lr, ...) and every plugin setting as
`PLUGIN.KEY` (ke.generations). A run without result.json (interrupted or still running) is one row
with no metric, so what is missing shows too. `kebench export` writes the same table to a file.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

#: The columns every frame has, in this order (settings follow them).
COLUMNS = ("run_id", "method", "objective", "regime", "arch", "dataset", "task", "seed", "status", "pass",
           "pass_kind", "pass_label", "pass_epochs", "pass_train_flops", "pass_wall_time_s", "metric", "value",
           "train_flops", "train_epochs", "wall_time_s", "device_hours", "params", "inference_flops", "error", "path")
FORMATS = ("csv", "json", "parquet")


def _settings(config: dict) -> dict:
    """config.yaml flattened: engine settings as they are, plugin settings as PLUGIN.KEY, dataset options
    as data_options.KEY."""
    flat = {}
    for key, value in (config or {}).items():
        if key == "params" and isinstance(value, dict):
            for plugin, kv in value.items():
                for k, v in (kv or {}).items():
                    flat[f"{plugin}.{k}"] = v
        elif key == "data_options" and isinstance(value, dict):
            flat.update({f"data_options.{k}": v for k, v in value.items()})
        elif key not in ("method", "arch", "data", "seed"):  # columns of their own
            flat[key] = value
    return {k: (str(v) if isinstance(v, (list, dict)) else v) for k, v in flat.items()}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _run_rows(folder: Path) -> list[dict]:
    import yaml

    from kebench.run import guard
    from kebench.run.results import load_result

    rec, problem = load_result(folder)
    if rec is None:  # interrupted, running, or an unreadable result.json: one row saying so
        try:
            cfg = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, ValueError, yaml.YAMLError):
            cfg = {}
        cfg = cfg if isinstance(cfg, dict) else {}
        method = str(cfg.get("method", ""))
        objective, _, regime = method.partition("+")
        status = "running" if guard.lock_holder(folder) is not None else "unreadable" if problem else "interrupted"
        return [{"run_id": folder.name, "method": method, "objective": objective, "regime": regime or "single",
                 "arch": cfg.get("arch"), "dataset": cfg.get("data"), "seed": cfg.get("seed"), "status": status,
                 "error": problem, "path": str(folder), **_settings(cfg)}]
    training, dense = rec.get("training") or {}, (rec.get("cost") or {}).get("dense") or {}
    run = {"run_id": rec.get("run_id", folder.name), "method": rec.get("method"), "objective": rec.get("objective"),
           "regime": rec.get("regime"), "arch": rec.get("arch"), "dataset": rec.get("dataset"), "task": rec.get("task"),
           "seed": rec.get("seed"), "status": rec.get("status"), "train_flops": training.get("flops"),
           "train_epochs": training.get("epochs"), "wall_time_s": rec.get("wall_time_s"),
           "device_hours": training.get("device_hours"), "params": dense.get("params"),
           "inference_flops": dense.get("flops"), "error": rec.get("error"), "path": str(folder),
           **_settings(rec.get("config") or {})}
    rows = []
    for i, p in enumerate(rec.get("passes") or [], 1):
        at = {"pass": i, "pass_kind": p.get("kind"), "pass_label": p.get("index"), "pass_epochs": p.get("epochs"),
              "pass_train_flops": p.get("train_flops"), "pass_wall_time_s": p.get("wall_time_s")}
        rows += [{**run, **at, "metric": k, "value": v} for k, v in (p.get("metrics") or {}).items() if _number(v)]
    rows += [{**run, "pass_kind": "final", "metric": k, "value": v} for k, v in (rec.get("final") or {}).items()
             if _number(v)]
    return rows or [run]


def runs_frame(*folders) -> pd.DataFrame:
    """Every run folder at or below `folders` (default: results/) as a tidy DataFrame: one row per run,
    pass and metric (see the module docstring for the columns)."""
    from kebench.analysis.tables.runs import discover

    rows = [row for d in discover(folders or ("results",)) for row in _run_rows(d)]
    frame = pd.DataFrame.from_records(rows)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = None
    settings = sorted(c for c in frame.columns if c not in COLUMNS)
    frame = frame[[*COLUMNS, *settings]]
    for col in ("seed", "pass", "pass_label", "pass_epochs", "train_epochs"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame


def write(frame: pd.DataFrame, path) -> str:
    """Write `frame` as .csv, .json (records) or .parquet (needs pyarrow); returns the format used."""
    from kebench.errors import UserError

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise UserError(f"kebench export writes {', '.join('.' + f for f in FORMATS)} files; '{path.name}' has "
                        f"another suffix. Name the file e.g. runs.csv.")
    if fmt == "parquet":
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:
            raise UserError("Writing .parquet needs the pyarrow package (pip install pyarrow); or write runs.csv "
                            "or runs.json instead.")
    from kebench.run import results

    if fmt == "parquet":
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        results._atomic(path, lambda f: f.write(buffer.getvalue()))
    elif fmt == "json":
        results.write_text(path, frame.to_json(orient="records", indent=1) + "\n")
    else:
        results.write_text(path, frame.to_csv(index=False, lineterminator="\n"))
    return fmt
