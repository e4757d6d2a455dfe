"""agevo / eigen: every mutation gives a trainable network, weights are inherited at birth,
selection and extinction decide as specified, and a search resumes to the same population."""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kebench.nets import genome as G
from kebench.errors import UserError
from kebench.nets.morph import birth_change

sys.path.insert(0, str(Path(__file__).parent))
from cuda_device import DEVICE, ON_GPU, needs_cuda  # noqa: E402
from methods.agevo import Extinction, select, thresholds

#: A genome on which every mutation applies (skip, concat, dropout, pool and fc present).
RICH = {"stem": 8, "units": [
    {"id": 1, "type": "conv", "out": 8, "k": 3, "stride": 1, "skip": False, "concat": False},
    {"id": 2, "type": "pool"},
    {"id": 3, "type": "conv", "out": 12, "k": 3, "stride": 1, "skip": True, "concat": False},
    {"id": 4, "type": "conv", "out": 12, "k": 1, "stride": 2, "skip": False, "concat": True},
    {"id": 5, "type": "dropout", "p": 0.2}], "fc": [{"id": 6, "out": 16}], "next_id": 7}


def _net(genome, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = G.EvoNet(genome, num_classes=5, in_chans=1).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    for bn in model.modules():  # trained-looking BN statistics, so an inexact birth would show
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.bias.data.copy_(torch.rand(bn.num_features, generator=gen) - 0.5)
            bn.running_mean.copy_(torch.rand(bn.num_features, generator=gen) - 0.5)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    return model.eval()


def _x(dtype=torch.float64):
    return torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(2)).to(dtype)


def _child(parent, note, genome, gen, dtype=torch.float64):
    child = G.EvoNet(genome, num_classes=5, in_chans=1).to(dtype).eval()
    return child, G.give_birth(child, parent, note, gen)


