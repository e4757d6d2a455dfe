"""Writes the hand-made result folders under tests/golden/runs/ (run: python tests/golden/make_fixtures.py).

The numbers are chosen by hand (a base accuracy per method plus small per-seed offsets) so that the
golden tables exercise: several seeds, one-seed cells, missing cells, seeds that differ between a row
and its baseline, a failed run, an incomplete run (config.yaml only), N3 and N10 from one N10 run,
slim networks, KD x pruning pipelines with and without the cells the surplus needs, and single passes
matched to multi-pass budgets. The committed JSON files are the fixtures; this script documents them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).parent / "runs"
STEP_FLOPS = 175_000_000_000  # per optimizer step (forward + backward), resnet18-like at 224 px, batch 32
STEPS_PER_EPOCH = 32
OFFSET = {0: 0.0, 1: 0.0061, 2: -0.0043, 3: 0.0027}  # per-seed wiggle
JITTER = {0: 0.0012, 1: -0.0021, 2: 0.0030, 3: 0.0}  # a second wiggle, so paired differences vary


def a(x: float) -> float:
    return round(x, 4)


def pass_(kind, index, epochs, metrics, **more):
    steps = epochs * STEPS_PER_EPOCH
    return {"kind": kind, "index": index, "epochs": epochs, "steps": steps, "images": steps * 32,
            "step_flops": STEP_FLOPS, "train_flops": STEP_FLOPS * steps, "wall_time_s": 1.5 * epochs,
            "metrics": metrics, **more}


def record(folder, method, arch, dataset, seed, passes, *, task="classification", epochs=200, params=None,
           final=None, cost=None, status="complete", error=None, budget="paper", extra=None, tag=""):
    objective, _, regime = method.partition("+")
    regime = regime or "single"
    params = {objective: {}, regime: {}} | (params or {})
    cfg = {"method": method, "arch": arch, "data": dataset, "data_root": None, "data_options": {}, "seed": seed,
           "epochs": epochs, "batch_size": 32, "lr": 0.256, "momentum": 0.9, "weight_decay": 0.0001,
           "lr_schedule": "cosine", "warmup_epochs": 5, "lr_per": "epoch", "resolution": None,
           "train_fraction": 1.0, "eval_every": 0, "device": "auto", "amp": "auto", "channels_last": None,
           "compile": False, "out": "results", "budget": budget, "params": params}
    run_id = f"{method}_{arch}_{dataset}_s{seed}_{budget}_{epochs}{tag}"
    rec = {"schema": 1, "run_id": run_id, "status": status, "method": method, "objective": objective,
           "regime": regime, "task": task, "arch": arch, "dataset": dataset, "seed": seed, "config": cfg,
           "final": final if final is not None else (dict(passes[-1]["metrics"]) if passes else {}),
           "best": {}, "passes": passes, "cost": cost or {"dense": {"params": 11_227_812, "flops": 3_630_000_000}},
           "training": {"epochs": sum(p["epochs"] for p in passes), "steps": sum(p["steps"] for p in passes),
                        "images": sum(p["images"] for p in passes), "flops": sum(p["train_flops"] for p in passes),
                        "flops_convention": "torch.utils.flop_counter: 1 multiply-add = 2 FLOPs",
                        "device_hours": round(sum(p["wall_time_s"] for p in passes) / 3600, 6)},
           "wall_time_s": sum(p["wall_time_s"] for p in passes), "device": "NVIDIA H100 80GB HBM3",
           "versions": {"kebench": "0.1.0"}, "git_commit": None, **(extra or {})}
    if error:
        rec["error"] = error
    d = ROOT / folder / run_id
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"method: {method}\narch: {arch}\ndata: {dataset}\nseed: {seed}\n")
    (d / "result.json").write_text(json.dumps(rec, indent=2) + "\n")


def single(folder, method, arch, dataset, seed, top1, epochs=200, **kw):
    record(folder, method, arch, dataset, seed, [pass_("pass", 1, epochs, {"top1": a(top1 + OFFSET[seed])})],
           epochs=epochs, **kw)


def ke(folder, method, arch, dataset, seed, gens, start, gain, slim_start, epochs=200, split_rate=0.8):
    passes = []
    for g in range(1, gens + 1):
        dense = start + gain * (1 - 0.7 ** (g - 1)) + OFFSET[seed] + (JITTER[seed] if g > 1 else 0.0)
        slim = slim_start + (dense - slim_start) * (1 - 0.6 ** (g - 1))
        passes.append(pass_("generation", g, epochs, {"top1": a(dense), "slim_top1": a(slim)},
                            hypotheses={"fit_abs_mean": round(0.020 + 0.002 * g, 5),
                                        "reset_abs_mean": round(0.020 - 0.0015 * g / (1 + 0.1 * g), 5)}))
    cost = {"dense": {"params": 11_227_812, "flops": 3_630_000_000},
            "slim": {"params": 7_180_124, "flops": 2_330_000_000}}
    record(folder, method, arch, dataset, seed, passes, epochs=epochs, cost=cost,
           params={"ke": {"generations": gens, "split": "kels", "split_rate": split_rate}})


def classification():
    f = "classification"
    for s in (0, 1, 2):
        single(f, "ce", "resnet18", "flowers102", s, 0.7012)
        ke(f, "ce+ke", "resnet18", "flowers102", s, 10, 0.7012, 0.0850, 0.0210)
    for s in (0, 1):
        single(f, "ce", "resnet18", "aircraft", s, 0.5523)
        single(f, "smooth", "resnet18", "flowers102", s, 0.7150, params={"smooth": {"alpha": 0.1}})
        passes = [pass_("generation", g, 200, {"top1": a(0.70 + 0.02 * g + OFFSET[s] + JITTER[s]),
                                               "ensemble_top1": a(0.70 + 0.03 * g + OFFSET[s])}) for g in (1, 2, 3)]
        record(f, "ce+bans", "resnet18", "flowers102", s, passes,
               params={"bans": {"generations": 3, "alpha": 0.5, "temperature": 1.0}})
    ke(f, "ce+ke", "resnet18", "aircraft", 0, 3, 0.5523, 0.0600, 0.0150)  # one-seed cell
    for s in (2, 3):  # seeds differ from the Smth (N1) baseline's 0, 1 -> Welch's t-test
        ke(f, "smooth+ke", "resnet18", "flowers102", s, 3, 0.7150, 0.0500, 0.0200)
    dsd = [pass_("phase", 1, 200, {"top1": 0.7012}), pass_("phase", 2, 100, {"top1": 0.6890}),
           pass_("phase", 3, 100, {"top1": 0.7230})]
    record(f, "ce+dsd", "resnet18", "flowers102", 0, dsd, params={"dsd": {"sparsity": 0.3}})
    record(f, "ce+ke", "resnet18", "flowers102", 3, [pass_("generation", 1, 200, {"top1": 0.70, "slim_top1": 0.02})],
           status="failed", error="non-finite loss (nan) in generation 2, epoch 3; lower --lr or check the data.",
           params={"ke": {"generations": 10, "split": "kels", "split_rate": 0.8}})
    d = ROOT / f / "cskd+ke_resnet18_flowers102_s0_incomplete"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("method: cskd+ke\narch: resnet18\ndata: flowers102\nseed: 0\n")


def retrieval():
    f = "retrieval"
    for arch, base in (("resnet50", 0.0), ("googlenet", -0.03)):
        for s in (0, 1):
            m = {"nmi": a(0.6012 + base + OFFSET[s]), "r@1": a(0.5210 + base + OFFSET[s]),
                 "r@2": a(0.6433 + base + OFFSET[s]), "r@4": a(0.7512 + base + OFFSET[s]),
                 "r@8": a(0.8377 + base + OFFSET[s])}
            record(f, "triplet", arch, "cub200", s, [pass_("pass", 1, 200, m)], task="retrieval")
    for s in (0, 1):
        passes = []
        for g in (1, 2, 3):
            up = 0.012 * (g - 1) + OFFSET[s] + JITTER[s]
            passes.append(pass_("generation", g, 200, {"nmi": a(0.6012 + up), "r@1": a(0.5210 + up),
                                                       "r@2": a(0.6433 + up), "r@4": a(0.7512 + up),
                                                       "r@8": a(0.8377 + up)}))
        record(f, "triplet+ke", "resnet50", "cub200", s, passes, task="retrieval",
               params={"ke": {"generations": 3, "split": "kels", "split_rate": 0.8}})


def kd():
    """KD x pruning pipelines as methods/kd_prune.py writes them (regime names with hyphens)."""
    f = "kd"
    grid = {  # (pruning, objective, pipeline) -> (unpruned top1, pruned top1), seeds
        ("l1-filter", "ce", "scratch"): (0.9100, 0.8800, (0, 1)),
        ("l1-filter", "kd", "pre-distill"): (0.9250, 0.8950, (0, 1)),
        ("l1-filter", "kd", "post-distill"): (0.9100, 0.8900, (0, 1)),
        ("l1-filter", "kd", "pre-post"): (0.9250, 0.9010, (0, 1)),
        ("l1-filter", "kd", "self-distill"): (0.9250, 0.9080, (0, 1)),
        ("l1-filter", "fd", "pre-distill"): (0.9180, 0.8870, (0,)),  # one-seed cells
        ("l1-filter", "fd", "self-distill"): (0.9180, 0.8990, (0,)),
        ("slimming", "ce", "scratch"): (0.9050, 0.8700, (0,)),
        ("slimming", "kd", "self-distill"): (0.9200, 0.8900, (1,)),  # no shared seed: surplus from means
        ("none", "ce", "scratch"): (0.9100, None, (0,)),  # KD x augmentation alone: nothing pruned
        ("none", "kd", "pre-distill"): (0.9260, None, (0,)),
    }
    obj_params = {"ce": {}, "kd": {"alpha": 0.9, "temperature": 4.0, "teacher": ""}, "fd": {"beta": "auto", "teacher": ""}}
    for (prune, obj, pipe), (unpruned, pruned, seeds) in grid.items():
        for s in seeds:
            u = a(unpruned + OFFSET[s] + (JITTER[s] if obj != "ce" else 0.0))
            final = {"teacher_top1": 0.9100} if obj != "ce" else {}
            final["unpruned_top1"] = u
            passes = ([pass_("teacher", 1, 40, {"top1": 0.9100})] if obj != "ce" else [])
            passes.append(pass_("train", 1, 40, {"top1": u}))
            if pruned is not None:
                final["top1"] = a(pruned + OFFSET[s] + (JITTER[s] if obj != "ce" else 0.0)
                                  + (0.0015 * s if pipe == "self-distill" else 0.0))
                passes.append(pass_("finetune", 1, 20, {"top1": final["top1"]}))
                final.update(params_kept=0.45, flops_kept=0.48)
            else:
                final["top1"] = u
            rp = {"prune": prune, "prune_ratio": 0.5, "student_aug": "none"}
            if pipe != "scratch":
                rp.update(teacher_epochs=0, teacher_aug="none")
            record(f, f"{obj}+{pipe}", "resnet18", "digits", s, passes, epochs=40, final=final,
                   params={obj: obj_params[obj], pipe: rp}, tag=f"_{prune}",
                   cost={"unpruned": {"params": 11_227_812, "flops": 35_000_000},
                         "pruned": {"params": 5_100_000, "flops": 17_000_000}})


def budget():
    f = "budget"
    for s in (0, 1):
        single(f, "ce", "resnet18", "digits", s, 0.9100, epochs=5)
        single(f, "ce", "resnet18", "digits", s, 0.9350, epochs=15, budget="matched")
        passes = [pass_("generation", g, 5, {"top1": a(0.9100 + 0.008 * (g - 1) + OFFSET[s] + JITTER[s])})
                  for g in (1, 2, 3)]
        record(f, "ce+ke", "resnet18", "digits", s, passes, epochs=5, budget="matched",
               params={"ke": {"generations": 3, "split": "kels", "split_rate": 0.8}})
    single(f, "ce", "resnet18", "digits", 0, 0.9280, epochs=10, budget="matched")  # matches KE at generation 2
    passes = [pass_("generation", g, 5, {"top1": a(0.6000 + 0.020 * (g - 1))}) for g in (1, 2, 3)]
    record(f, "ce+ke", "resnet18", "synthetic", 0, passes, epochs=5, budget="matched",  # no single pass on synthetic
           params={"ke": {"generations": 3, "split": "kels", "split_rate": 0.8}})
    passes = [pass_("generation", g, 5, {"top1": a(0.9050 + 0.010 * (g - 1))}) for g in (1, 2, 3)]
    record(f, "smooth+ke", "resnet18", "digits", 0, passes, epochs=5,  # no matched single pass: missing cells
           params={"smooth": {"alpha": 0.1}, "ke": {"generations": 3, "split": "kels", "split_rate": 0.8}})


if __name__ == "__main__":
    shutil.rmtree(ROOT, ignore_errors=True)
    classification()
    retrieval()
    kd()
    budget()
    print(f"wrote {sum(1 for _ in ROOT.rglob('config.yaml'))} run folders under {ROOT}")
