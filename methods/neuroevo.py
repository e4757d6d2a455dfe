"""Neuroevolution with shared parameters: grow a population by function-preserving mutations.

Start from a shallow, narrow member of the chosen ResNet family and train it; then, for K rounds,
breed M1 children from the current survivors by Net2Net-style mutations (Chen, Goodfellow, Shlens,
ICLR 2016) — *widen* the hidden layer of one residual block, or *deepen* a stage with a new residual
block whose last BN starts at zero — train every child, and keep the best M2 on a validation split.
A child starts from its parent's weights and computes exactly its parent's function at birth
(the parameter sharing of Lamarckian / network-morphism search: Elsken, Metzen, Hutter, NASH 2018).
Reported: the best survivor (top1) and the ensemble of survivors (ensemble_top1); cost in FLOPs.

"Family" (see docs/evolution.md): the timm ResNet the user named (`--arch resnet18`, resnet50,
seresnet34, test_resnet, ...) with the same stem, block types and stage widths, but `start_depth`
blocks per stage and residual-branch hidden widths scaled by `start_width`. Mutations only change
depths and hidden widths, so every member is a member of that family.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from kebench.context import RunFailure
from kebench.run import metrics
from kebench.nets.cost import forward_flops
from kebench.data.pipeline import epoch_generator
from kebench.errors import UserError, unknown_choice
from kebench.nets.models import count_params
from kebench.nets.morph import (BIRTH_TOLERANCE, VAL_SPLIT_SEED, birth_change, carve_validation,  # noqa: F401
                           ensure_validation, remap_units, widen_index)
from kebench.plugin import Regime, param

#: NeuroEvo's pass kinds (declared under `passes:` in registry.yaml): the seed and each mutated member.
SEED, MEMBER = "seed", "member"

#: Hidden layers a mutation may widen: (conv whose outputs grow, its BN, conv that reads them).
BLOCK_PAIRS = {
    BasicBlock: (("conv1", "bn1", "conv2"),),
    Bottleneck: (("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3")),
}
#: The BN that ends each block's residual branch (zeroed in a new block, so the branch adds 0).
LAST_BN = {BasicBlock: "bn2", Bottleneck: "bn3"}
MUTATIONS = ("widen", "deepen")
SPLITS = ("random", "equal")
#: Key of the mutation random stream, kept apart from the (seed, pass, epoch) batch streams.
MUTATION_STREAM = 7_919


# ---------------------------------------------------------------------------- the family
def stages(model: nn.Module) -> list[tuple[str, nn.Sequential]]:
    return [(n, m) for n, m in model.named_children() if n.startswith("layer") and isinstance(m, nn.Sequential)]


def hidden_layers(model: nn.Module) -> list[tuple[str, nn.Module, tuple[str, str, str]]]:
    """Every widenable hidden layer: (block path, block, (conv_a, bn_a, conv_b))."""
    found = []
    for sname, stage in stages(model):
        for i, block in enumerate(stage):
            for pair in BLOCK_PAIRS.get(type(block), ()):
                found.append((f"{sname}.{i}", block, pair))
    return found


def check_family(model: nn.Module, arch: str) -> None:
    """neuroevo grows timm ResNets built from plain (ungrouped, BatchNorm) Basic/Bottleneck blocks."""
    problem = None
    if not isinstance(model, ResNet):
        problem = f"'{arch}' is a {type(model).__name__}, not a timm ResNet"
    else:
        for sname, stage in stages(model):
            for i, block in enumerate(stage):
                if type(block) not in BLOCK_PAIRS:
                    problem = f"block {sname}.{i} is a {type(block).__name__}"
                    break
                for conv_a, bn_a, conv_b in BLOCK_PAIRS[type(block)]:
                    a, b = getattr(block, conv_a), getattr(block, conv_b)
                    if a.groups != 1 or b.groups != 1 or not isinstance(getattr(block, bn_a), nn.BatchNorm2d):
                        problem = f"block {sname}.{i} has grouped convolutions or a non-BatchNorm normalisation"
            if problem:
                break
    if problem:
        raise UserError(
            f"neuroevo grows the timm ResNet family (BasicBlock/Bottleneck blocks with BatchNorm and "
            f"ungrouped convolutions), but {problem}. Use e.g. --arch resnet18, resnet34, resnet50, "
            f"resnet18d, seresnet18, wide_resnet50_2 or test_resnet."
        )


def remap_hidden(block: nn.Module, pair: tuple[str, str, str], index: torch.Tensor,
                 in_scale: torch.Tensor | None = None) -> None:
    """Rebuild hidden layer `pair` = (conv_a, bn_a, conv_b) of `block` so its unit j is the old unit
    index[j] (kebench.nets.morph.remap_units)."""
    remap_units(*(getattr(block, n) for n in pair), index, in_scale)


def narrow_block(block: nn.Module, fraction: float) -> None:
    """Keep the first round(fraction * width) units of every hidden layer of a (random-init) block."""
    for pair in BLOCK_PAIRS[type(block)]:
        width = getattr(block, pair[0]).out_channels
        remap_hidden(block, pair, torch.arange(max(1, round(fraction * width))))


def widen(model: nn.Module, gen: torch.Generator, widen_by: float, split: str) -> str:
    """Net2WiderNet on one random hidden layer: add round(widen_by * width) copies of random units.

    The copies' outgoing weights share the original's: equally (`equal`, Net2Net's rule), or by a
    uniform random split of 1 (`random`: still exact, and the copies get different gradients, so they
    can become different units; equal copies stay identical under SGD forever).
    """
    layers = hidden_layers(model)
    path, block, pair = layers[int(torch.randint(len(layers), (1,), generator=gen))]
    width = getattr(block, pair[0]).out_channels
    added = max(1, round(widen_by * width))
    index, share = widen_index(width, added, gen, split)
    remap_hidden(block, pair, index, share)
    return f"widen {path}.{pair[0]} {width}->{width + added}"


def deepen(model: nn.Module, gen: torch.Generator, make_block) -> str:
    """Insert make_block(stage_name, seed) after a random block of a random stage.

    The new block's residual branch ends in a BN with gamma = beta = 0, so it adds 0 to a post-ReLU
    (>= 0) input and its output ReLU passes that input through unchanged: the function is preserved
    exactly. The rest of the block keeps its random init, so gradients reach the new gamma at once.
    """
    named = stages(model)
    sname, stage = named[int(torch.randint(len(named), (1,), generator=gen))]
    position = int(torch.randint(len(stage), (1,), generator=gen)) + 1
    block = make_block(sname, int(torch.randint(2**31 - 1, (1,), generator=gen)))
    last = getattr(block, LAST_BN[type(block)])
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    stage.insert(position, block)
    return f"deepen {sname} at {position} ({len(stage)} blocks)"


# ---------------------------------------------------------------------------- the regime
class NeuroEvolution(Regime):
    """Seed (N1 epochs) -> K rounds of: M1 mutated children of the survivors, N2 epochs each, keep M2."""

    tasks = ("classification",)
    changes_network = True  # children grow: --budget matched matches training FLOPs

    @dataclass
    class Params:
        population: int = param("M1: children per round", ge=1, tiny=2)
        survivors: int = param("M2: children kept on validation (<= population)", ge=1, tiny=1)
        rounds: int = param("K: rounds of mutation and selection", ge=0, tiny=1)
        seed_epochs: int = param("N1: epochs of the seed network; 0 = --epochs", ge=0)
        child_epochs: int = param("N2: epochs of each child; 0 = --epochs", ge=0)
        start_depth: int = param("blocks per stage of the seed", ge=1)
        start_width: float = param("seed width as a share of the arch's hidden widths", gt=0, le=1)
        widen_by: float = param("fraction of units a widen adds", gt=0)
        widen_split: str = param("random | equal (Net2Net's equal split leaves copies identical under SGD)",
                                 choices=SPLITS)
        mutations: str = param("comma list of morphisms children draw from: widen, deepen")
        mutations_per_child: int = param("morphisms applied to each child", ge=1)
        val_fraction: float = param("stratified share of train held out for selection when the data has no "
                                    "val split", gt=0, lt=1)

        def mutation_list(self) -> list[str]:
            found = [m.strip() for m in self.mutations.split(",") if m.strip()]
            for m in found:
                if m not in MUTATIONS:
                    raise unknown_choice("mutation", m, list(MUTATIONS))
            if not found:
                raise UserError("--mutations names none; use widen, deepen or widen,deepen.")
            return found

        def check(self):
            if self.survivors > self.population:
                raise UserError(f"--survivors ({self.survivors}) cannot exceed --population ({self.population}): "
                                f"the best M2 are kept out of M1 children.")
            self.mutation_list()

    def __init__(self, params, run):
        super().__init__(params, run)
        self.mutations = self.params.mutation_list()

    # ------------------------------------------------------------------ building members
    def _build(self, run, depth: int) -> nn.Module:
        return run.build_model(layers=[depth] * len(stages(run.model)))

    def seed_member(self, run) -> nn.Module:
        model = self._build(run, self.params.start_depth)
        for _, stage in stages(model):
            for block in stage:
                narrow_block(block, self.params.start_width)
        return self._layout(run, model)

    def new_block(self, run, stage_name: str, seed: int) -> nn.Module:
        """A fresh stride-1 block of the family for `stage_name`, initialised by timm from `seed`."""
        with torch.random.fork_rng(devices=[]):  # modules are initialised on the CPU
            torch.manual_seed(seed)
            template = self._build(run, 2)
        block = getattr(template, stage_name)[1]
        narrow_block(block, self.params.start_width)
        return block

    def mutate(self, run, child: nn.Module, gen: torch.Generator) -> list[str]:
        done = []
        for _ in range(self.params.mutations_per_child):
            op = self.mutations[int(torch.randint(len(self.mutations), (1,), generator=gen))]
            if op == "widen":
                done.append(widen(child, gen, self.params.widen_by, self.params.widen_split))
            else:
                done.append(deepen(child, gen, lambda s, seed: self.new_block(run, s, seed)))
        self._layout(run, child)
        return done

    @staticmethod
    def _layout(run, model: nn.Module) -> nn.Module:
        model = model.to(run.device)
        return model.to(memory_format=torch.channels_last) if run.channels_last else model

    # ------------------------------------------------------------------ the run
    def run(self, run) -> None:
        p, cfg = self.params, run.cfg
        check_family(run.model, cfg.arch)
        ensure_validation(run, p.val_fraction, "neuroevo")
        probe = next(iter(run.stream("val")))[0]
        self._check_mutations(run, probe)

        models: dict[int, nn.Module] = {0: self.seed_member(run)}
        run.model = models[0]  # the run's model is the best member at the end
        family = {0: {"member": 0, "round": 0, "parent": None, "mutations": [], "params": count_params(models[0])}}
        records: dict[int, dict] = {}

        def train(member: int, epochs: int, kind: str, change: float) -> None:
            run.state[f"member{member}"] = models[member]  # weights outlive passes: checkpointed
            after = lambda m: {**run.evaluate(m, "val", prefix="val_"), "birth_change": change}  # noqa: E731
            records[member] = run.fit(epochs, kind=kind, label=member, model=models[member], after=after)

        def retire(member: int) -> None:
            del models[member]
            run.state.pop(f"member{member}", None)

        train(0, p.seed_epochs or cfg.epochs, SEED, 0.0)
        survivors, next_id = [0], 1
        for round_ in range(1, p.rounds + 1):
            gen = epoch_generator(cfg.seed, MUTATION_STREAM, round_)
            children, changes = [], {}
            for i in range(p.population):
                parent = survivors[i % len(survivors)]
                child = copy.deepcopy(models[parent])
                family[next_id] = {"member": next_id, "round": round_, "parent": parent,
                                   "mutations": self.mutate(run, child, gen), "params": count_params(child)}
                changes[next_id] = self._birth_change(run, next_id, models[parent], child, probe)
                if changes[next_id] > BIRTH_TOLERANCE:
                    raise RunFailure(f"neuroevo: member {next_id} ({family[next_id]['mutations']}) changed its "
                                     f"parent's outputs by {changes[next_id]:.2e} (relative) at birth; the "
                                     f"mutations must preserve the function.")
                models[next_id] = child
                run.state[f"member{next_id}"] = child
                children.append(next_id)
                next_id += 1
            for parent in survivors:  # comma selection: parents retire, children compete
                retire(parent)
            for child in children:
                train(child, p.child_epochs or cfg.epochs, MEMBER, changes[child])
            ranked = sorted(children, key=lambda m: (-records[m]["metrics"]["val_top1"],
                                                     count_params(models[m]), m))
            survivors = ranked[: p.survivors]
            for child in ranked[p.survivors:]:
                retire(child)

        self._report(run, models, survivors, family, records)

    @staticmethod
    def _birth_change(run, member: int, parent: nn.Module, child: nn.Module, probe: torch.Tensor) -> float:
        """The child's birth diagnostic, measured once and checkpointed.

        On --resume, births are replayed before the checkpoint's weights are loaded, so re-measuring
        would compare a different parent/child pair (same function, different round-off); the value
        measured by the interrupted run is reported instead, so resumed and uninterrupted runs agree.
        """
        key = f"birth_change{member}"
        measured = run.resumed_state(key)
        if measured is None:
            measured = torch.tensor(birth_change(parent, child, probe), dtype=torch.float64)
        run.state[key] = measured.clone()
        return float(measured)

    def _check_mutations(self, run, probe: torch.Tensor) -> None:
        """Refuse an arch whose blocks the mutations cannot copy exactly (e.g. non-ReLU activations)."""
        with torch.random.fork_rng(devices=[]):  # a trial: leaves the run's random streams alone
            parent = self.seed_member(run)
            # Fresh timm blocks end in a zero BN gamma, which would hide a mismatch: set every gamma to 1.
            for m in parent.modules():
                if isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
            gen = torch.Generator().manual_seed(VAL_SPLIT_SEED)
            for op in self.mutations:
                child = copy.deepcopy(parent)
                if op == "widen":
                    widen(child, gen, self.params.widen_by, self.params.widen_split)
                else:
                    deepen(child, gen, lambda s, seed: self.new_block(run, s, seed))
                change = birth_change(parent, self._layout(run, child), probe)
                if change > BIRTH_TOLERANCE:
                    raise UserError(
                        f"neuroevo: the {op} mutation does not preserve the function of '{run.cfg.arch}' "
                        f"(relative output change {change:.2e}); its blocks differ from the plain ReLU ResNet "
                        f"blocks the mutations assume. Use e.g. --arch resnet18, or --mutations "
                        f"{'deepen' if op == 'widen' else 'widen'}.")

    def _report(self, run, models, survivors, family, records) -> None:
        probs, labels = None, None
        for m in survivors:
            out, labels = run.predict(models[m], "test")
            probs = out.softmax(1) if probs is None else probs + out.softmax(1)
        ensemble_top1 = metrics.top1(probs / len(survivors), labels)
        best = survivors[0]
        shape = (1, run.data.in_chans, run.data.resolution, run.data.resolution)
        flops = {m: forward_flops(models[m], shape, run.device) for m in survivors}
        run.model = models[best]
        run.report_final({**records[best]["metrics"], "ensemble_top1": ensemble_top1,
                              "ensemble_size": len(survivors), "best_member": best})
        seed_flops = sum(r["train_flops"] for r in run.passes if r["kind"] == SEED)
        member_flops = sum(r["train_flops"] for r in run.passes if r["kind"] == MEMBER)
        run.report_cost({
            "ensemble": {"params": sum(count_params(models[m]) for m in survivors),
                         "flops": sum(flops.values()), "members": len(survivors)},
            "training": {"flops": seed_flops + member_flops, "seed_flops": seed_flops,
                         "member_flops": member_flops, "passes": len(run.passes)},
        })
        for m, entry in family.items():
            metrics_ = records[m]["metrics"]
            entry.update(val_top1=metrics_.get("val_top1"), top1=metrics_.get("top1"),
                         birth_change=metrics_.get("birth_change"), train_flops=records[m]["train_flops"],
                         survivor=m in survivors)
        run.report("population", [family[m] for m in sorted(family)])
