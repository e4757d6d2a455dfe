"""Matched budgets (`--budget matched`): the single pass a multi-pass run is compared with.

A regime that trains the same network pass after pass (KE, BANs, DSD, ...) is matched in total
epochs: the single pass trains as many epochs as all its passes together. A regime that changes the
network (an architecture search, neuroevolution: its regime class sets `changes_network = True`)
trains networks of other sizes, so equal epochs are unequal work (AG-Evo's 116 epochs of small
individuals against 120 epochs of the full network differed 9x in FLOPs). Such a run is matched in
training FLOPs instead: the single pass trains the whole number of epochs whose training FLOPs come
closest to the run's (`training.flops`, torch's FLOP counter, which every run records). The choice is
written to the multi-pass run's folder (`matched.json`), so `kebench sweep --status` finds the
baseline without measuring anything.
"""
from __future__ import annotations

import json
from pathlib import Path

MATCH_FILE = "matched.json"


def changes_network(cfg) -> bool:
    """Whether the run's regime trains other networks than `--arch` (declared by the regime class)."""
    return bool(getattr(cfg.method_spec.regime.load(), "changes_network", False))


def baseline(cfg, record: dict, epoch_flops):
    """The single-pass baseline config of a complete multi-pass run, and what was matched: "epochs"
    or "flops". `epoch_flops(cfg)`: the training FLOPs of one epoch of a config
    (`kebench.run.engine.epoch_train_flops`). Written to the run's folder as matched.json (read
    back by `planned`)."""
    from kebench.config import matched_config
    from kebench.run import results

    training = record.get("training") or {}
    if changes_network(cfg) and training.get("flops"):
        per_epoch = epoch_flops(matched_config(cfg, 1))
        epochs, match = max(1, round(training["flops"] / per_epoch)), "flops"
        plan = {"match": match, "epochs": epochs, "run_flops": training["flops"], "epoch_flops": per_epoch}
    else:
        epochs, match = training["epochs"], "epochs"
        plan = {"match": match, "epochs": epochs}
    chosen = matched_config(cfg, epochs)
    plan["baseline"] = chosen.run_id()
    from kebench.run import distributed

    if distributed.rank() == 0:
        results.write_json(Path(cfg.out) / cfg.run_id() / MATCH_FILE, plan)
    return chosen, match


def planned(cfg, record: dict):
    """The baseline config a complete multi-pass run owes, from its matched.json (for --status); a
    run without one (an older run, or one whose baseline was not chosen yet) owes the epoch match."""
    from kebench.config import matched_config

    try:
        epochs = int(json.loads((Path(cfg.out) / cfg.run_id() / MATCH_FILE).read_text())["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        epochs = record["training"]["epochs"]
    return matched_config(cfg, epochs)
