"""Knowledge Evolution (Taha et al., CVPR 2021): train g generations, re-initialising the reset-hypothesis.

Generation 1 trains from random init. Before each later generation the reset-hypothesis (mask M=0,
see kebench/nets/split.py) is drawn again from each layer's default init; fit weights, BatchNorm
parameters and statistics and the output-layer bias carry over. Each generation is one `run.fit`:
fresh optimizer, restarted LR schedule, starting from the previous generation's last-epoch weights.

Per generation the pass record holds dense metrics, the slim fit-hypothesis' metrics (KELS only:
`slim_top1`, or `slim_r@1`... for retrieval), the mean |w| inside fit and reset hypotheses (overall
in `metrics`, per layer under `hypotheses`). After the last generation the slim network is saved
as `slim.pt` beside `model.pt` and the cost of both (params, FLOPs, latency) goes to result.json.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial

import torch

from kebench.context import RECORD, PassKind
from kebench.nets.channels import channel_graph
from kebench.plugin import Regime, param
from kebench.nets.split import SPLITS, SplitMasks, kels_keep

REPORTED_GENERATIONS = (1, 3, 10)  # the KE paper's tables: N1 (baseline), N3, N10
SLIM_FILE = "slim.pt"


def mask_generator(seed: int, generation: int) -> torch.Generator:
    """CPU generator for WELS masks, from (run seed, generation): replays exactly on resume."""
    digest = hashlib.sha256(f"kebench/ke/wels/{seed}/{generation}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class KnowledgeEvolution(Regime):
    @dataclass
    class Params:
        generations: int = param("training passes; tables report N1, N3, N10", ge=1, tiny=2)
        split: str = param("kels: kernel-level (gives the slim network) | wels: weight-level, drawn once | "
                           "wels-rand: redrawn each generation", choices=SPLITS)
        split_rate: float = param("s_r, the fit-hypothesis share", gt=0, le=1)

    def __init__(self, params, run):
        super().__init__(params, run)
        p = self.params
        self.generations, self.kind, self.rate = p.generations, p.split, p.split_rate
        self.graph = None

    def example_input(self, run) -> torch.Tensor:
        d = run.data
        return torch.zeros(2, d.in_chans, d.resolution, d.resolution, device=run.device)

    def run(self, run):
        model = run.model
        if self.kind == "kels":
            self.graph = channel_graph(model, self.example_input(run))
            split = SplitMasks.kels(model, self.rate, self.graph)
        else:
            split = SplitMasks.wels(model, self.rate, mask_generator(run.cfg.seed, 1), kind=self.kind)
        split = split.to(run.device)
        run.state["ke_split"] = split  # checkpointed: a resumed run continues with the same masks
        for g in range(1, self.generations + 1):
            if g > 1:
                if self.kind == "wels-rand":
                    split.redraw(mask_generator(run.cfg.seed, g))
                split.reinitialize(model)
            run.fit(run.cfg.epochs, kind=PassKind.GENERATION, label=g, after=partial(self.after, run, split))
        self.finish(run, split)

    def slim(self, run, model):
        from kebench.nets.slim import extract_subnetwork

        small = extract_subnetwork(model, kels_keep(self.graph, self.rate), graph=self.graph)
        return small.to(memory_format=torch.channels_last) if run.channels_last else small

    def after(self, run, split: SplitMasks, model) -> dict:
        stats = split.stats(model)
        out = {"fit_abs_mean": stats["fit_abs_mean"], "reset_abs_mean": stats["reset_abs_mean"]}
        if self.kind == "kels":
            out.update(run.evaluate(self.slim(run, model), prefix="slim_"))
        out[RECORD] = {"hypotheses": {"split": self.kind, "split_rate": self.rate,
                                      "fit_fraction": split.fit_fraction(), "layers": stats["layers"]}}
        return out

    def finish(self, run, split: SplitMasks) -> None:
        from kebench.nets.cost import inference_cost
        from kebench.nets.slim import measure_latency, save_slim

        d = run.data
        shape = (1, d.in_chans, d.resolution, d.resolution)
        precision = str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else "float32"
        models = {"dense": run.model}
        info = {"split": self.kind, "split_rate": self.rate, "generations": self.generations,
                "fit_fraction": split.fit_fraction()}
        if self.kind == "kels":
            models["slim"] = self.slim(run, run.model)
            if run.rank == 0:  # under DDP one process writes the files
                save_slim(models["slim"], run.dir / SLIM_FILE)
            info["slim_file"] = SLIM_FILE
        latency = measure_latency(models, shape, run.device, autocast=run.autocast())
        cost = {}
        for key, m in models.items():
            cost[key] = inference_cost(m, d, run.device)
            cost[key].update(latency_ms=latency[key], latency_batch=1, latency_precision=precision)
        run.report_cost(cost)
        run.report("ke", info)
        gens = {p["index"]: p["metrics"] for p in run.passes if p["kind"] == PassKind.GENERATION}
        final = run.report_final({})
        for g in REPORTED_GENERATIONS:
            if g in gens:
                for key in (run.primary, "slim_" + run.primary):
                    if key in gens[g]:
                        final[f"N{g}_{key}"] = gens[g][key]
