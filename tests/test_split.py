"""KELS / WELS masks, the channel graph behind them, and KE's re-initialisation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kebench.errors import UserError
from kebench.nets.models import count_params, create_model
from kebench.nets.channels import channel_graph
from kebench.nets.split import SplitMasks, ceil_rate
from methods.ke import mask_generator

X32 = torch.zeros(2, 3, 32, 32)


def _resnet18(num_classes=10):
    torch.manual_seed(0)
    return create_model("resnet18", num_classes)


def test_ceil_rate_is_exact_decimal():
    assert 0.07 * 100 > 7 and math.ceil(0.07 * 100) == 8  # the float product overshoots ...
    assert ceil_rate(0.07, 100) == 7  # ... the decimal one does not
    assert ceil_rate(0.7, 10) == 7 and ceil_rate(0.3, 10) == 3
    # where the official code's float ceil(rate * width) is already exact, both agree
    for rate in (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9):
        assert all(ceil_rate(rate, n) == math.ceil(rate * n) for n in range(1, 2049)), rate
    assert ceil_rate(0.8, 64) == 52 and ceil_rate(0.5, 64) == 32 and ceil_rate(0.5, 3) == 2
    assert ceil_rate(0.01, 5) == 1  # never an empty group


@pytest.mark.parametrize("rate", [0.5, 0.7])
def test_kels_masks_follow_first_ceil_rule(rate):
    """Every conv: fit = first ceil(s_r*C_i) kernels of the first ceil(s_r*C_o) filters; the first
    conv keeps all RGB inputs; the classifier keeps all outputs and the first ceil(s_r*C_in) inputs."""
    model = _resnet18()
    split = SplitMasks.kels(model, rate, channel_graph(model, X32))
    checked = 0
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        out_c, in_c = m.weight.shape[:2]
        ko = out_c if name == "fc" else math.ceil(rate * out_c - 1e-9)
        ki = in_c if name == "conv1" else math.ceil(rate * in_c - 1e-9)
        expected = torch.zeros(m.weight.shape, dtype=torch.bool)
        expected[:ko, :ki] = True
        assert torch.equal(split.weight_mask(name), expected), name
        checked += 1
    assert checked == 21  # 20 convs (incl. 3 downsample) + fc
    assert split.bias_mask("fc").all()  # the classifier bias is carried over whole


def test_residual_adds_share_one_group():
    graph = channel_graph(_resnet18(), X32)
    groups = graph.groups
    # input, 4 residual streams, 8 inner block convs, the classifier
    assert len(groups) == 14
    assert groups["conv1"].producers == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    assert set(groups["layer2.0.conv2"].producers) == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"}
    assert {g for g, v in groups.items() if v.pinned} == {"input", "fc"}
    assert groups["fc"].pinned == "network output" and groups["input"].pinned == "network input"
    assert groups["layer1.0.conv1"].size == 64 and groups["layer1.0.conv1"].norms == ["layer1.0.bn1"]


def test_concatenation_yields_per_segment_masks():
    """DenseNet: a layer reading cat(stem 64, dense layer 32) keeps the first half of each segment."""
    torch.manual_seed(0)
    model = create_model("densenet121", 5)
    graph = channel_graph(model, X32)
    split = SplitMasks.kels(model, 0.5, graph)
    conv = "features.denseblock1.denselayer2.conv1"
    cols = split.weight_mask(conv)[0, :, 0, 0]
    assert cols.shape == (96,)
    assert cols.nonzero().flatten().tolist() == list(range(0, 32)) + list(range(64, 80))
    assert not split.weight_mask(conv)[64:, :, 0, 0].any()  # 128 filters -> first 64 are fit
    layer = graph.layers[conv]
    assert layer.in_group[0] == "features.conv0" and layer.in_group[64] == "features.denseblock1.denselayer1.conv2"
    pos, idx = graph.positions("features.denseblock1.denselayer2.norm1", "features.denseblock1.denselayer1.conv2")
    assert pos.tolist() == list(range(64, 96)) and idx.tolist() == list(range(32))
    # the classifier reads the final concatenation through norm5: per-segment, all 5 outputs
    fc = split.weight_mask("classifier")
    assert fc.shape == (5, 1024) and fc.all(0).sum() == sum(ceil_rate(0.5, g.size) for g in map(
        graph.groups.get, dict.fromkeys(graph.layers["classifier"].in_group)))


@pytest.mark.parametrize("arch,kwargs,op", [("test_vit", {"img_size": 32}, "permute"),
                                            ("resnext26ts", {}, "grouped convolution")])
def test_unsupported_models_raise_clear_error(arch, kwargs, op):
    model = create_model(arch, 5, **kwargs)
    with pytest.raises(UserError) as exc:
        channel_graph(model, X32)
    assert op in str(exc.value) and "--split wels" in str(exc.value)


def test_wels_keeps_rate_and_is_reproducible():
    model = _resnet18()
    a = SplitMasks.wels(model, 0.7, mask_generator(0, 1))
    b = SplitMasks.wels(model, 0.7, mask_generator(0, 1))
    for name in a.layer_names:
        m = a.weight_mask(name)
        assert torch.equal(m, b.weight_mask(name))
        if m.numel() >= 10_000:
            assert abs(m.float().mean().item() - 0.7) < 0.02, name
        assert a.bias_mask(name) is None  # WELS masks weights only; biases carry over
    assert abs(a.fit_fraction() - 0.7) < 0.001
    before = {n: a.weight_mask(n).clone() for n in a.layer_names}
    a.redraw(mask_generator(0, 2))  # WELS-Rand
    b.redraw(mask_generator(0, 2))
    changed = sum(int((a.weight_mask(n) != before[n]).sum()) for n in a.layer_names)
    assert changed > 0.3 * sum(m.numel() for m in before.values())  # 2*0.7*0.3 = 42% flip on average
    assert all(torch.equal(a.weight_mask(n), b.weight_mask(n)) for n in a.layer_names)


@pytest.mark.parametrize("kind", ["kels", "wels"])
def test_reinitialize_changes_only_reset_weights(kind):
    torch.manual_seed(1)
    model = create_model("test_resnet", 5)
    with torch.no_grad():  # a "trained" state: weights far outside the init range, real BN statistics
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 3)
        for b in model.buffers():
            if b.is_floating_point():
                b.uniform_(0.5, 2.0)
    split = (SplitMasks.kels(model, 0.5, channel_graph(model, X32)) if kind == "kels"
             else SplitMasks.wels(model, 0.5, mask_generator(0, 1)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    split.reinitialize(model)
    after = model.state_dict()
    masked = {f"{n}.weight" for n in split.layer_names}
    for key, old in before.items():
        new = after[key]
        if key in masked:
            name = key[: -len(".weight")]
            fit = split.weight_mask(name)
            assert torch.equal(new[fit], old[fit]), key
            assert (new[~fit] != old[~fit]).all(), key
            bound = 1 / math.sqrt(old[0].numel())  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), +)
            assert new[~fit].abs().max() <= bound + 1e-6, key
        else:  # BN parameters and running statistics, the classifier bias
            assert torch.equal(new, old), key
    # the draw comes from torch's global RNG: same seed, same re-initialisation
    again = {k: v.clone() for k, v in before.items()}
    model.load_state_dict(again)
    torch.manual_seed(7)
    split.reinitialize(model)
    assert all(torch.equal(model.state_dict()[k], after[k]) for k in after)


def test_masks_are_buffers_not_parameters():
    model = _resnet18()
    n = count_params(model)
    keys = set(model.state_dict())
    split = SplitMasks.kels(model, 0.5, channel_graph(model, X32))
    assert list(split.parameters()) == []
    assert count_params(model) == n and set(model.state_dict()) == keys  # the model itself is untouched
    state = split.state_dict()
    assert len(state) == 21 + 1 and all(v.dtype == torch.bool for v in state.values())  # 21 weights + fc bias
    fresh = SplitMasks.kels(model, 0.5, channel_graph(model, X32))
    with torch.no_grad():
        for v in fresh.buffers():
            v.zero_()
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.weight_mask(k), split.weight_mask(k)) for k in split.layer_names)


def test_hypothesis_stats_and_zero_reset():
    model = _resnet18()
    split = SplitMasks.kels(model, 0.5, channel_graph(model, X32))
    stats = split.stats(model)
    assert set(stats["layers"]) == set(split.layer_names)
    assert stats["fit_abs_mean"] > 0 and stats["reset_abs_mean"] > 0
    split.zero_reset(model)
    stats = split.stats(model)
    assert stats["reset_abs_mean"] == 0 and all(v["reset"] in (0, None) for v in stats["layers"].values())
    w = model.conv1.weight
    assert stats["layers"]["conv1"]["fit"] == pytest.approx(w[:32].abs().mean().item())
    assert stats["layers"]["conv1"]["reset"] == 0
