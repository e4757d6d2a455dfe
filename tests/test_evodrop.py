"""Evolutional dropout: unbiasedness, energy-dependent keep rates, hook placement, runs under regimes."""
from __future__ import annotations

import subprocess

import pytest
import timm
import torch

from kebench.errors import UserError
from methods import evodrop
from methods.evodrop import EvolutionalDropout, attach, draws, sampling_probs, stage_names

REPEATS = 20_000


def _rows():
    """8 examples x 6 units with very different energies (unit 4 is zero on the whole batch)."""
    gen = torch.Generator().manual_seed(0)
    unit_scale = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.0, 6.0])
    return torch.rand(8, 6, generator=gen).add(0.5) * unit_scale


def test_sampling_probs_follow_second_order_statistics():
    x = _rows()
    p = sampling_probs(x)
    expected = x.pow(2).mean(0).sqrt()
    assert torch.allclose(p, expected / expected.sum())
    assert p[4] == 0 and torch.isclose(p.sum(), torch.tensor(1.0))
    # Conv maps: one probability per channel, pooled over batch and positions.
    maps = torch.randn(4, 3, 5, 5)
    assert torch.allclose(sampling_probs(maps), maps.pow(2).mean((0, 2, 3)).sqrt() / maps.pow(2).mean((0, 2, 3)).sqrt().sum())


@pytest.mark.parametrize("mode", ["evo", "plain"])
def test_expected_activation_is_kept(mode):
    torch.manual_seed(0)
    x = _rows()
    drop = EvolutionalDropout(0.5, mode).train()
    # Tiling the batch leaves the batch statistics (hence p) unchanged and gives REPEATS masks per row.
    out = drop(x.repeat(REPEATS, 1)).view(REPEATS, *x.shape)
    mean = out.mean(0)
    if mode == "evo":
        p, k = sampling_probs(x), draws(x.shape[1], 0.5)
        var_scale = torch.where(p > 0, (1 - p) / (k * p.clamp_min(1e-12)), torch.zeros_like(p))
    else:
        var_scale = torch.full((x.shape[1],), (1 - 0.5) / 0.5)
    sigma = (x.pow(2) * var_scale / REPEATS).sqrt()  # std of the Monte-Carlo mean
    assert ((mean - x).abs() <= 5 * sigma + 1e-6).all(), (mean - x).abs().max()
    assert torch.equal(out[:, :, 4], torch.zeros(REPEATS, 8))  # a dead unit stays 0, never NaN
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("chunk", [evodrop.DRAWS_PER_CHUNK, 7])
def test_high_energy_units_are_dropped_less_often(chunk, monkeypatch):
    monkeypatch.setattr(evodrop, "DRAWS_PER_CHUNK", chunk)  # 7: the draws come in many small chunks
    torch.manual_seed(1)
    x = _rows()
    out = EvolutionalDropout(0.5, "evo").train()(x.repeat(REPEATS, 1))
    dropped = (out == 0).float().mean(0)  # per unit, over all examples and repeats
    p, k = sampling_probs(x), draws(x.shape[1], 0.5)
    assert torch.allclose(dropped, (1 - p) ** k, atol=0.01)  # P(never drawn in k draws)
    live = [0, 1, 2, 3, 5]
    order = torch.argsort(p[live])
    assert torch.all(dropped[live][order].diff() < 0)  # more energy -> dropped less often
    # Plain dropout at the same rate drops every unit alike.
    plain = (EvolutionalDropout(0.5, "plain").train()(x.repeat(REPEATS, 1)) == 0).float().mean(0)
    assert torch.allclose(plain[live], torch.full((5,), 0.5), atol=0.01)


@pytest.mark.parametrize("keep_rate", [0.5, 0.8])
def test_equal_energies_give_plain_dropouts_noise_at_the_same_rate(keep_rate):
    torch.manual_seed(3)
    x = torch.ones(REPEATS, 16)
    evo = EvolutionalDropout(keep_rate, "evo").train()(x)
    plain = EvolutionalDropout(keep_rate, "plain").train()(x)
    expected = (1 - keep_rate) / keep_rate
    assert abs(evo.var().item() - expected) < 0.05 * expected
    assert abs(plain.var().item() - expected) < 0.05 * expected
    assert torch.equal(EvolutionalDropout(1.0, "evo").train()(x), x)  # keep_rate 1: no dropout


