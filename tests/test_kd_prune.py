"""KD x pruning: the pruning primitives (L1 filter, slimming, global weight magnitude), the physically
pruned network, and the five pipelines end to end (records, teacher contract, augmentation, resume)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from kebench.nets import prune
from kebench.run.engine import Run
from kebench.errors import UserError
from kebench.nets.channels import channel_graph

EXAMPLE = torch.zeros(2, 3, 16, 16)


def _model(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=4).eval()


# ------------------------------------------------------------------------------- primitives
def test_l1_filter_keeps_largest_filters_per_layer_and_ranks_tied_groups_by_their_sum():
    model = _model()
    conv = model.layer2[0].conv1  # an untied group: 48 filters
    with torch.no_grad():
        conv.weight.copy_(torch.arange(48, dtype=torch.float32).view(48, 1, 1, 1).expand_as(conv.weight))
    keep = prune.l1_filter_keep(model, 0.5, EXAMPLE)
    assert keep["layer2.0.conv1"].tolist() == list(range(24, 48))  # ceil(0.5 * 48) largest Σ|W|
    graph = channel_graph(model, EXAMPLE)
    for gid, idx in keep.items():
        assert len(idx) == -(-graph.groups[gid].size // 2)  # ceil((1 - 0.5) * C) in every group
    assert "layer2.0.conv2" not in keep  # tied by the residual add: left whole by default
    # tied=True: the residual group is ranked by the sum over its member convs
    a, b = model.layer2[0].conv2, model.layer2[0].downsample[1]
    with torch.no_grad():
        a.weight.zero_()
        b.weight.zero_()
        a.weight[:5] = 1.0  # channels 0-4 large in one member ...
        b.weight[40:] = 1.0  # ... channels 40-47 in the other
    keep = prune.l1_filter_keep(model, 0.75, EXAMPLE, tied=True)
    # ceil(0.25 * 48) = 12 kept: the 5 large conv2 filters, then the 7 first large downsample ones
    assert keep["layer2.0.conv2"].tolist() == [0, 1, 2, 3, 4, *range(40, 47)]


def test_slimming_never_empties_a_layer_even_at_99_percent():
    model = _model()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
        model.layer3[0].bn1.weight.fill_(1e-6)  # one layer entirely below any threshold
    graph = channel_graph(model, EXAMPLE)
    for tied in (False, True):
        keep = prune.slimming_keep(model, 0.99, EXAMPLE, tied=tied)
        assert keep and all(len(v) >= 1 for v in keep.values())
        assert len(keep["layer3.0.conv1"]) == 1
        total = sum(graph.groups[g].size for g in keep)
        assert sum(len(v) for v in keep.values()) <= total - round(0.99 * total) + len(keep)
        small = prune.extract_pruned(model, keep, EXAMPLE)
        assert small(EXAMPLE).shape == (2, 4)


def test_slimming_uses_one_global_threshold():
    model = _model()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
        model.layer2[0].bn1.weight[:30] = 0.01  # 30 weak channels in one layer, none elsewhere
    keep = prune.slimming_keep(model, 0.1, EXAMPLE)
    graph = channel_graph(model, EXAMPLE)
    total = sum(graph.groups[g].size for g in keep)
    removed = {g: graph.groups[g].size - len(v) for g, v in keep.items()}
    assert sum(removed.values()) == round(0.1 * total)
    assert removed["layer2.0.conv1"] == min(30, round(0.1 * total))  # the weak ones go first


def test_bn_l1_penalty_gradient_is_sign_gamma():
    model = _model()
    bn = model.layer1[0].bn1
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(-1, 1, 32))
    prune.bn_l1_penalty(model).backward()
    assert torch.equal(bn.weight.grad, torch.sign(bn.weight.detach()))


def test_pruned_network_output_equals_masked_network_output():
    """Extracted (physically smaller) vs the dense network with every weight of a dropped channel zeroed."""
    model = _model()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong slice shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.2)
    for keep in (prune.l1_filter_keep(model, 0.6, EXAMPLE, tied=True), prune.slimming_keep(model, 0.5, EXAMPLE)):
        small = prune.extract_pruned(model, keep, EXAMPLE).eval()
        masked = _masked(model, keep)
        x = torch.randn(3, 3, 16, 16)
        assert torch.allclose(small(x), masked(x), atol=1e-5)
        dense_params = sum(p.numel() for p in model.parameters())
        assert sum(p.numel() for p in small.parameters()) < dense_params


def _masked(model, keep):
    import copy

    masked = copy.deepcopy(model).eval()
    graph = channel_graph(masked, EXAMPLE)
    with torch.no_grad():
        for name, (wmask, bmask) in graph.masks(keep, masked).items():
            mod = masked.get_submodule(name)
            mod.weight.mul_(wmask)
            if bmask is not None:
                mod.bias.mul_(bmask)
    return masked


def test_global_weight_masks_survive_many_momentum_steps():
    model = _model()
    masks = prune.MaskSet(prune.global_conv_masks(model, 0.7))
    convs = dict(prune.conv_weights(model))
    assert set(masks.names) == set(convs)
    kept = sum(int(m.sum()) for _, m in masks.items())
    total = sum(w.numel() for w in convs.values())
    assert total - kept == round(0.7 * total)  # one global threshold: exactly 70% of all conv weights
    hook = prune.MaskHook(model, masks)
    hook.apply()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _ in range(60):
        loss = model(torch.randn(4, 3, 16, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        hook.before_step(model, opt)
        opt.step()
        hook.after_step(model, opt)
    for name, mask in masks.items():
        assert (convs[name][~mask] == 0).all(), name
        assert (opt.state[convs[name]]["momentum_buffer"][~mask] == 0).all(), name
    assert any((convs[n][m] != 0).any() for n, m in masks.items())


# ------------------------------------------------------------------------------- pipelines
def _cfg(make_cfg, method, **plugin):
    plugin = {"prune_ratio": 0.5, **plugin}
    return make_cfg(method, plugin=plugin, epochs=1)


@pytest.mark.parametrize("method, kinds", [
    ("scratch", ["train", "finetune"]),
    ("kd+pre-distill", ["teacher", "train", "finetune"]),
    ("fd+post-distill", ["teacher", "train", "finetune"]),
    ("kd+pre-post", ["teacher", "train", "finetune"]),
    ("fd+self-distill", ["teacher", "train", "finetune"]),
])
def test_pipeline_records(make_cfg, run_cfg, method, kinds):
    cfg = _cfg(make_cfg, method, prune="l1-filter", prune_tied="true")
    r = run_cfg(cfg)
    assert r["status"] == "complete"
    assert [p["kind"] for p in r["passes"]] == kinds
    final = r["final"]
    assert final["top1"] == r["passes"][-1]["metrics"]["top1"]
    assert final["unpruned_top1"] == r["passes"][kinds.index("train")]["metrics"]["top1"]
    assert ("teacher_top1" in final) == (method != "scratch")
    unpruned, pruned = r["cost"]["unpruned"], r["cost"]["pruned"]
    assert pruned["params"] < unpruned["params"] and pruned["flops"] < unpruned["flops"]
    assert final["params_kept"] == pytest.approx(pruned["params"] / unpruned["params"])
    assert {k: r["cost"]["dense"][k] for k in unpruned} == unpruned  # model.pt is the unpruned student
    run_dir = Path(cfg.out) / cfg.run_id()
    from kebench.nets.slim import load_slim

    small = load_slim(run_dir / "pruned.pt")
    assert sum(p.numel() for p in small.parameters()) == pruned["params"]
    info = r["kd_pruning"]
    assert info["pipeline"] == method.split("+")[-1]
    assert info["prune"] == "l1-filter" and info["prune_ratio"] == 0.5


def test_weight_pipeline_keeps_masks_through_finetuning(make_cfg, run_cfg):
    cfg = _cfg(make_cfg, "kd+self-distill", prune="weight", prune_ratio=0.6)
    run = Run(cfg, show_progress=False)
    r = run.execute()
    cost = r["cost"]["pruned"]
    assert cost["conv_sparsity"] >= 0.6 and cost["params"] == r["cost"]["unpruned"]["params"]
    assert cost["nonzero_params"] < cost["params"]
    assert r["final"]["params_kept"] == pytest.approx(cost["nonzero_params"] / cost["params"])
    saved = torch.load(Path(cfg.out) / cfg.run_id() / "pruned.pt", weights_only=True)
    masks = run.state["kdp.masks"]
    for name, mask in masks.items():
        assert (saved["state_dict"][name][~mask] == 0).all()
    assert r["kd_pruning"]["teacher_after"] == "self"


def test_slimming_pipeline_adds_sparsity_and_shrinks(make_cfg, run_cfg, monkeypatch):
    seen = []
    original = prune.bn_l1_penalty
    monkeypatch.setattr(prune, "bn_l1_penalty", lambda m: seen.append(1) or original(m))
    r = run_cfg(_cfg(make_cfg, "scratch", prune="slimming", prune_ratio=0.4))
    steps = {p["kind"]: p["steps"] for p in r["passes"]}
    assert len(seen) == steps["train"]  # the penalty is on the unpruned student's pass only
    assert r["kd_pruning"]["sparsity"] == 1e-5  # ResNet family default
    assert r["cost"]["pruned"]["params"] < r["cost"]["unpruned"]["params"]


def test_teacher_is_eval_and_never_updated_while_the_student_learns(make_cfg, monkeypatch):
    cfg = _cfg(make_cfg, "kd+pre-post")
    run = Run(cfg, show_progress=False)
    snapshots, modes = [], []
    original = run.fit

    def fit(*a, **k):
        if k.get("kind") in ("train", "finetune"):
            t = run.state["kdp.teacher"]
            snapshots.append({n: v.clone() for n, v in t.state_dict().items()})
        record = original(*a, **k)
        if k.get("kind") in ("train", "finetune"):
            modes.append(run.state["kdp.teacher"].training)
        return record

    monkeypatch.setattr(run, "fit", fit)
    run.execute()
    teacher = run.state["kdp.teacher"]
    assert modes == [False, False]
    for snap in snapshots:
        for n, v in teacher.state_dict().items():
            assert torch.equal(v, snap[n]), n
    assert all(not p.requires_grad for p in teacher.parameters())


def test_augmentation_goes_to_the_chosen_passes(make_cfg, monkeypatch):
    cfg = _cfg(make_cfg, "kd+post-distill", teacher_aug="cutmix", student_aug="autoaugment")
    run = Run(cfg, show_progress=False)
    used = {}
    original = run.fit

    def fit(*a, **k):
        used[k["kind"]] = k["objective"].augment.names
        return original(*a, **k)

    monkeypatch.setattr(run, "fit", fit)
    r = run.execute()
    assert used == {"teacher": ("cutmix",), "train": ("autoaugment",), "finetune": ("autoaugment",)}
    assert r["kd_pruning"]["teacher_aug"] == "cutmix" and r["kd_pruning"]["student_aug"] == "autoaugment"


def test_prune_none_is_kd_alone_and_loaded_teacher_skips_the_teacher_pass(make_cfg, run_cfg):
    base = make_cfg("ce", epochs=1)
    run_cfg(base)
    path = f"{base.out}/{base.run_id()}/model.pt"
    r = run_cfg(_cfg(make_cfg, "kd+pre-distill", prune="none", teacher=path))
    assert [p["kind"] for p in r["passes"]] == ["train"]
    assert r["final"]["top1"] == r["final"]["unpruned_top1"]
    assert r["kd_pruning"]["teacher"] == path and "pruned" not in r["cost"]
    with pytest.raises(UserError, match="--teacher-aug applies when the pipeline trains the teacher"):
        run_cfg(_cfg(make_cfg, "kd+pre-distill", prune="none", teacher=path, teacher_aug="cutmix"))
    with pytest.raises(UserError, match="--prune none leaves nothing to fine-tune"):
        run_cfg(_cfg(make_cfg, "kd+post-distill", prune="none"))


def test_objective_and_pipeline_must_fit(make_cfg):
    with pytest.raises(UserError, match="Scratch uses no distillation"):
        make_cfg("kd+scratch")
    with pytest.raises(UserError, match="'self-distill' trains a teacher for its objective to distil from.*write "
                                        "fd\\+self-distill or kd\\+self-distill, not 'ce\\+self-distill'"):
        make_cfg("self-distill")  # bare regime = ce+self-distill
    with pytest.raises(UserError, match="works for classification tasks"):
        make_cfg("scratch", data="digits-retrieval")
    with pytest.raises(UserError, match="scratch: --prune must be one of l1-filter, slimming, weight, none, got 'l2'"):
        Run(_cfg(make_cfg, "scratch", prune="l2"), show_progress=False)


def _lrs(cfg, kind):
    rows = [json.loads(line) for line in (Path(cfg.out) / cfg.run_id() / "metrics.jsonl").read_text().splitlines()]
    return [r["lr"] for r in rows if r["kind"] == kind]


def test_finetune_is_parks_short_constant_low_lr_pass(make_cfg, run_cfg):
    """Park et al.: fine-tune 40 epochs (of 160 trained) at a constant LR 0.001, not a re-training from
    the peak LR with a restarted cosine over the full --epochs."""
    cfg = make_cfg("scratch", plugin={"prune_ratio": 0.5}, epochs=8, lr=0.05, warmup_epochs=1)
    assert {k: cfg.params["scratch"][k] for k in ("finetune_epochs", "finetune_fraction", "finetune_lr",
                                                   "finetune_schedule")} == {
        "finetune_epochs": None, "finetune_fraction": 0.25, "finetune_lr": 0.001, "finetune_schedule": "constant"}
    r = run_cfg(cfg)
    assert [(p["kind"], p["epochs"]) for p in r["passes"]] == [("train", 8), ("finetune", 2)]  # 8 / 4
    assert _lrs(cfg, "finetune") == [0.001, 0.001]
    assert _lrs(cfg, "train")[0] == pytest.approx(0.05) and _lrs(cfg, "train")[-1] < 0.01
    assert r["passes"][-1]["lr"] == {"peak": 0.001, "schedule": "constant", "warmup_epochs": 0, "window": [0, 2]}
    assert r["kd_pruning"]["finetune"] == {"epochs": 2, "lr": 0.001, "schedule": "constant"}


def test_finetune_settings_from_the_command_line(make_cfg, run_cfg):
    cfg = make_cfg("scratch", plugin={"finetune_epochs": "4", "finetune_lr": "0.02", "finetune_schedule": "cosine"},
                   epochs=1, warmup_epochs=1)
    r = run_cfg(cfg)
    assert r["passes"][-1]["epochs"] == 4
    # a restarted cosine warms up (1 epoch, reaching the peak) and then decays
    cosine = [0.02 * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in range(3)]
    assert _lrs(cfg, "finetune") == pytest.approx([0.02] + cosine)
    for bad, message in [({"finetune_schedule": "step"}, "--finetune-schedule must be one of constant, cosine, got 'step'"),
                         ({"finetune_lr": 0}, "--finetune-lr must be > 0"),
                         ({"finetune_epochs": "1.5"}, "'finetune_epochs' expects an integer")]:
        with pytest.raises(UserError, match=message):
            Run(make_cfg("scratch", plugin=bad), show_progress=False)


def test_killed_pipeline_resumes_in_the_finetune_pass_with_identical_numbers(make_cfg, run_cfg, kill_run):
    cfg = make_cfg("kd+self-distill", plugin={"prune": "slimming", "prune_ratio": 0.5, "finetune_epochs": 2}, epochs=2)
    reference = run_cfg(cfg)
    run_dir = Path(cfg.out) / cfg.run_id()
    (run_dir / "result.json").unlink()
    kill_run(cfg, when=lambda ps: ps.kind == "finetune")  # killed after the first fine-tuning epoch
    resumed = run_cfg(cfg, resume=True)
    assert resumed["final"] == reference["final"]
    assert resumed["cost"]["pruned"] == reference["cost"]["pruned"]
    assert resumed["kd_pruning"] == reference["kd_pruning"]
    assert json.loads((run_dir / "result.json").read_text())["status"] == "complete"


def test_grid_command_and_kd_table_show_the_surplus(tmp_path, cli_run):
    out = tmp_path / "res"
    args = ["run", "--quiet", "--data", "synthetic", "--arch", "test_resnet", "--epochs", "1", "--batch-size", "16",
            "--device", "cpu", "--out", str(out), "--checkpoint-every-s", "0", "--prune", "l1-filter",
            "--teacher-epochs", "1",  # a teacher-only flag: scratch (no teacher) is given none of it
            "--method", "scratch,kd+self-distill,fd+self-distill"]
    code, _, err = cli_run(args)
    assert code == 0, err
    code, text, err = cli_run(["table", str(out), "--kind", "kd", "--format", "csv"])
    assert code == 0, err
    assert "Surplus" in text
    results = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in out.glob("*/result.json")}
    sc, sd = results["ce+scratch"]["final"], results["kd+self-distill"]["final"]
    surplus = 100 * ((sd["top1"] - sc["top1"]) - (sd["unpruned_top1"] - sc["unpruned_top1"]))
    assert f"{surplus:.2f}" in text.replace("−", "-")


def test_step_schedule_train_pass_and_relative_finetune_lr(make_cfg, run_cfg):
    """rethinking-network-pruning's CIFAR recipe: LR x0.1 at 50% and 75% of the train pass; the
    fine-tune LR may be given relative to --lr (0.01 x 0.1 = Park et al.'s 0.001)."""
    cfg = make_cfg("scratch", plugin={"prune_ratio": 0.5, "finetune_lr": "0.01", "finetune_lr_relative": "true"},
                   epochs=4, lr=0.1, lr_schedule="step", warmup_epochs=0)
    r = run_cfg(cfg)
    assert _lrs(cfg, "train") == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert _lrs(cfg, "finetune") == pytest.approx([0.001])
    assert r["passes"][0]["lr"]["milestones"] == [0.5, 0.75] and r["passes"][0]["lr"]["gamma"] == 0.1
    assert r["kd_pruning"]["finetune"]["lr"] == pytest.approx(0.001)
