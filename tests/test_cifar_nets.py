"""The CIFAR networks: parameter counts against their papers (built on the meta device: nothing is
allocated), and KELS split / slim extraction and the three prunings on the small ones."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kebench.nets import prune
from kebench.nets.channels import channel_graph
from kebench.nets.cifar import CifarDenseNet, PyramidNet
from kebench.nets.models import count_params, create_model
from kebench.nets.slim import extract_subnetwork
from kebench.nets.split import SplitMasks, kels_keep

# (arch, classes, paper's count in millions, tolerance): He et al. 2016 Table 6 (CIFAR-10), Zagoruyko &
# Komodakis 2016 Table 5, Han et al. 2017 Table 3, rethinking-network-pruning's VGG (CIFAR-10: VGG-16
# 15.0M as Li et al. 2017 Table 1, VGG-19 20.0M). DenseNet-40: the count of rethinking-network-pruning's
# model (cifar/network-slimming and cifar/weight-level build it with a 24-channel stem: 1,059,298 on
# CIFAR-10, summed from their layer list); Huang et al.'s 1.0M (16-channel stem) is checked below.
PAPER_COUNTS = [
    ("resnet20", 10, 0.27, 0.03), ("resnet32", 10, 0.46, 0.03), ("resnet56", 10, 0.85, 0.03),
    ("resnet110", 10, 1.7, 0.03), ("densenet40", 10, 1.059298, 1e-6), ("wrn28_10", 10, 36.5, 0.02),
    ("vgg16_cifar", 10, 15.0, 0.03), ("vgg19_cifar", 10, 20.0, 0.03),
    ("pyramidnet110_a48", 10, 1.7, 0.05), ("pyramidnet200_a240", 10, 26.0, 0.04),
]


@pytest.mark.parametrize("arch, classes, millions, tol", PAPER_COUNTS, ids=[a for a, *_ in PAPER_COUNTS])
def test_parameter_count_matches_the_paper(arch, classes, millions, tol):
    with torch.device("meta"):
        model = create_model(arch, classes)
    assert abs(count_params(model) / 1e6 - millions) <= tol * millions, count_params(model)


def test_resnet_shortcut_options():
    with torch.device("meta"):
        pool, a, b = (create_model("resnet56", 10, shortcut=s) for s in ("A-pool", "A", "B"))
        default = create_model("resnet56", 10)
    # the default is l1-norm-pruning's parameter-free shortcut: He et al.'s 0.85M exactly (853,018)
    assert count_params(default) == count_params(pool) == count_params(a) == 853018
    # option B adds the two 1x1 conv + BN projections (16->32, 32->64)
    assert count_params(b) - count_params(a) == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    y = create_model("resnet20", 10, shortcut="A", in_chans=1)(torch.randn(2, 1, 28, 28))
    assert y.shape == (2, 10)
    # A-pool averages each 2x2 cell where A takes its top-left pixel; the appended channels are zero
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float).reshape(2, 16, 4, 4)
    sc_pool = create_model("resnet20", 10).blocks[3].shortcut
    sc_a = create_model("resnet20", 10, shortcut="A").blocks[3].shortcut
    torch.testing.assert_close(sc_pool(x)[:, :16], F.avg_pool2d(x, 2))
    torch.testing.assert_close(sc_a(x)[:, :16], x[:, :, ::2, ::2])
    assert sc_pool(x).shape == (2, 32, 2, 2) and not sc_pool(x)[:, 16:].any()
    with pytest.raises(ValueError, match="shortcut one of"):
        create_model("resnet20", 10, shortcut="C")


def test_densenet_stem_and_vgg_heads_follow_their_sources():
    with torch.device("meta"):
        huang = CifarDenseNet(40, 12, num_classes=10, stem=16)
        ours = create_model("densenet40", 10)
        vgg16, vgg19 = create_model("vgg16_cifar", 100), create_model("vgg19_cifar", 100)
    assert abs(count_params(huang) / 1e6 - 1.0) <= 0.03 and huang.num_features == 448
    assert ours.conv1.out_channels == 24 and ours.num_features == 456  # fd's N_ref 456 x 8 x 8
    # l1-norm-pruning's VGG-16: linear 512->512, BN, ReLU, then the classifier; network-slimming's VGG-19: one linear
    assert [type(m).__name__ for m in vgg16.hidden] == ["Linear", "BatchNorm1d", "ReLU"]
    assert vgg16.get_classifier().in_features == 512 and isinstance(vgg19.hidden, nn.Identity)
    vgg16.reset_classifier(7)
    assert vgg16.get_classifier().in_features == vgg16.head_hidden_size == 512
    wrn = create_model("wrn28_10", 10, block_drop=0.3)
    assert wrn.blocks[0].drop.p == 0.3 and isinstance(create_model("wrn28_10", 10).blocks[0].drop, nn.Identity)


def test_zero_padded_shortcuts_pin_block_outputs_and_leave_inner_convs_prunable():
    """Li et al. 2017 prune only the first conv of each block of a ResNet with parameter-free shortcuts:
    the channel graph pins the groups a zero-padding shortcut adds together, so only those are free."""
    for model in (create_model("resnet20", 7), PyramidNet(depth=8, alpha=6, num_classes=7)):
        graph = channel_graph(model, torch.randn(2, 3, 32, 32))
        free = set(prune.prunable_groups(graph, model, tied=True))
        inner = {g.id for g in graph.groups.values()
                 if len(g.producers) == 1 and g.producers[0].endswith(("conv1", "body.1"))}
        assert free == inner - {"conv1"} and len(free) == len(model.blocks)
        assert any(g.pinned and "zero-padded" in g.pinned for g in graph.groups.values())


def _trained_like(model: nn.Module) -> nn.Module:
    model = model.double().eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen, dtype=torch.double) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen, dtype=torch.double) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen, dtype=torch.double) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen, dtype=torch.double) - 0.5)
    return model


# the registered ResNet-20 (zero-padded shortcuts) and with projections; an 8-layer PyramidNet; VGG-16
# at 1/8 width and a 16-layer DenseNet (same code, seconds not minutes)
SMALL = {"resnet20": lambda: create_model("resnet20", 7),
         "resnet20_B": lambda: create_model("resnet20", 7, shortcut="B"),
         "pyramidnet": lambda: PyramidNet(depth=8, alpha=6, num_classes=7),
         "vgg16_cifar": lambda: create_model("vgg16_cifar", 7, width_mult=1 / 8),
         "densenet": lambda: CifarDenseNet(depth=16, growth=12, num_classes=7)}
X = torch.randn(2, 3, 32, 32, dtype=torch.double, generator=torch.Generator().manual_seed(1))


def _masked(model, keep, graph):
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for name, (wmask, bmask) in graph.masks(keep, masked).items():
            mod = masked.get_submodule(name)
            mod.weight.mul_(wmask)
            if bmask is not None:
                mod.bias.mul_(bmask)
    return masked


@pytest.mark.parametrize("arch", SMALL)
def test_kels_slim_and_structured_prunings(arch):
    torch.manual_seed(0)
    dense = _trained_like(SMALL[arch]())
    graph = channel_graph(dense, X)
    # KELS: the slim network computes exactly the dense one with the reset part zeroed
    slim = extract_subnetwork(dense, kels_keep(graph, 0.5), X, graph=graph)
    zeroed = copy.deepcopy(dense)
    SplitMasks.kels(dense, 0.5, graph).zero_reset(zeroed)
    with torch.no_grad():
        torch.testing.assert_close(slim(X), zeroed(X), rtol=1e-10, atol=1e-10)
    # half of every free group; zero-padded shortcuts pin the block outputs (ResNet-20: 50.3% stays)
    assert count_params(slim) < 0.55 * count_params(dense)
    # L1-filter and slimming: the pruned network equals the dense one with dropped channels zeroed
    for keep in (prune.l1_filter_keep(dense, 0.5, X, tied=True), prune.slimming_keep(dense, 0.5, X)):
        small = prune.extract_pruned(dense, keep, X).eval()
        with torch.no_grad():
            torch.testing.assert_close(small(X), _masked(dense, keep, graph)(X), rtol=1e-8, atol=1e-8)
        assert count_params(small) < count_params(dense)


@pytest.mark.parametrize("arch", SMALL)
def test_weight_magnitude_pruning(arch):
    model = SMALL[arch]()
    masks = prune.global_conv_masks(model, 0.6)
    convs = dict(prune.conv_weights(model))
    assert set(masks) == set(convs)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(p.numel() for p in convs.values())
    assert abs(kept / total - 0.4) < 1e-3
    threshold = max(float(p.detach().abs()[~masks[n]].max()) for n, p in convs.items() if (~masks[n]).any())
    assert all(float(p.detach().abs()[masks[n]].min()) >= threshold for n, p in convs.items() if masks[n].any())