@pytest.mark.parametrize("op", G.MUTATIONS + G.DUPLICATIONS)
def test_each_mutation_gives_a_valid_trainable_network(op):
    assert G.applicable(RICH, op)
    parent = _net(RICH, torch.float32)
    genome, note = G.mutate(RICH, op, torch.Generator().manual_seed(3))
    assert genome != RICH and RICH["units"][0]["out"] == 8  # the parent genome is not touched
    G.check(genome)
    child, _ = _child(parent, note, genome, torch.Generator().manual_seed(4), torch.float32)
    child.train()
    opt = torch.optim.SGD(child.parameters(), lr=0.1)
    x, y = _x(torch.float32), torch.arange(6) % 5
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(child(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    kinds = [u["type"] for u in genome["units"]]
    before = [u["type"] for u in RICH["units"]]
    expected = {"add_conv": ("conv", 1), "remove_conv": ("conv", -1), "add_pool": ("pool", 1),
                "remove_pool": ("pool", -1), "add_dropout": ("dropout", 1), "remove_dropout": ("dropout", -1)}
    if op in expected:
        kind, delta = expected[op]
        assert kinds.count(kind) == before.count(kind) + delta
    if op in ("add_fc", "remove_fc"):
        assert len(genome["fc"]) == len(RICH["fc"]) + (1 if op == "add_fc" else -1)


def test_mutation_set_is_complete_and_respects_limits():
    assert set(G.MUTATIONS) == {f"{a}_{b}" for a in ("add", "remove") for b in
                                ("conv", "dropout", "pool", "skip", "concat", "fc")} | {
        "alter_channels", "alter_filter", "alter_stride"}
    assert not G.applicable(G.MINIMAL, "remove_pool") and not G.applicable(G.MINIMAL, "remove_fc")
    full = copy.deepcopy(RICH)
    full["units"] += [{"id": 10 + i, "type": "pool"} for i in range(3)]
    full["next_id"] = 20
    assert G.downsamplings(full) == 5 - 0 and not G.applicable(full, "add_pool")  # max_down 4 reached
    g, _ = G.mutate(full, "alter_stride", torch.Generator().manual_seed(0))
    assert G.downsamplings(g) == G.downsamplings(full) - 1  # only a stride-2 conv can change: back to 1


def test_weights_are_inherited_at_birth():
    parent, x = _net(RICH), _x()
    gen = torch.Generator().manual_seed(5)
    # untouched structure: every tensor is copied
    genome, note = G.mutate(RICH, "add_dropout", gen)
    child, counts = _child(parent, note, genome, gen)
    assert counts["fresh"] == counts["sliced"] == 0
    assert all(torch.equal(v, parent.state_dict()[k]) for k, v in child.state_dict().items())
    assert birth_change(parent, child, x) == 0
    # an inserted conv starts as the identity (Net2DeeperNet) and the rest is copied
    genome, note = G.mutate(RICH, "add_conv", gen)
    child, counts = _child(parent, note, genome, gen)
    assert counts["preserved"] and birth_change(parent, child, x) < 1e-12
    # widening a unit whose output one layer alone reads: Net2WiderNet, the function is kept
    plain = copy.deepcopy(RICH)
    plain["units"][2]["skip"] = False  # u3 (after u1 and a pool) is then u1's only reader
    assert G.consumer_of(plain, 1) == "units.u3.conv" and G.consumer_of(RICH, 1) is None
    plain_parent = _net(plain)
    for seed in range(50):
        genome, note = G.mutate(plain, "alter_channels", torch.Generator().manual_seed(seed))
        if note.get("widened", (None,))[0] == 1:
            break
    child, counts = _child(plain_parent, note, genome, gen)
    assert counts["preserved"] and child.units.u1.conv.out_channels == 16
    assert torch.equal(child.units.u1.conv.weight[:8], plain_parent.units.u1.conv.weight)
    assert birth_change(plain_parent, child, x) < 1e-10
    # a shrunk kernel keeps the centre of the parent's
    genome, note = G.mutate(RICH, "alter_filter", torch.Generator().manual_seed(1))
    uid = next(u["id"] for u, v in zip(genome["units"], RICH["units"]) if u.get("k") != v.get("k"))
    child, counts = _child(parent, note, genome, gen)
    k_old, k_new = parent.units[f"u{uid}"].conv.kernel_size[0], child.units[f"u{uid}"].conv.kernel_size[0]
    w_old, w_new = parent.units[f"u{uid}"].conv.weight, child.units[f"u{uid}"].conv.weight
    n, a, b = min(k_old, k_new), (k_new - min(k_old, k_new)) // 2, (k_old - min(k_old, k_new)) // 2
    assert counts["sliced"] >= 1 and torch.equal(w_new[..., a:a + n, a:a + n], w_old[..., b:b + n, b:b + n])
    # gene duplication: the copies carry the original's trained weights
    genome, note = G.mutate(RICH, G.DUPLICATE, torch.Generator().manual_seed(2))
    child, _ = _child(parent, note, genome, gen)
    for new, old in note["copied"].items():
        for name, t in child.units[f"u{new}"].state_dict().items():
            src = parent.units[f"u{old}"].state_dict()[name]
            if src.shape == t.shape:
                assert torch.equal(t, src)


def test_eigen_d_duplication_doubles_the_whole_structure_with_its_weights():
    """EIGEN-D's gene duplication copies the whole chain of units after itself (the talk's parameter
    doubling); `duplicate_segment` (kebench's earlier reading) copies 1-3 units."""
    genome = {"stem": 8, "units": [
        {"id": 1, "type": "conv", "out": 8, "k": 3, "stride": 1, "skip": False, "concat": False},
        {"id": 2, "type": "pool"},
        {"id": 3, "type": "conv", "out": 8, "k": 5, "stride": 2, "skip": True, "concat": False},
        {"id": 4, "type": "dropout", "p": 0.2}], "fc": [], "next_id": 5}
    child, note = G.mutate(genome, G.DUPLICATE, torch.Generator().manual_seed(0))
    strip = [{k: v for k, v in u.items() if k != "id"} for u in genome["units"]]
    assert [{k: v for k, v in u.items() if k != "id"} for u in child["units"]] == strip + strip
    assert note["copied"] == {5: 1, 6: 2, 7: 3, 8: 4} and G.downsamplings(child) == 4
    parent, grown = _net(genome), G.EvoNet(child, num_classes=5, in_chans=1).double()

    def body(model):  # parameters of the chain of units (stem and head are not duplicated)
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith("units."))

    assert body(grown) == 2 * body(parent)
    G.give_birth(grown, parent, note, torch.Generator().manual_seed(1))
    for new, old in note["copied"].items():
        for name, t in grown.units[f"u{new}"].state_dict().items():
            assert torch.equal(t, parent.units[f"u{old}"].state_dict()[name])
    # no room for a second copy of the down-samplings: the copy's pool is left out, its stride is 1
    again, _ = G.mutate(child, G.DUPLICATE, torch.Generator().manual_seed(0))
    assert G.downsamplings(again) == 4 and len(again["units"]) == 8 + 6  # two pools left out
    assert not G.applicable(again, G.DUPLICATE) and G.applicable(again, G.DUPLICATE_SEGMENT)
    segment, note = G.mutate(genome, G.DUPLICATE_SEGMENT, torch.Generator().manual_seed(0))
    assert 1 <= len(note["copied"]) <= 3 and len(segment["units"]) == 4 + len(note["copied"])


def _ind(i, val, params=100, extinct=False, landmarks=(None, None)):
    return {"id": i, "val_top1": val, "params": params, "extinct": extinct, "landmarks": list(landmarks)}


def test_aggressive_selection_and_extinction_thresholds_on_a_fixed_population():
    pop = [_ind(0, 0.50), _ind(1, 0.90, extinct=True), _ind(2, 0.70, params=50), _ind(3, 0.70, params=40),
           _ind(4, 0.80), _ind(5, 0.70, params=40)]
    assert [i["id"] for i in select(pop, 3)] == [4, 3, 5]  # extinct out; ties: fewer params, then earlier
    assert [i["id"] for i in select([_ind(0, 0.2, extinct=True), _ind(1, 0.3, extinct=True)], 1)] == [1]
    survivors = [_ind(0, 0.9, landmarks=(0.40, 0.60)), _ind(1, 0.8, landmarks=(0.55, 0.50)),
                 _ind(2, 0.7, landmarks=(None, None))]
    assert thresholds(survivors, 2) == [0.40, 0.50]
    assert thresholds([_ind(0, 0.9)], 2) == [-math.inf, -math.inf]

    class FakeRun:
        def __init__(self, vals):
            self.vals = iter(vals)

        def evaluate(self, model, split):
            assert split == "val"
            return {"top1": next(self.vals)}

    values = torch.full((2,), math.nan)
    hook = Extinction(FakeRun([0.45, 0.49]), [1, 3], [0.40, 0.50], values)
    rows = [{} for _ in range(4)]
    for epoch in range(1, 5):
        hook.epoch_end(None, epoch, rows[epoch - 1])
        if hook.stop_pass():
            break
    assert epoch == 3 and "T2 (epoch 3)" in hook.stop_pass() and values.tolist() == pytest.approx([0.45, 0.49])
    assert rows[0] == {"val_top1_T1": 0.45} and rows[1] == {}
    survivor = Extinction(FakeRun([0.45, 0.51]), [1, 3], [0.40, 0.50], torch.full((2,), math.nan))
    for epoch in range(1, 5):
        survivor.epoch_end(None, epoch, {})
    assert survivor.stop_pass() is None


def _search_cfg(make_cfg, method="eigen", device="cpu", amp="auto", channels_last=None, **plugin):
    base = {"population": 3, "keep": 1, "generations": 2, "primary_generations": 1, "mutations": 2}
    if method == "agevo":
        base.pop("primary_generations")
    return make_cfg(method, arch="evonet", epochs=2, device=device, amp=amp, channels_last=channels_last,
                    plugin={**base, **plugin})


def test_eigen_searches_records_every_individual_and_resumes_to_the_same_population(make_cfg, run_cfg, kill_run):
    cfg = _search_cfg(make_cfg, "eigen-d", landmarks="0.5")
    ref = run_cfg(cfg)
    assert ref["status"] == "complete" and ref["arch"] == "evonet"
    passes, search = ref["passes"], ref["search"]
    assert [p["kind"] for p in passes] == ["individual"] * 9 and [p["index"] for p in passes] == list(range(9))
    inds = search["individuals"]
    assert [len(i["mutations"]) for i in inds] == [2] * 3 + [2] * 3 + [1] * 3  # primary, then secondary succession
    assert [i["parent"] for i in inds[3:6]] == [search["history"][0]["best"]] * 3
    for p in passes:  # an extinct individual stopped at its landmark, its cost counted as trained
        assert p["epochs"] == (1 if p.get("stopped") else 2) and p["train_flops"] == p["step_flops"] * p["steps"]
    assert ref["training"]["epochs"] == sum(p["epochs"] for p in passes) == ref["cost"]["search"]["epochs"]
    best = min(inds, key=lambda i: (i["extinct"], -i["val_top1"], i["params"], i["id"]))
    assert ref["final"]["best_individual"] == best["id"] == search["survivors"][0]
    assert ref["final"]["top1"] == best["top1"] and ref["cost"]["dense"]["params"] == best["params"]
    assert [h["generation"] for h in search["history"]] == [0, 1, 2]
    vals = [h["val_top1"] for h in search["history"]]
    assert vals == sorted(vals)  # plus-selection: the best never gets worse

    from kebench.analysis.plots import build_figure
    from kebench.analysis.tables import build_table, fmt_number, load_runs

    runs, _ = load_runs([cfg.out])
    table = build_table(runs, "size")
    assert [r.head for r in table.rows] == [("CE + EIGEN-D", "evonet")]
    cells = table.rows[0].cells
    assert cells[0].mean == ref["final"]["top1"] and cells[1].text == fmt_number(best["params"] / 1e6)
    fig = build_figure(runs, "search")
    top, bottom = fig.axes[:2]
    assert list(top.lines[0].get_ydata()) == pytest.approx([100 * h["top1"] for h in search["history"]])
    assert list(bottom.lines[0].get_ydata()) == [h["params"] for h in search["history"]]

    run_dir = Path(cfg.out) / cfg.run_id()
    (run_dir / "result.json").unlink()
    kill_run(cfg, when=lambda ps: ps.kind == "individual" and ps.label == 7 and ps.epoch == 1)  # mid-search
    resumed = run_cfg(cfg, resume=True)
    assert [i["genome"] for i in resumed["search"]["individuals"]] == [i["genome"] for i in inds]
    assert [i["parent"] for i in resumed["search"]["individuals"]] == [i["parent"] for i in inds]
    for a, b in zip(resumed["search"]["individuals"], inds):
        assert a["val_top1"] == pytest.approx(b["val_top1"], abs=1e-6) and a["extinct"] == b["extinct"]
        assert a["birth_change"] == pytest.approx(b["birth_change"], rel=1e-4, abs=1e-7)
    assert resumed["final"]["top1"] == pytest.approx(ref["final"]["top1"], abs=1e-6)
    for a, b in zip(resumed["search"]["history"], search["history"]):
        assert (a["best"], a["describe"], a["extinct"]) == (b["best"], b["describe"], b["extinct"])
        assert a["val_top1"] == pytest.approx(b["val_top1"], abs=1e-6)


def test_agevo_runs_and_refuses_other_archs_and_bad_settings(make_cfg, run_cfg):
    out = run_cfg(_search_cfg(make_cfg, "agevo", generations=1))
    assert out["status"] == "complete" and len(out["passes"]) == 6 and out["search"]["algorithm"] == "agevo"
    # AG-Evolution selects aggressively but extinguishes nobody: no landmark, every individual trains out
    assert out["search"]["landmarks"] == [] and out["cost"]["search"]["extinct"] == 0
    assert all(not p.get("stopped") and p["epochs"] == 2 for p in out["passes"])
    assert all(i["landmarks"] == [] and not i["extinct"] for i in out["search"]["individuals"])
    assert all(len(i["mutations"]) == 2 for i in out["search"]["individuals"])
    with pytest.raises(UserError, match="must be evonet"):
        run_cfg(make_cfg("agevo", arch="test_resnet"))
    with pytest.raises(UserError, match="--keep must be in"):
        run_cfg(_search_cfg(make_cfg, "agevo", keep=5))
    with pytest.raises(UserError, match="agevo: Unknown mutation 'grow'"):
        run_cfg(_search_cfg(make_cfg, "agevo", mutation_set="add_conv,grow"))
    with pytest.raises(UserError, match="--landmarks takes increasing fractions"):
        run_cfg(_search_cfg(make_cfg, "eigen", landmarks="0.5,0.25"))


@pytest.mark.cuda
@needs_cuda
def test_eigen_d_searches_on_cuda_with_amp_and_channels_last(make_cfg, run_cfg):
    out = run_cfg(_search_cfg(make_cfg, "eigen-d", device=DEVICE, amp="bf16", channels_last=True))
    assert out["status"] == "complete" and len(out["passes"]) == 9 and (out["device"] != "cpu") == ON_GPU
