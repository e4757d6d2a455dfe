"""The physical slim network: exact equivalence with the masked dense network, reload, profile."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kebench.cli import cli
from kebench.nets.cost import forward_flops
from kebench.errors import UserError
from kebench.nets.models import count_params, create_model
from kebench.nets.slim import channel_groups, extract_subnetwork, load_slim, save_slim, slim_network
from kebench.nets.channels import channel_graph
from kebench.nets.split import SplitMasks, kels_keep


def _trained_like(model: nn.Module) -> nn.Module:
    """Double precision, eval mode, BatchNorm with non-trivial statistics and affine parameters (so a
    dropped channel really emits a non-zero BN bias in the dense network)."""
    model = model.double().eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen, dtype=torch.double) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen, dtype=torch.double) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen, dtype=torch.double) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen, dtype=torch.double) - 0.5)
    return model


ARCHS = [("resnet18", {}), ("resnet50", {}), ("densenet121", {}), ("googlenet", {}),
         # timm's VGG head is a 7x7 conv to 4096 channels; mlp_ratio shrinks it to keep the test light
         ("vgg11_bn", {"mlp_ratio": 1 / 64}), ("mobilenetv3_small_100", {})]


@pytest.mark.parametrize("arch,kwargs", ARCHS, ids=[a for a, _ in ARCHS])
def test_slim_equals_dense_with_reset_weights_zeroed(arch, kwargs):
    torch.manual_seed(0)
    dense = _trained_like(create_model(arch, 7, **kwargs))
    x = torch.randn(2, 3, 32, 32, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    graph = channel_graph(dense, x)
    slim = extract_subnetwork(dense, kels_keep(graph, 0.5), x, graph=graph)
    zeroed = copy.deepcopy(dense)
    SplitMasks.kels(dense, 0.5, graph).zero_reset(zeroed)
    with torch.no_grad():
        y_slim, y_zeroed, y_dense = slim(x), zeroed(x), dense(x)
    assert y_slim.shape == (2, 7)
    torch.testing.assert_close(y_slim, y_zeroed, rtol=1e-12, atol=1e-12)
    assert (y_dense - y_zeroed).abs().max() > 1e-3  # the reset-hypothesis did matter
    assert count_params(slim) < 0.3 * count_params(dense)  # about a quarter of the weights at s_r = 0.5
    assert not any("mask" in k for k in slim.state_dict())


def test_vgg_has_torchvision_classifier_head():
    """The KE ablation's VGG11_bn is torchvision's: Dropout(0.5) after each of the two hidden
    layers of the classifier (timm's default has none) and those layers drawn from N(0, 0.01)."""
    model = create_model("vgg11_bn", 7, mlp_ratio=1 / 64)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    order = [type(m).__name__ for m in (*model.pre_logits.children(), *model.head.children())]
    assert order[:5] == ["Conv2d", "ReLU", "Dropout", "Conv2d", "ReLU"] and order[6:8] == ["Dropout", "Linear"]
    for fc in (model.pre_logits.fc1, model.pre_logits.fc2):
        assert abs(fc.weight.std().item() - 0.01) < 0.001 and not fc.bias.any()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.train()
        assert not torch.allclose(model(x), model(x))  # dropout is active in training
        model.eval()
        assert torch.equal(model(x), model(x))


def test_arbitrary_channel_selection_matches_masks():
    """The general tool (for channel pruning): any kept indices, not only a prefix."""
    torch.manual_seed(0)
    dense = _trained_like(create_model("resnet18", 5))
    x = torch.randn(2, 3, 32, 32, dtype=torch.double)
    graph = channel_graph(dense, x)
    gen = torch.Generator().manual_seed(0)
    keep = {gid: torch.randperm(g.size, generator=gen)[: g.size // 3] for gid, g in graph.groups.items() if not g.pinned}
    small = extract_subnetwork(dense, keep, graph=graph)
    assert small.layer1[0].conv1.weight.shape == (21, 21, 3, 3)
    zeroed = copy.deepcopy(dense)
    with torch.no_grad():
        for name, (w, b) in graph.masks(keep, dense).items():
            zeroed.get_submodule(name).weight.mul_(w)
        y_small, y_zeroed = small(x), zeroed(x)
    torch.testing.assert_close(y_small, y_zeroed, rtol=1e-12, atol=1e-12)
    # the kept filters are exactly the chosen ones, in order
    k = keep["layer1.0.conv1"].sort().values
    torch.testing.assert_close(small.layer1[0].conv1.weight, dense.layer1[0].conv1.weight[k][:, keep["conv1"].sort().values])


def test_keep_is_validated():
    model = create_model("test_resnet", 5)
    x = torch.zeros(2, 3, 16, 16)
    groups = channel_groups(model, x)
    with pytest.raises(UserError, match="must keep all 5 channels"):
        extract_subnetwork(model, {"fc": torch.arange(3)}, x)
    with pytest.raises(UserError, match="does not have"):
        extract_subnetwork(model, {"nope": torch.arange(3)}, x)
    with pytest.raises(UserError, match="distinct"):
        extract_subnetwork(model, {"conv1.0": torch.tensor([0, 0, 1])}, x)
    assert groups["conv1.0"].size == 16 and groups["conv1.0"].producers == ["conv1.0"]


class _EmbeddingNet(nn.Module):
    """A retrieval model: its last Linear is an embedding, L2-normalised across channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.bn = nn.BatchNorm2d(16)
        self.emb = nn.Linear(16, 8)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1)
        return F.normalize(self.emb(x), dim=1)


def test_last_linear_keeps_all_outputs_for_an_embedding_head():
    torch.manual_seed(0)
    model = _trained_like(_EmbeddingNet())
    x = torch.randn(2, 3, 16, 16, dtype=torch.double)
    graph = channel_graph(model, x)
    assert graph.groups["emb"].pinned is not None
    slim = slim_network(model, 0.5, x)
    assert slim.emb.weight.shape == (8, 8) and slim.conv.weight.shape == (8, 3, 3, 3)
    zeroed = copy.deepcopy(model)
    SplitMasks.kels(model, 0.5, graph).zero_reset(zeroed)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), zeroed(x), rtol=1e-12, atol=1e-12)


def test_saved_slim_reloads_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = create_model("googlenet", 4).eval()
    x = torch.randn(2, 3, 32, 32)
    slim = slim_network(model, 0.5, x)
    save_slim(slim, tmp_path / "slim.pt")
    torch.save(x, tmp_path / "x.pt")
    code = ("import torch; m = torch.load('slim.pt', weights_only=False).eval(); "
            "torch.save(m(torch.load('x.pt')).detach(), 'y.pt')")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    with torch.no_grad():
        expected = slim.eval()(x)
        # another process may run another thread count (other kernel partitions): equal up to round-off
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(load_slim(tmp_path / "slim.pt").eval()(x), expected, rtol=0, atol=0)


def test_profile_json_is_exactly_the_documented_object():
    result = CliRunner().invoke(cli, ["profile", "--arch", "resnet18", "--num-classes", "10", "--split", "kels",
                                      "--split-rate", "0.5", "--resolution", "32", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"dense", "slim"} and all(set(v) == {"params", "flops", "layers"} for v in data.values())
    dense, slim = data["dense"], data["slim"]
    model = create_model("resnet18", 10)
    assert dense["params"] == count_params(model)
    assert dense["flops"] == forward_flops(model, (1, 3, 32, 32))
    assert dense["layers"]["conv1"] == [64, 3, 7, 7] and slim["layers"]["conv1"] == [32, 3, 7, 7]
    assert dense["layers"]["bn1"] == [64] and slim["layers"]["bn1"] == [32]
    assert dense["layers"]["fc"] == [10, 512] and slim["layers"]["fc"] == [10, 256]
    assert slim["layers"]["layer4.1.conv2"] == [256, 256, 3, 3]
    assert set(dense["layers"]) == set(slim["layers"]) and len(dense["layers"]) == 41
    # params = conv/linear weights + BN weight and bias + the classifier bias
    weights = sum(torch.Size(s).numel() for n, s in slim["layers"].items() if len(s) > 1)
    assert slim["params"] == weights + sum(2 * s[0] for s in slim["layers"].values() if len(s) == 1) + 10
    assert 0.2 < slim["flops"] / dense["flops"] < 0.3


def test_profile_table_shows_latency_and_refuses_wels(monkeypatch):
    import kebench.nets.slim

    monkeypatch.setattr(kebench.nets.slim, "LATENCY_ITERS", 2)
    result = CliRunner().invoke(cli, ["profile", "--arch", "test_resnet", "--num-classes", "3",
                                      "--resolution", "16", "--device", "cpu"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "latency ms" in result.output and "params" in result.output and "layer4.0.conv2" in result.output
    result = CliRunner().invoke(cli, ["profile", "--arch", "test_resnet", "--split", "wels"])
    assert isinstance(result.exception, UserError) and "only KELS" in str(result.exception)
