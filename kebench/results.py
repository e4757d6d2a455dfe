"""Run directories, atomic writes and the result record schema (one for every method and task)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from kebench.errors import UserError

SCHEMA = 1


def _atomic(path: Path, write) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file.

    In a multi-process (DDP) run only rank 0 writes; the other ranks' writes are no-ops."""
    if os.environ.get("WORLD_SIZE", "1") != "1" and os.environ.get("RANK", "0") != "0":
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if exc.errno == 28:  # ENOSPC
            raise UserError(f"No space left on the device while writing {path}. Free some disk space "
                            f"or point --out at another disk, then rerun with --resume.") from None
        raise
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def _clean(obj):
    """JSON-safe: NaN/inf become None so a table never shows a NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _clean(obj.tolist())
    return obj


def write_json(path, obj) -> None:
    write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def save_torch(path, obj) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def load_torch(path, map_location="cpu"):
    """Checkpoints are loaded with weights_only=True: a checkpoint can never run code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated / corrupt file
        raise CorruptCheckpoint(f"{path} cannot be read ({type(exc).__name__}: {exc}).") from None


class CorruptCheckpoint(Exception):
    pass


def read_result(run_dir) -> dict | None:
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def iter_results(paths) -> list[tuple[Path, dict | None]]:
    """Every run folder under the given folders (or run folders themselves), with its result or None."""
    found = []
    for root in paths:
        root = Path(root)
        if (root / "config.yaml").is_file() or (root / "result.json").is_file():
            found.append((root, read_result(root)))
            continue
        for cfg in sorted(root.rglob("config.yaml")):
            found.append((cfg.parent, read_result(cfg.parent)))
    return found


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import sklearn
    import timm
    import torchvision

    from kebench import __version__

    return {"kebench": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "scikit-learn": sklearn.__version__}
