"""Checkpointing and resume of one run: what a checkpoint holds, writing it, reading the newest good
one back (falling back to the one before a corrupt file), checking it, and restoring a run from it.

A checkpoint is written atomically (`results.save_torch`); the previous good one survives as
checkpoint.prev.pt until the new one is complete on disk. Only rank 0 writes.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from kebench.errors import RunFailure
from kebench.run import results

CHECKPOINT = "checkpoint.pt"
PREV_CHECKPOINT = "checkpoint.prev.pt"  # the one before: the fallback if the newest is corrupt


@dataclass
class PassState:
    """Book-keeping of the pass being trained (what a checkpoint must restore)."""

    index: int
    kind: str
    label: int
    epochs: int
    epoch: int = 0  # completed epochs
    steps: int = 0
    images: int = 0
    wall_time_s: float = 0.0
    step_flops: int | None = None
    history: list = field(default_factory=list)
    partial: dict | None = None  # mid-epoch position and sums, when a stop request saved the pass mid-epoch


#: What a checkpoint must hold to be resumed from (a file with a valid zip header but missing parts
#: is treated like a corrupt one: the run falls back to the checkpoint before it).
CHECKPOINT_KEYS = {"version": int, "run_id": str, "pass": int, "complete": bool, "pass_state": dict,
                   "model": dict, "optimizer": dict, "scaler": dict, "state": dict, "passes": list,
                   "best": dict, "extra": dict, "rng": torch.Tensor, "cuda_rng": list, "elapsed": float}


def checkpoint_problem(ck) -> str | None:
    """Why `ck` is not a usable checkpoint, or None."""
    if not isinstance(ck, dict):
        return f"holds a {type(ck).__name__}, not a mapping"
    missing = [k for k in (*CHECKPOINT_KEYS, "run_model") if k not in ck]
    if missing:
        return f"missing {', '.join(missing)}"
    wrong = [k for k, t in CHECKPOINT_KEYS.items() if not isinstance(ck[k], t)
             and not (t is float and isinstance(ck[k], int))]
    if wrong:
        return f"wrong type for {', '.join(wrong)}"
    fields = set(PassState.__dataclass_fields__)
    if set(ck["pass_state"]) != fields:
        return "its pass state does not match this kebench version"
    if not 0 <= ck["pass"] < len(ck["passes"]) + 1:
        return f"pass {ck['pass']} is out of range"
    return None


def state_dicts(state: dict) -> dict:
    return {k: (v.state_dict() if isinstance(v, nn.Module) else v) for k, v in state.items()}


def save(run, model, optimizer, scaler, ps: PassState, complete: bool) -> None:
    """Write the run's checkpoint at the end of `ps` (complete) or inside it (rank 0 only): the model
    and optimizer being trained, the run's model and `state`, and its `RunState` (`run.book`)."""
    book = run.book
    if run.processes.rank == 0:
        ckpt = {
            "version": 1, "run_id": run.cfg.run_id(), "pass": ps.index, "complete": complete,
            "pass_state": {k: getattr(ps, k) for k in PassState.__dataclass_fields__},
            "model": model.state_dict(), "run_model": None if model is run.model else run.model.state_dict(),
            # A finished pass's optimizer is never restored (the next pass builds a fresh one): its
            # momentum would double the file for nothing.
            "optimizer": {} if complete else optimizer.state_dict(), "scaler": scaler.state_dict(),
            "state": state_dicts(run.state), "passes": book.passes, "best": book.best, "extra": book.facts,
            "landscapes": book.landscapes,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "elapsed": book.elapsed(), "world_size": run.processes.world,
            "threads": torch.get_num_threads(),  # a resume with another count moves the last digits
        }
        # The last good checkpoint becomes checkpoint.prev.pt only once the new one is complete on disk.
        results.save_torch(run.dir / CHECKPOINT, ckpt, previous=run.dir / PREV_CHECKPOINT)
    book.saved()


