"""Run directories, atomic writes and the result record schema (one for every method and task)."""
from __future__ import annotations

import errno
import io
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from kebench.errors import UserError

SCHEMA = 1


# errno -> (what happened, what the user should do about it). Environment faults, not user mistakes,
# but as clear: one paragraph, exit code StorageError.exit_code, the last good checkpoint kept.
DISK_FAULTS = {
    errno.ENOSPC: ("the disk is full", "Free space on that disk (or point --out at another one), then rerun "
                                      "with --resume: the last good checkpoint is kept."),
    errno.EDQUOT: ("the disk quota is exceeded", "Free space under your quota (or point --out elsewhere), "
                                                "then rerun with --resume: the last good checkpoint is kept."),
    errno.EROFS: ("the file system is read-only", "Point --out at a writable folder (or remount it "
                                                  "read-write), then rerun with --resume."),
    errno.EACCES: ("permission was denied", "Point --out at a folder you can write to, or fix its "
                                           "permissions, then rerun with --resume."),
    errno.EPERM: ("the operation is not permitted", "Point --out at a folder you can write to, or fix its "
                                                   "permissions, then rerun with --resume."),
}


class StorageError(UserError):
    """The results folder cannot be written (full, read-only, no permission): exit code 5."""

    exit_code = 5  # guard.EXIT_STORAGE


def storage_error(exc: OSError, path=None) -> StorageError | None:
    """A StorageError naming the folder and the fix for a disk fault, or None for other OSErrors."""
    if exc.errno not in DISK_FAULTS:
        return None
    what, fix = DISK_FAULTS[exc.errno]
    where = Path(path or exc.filename or ".")
    return StorageError(f"Cannot write {where}: {what} (errno {exc.errno}, {os.strerror(exc.errno)}). {fix}")


TMP_SUFFIX = ".tmp"  # every temp file kebench writes: `.<name>.<random>.tmp`, so a glob finds the litter


def _atomic(path: Path, write) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file,
    and a failed or interrupted write leaves the previous version of `path` untouched.

    In a multi-process (DDP) run only rank 0 writes; the other ranks' writes are no-ops."""
    if os.environ.get("WORLD_SIZE", "1") != "1" and os.environ.get("RANK", "0") != "0":
        return
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from the rest of a group
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        error = storage_error(exc, path)
        if error is not None:
            raise error from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temps(folder) -> list[Path]:
    """Delete half-written temp files a killed writer left in `folder` (call only while holding its lock)."""
    removed = []
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


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


def save_torch(path, obj, previous=None) -> None:
    """Atomically save `obj` with torch.save; with `previous`, the file being replaced is kept there.

    The object is serialised in memory first, so an interrupt (a second Ctrl-C) or a failing torch
    writer can never leave a half-written zip on disk; only complete files are renamed into place,
    and the old file moves to `previous` only once the new one is safely on disk."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getbuffer()
    path = Path(path)
    if previous is None or not path.is_file():
        _atomic(path, lambda f: f.write(payload))
        return
    staged = path.with_name(f".{path.name}.staged{TMP_SUFFIX}")
    try:
        _atomic(staged, lambda f: f.write(payload))
        os.replace(path, previous)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def load_torch(path, map_location="cpu"):
    """Checkpoints are loaded with weights_only=True: a checkpoint can never run code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated / corrupt file
        raise CorruptCheckpoint(f"{path} cannot be read ({type(exc).__name__}: {exc}).") from None


class CorruptCheckpoint(Exception):
    pass


#: The top-level fields every reader of result.json relies on, with their types.
RECORD_FIELDS = {"status": str, "method": str, "config": dict, "final": dict, "passes": list}


def load_result(run_dir) -> tuple[dict | None, str | None]:
    """(record, None) for a readable result.json of the expected shape; (None, why) otherwise
    (why is None when the file simply does not exist yet)."""
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None, None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return None, "result.json is not UTF-8 text"
    except ValueError as exc:
        return None, f"result.json is not valid JSON ({exc})"
    except OSError as exc:
        return None, f"result.json cannot be read ({exc.strerror})"
    if not isinstance(rec, dict):
        return None, f"result.json holds a JSON {type(rec).__name__}, not a result record"
    wrong = [k for k, t in RECORD_FIELDS.items() if k in rec and not isinstance(rec[k], t)]
    missing = [] if "status" in rec else ["status"]
    if wrong or missing:
        return None, ("result.json is not a kebench result record ("
                      + "; ".join([*(f"'{k}' is not a {RECORD_FIELDS[k].__name__}" for k in wrong),
                                   *(f"no '{k}'" for k in missing)]) + ")")
    return rec, None


def read_result(run_dir) -> dict | None:
    """The run's result record, or None when it is missing, unreadable or malformed."""
    return load_result(run_dir)[0]


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


def provenance(policy) -> dict:
    """How the numbers were computed, beside what was asked (`config`): the arithmetic as run.

    precision: fp32 | bf16 | fp16, the dtype of the forward/backward matmuls and convolutions
    (bf16/fp16: torch.autocast, with fp32 weights, optimizer state and loss; fp16 also scales the
    loss). On CUDA, fp32 convolutions may run in TF32 (cuDNN's default on Ampere and later):
    `tf32_convolutions` says whether they did. The official KE code trained in fp32."""
    dtype = policy.amp_dtype
    out = {"precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32"),
           "autocast": dtype is not None}
    if policy.device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(policy.device)
        out["tf32_convolutions"] = dtype is None and major >= 8 and bool(torch.backends.cudnn.allow_tf32)
        out["tf32_matmul"] = dtype is None and major >= 8 and torch.backends.cuda.matmul.allow_tf32
    return out
