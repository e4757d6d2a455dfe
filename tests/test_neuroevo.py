"""neuroevo: function-preserving widen/deepen, symmetry breaking, the regime end to end and on resume."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from kebench.data import Split
from kebench.errors import UserError
from methods import neuroevo
from methods.evodrop import attach
from methods.neuroevo import carve_validation, deepen, hidden_layers, narrow_block, widen

HIDDEN_PATHS = {"layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer3.0.conv2", "layer4.0.conv1"}


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    """timm zero-inits each block's last BN, which would make any branch change invisible."""
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.bias.data.copy_(torch.rand(bn.num_features, generator=gen) - 0.5)
            bn.running_mean.copy_(torch.rand(bn.num_features, generator=gen) - 0.5)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)


def _parent(dtype=torch.float64, depth=1) -> nn.Module:
    """test_resnet (BasicBlock stages 1, 2, 4 and a Bottleneck stage 3), narrowed and with live BNs."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5, layers=[depth] * 4)
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            narrow_block(block, 0.5)
    _randomise_bn(model, torch.Generator().manual_seed(1))
    return model.to(dtype).eval()


def _x(dtype=torch.float64):
    return torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2)).to(dtype)


@pytest.mark.parametrize("split", ["random", "equal"])
def test_widened_child_computes_its_parents_function(split):
    parent, x = _parent(), _x()
    gen = torch.Generator().manual_seed(3)
    covered = set()
    for _ in range(40):  # random layers: until every hidden layer (Basic and Bottleneck) was widened
        child = copy.deepcopy(parent)
        note = widen(child, gen, 0.5, split)
        path, sizes = note.split()[1], note.split()[2]
        covered.add(path)
        old, new = map(int, sizes.split("->"))
        assert new == old + round(0.5 * old)
        assert sum(p.numel() for p in child.parameters()) > sum(p.numel() for p in parent.parameters())
        assert torch.allclose(child(x), parent(x), rtol=1e-10, atol=1e-12)
        # Training-mode BN normalises with batch statistics; copies of a channel share them exactly.
        assert torch.allclose(copy.deepcopy(child).train()(x), copy.deepcopy(parent).train()(x), rtol=1e-10, atol=1e-12)
        if covered == HIDDEN_PATHS:
            break
    assert covered == HIDDEN_PATHS


def _block_maker(dtype):
    template = timm.create_model("test_resnet", num_classes=5, layers=[2] * 4)
    _randomise_bn(template, torch.Generator().manual_seed(4))  # also the last BN: deepen must zero it

    def make(stage_name, seed):
        block = copy.deepcopy(getattr(template, stage_name)[1])
        narrow_block(block, 0.5)
        return block.to(dtype)

    return make


def test_deepened_child_computes_its_parents_function_exactly():
    parent, x = _parent(torch.float32), _x(torch.float32)
    gen = torch.Generator().manual_seed(5)
    make = _block_maker(torch.float32)
    stages_grown = set()
    child = parent
    for _ in range(12):
        before = copy.deepcopy(child)
        note = deepen(child, gen, make)
        stages_grown.add(note.split()[1])
        assert torch.equal(child(x), before(x))  # bit-identical in eval mode
        assert torch.equal(copy.deepcopy(child).train()(x), copy.deepcopy(before).train()(x))
    assert stages_grown == {"layer1", "layer2", "layer3", "layer4"}
    assert sum(len(s) for s in (child.layer1, child.layer2, child.layer3, child.layer4)) == 4 + 12
    assert torch.equal(child(x), parent(x))


def _replica_pairs(block, conv_name, width):
    w = getattr(block, conv_name).weight
    return [(j, next(u for u in range(width) if torch.equal(w[j], w[u]))) for j in range(width, w.shape[0])]


@pytest.mark.parametrize("split, symmetric", [("equal", True), ("random", False)])
def test_only_the_random_split_lets_copies_become_different_units(split, symmetric):
    parent, x = _parent(), _x()
    child = copy.deepcopy(parent).train()
    note = widen(child, torch.Generator().manual_seed(6), 0.5, split)
    path = note.split()[1]
    block = child.get_submodule(path.rsplit(".", 1)[0])
    conv = path.rsplit(".", 1)[1]
    pairs = _replica_pairs(block, conv, int(note.split()[2].split("->")[0]))
    child(x).pow(2).sum().backward()
    grad = getattr(block, conv).weight.grad
    same = [torch.allclose(grad[j], grad[u], rtol=1e-9, atol=1e-12) for j, u in pairs]
    assert all(same) if symmetric else not any(same)


def test_mutations_keep_evodrop_hooks_and_carve_a_stratified_validation_split():
    parent = _parent(torch.float32)
    attach(parent, "stages,head", 0.5, "evo")
    child = copy.deepcopy(parent)
    widen(child, torch.Generator().manual_seed(7), 0.5, "random")
    deepen(child, torch.Generator().manual_seed(8), _block_maker(torch.float32))
    assert len(child.evodrop) == 5 and all(len(s._forward_hooks) == 1 for s in (child.layer1, child.layer4))
    x = _x(torch.float32)
    assert torch.allclose(child.eval()(x), parent.eval()(x), rtol=1e-5, atol=1e-6)  # widen: float32 round-off

    labels = torch.arange(4).repeat_interleave(torch.tensor([10, 20, 3, 1]))
    train = Split(torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8), labels)
    kept, val = carve_validation(train, 0.1)
    assert torch.bincount(val.labels).tolist() == [1, 2, 1]  # >= 1 per class, never a class's last image
    assert torch.bincount(kept.labels).tolist() == [9, 18, 2, 1]
    again, val2 = carve_validation(train, 0.1)
    assert torch.equal(val.labels, val2.labels) and torch.equal(again.labels, kept.labels)


def test_regime_grows_selects_ensembles_and_resumes_identically(make_cfg, run_cfg, kill_run, monkeypatch):
    cfg = make_cfg("neuroevo", epochs=2, plugin={"population": 3, "survivors": 2, "rounds": 1})
    reference = run_cfg(cfg)
    assert reference["status"] == "complete" and reference["method"] == "ce+neuroevo"
    passes = reference["passes"]
    assert [p["kind"] for p in passes] == ["seed", "member", "member", "member"]
    population = reference["population"]
    assert [m["member"] for m in population] == [0, 1, 2, 3] and [m["parent"] for m in population] == [None, 0, 0, 0]
    children = sorted(population[1:], key=lambda m: (-m["val_top1"], m["params"], m["member"]))
    assert [m["survivor"] for m in children] == [True, True, False]  # the best 2 of 3 on validation
    assert all(m["params"] > population[0]["params"] and len(m["mutations"]) == 1 for m in children)
    assert all(m["birth_change"] < 1e-5 for m in children)
    final, best = reference["final"], children[0]
    assert final["best_member"] == best["member"] and final["top1"] == best["top1"] and final["ensemble_size"] == 2
    assert reference["cost"]["dense"]["params"] == best["params"]
    assert reference["cost"]["ensemble"]["params"] == children[0]["params"] + children[1]["params"]
    assert reference["training"]["flops"] == sum(p["train_flops"] for p in passes) == reference["cost"]["training"]["flops"]
    assert "88 train / 8 val images" in reference["data"]["validation"]  # 10% of 24 per class held out
    full = timm.create_model("test_resnet", num_classes=4)
    assert population[0]["params"] < sum(p.numel() for p in full.parameters())  # a shallow, narrow seed

    run_dir = Path(cfg.out) / cfg.run_id()
    (run_dir / "result.json").unlink()
    kill_run(cfg, after=7)  # 2 per pass: killed after member 3's first epoch; members 1, 2 come from the checkpoint
    # A replayed birth sees other weights (and another CPU other kernels): its re-measured round-off must
    # not leak into the result, the interrupted run's measurement is reported.
    monkeypatch.setattr(neuroevo, "birth_change", lambda parent, child, x: 3e-8)
    resumed = run_cfg(cfg, resume=True)
    assert resumed["final"] == reference["final"] and resumed["population"] == reference["population"]
    assert json.dumps(resumed["cost"]) == json.dumps(reference["cost"])


def test_refuses_other_families_and_bad_population(make_cfg):
    from kebench.run.engine import Run

    with pytest.raises(UserError, match="timm ResNet family.*test_convnext"):
        Run(make_cfg("neuroevo", arch="test_convnext", resolution=32), show_progress=False).execute()  # >= 32 px
    with pytest.raises(UserError, match="--survivors \\(3\\) cannot exceed --population \\(2\\)"):
        Run(make_cfg("neuroevo", plugin={"population": 2, "survivors": 3}), show_progress=False)
    with pytest.raises(UserError, match="neuroevo: Unknown mutation 'shrink'"):
        Run(make_cfg("neuroevo", plugin={"mutations": "widen,shrink"}), show_progress=False)


def test_hidden_layers_cover_basic_and_bottleneck_blocks():
    names = {f"{path}.{pair[0]}" for path, _, pair in hidden_layers(_parent())}
    assert names == HIDDEN_PATHS