def read(run_dir, run_id: str, world: int) -> dict | None:
    """The newest readable checkpoint of run `run_id`; a corrupt or truncated one falls back to the one
    saved before it (checkpoint.prev.pt), and with neither the run restarts from the beginning."""
    problems = []
    for name in (CHECKPOINT, PREV_CHECKPOINT):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            ck = results.load_torch(path)
        except results.CorruptCheckpoint as exc:
            problems.append(str(exc))
            continue
        malformed = checkpoint_problem(ck)
        if malformed:
            problems.append(f"{path} is not a complete kebench checkpoint ({malformed}).")
            continue
        if ck["run_id"] != run_id:
            continue
        if problems:
            warnings.warn(f"{' '.join(problems)} Resuming from the previous checkpoint {path} instead "
                          f"(pass {ck['pass'] + 1}, epoch {ck['pass_state']['epoch']}).", stacklevel=3)
        if ck.get("world_size", 1) != world:
            warnings.warn(f"{path} was written by a {ck.get('world_size', 1)}-process run and is resumed "
                          f"with {world}; the run continues, but its numbers will not equal an "
                          f"uninterrupted {ck.get('world_size', 1)}-process run.", stacklevel=3)
        return ck
    if problems:
        warnings.warn(f"{' '.join(problems)} No earlier good checkpoint: restarting this run from the "
                      f"beginning.", stacklevel=3)
    return None


def position(ck: dict) -> str:
    """Where checkpoint `ck` resumes: 'generation 2, epoch 1, step 7' (or 'the end of generation 2')."""
    ps = ck["pass_state"]
    name = f"{ps['kind']} {ps['label']}"
    if ck["complete"]:
        return f"the end of {name}"
    return f"{name}, epoch {ps['epoch'] + 1}, step {(ps.get('partial') or {}).get('step', 0)}"


def peek(run_dir) -> dict | None:
    """The newest readable checkpoint in `run_dir`, whatever its run id (None if there is none), without
    the warnings of `read`: to tell a user what a folder holds."""
    for name in (CHECKPOINT, PREV_CHECKPOINT):
        path = run_dir / name
        if path.is_file():
            try:
                ck = results.load_torch(path)
            except results.CorruptCheckpoint:
                continue
            if checkpoint_problem(ck) is None:
                return ck
    return None


def restore(run, ck: dict, model: nn.Module, optimizer=None, scaler=None) -> None:
    """Put the run back where checkpoint `ck` was written: weights, optimizer, registered regime
    state, passes, best, reported facts, RNG; and drop metrics rows written after it."""
    model.load_state_dict(ck["model"])
    if ck["run_model"] is not None and model is not run.model:
        run.model.load_state_dict(ck["run_model"])
    if optimizer is not None:
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
    for k, v in ck["state"].items():
        if k not in run.state:
            raise RunFailure(f"checkpoint holds regime state '{k}' that the regime did not register on replay")
        if isinstance(run.state[k], nn.Module):
            run.state[k].load_state_dict(v)
        elif isinstance(run.state[k], torch.Tensor):
            run.state[k].copy_(v)
        else:
            run.state[k] = v
    book = run.book
    book.passes = list(ck["passes"][: ck["pass"] + (1 if ck["complete"] else 0)])
    book.best = dict(ck["best"])
    book.facts = dict(ck.get("extra", {}))
    book.landscapes = list(ck.get("landscapes", []))  # a checkpoint older than per-step landscapes has none
    torch.set_rng_state(ck["rng"])
    if ck["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ck["cuda_rng"])
    if run.processes.rank == 0:
        trim_metrics(run.dir / "metrics.jsonl", ck["pass_state"])


def trim_metrics(path, ps: dict) -> None:
    """Drop per-epoch rows written after the checkpoint at pass state `ps` (the run died before its
    next save), and any line torn by a crash in the middle of its append."""
    if not path.is_file():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            row = json.loads(ln)
        except ValueError:
            continue
        if (row["pass"], row["epoch"]) <= (ps["index"], ps["epoch"]):
            keep.append(ln)
    results.write_text(path, "".join(ln + "\n" for ln in keep))


def replay(run, index: int, model: nn.Module, optimizer, scaler):
    """On --resume, what pass `index` of the replayed regime is: (its record, None) when the checkpoint
    says it finished (the last finished one also restores its end state), (None, its PassState) when it
    is the interrupted pass (restored with its optimizer), else (None, None): train it."""
    ck = run.book.resume
    if ck is None or index > ck["pass"]:
        return None, None
    if index < ck["pass"] or ck["complete"]:
        if index == ck["pass"]:  # the last finished pass: its end state is where we resume
            restore(run, ck, model)
            run.book.resume = None
        return ck["passes"][index], None
    restore(run, ck, model, optimizer, scaler)
    run.book.resume = None
    return None, PassState(**ck["pass_state"])
