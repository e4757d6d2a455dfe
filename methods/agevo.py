"""Evolutionary architecture search over kebench.nets.genome: AG-Evolution and EIGEN (and EIGEN-D).

AG-Evolution (Li, Xiong, Ren, Zhang, Wang, Yang, "An Aggressive Genetic Programming Approach for
Searching Neural Network Structure Under Computational Constraints", 2018): a population of genomes
evolves by mutation from the full mutation set (kebench.nets.genome.MUTATIONS); *aggressive selection*
keeps only the top k of each generation, and the larger mutation set makes up for the diversity this
loses. Killing the weak at landmark epochs is EIGEN's later "accelerated extinction", so agevo's
default has no landmarks (`--landmarks` opts in).

EIGEN (Ren, Li, Yang, et al., "EIGEN: Ecologically-Inspired GENetic Approach for Neural Network
Structure Searching from Scratch", CVPR 2019): *rapid succession* — a primary succession evolves a
community of poorly initialised structures with large mutation steps (several mutations per child),
then a secondary succession searches finely around the best (one mutation per child);
*accelerated extinction* — at landmark epochs T1, T2 of each individual's training, an individual
whose validation accuracy is below the threshold S1, S2 learnt from the previous generation is
extinguished at once; *gene duplication* (EIGEN-D) — the discovered structure is duplicated
as a whole, weights included (the talk's parameter count doubling, 1.2 M -> 2.6 M); `--duplicate-span
segment` copies a 1-3 unit segment instead.

Every individual is one `run.fit` pass (kind "individual") on its own network, so every pass record
carries its training FLOPs and time and the search cost is the run's training cost. Children inherit
their parent's trained weights wherever shapes allow (kebench.nets.genome.give_birth). Selection reads a
validation split (the dataset's, else a stratified share of train), never the test split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from kebench.context import RECORD
from kebench.nets import genome as G
from kebench.data.pipeline import epoch_generator
from kebench.errors import UserError, unknown_choice
from kebench.nets.models import count_params
from kebench.nets.morph import birth_change, ensure_validation
from kebench.nets.pattern import size_bytes
from kebench.plugin import Hook, Regime, param

#: The pass kind of each individual of a search (declared under `passes:` in registry.yaml).
INDIVIDUAL = "individual"

ARCH = "evonet"
#: Key of the mutation random stream, kept apart from the (seed, pass, epoch) batch streams.
MUTATION_STREAM = 104_729


class Extinction(Hook):
    """Accelerated extinction: at each landmark epoch T_i the individual's validation top-1 is
    measured (into `values`, a run.state tensor, so a resumed pass still knows the earlier ones);
    below the threshold S_i the pass ends there."""

    def __init__(self, run, landmarks: list[int], thresholds: list[float], values: torch.Tensor):
        self.run, self.landmarks, self.thresholds, self.values = run, landmarks, thresholds, values
        self.reason = None

    def epoch_end(self, model: nn.Module, epoch: int, metrics: dict) -> None:
        if epoch not in self.landmarks:
            return
        i = self.landmarks.index(epoch)
        value = self.run.evaluate(model, "val")["top1"]
        self.values[i] = value
        metrics[f"val_top1_T{i + 1}"] = value
        if value < self.thresholds[i]:
            self.reason = (f"extinct at landmark T{i + 1} (epoch {epoch}): val top-1 {value:.4f} < "
                           f"S{i + 1} {self.thresholds[i]:.4f}")

    def stop_pass(self) -> str | None:
        return self.reason


def thresholds(survivors: list[dict], n: int) -> list[float]:
    """S_i for the next generation: the lowest landmark-i validation top-1 among this generation's
    survivors (an individual doing worse than every survivor did at T_i is extinguished);
    -inf (no extinction) before any survivor has been measured there."""
    out = []
    for i in range(n):
        seen = [s["landmarks"][i] for s in survivors if i < len(s["landmarks"]) and s["landmarks"][i] is not None]
        out.append(min(seen) if seen else -math.inf)
    return out


def select(individuals: list[dict], keep: int) -> list[dict]:
    """Aggressive selection: the top `keep` by validation top-1 among the living (extinct ones are
    out), ties to fewer parameters, then the earlier individual. With none alive, the best extinct."""
    alive = [i for i in individuals if not i["extinct"]] or individuals
    return sorted(alive, key=lambda i: (-i["val_top1"], i["params"], i["id"]))[:keep]


class EvolutionarySearch(Regime):
    """Shared loop; AGEvolution and EIGEN differ in their defaults (registry.yaml) and EIGEN's phases."""

    tasks = ("classification",)
    name = "search"
    changes_network = True  # individuals are other networks: --budget matched matches training FLOPs

    @dataclass
    class Params:
        population: int = param("children per generation (and the initial community)", ge=1, tiny=2)
        keep: int = param("top k kept each generation", ge=1, tiny=1)
        generations: int = param("generations of mutation and selection", ge=0, tiny=1)
        individual_epochs: int = param("epochs each individual trains; 0 = --epochs", ge=0)
        mutations: int = param("mutations per child", ge=1, tiny=1)
        landmarks: str = param("comma list of increasing fractions in (0, 1) of an individual's epochs where "
                               "the weak are killed; empty = no extinction (agevo's default)")
        mutation_set: str = param("'all' or a comma list of mutations")
        val_fraction: float = param("stratified share of train held out for selection when the data has no "
                                    "val split", gt=0, lt=1)

        def fractions(self) -> list[float]:
            try:
                values = [float(t) for t in self.landmarks.split(",") if t.strip()]
            except ValueError:
                values = [math.nan]
            if any(not 0 < f < 1 for f in values) or values != sorted(set(values)):
                raise UserError(f"--landmarks takes increasing fractions of an individual's epochs in (0, 1), "
                                f"e.g. 0.25,0.5 (T1, T2); got '{self.landmarks}'.")
            return values

        def ops(self) -> list[str]:
            text = self.mutation_set.strip()
            ops = list(G.MUTATIONS) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
            for op in ops:
                if op not in G.MUTATIONS + G.DUPLICATIONS:
                    raise unknown_choice("mutation", op, list(G.MUTATIONS + G.DUPLICATIONS))
            if not ops:
                raise UserError("--mutation-set names no mutation.")
            return ops

        def check(self):
            if self.keep > self.population:
                raise UserError(f"--keep must be in [1, --population={self.population}], got {self.keep}.")
            self.fractions()
            self.ops()

    def __init__(self, params, run):
        super().__init__(params, run)
        p = self.params
        if run.cfg.arch != ARCH:
            raise UserError(f"{self.name} searches the genome-built '{ARCH}' family (kebench/nets/genome.py), so --arch "
                            f"must be {ARCH} (its default), got '{run.cfg.arch}'. The hand-designed member is "
                            f"`--method ce --arch {ARCH}`.")
        self.fractions, self.ops = p.fractions(), p.ops()

    # ------------------------------------------------------------------ phases (EIGEN overrides)
    def mutations_in(self, generation: int) -> int:
        return self.params.mutations

    def ops_in(self, generation: int) -> list[str]:
        return self.ops

    # ------------------------------------------------------------------ individuals
    def build(self, run, genome: dict, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # modules are initialised on the CPU, from the stream's seed
            torch.manual_seed(seed)
            return run.build_model(ARCH, genome=genome)

    def breed(self, run, parent: dict, model: nn.Module, generation: int, gen: torch.Generator):
        """A child of `parent`: a chain of mutations, each born from the previous network's weights."""
        genome, notes, preserved = parent["genome"], [], []
        for _ in range(self.mutations_in(generation)):
            ops = [op for op in self.ops_in(generation) if G.applicable(genome, op)]
            op = ops[int(torch.randint(len(ops), (1,), generator=gen))]
            genome, note = G.mutate(genome, op, gen)
            child = self.build(run, genome, int(torch.randint(2**31 - 1, (1,), generator=gen)))
            preserved.append(G.give_birth(child, model, note, gen)["preserved"])
            model = child
            notes.append(note["text"])
        return genome, model, notes, preserved

    def seed_genomes(self, gen: torch.Generator) -> list[tuple[dict, list[str]]]:
        """The initial community: the minimal structure, each changed by the first generation's mutations."""
        out = []
        for _ in range(self.params.population):
            genome, notes = G.MINIMAL, []
            for _ in range(self.mutations_in(0)):
                ops = [op for op in self.ops_in(0) if G.applicable(genome, op)]
                genome, note = G.mutate(genome, ops[int(torch.randint(len(ops), (1,), generator=gen))], gen)
                notes.append(note["text"])
            out.append((genome, notes))
        return out

    # ------------------------------------------------------------------ the run
    def run(self, run) -> None:
        p, cfg = self.params, run.cfg
        ensure_validation(run, p.val_fraction, self.name)
        probe = next(iter(run.stream("val")))[0]
        epochs = p.individual_epochs or cfg.epochs
        landmarks = sorted({min(epochs - 1, max(1, round(f * epochs))) for f in self.fractions} - {0})
        individuals = p.population * (p.generations + 1)  # the initial community, then each generation's children
        run.plan(passes=individuals, epochs=individuals * epochs)  # an extinct one trains fewer
        values = run.state["landmark_val"] = torch.full((max(len(landmarks), 1),), math.nan)
        births = run.state["birth_change"] = torch.zeros(p.population, dtype=torch.float64)
        models: dict[int, nn.Module] = {}
        everyone: list[dict] = []

        def train(ind: dict, limits: list[float], slot: int) -> None:
            values.fill_(math.nan)
            hook = Extinction(run, landmarks, limits, values)
            model = models[ind["id"]]

            def after(m):
                return {**run.evaluate(m, "val", prefix="val_"), "birth_change": float(births[slot]),
                        "params": count_params(m), "size_bytes": size_bytes(m),
                        RECORD: {"landmarks": {f"T{i + 1}": {"epoch": t, "val_top1": None if math.isnan(v) else float(v)}
                                               for i, (t, v) in enumerate(zip(landmarks, values.tolist()))}}}

            rec = run.fit(epochs, kind=INDIVIDUAL, label=ind["id"], model=model, hooks=[hook], after=after)
            m = rec["metrics"]
            ind.update(val_top1=m["val_top1"], top1=m["top1"], landmarks=[t["val_top1"] for t in rec["landmarks"].values()],
                       extinct=bool(rec.get("stopped")),
                       stopped=rec.get("stopped"), epochs=rec["epochs"], train_flops=rec["train_flops"],
                       wall_time_s=rec["wall_time_s"], birth_change=m["birth_change"], params=m["params"],
                       size_bytes=m["size_bytes"])

        def register(ind: dict, model: nn.Module) -> None:
            models[ind["id"]] = model
            run.state[f"ind{ind['id']}"] = model  # weights outlive passes: checkpointed
            everyone.append(ind)

        def retire(ident: int) -> None:
            models.pop(ident, None)
            run.state.pop(f"ind{ident}", None)

        gen = epoch_generator(cfg.seed, MUTATION_STREAM, 0)
        population = []
        for genome, notes in self.seed_genomes(gen):
            ind = {"id": len(everyone), "generation": 0, "parent": None, "mutations": notes, "genome": genome,
                   "describe": G.describe(genome), "preserved": []}
            register(ind, self.build(run, genome, int(torch.randint(2**31 - 1, (1,), generator=gen))))
            population.append(ind)
        run.model = models[0]
        limits = [-math.inf] * len(landmarks)
        history = []
        for g in range(0, p.generations + 1):
            if g > 0:
                gen = epoch_generator(cfg.seed, MUTATION_STREAM, g)
                population = []
                for i in range(p.population):
                    parent = survivors[i % len(survivors)]
                    genome, model, notes, preserved = self.breed(run, parent, models[parent["id"]], g, gen)
                    births[i] = birth_change(models[parent["id"]], model, probe)
                    ind = {"id": len(everyone), "generation": g, "parent": parent["id"], "mutations": notes,
                           "genome": genome, "describe": G.describe(genome), "preserved": preserved}
                    register(ind, model)
                    population.append(ind)
            else:
                births.zero_()
            for slot, ind in enumerate(population):
                train(ind, limits, slot)
            pool = population + (survivors if g > 0 else [])  # plus-selection: survivors compete with children
            new = select(pool, p.keep)
            for ind in pool:
                if ind not in new:
                    retire(ind["id"])
            survivors = new
            limits = thresholds(survivors, len(landmarks))
            best = survivors[0]
            history.append({"generation": g, "best": best["id"], "val_top1": best["val_top1"], "top1": best["top1"],
                            "params": best["params"], "size_bytes": best["size_bytes"], "describe": best["describe"],
                            "extinct": sum(i["extinct"] for i in population), "born": len(population),
                            "train_flops": sum(r["train_flops"] for r in run.passes),
                            "thresholds": [None if math.isinf(s) else s for s in limits]})
        self._report(run, models, survivors, everyone, history, landmarks)

    def _report(self, run, models, survivors, everyone, history, landmarks) -> None:
        best = survivors[0]
        run.model = models[best["id"]]
        rec = next(r for r in run.passes if r["kind"] == INDIVIDUAL and r["index"] == best["id"])
        run.report_final({**rec["metrics"], "top1": best["top1"], "best_individual": best["id"],
                              "params": best["params"], "size_bytes": best["size_bytes"]})
        passes = [r for r in run.passes if r["kind"] == INDIVIDUAL]
        run.report_cost({"search": {"individuals": len(passes), "extinct": sum(1 for r in passes if r.get("stopped")),
                                        "train_flops": sum(r["train_flops"] for r in passes),
                                        "wall_time_s": round(sum(r["wall_time_s"] for r in passes), 3),
                                        "epochs": sum(r["epochs"] for r in passes)}})
        run.report("search", {"algorithm": self.name, "landmarks": landmarks, "best_genome": best["genome"],
                               "best_describe": best["describe"], "history": history,
                               "survivors": [s["id"] for s in survivors],
                               "individuals": [{k: v for k, v in i.items() if k != "genome"} | {"genome": G.describe(i["genome"])}
                                               for i in everyone]})


class AGEvolution(EvolutionarySearch):
    """Top-k aggressive selection with the full mutation set; no extinction unless --landmarks asks."""

    name = "agevo"


class EIGEN(EvolutionarySearch):
    """Rapid succession (primary: --mutations per child for --primary-generations, secondary: 1),
    accelerated extinction at --landmarks T1,T2, gene duplication in the secondary phase (EIGEN-D)."""

    name = "eigen"

    @dataclass
    class Params(EvolutionarySearch.Params):
        primary_generations: int = param("generations with --mutations per child; later ones make 1", ge=0, tiny=1)
        duplication: bool = param("EIGEN-D: gene duplication of discovered structures in the secondary phase")
        duplicate_span: str = param("what a duplication copies: 'structure' (the whole chain of units, doubling "
                                    "it: the talk's 1.2 M -> 2.6 M parameters) or 'segment' (1-3 units)",
                                    choices=("structure", "segment"))

    def mutations_in(self, generation: int) -> int:
        return self.params.mutations if generation <= self.params.primary_generations else 1

    def ops_in(self, generation: int) -> list[str]:
        ops = [op for op in self.ops if op not in G.DUPLICATIONS]
        if self.params.duplication and generation > self.params.primary_generations:
            ops.append(G.DUPLICATE if self.params.duplicate_span == "structure" else G.DUPLICATE_SEGMENT)
        return ops