def test_conv_maps_get_one_mask_per_example_and_channel_and_eval_is_identity():
    torch.manual_seed(2)
    x = torch.rand(6, 4, 5, 5) + 0.1
    drop = EvolutionalDropout(0.5).train()
    ratio = drop(x) / x
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio))  # constant over positions
    assert (ratio[:, :, 0, 0] == 0).any() and (ratio[:, :, 0, 0] > 1).any()
    drop.eval()
    assert drop(x) is x


def _resnet():
    return timm.create_model("test_resnet", num_classes=4, in_chans=3)


def test_attach_places_dropout_after_stages_and_before_head_without_touching_weights():
    model = _resnet()
    reference = _resnet()
    reference.load_state_dict(model.state_dict())
    keys = set(model.state_dict())
    targets = attach(model, "stages,head", 0.5, "evo")
    assert targets == [("layer1", "output"), ("layer2", "output"), ("layer3", "output"),
                       ("layer4", "output"), ("fc", "input")]
    assert set(model.state_dict()) == keys and len(model.evodrop) == 5
    x = torch.randn(4, 3, 16, 16)
    model.eval(), reference.eval()
    assert torch.equal(model(x), reference(x))  # identity in eval mode
    # Train mode: the hooks fire (BN in eval so only dropout differs), and deepcopies keep them.
    model.train(), reference.train()
    for m in (model, reference):
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.eval()
    assert not torch.allclose(model(x), reference(x))
    copy = __import__("copy").deepcopy(model)
    seen = []
    copy.evodrop["input_fc"].register_forward_hook(lambda m, a, o: seen.append(1))
    copy(x)
    assert seen == [1]


def test_stage_discovery_for_other_families():
    from kebench.nets.models import GoogLeNet

    assert stage_names(timm.create_model("test_convnext", num_classes=3)) == ["stages.0", "stages.1", "stages.2", "stages.3"]
    assert stage_names(GoogLeNet(num_classes=3)) == ["inception3b", "inception4e", "inception5b"]


def test_bad_settings_are_user_errors(make_cfg):
    with pytest.raises(UserError, match="Unknown evodrop layer 'layer9'"):
        attach(_resnet(), "layer9", 0.5, "evo")
    with pytest.raises(UserError, match="keep-rate must be in \\(0, 1\\]"):
        from kebench.run.engine import Run

        Run(make_cfg("evodrop", plugin={"keep_rate": "1.5"}), show_progress=False)
    with pytest.raises(UserError, match="evodrop: --mode must be one of evo, plain, got 'gauss'"):
        from kebench.run.engine import Run

        Run(make_cfg("evodrop", plugin={"mode": "gauss"}), show_progress=False)


def test_runs_under_single_with_plain_mode_as_the_comparison(make_cfg, run_cfg):
    cfg = make_cfg("evodrop", plugin={"mode": "plain", "at": "layer4,head"})
    assert cfg.params["evodrop"]["mode"] == "plain" and cfg.params["evodrop"]["keep_rate"] == 0.9
    result = run_cfg(cfg)
    assert result["status"] == "complete" and result["regime"] == "single"
    assert 0 <= result["final"]["top1"] <= 1
    assert make_cfg("dropout").params["dropout"]["mode"] == "plain"  # the registry's comparison row


def _has_ke():
    out = subprocess.run(["git", "ls-files", "methods/ke.py"], capture_output=True, text=True,
                         cwd=__import__("pathlib").Path(__file__).parent.parent)
    return bool(out.stdout.strip())


@pytest.mark.skipif(not _has_ke(), reason="methods/ke.py has not landed yet")
def test_composes_with_ke(make_cfg, run_cfg):
    cfg = make_cfg("evodrop+ke", plugin={"generations": "2"})
    result = run_cfg(cfg)
    assert result["status"] == "complete" and result["objective"] == "evodrop" and result["regime"] == "ke"
    assert len(result["passes"]) == 2
