"""The result record: result.json of one run, built from its `RunState` (passes, best, reported facts,
wall time) and cost. `SCHEMA_FIELDS` are its top-level keys; a regime's `run.report(name, ...)` may not use them."""
from __future__ import annotations

import torch

from kebench.run import metrics
from kebench.run import results

#: Top-level keys of result.json that the engine writes (regimes report other facts beside them).
SCHEMA_FIELDS = frozenset({
    "schema", "run_id", "status", "method", "objective", "regime", "task", "arch", "dataset", "seed", "config",
    "data", "evaluation", "final", "best", "passes", "cost", "training", "wall_time_s", "device", "versions", "threads",
    "git_commit", "provenance", "distributed", "error"})
FINAL, COST = "final", "cost"  # the facts that contribute to the schema's "final" and "cost" entries


def build(run, status: str, error: str | None = None) -> dict:
    from kebench.nets.cost import inference_cost

    facts, cfg = run.book.facts, run.cfg
    final = dict(run.passes[-1]["metrics"]) if run.passes else {}
    final.update(facts.get(FINAL, {}))
    cost = {"dense": inference_cost(run.model, run.data, run.device)} if status == "complete" else {}
    cost.update(facts.get(COST, {}))
    passes = run.passes
    record = {
        "schema": results.SCHEMA, "run_id": cfg.run_id(), "status": status,
        "method": run.method.name, "objective": run.method.objective.name, "regime": run.method.regime.name,
        "task": run.task, "arch": cfg.arch, "dataset": cfg.data, "seed": cfg.seed,
        "config": cfg.to_dict(), "data": run.data.info, "evaluation": metrics.describe(run.task, cfg.seed),
        "final": final, "best": run.best, "passes": passes, "cost": cost,
        "training": {"epochs": sum(p["epochs"] for p in passes), "steps": sum(p["steps"] for p in passes),
                     "images": sum(p["images"] for p in passes),
                     "flops": sum(p.get("train_flops", 0) for p in passes),
                     "flops_convention": "torch.utils.flop_counter: 1 multiply-add = 2 FLOPs"},
        "wall_time_s": round(run.book.elapsed(), 3),
        "device": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu",
        "versions": results.versions(), "git_commit": results.git_commit(), "threads": run.threads.describe(),
        "provenance": results.provenance(run.policy),
        **{k: v for k, v in facts.items() if k not in (FINAL, COST)},
    }
    record["training"]["device_hours"] = round(record["wall_time_s"] / 3600 * run.processes.world, 6)
    described = run.processes.describe(cfg.batch_size, [run.model, run.state])
    if described is not None:
        record["distributed"] = described
    if error:
        record["error"] = error
    return record
