"""RePr: the orthogonality ranking (global and per layer), filters truly off during S2 (BN included),
re-initialisation orthogonal to kept filters and old values, the BN-after-conv graph, resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kebench.run.engine import Run
from kebench.errors import UserError
from kebench.nets.prune import following_batchnorms, orthogonality_scores
from methods.repr import RePr, orthogonal_filters, rankable_convs, select_filters


def _conv(rows):
    """A 1x1 conv whose filters are the given rows."""
    w = torch.tensor(rows, dtype=torch.float32)
    conv = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(w.view(*w.shape, 1, 1))
    return conv


def _basis(i, n=8, scale=1.0):
    v = [0.0] * n
    v[i] = scale
    return v


def _hand_made():
    """Filters 0-3 and 7 are orthogonal to everything; 4 duplicates 0 (scaled), 5 and 6 are near 1."""
    rows = [_basis(0), _basis(1), _basis(2), _basis(3), _basis(0, scale=2.0),
            [0.1, 1.0, 0, 0, 0, 0, 0, 0], [0.0, 1.0, 0, 0, 0, 0.2, 0, 0], _basis(4)]
    return _conv(rows)


def test_orthogonality_score_formula():
    conv = _hand_made()
    w = F.normalize(conv.weight.detach().flatten(1), dim=1)
    expect = (w @ w.t() - torch.eye(8)).abs().sum(1) / 8
    assert torch.allclose(orthogonality_scores(conv.weight), expect)
    assert orthogonality_scores(conv.weight)[[2, 3, 7]].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)


def test_ranking_picks_the_redundant_filters():
    redundant = {0, 1, 4, 5, 6}
    for rate in (0.25, 0.5, 0.6):  # 2, 4 and 5 of 8 filters
        drop = select_filters({"a": _hand_made()}, rate, "per-layer")["a"].tolist()
        assert len(drop) == round(rate * 8) and set(drop) <= redundant
    assert set(select_filters({"a": _hand_made()}, 0.25, "per-layer")["a"].tolist()) == {1, 5}  # the top two


def test_global_ranking_spans_layers_per_layer_does_not():
    convs = {"orth": _conv([_basis(i) for i in range(8)]), "redundant": _hand_made()}
    glob = select_filters(convs, 0.25, "global")  # 4 of 16 filters, all from the redundant layer
    assert glob["orth"].tolist() == [] and len(glob["redundant"]) == 4
    per = select_filters(convs, 0.25, "per-layer")
    assert len(per["orth"]) == 2 and len(per["redundant"]) == 2
    tiny = {"two": _conv([_basis(0), _basis(0)]), "orth": _conv([_basis(i) for i in range(8)])}
    assert len(select_filters(tiny, 0.6, "global")["two"]) == 1  # a layer always keeps one filter


def test_reinitialised_filters_are_orthogonal_to_kept_and_old():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    convs = rankable_convs(model)
    init_norm = {n: float(m.weight.detach().flatten(1).norm(dim=1).pow(2).mean().sqrt()) for n, m in convs.items()}
    bn = model[1]
    with torch.no_grad():  # "trained" values, different from the init
        bn.weight.fill_(1.7)
        bn.bias.fill_(0.3)
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(2.0)
    init_bn = {"1": (torch.ones(8), torch.zeros(8))}
    old = torch.cat([m.weight.detach().flatten() for m in convs.values()])
    drop = {"0": torch.tensor([1, 5]), "3": torch.tensor([], dtype=torch.long)}
    with torch.no_grad():
        model[0].weight[[1, 5]] = 0
    narrow = RePr._reinitialise(model, convs, drop, old, init_norm, {"0": [("1", 0)], "3": []}, init_bn)
    assert narrow == []
    w = model[0].weight.detach().flatten(1)
    old_w = old[: w.numel()].view_as(w)
    new, kept = w[[1, 5]], w[[0, 2, 3, 4, 6, 7]]
    assert (new @ kept.t()).abs().max() < 1e-5
    assert (new * old_w[[1, 5]]).sum(1).abs().max() < 1e-5
    assert (new @ old_w[[1, 5]].t()).abs().max() < 1e-5
    assert abs(float(new[0] @ new[1])) < 1e-5
    assert new.norm(dim=1).tolist() == pytest.approx([init_norm["0"]] * 2, rel=1e-5)
    assert model[0].bias[[1, 5]].tolist() == [0.0, 0.0]
    assert bn.weight[[1, 5]].tolist() == [1.0, 1.0] and bn.bias[[1, 5]].tolist() == [0.0, 0.0]
    assert bn.running_mean[[1, 5]].tolist() == [0.0, 0.0] and bn.running_var[[1, 5]].tolist() == [1.0, 1.0]
    assert bn.weight[0].item() == pytest.approx(1.7)  # kept channels untouched


def test_orthogonal_filters_in_a_narrow_layer():
    kept = torch.randn(6, 4)
    rows, full = orthogonal_filters(kept, torch.randn(2, 4), 2)
    assert not full and rows.shape == (2, 4)
    assert (rows.double() @ kept[:2].double().t()).abs().max() < 1e-6  # honours as many kept as fit


class Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 5, 1)
        self.bn = nn.BatchNorm2d(9)
        self.c = nn.Conv2d(9, 2, 1)
        self.bn2 = nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn2(self.c(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))))


class Untraceable(nn.Sequential):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = x + 0
        return super().forward(x)


def test_following_batchnorms_from_graph_and_module_order():
    import timm

    found = following_batchnorms(Cat(), torch.zeros(2, 3, 4, 4))
    assert found == {"a": [("bn", 0)], "b": [("bn", 4)], "c": [("bn2", 0)]}
    model = timm.create_model("test_resnet", num_classes=3)
    found = following_batchnorms(model, torch.zeros(2, 3, 16, 16))
    assert found["layer1.0.conv2"] == [("layer1.0.bn2", 0)]
    assert found["layer2.0.downsample.1"] == [("layer2.0.downsample.2", 0)]
    seq = Untraceable(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.ReLU())
    assert following_batchnorms(seq, torch.zeros(2, 3, 4, 4)) == {"0": [("1", 0)], "3": []}


def test_dropped_filters_are_truly_off_during_s2_then_back(make_cfg):
    cfg = make_cfg("repr", plugin={"s1": 1, "s2": 2, "cycles": 1, "final": 1})
    run = Run(cfg, show_progress=False)
    original = run.fit
    states = []

    def spy(*args, **kwargs):
        record = original(*args, **kwargs)
        if kwargs.get("kind") == "s2":
            masks = run.state["repr_masks"]
            model = run.model.eval()
            outputs = {}
            hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outputs.__setitem__(n, o.clone()))
                     for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
            with torch.no_grad():
                model(torch.randn(4, 3, 16, 16))
            for h in hooks:
                h.remove()
            model.train()
            off = {}
            for name, conv in rankable_convs(run.model).items():
                dead = ~masks[f"{name}.weight"].flatten(1).any(1)
                if dead.any():
                    off[name] = dead
                    assert (conv.weight[dead] == 0).all()
            bn_of = following_batchnorms(run.model, torch.zeros(2, 3, 16, 16))
            for name, dead in off.items():
                for bn, offset in bn_of[name]:
                    channels = torch.nonzero(dead).flatten() + offset
                    assert (outputs[bn][:, channels] == 0).all()  # no BN bias leaks out of a dropped filter
            states.append({n: d.clone() for n, d in off.items()})
        return record

    run.fit = spy
    result = run.execute()
    assert [p["kind"] for p in result["passes"]] == ["s1", "s2", "final"]
    cycle = result["repr"]["cycles"][0]
    total = sum(m.out_channels for m in rankable_convs(run.model).values())
    assert cycle["total"] == round(0.3 * total) == result["passes"][1]["metrics"]["filters_dropped"]
    assert {n: int(d.sum()) for n, d in states[0].items()} == cycle["dropped"] == result["passes"][1]["dropped_filters"]
    for name, dead in states[0].items():  # re-initialised and trained again in the final phase
        conv = dict(run.model.named_modules())[name]
        assert (conv.weight[dead].flatten(1).norm(dim=1) > 0).all()


@pytest.mark.parametrize("ranking", ["global", "per-layer"])
def test_every_pass_records_the_filters_each_layer_kept(make_cfg, run_cfg, ranking):
    """`--repr.ranking`: global may cut a layer to its last filter; per-layer takes 30% of each."""
    cfg = make_cfg("repr", plugin={"repr.ranking": ranking, "s1": 1, "s2": 1, "cycles": 1, "final": 1})
    result = run_cfg(cfg)
    filters = result["repr"]["filters"]
    s1, s2, final = result["passes"]
    assert s1["kept_filters"] == filters == final["kept_filters"]  # all on outside S2
    kept = s2["kept_filters"]
    assert set(kept) == set(filters)
    assert {n: filters[n] - kept[n] for n in filters if kept[n] < filters[n]} == s2["dropped_filters"]
    if ranking == "per-layer":
        assert kept == {n: c - round(0.3 * c) for n, c in filters.items()}
    else:
        assert sum(filters.values()) - sum(kept.values()) == round(0.3 * sum(filters.values()))
        assert min(kept.values()) >= 1


def test_schedule_from_epochs():
    cfg_params = {"s1": None, "s2": None, "final": None, "s1_fraction": 0.25, "s2_fraction": 0.05,
                  "cycles": 3, "prune_ratio": 0.3, "ranking": "global"}
    assert RePr(cfg_params, None).schedule(200) == (50, 10, 20)  # the KE paper's RePr setting
    assert RePr(cfg_params, None).schedule(2) == (1, 1, 1)


def test_repr_resumes_inside_s2(make_cfg, run_cfg, kill_run):
    cfg = make_cfg("repr", checkpoint_every_s=0, plugin={"s1": 1, "s2": 2, "cycles": 1, "final": 1})
    reference = run_cfg(cfg)
    (Path(cfg.out) / cfg.run_id() / "result.json").unlink()
    kill_run(cfg, after=2)  # s1 done; killed after the first S2 epoch
    resumed = run_cfg(cfg, resume=True)
    assert [p["metrics"] for p in resumed["passes"]] == [p["metrics"] for p in reference["passes"]]
    assert resumed["repr"]["cycles"] == reference["repr"]["cycles"]
    assert resumed["passes"][1]["dropped_filters"] == reference["passes"][1]["dropped_filters"]


def test_following_batchnorms_refuses_what_the_channel_graph_cannot_follow():
    """One graph walker and no silent fallback: a grouped convolution is named, not guessed around."""
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.BatchNorm2d(8))
    with pytest.raises(UserError, match="grouped convolution"):
        following_batchnorms(grouped, torch.zeros(2, 4, 8, 8))
