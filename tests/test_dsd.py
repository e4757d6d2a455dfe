"""Magnitude masks, MaskHook, DSD and KE+DSD: exact per-layer sparsity held through SGD with
momentum and weight decay, restored in the re-dense phase, one LR schedule vs restarts, resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from kebench.run.engine import Run, lr_factor
from kebench.errors import UserError
from kebench.nets.prune import MaskHook, MaskSet, magnitude_masks, prunable_weights, smallest_magnitude_mask


def _model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=4)


def _zeros_per_layer(model):
    return {n: int((p == 0).sum()) for n, p in prunable_weights(model)}


def test_smallest_magnitude_mask_is_exact_with_ties():
    w = torch.tensor([[0.0, 0.0, 0.0, 0.5], [-0.1, 2.0, 0.0, -3.0]])
    keep = smallest_magnitude_mask(w, 0.375)  # 3 of 8 dropped although 4 entries tie at 0
    assert keep.tolist() == [[False, False, False, True], [True, True, True, True]]
    keep = smallest_magnitude_mask(w, 0.625)  # 5 of 8: the four zeros, then -0.1
    assert keep.tolist() == [[False, False, False, True], [False, True, False, True]]


def test_per_layer_and_global_masks():
    model = _model()
    per = magnitude_masks(model, 0.3)
    for name, p in prunable_weights(model):
        assert int((~per[name]).sum()) == round(0.3 * p.numel())
        dropped, kept = p.detach().abs()[~per[name]], p.detach().abs()[per[name]]
        assert dropped.max() <= kept.min()  # the smallest magnitudes, per layer
    glob = magnitude_masks(model, 0.3, per_layer=False)
    total = sum(p.numel() for _, p in prunable_weights(model))
    assert sum(int((~m).sum()) for m in glob.values()) == round(0.3 * total)
    assert any(int((~glob[n]).sum()) != int((~per[n]).sum()) for n in per)  # one global threshold
    with pytest.raises(ValueError):
        magnitude_masks(model, 1.0)


def test_mask_hook_keeps_exact_zeros_through_sgd_momentum_and_weight_decay():
    model = _model().train()
    masks = MaskSet(magnitude_masks(model, 0.3))
    hook = MaskHook(model, masks)
    hook.apply()
    expected = {n: round(0.3 * p.numel()) for n, p in prunable_weights(model)}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        x, y = torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        hook.before_step(model, opt)
        opt.step()
        hook.after_step(model, opt)
        for name, p in prunable_weights(model):
            assert int((p == 0).sum()) == expected[name], name
            assert (p[~masks[name]] == 0).all()
            assert (opt.state[p]["momentum_buffer"][~masks[name]] == 0).all()
    # Without the hook, momentum and weight decay revive the pruned weights at the next step.
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    name, p = prunable_weights(model)[0]
    assert int((p == 0).sum()) < expected[name]


def test_mask_set_roundtrips_through_state_dict():
    model = _model()
    masks = MaskSet(magnitude_masks(model, 0.3))
    fresh = MaskSet.ones_like(prunable_weights(model))
    fresh.load_state_dict(masks.state_dict())
    for name, m in masks.items():
        assert torch.equal(fresh[name], m) and m.dtype == torch.bool


def _run_with_snapshots(cfg):
    """Execute a run, recording the zeros per layer after each of its passes."""
    run = Run(cfg, show_progress=False)
    snapshots = []
    original = run.fit

    def spy(*args, **kwargs):
        record = original(*args, **kwargs)
        snapshots.append(_zeros_per_layer(run.model))
        return record

    run.fit = spy
    return run, run.execute(), snapshots


def test_dsd_phases_exact_sparsity_then_restored(make_cfg):
    cfg = make_cfg("dsd", epochs=2, plugin={"sparse_epochs": 4})
    run, result, snapshots = _run_with_snapshots(cfg)
    assert result["status"] == "complete"
    assert [p["kind"] for p in result["passes"]] == ["phase"] * 3
    assert [p["phase"] for p in result["passes"]] == ["dense", "sparse", "redense"]
    assert [p["epochs"] for p in result["passes"]] == [2, 4, 1]  # sparse given, redense derived 2*1/2
    sizes = {n: p.numel() for n, p in prunable_weights(run.model)}
    assert all(v == 0 for v in snapshots[0].values())
    assert snapshots[1] == {n: round(0.3 * s) for n, s in sizes.items()}  # exact, after 24 SGD steps
    assert result["passes"][1]["metrics"]["sparsity"] == pytest.approx(0.3, abs=1e-4)
    assert result["passes"][1]["layer_sparsity"] == {n: round(0.3 * s) / s for n, s in sizes.items()}
    # The re-dense phase regrows pruned weights in every layer, most layers entirely. (At 16 px the
    # deepest 3x3 convs see 1x1 maps: their off-centre taps multiply padding, get no gradient, stay 0.)
    assert all(snapshots[2][n] < snapshots[1][n] for n in sizes)
    assert sum(v == 0 for v in snapshots[2].values()) >= len(sizes) // 2
    # One cosine schedule across the three phases (2 + 4 + 1 epochs).
    rows = [json.loads(line) for line in (Path(cfg.out) / cfg.run_id() / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([cfg.lr * lr_factor(e, 1, 7, 0, "cosine") for e in range(7)])
    assert result["dsd"]["phases"] == {"dense": 2, "sparse": 4, "redense": 1}


def test_dsd_restart_schedule_anneals_each_phase_and_redenses_at_a_tenth(make_cfg, run_cfg):
    """--dsd.schedule restart (Han et al.): every phase its own cosine (and warm-up); re-dense at lr/10.
    The choice is kept in result.json (config and the dsd record)."""
    cfg = make_cfg("dsd", epochs=4, lr=0.1, warmup_epochs=1, plugin={"dsd.schedule": "restart"})
    result = run_cfg(cfg)
    rows = [json.loads(line) for line in (Path(cfg.out) / cfg.run_id() / "metrics.jsonl").read_text().splitlines()]

    def phase(peak, n):  # warm-up of n // 4 epochs (1 here, or none), then cosine to ~0
        w = n // 4
        return [peak * (e + 1) / w if e < w else peak * lr_factor(e, 1, n, w, "cosine") for e in range(n)]

    assert [r["lr"] for r in rows] == pytest.approx(phase(0.1, 4) + phase(0.1, 2) + phase(0.01, 2))
    assert [p["lr"]["peak"] for p in result["passes"]] == pytest.approx([0.1, 0.1, 0.01])
    assert result["config"]["params"]["dsd"]["schedule"] == "restart"
    assert result["dsd"]["schedule"] == "restart" and result["dsd"]["lr_schedule_epochs"] == [4, 2, 2]
    assert result["passes"][1]["metrics"]["sparsity"] == pytest.approx(0.3, abs=1e-4)
    continuous = make_cfg("dsd", epochs=4)
    assert continuous.params["dsd"]["schedule"] == "continuous"
    with pytest.raises(UserError, match="dsd: --schedule must be one of continuous, restart, got 'cyclic'"):
        make_cfg("dsd", plugin={"schedule": "cyclic"})  # refused when the config is resolved


def test_dsd_phase_lengths_and_errors(make_cfg):
    from methods.dsd import DSD

    cfg = make_cfg("dsd", epochs=200)
    assert DSD(cfg.plugin_params("dsd"), None).phase_epochs(200) == [200, 100, 100]  # the KE paper's
    assert DSD(cfg.plugin_params("dsd"), None).phase_epochs(3) == [3, 2, 2]
    with pytest.raises(UserError, match="'dense_epochs' expects an integer"):
        make_cfg("dsd", plugin={"dense_epochs": "1.5"})
    with pytest.raises(UserError, match=r"dsd: --dense-epochs must be >= 1, got 0"):
        make_cfg("dsd", plugin={"dense_epochs": "0"})
    assert DSD({**cfg.plugin_params("dsd"), "dense_epochs": "none"}, None).given[0] is None
    with pytest.raises(UserError, match=r"dsd: --prune-ratio must be in \[0, 1\), got 1.5"):
        make_cfg("dsd", plugin={"prune_ratio": 1.5})


def test_dsd_resumes_inside_the_sparse_phase(make_cfg, run_cfg, kill_run):
    cfg = make_cfg("dsd", epochs=2, checkpoint_every_s=0, plugin={"sparse_epochs": 3})
    reference = run_cfg(cfg)
    run_dir = Path(cfg.out) / cfg.run_id()
    (run_dir / "result.json").unlink()
    kill_run(cfg, after=4)  # dense: 2 saves; sparse: epoch 1, epoch 2 -> killed mid-phase
    resumed = run_cfg(cfg, resume=True)
    assert [p["metrics"] for p in resumed["passes"]] == [p["metrics"] for p in reference["passes"]]


def test_ke_dsd_alternates_dense_and_sparse_with_restarted_lr(make_cfg):
    cfg = make_cfg("ke_dsd", epochs=2, plugin={"generations": 3})
    run, result, snapshots = _run_with_snapshots(cfg)
    assert [(p["kind"], p["index"], p["phase"]) for p in result["passes"]] == [
        ("generation", 1, "dense"), ("generation", 2, "sparse"), ("generation", 3, "dense")]
    sizes = {n: p.numel() for n, p in prunable_weights(run.model)}
    assert snapshots[1] == {n: round(0.3 * s) for n, s in sizes.items()}
    assert all(snapshots[2][n] < snapshots[1][n] for n in sizes)
    rows = [json.loads(line) for line in (Path(cfg.out) / cfg.run_id() / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([cfg.lr * lr_factor(e, 1, 2, 0, "cosine") for e in (0, 1)] * 3)
