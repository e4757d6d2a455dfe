"""The CIFAR networks of Park, Yoo and Kwak's KD x pruning / augmentation studies and of the CIFAR
pruning literature they build on, registered in timm's model registry (`--arch resnet56`). Each
default follows the code behind the published numbers (docs/fidelity.md names the repository and
file of every fact):

- resnet20/32/56/110: He et al. 2016 (Sec. 4.2), 3x3 stem of 16, three stages of (depth-2)/6 basic
  blocks at 16/32/64 channels, global pooling, linear head. `shortcut="A-pool"` (default): where the
  shape changes, 2x2 average pooling and zero channels appended, no parameters, as the ResNet of
  rethinking-network-pruning's cifar/l1-norm-pruning (the ResNet-56/110 Park et al. prune);
  `shortcut="A"`: He et al.'s option A (every other pixel, zero channels); `shortcut="B"`: a 1x1
  conv + BN projection (bearpaw's pytorch-classification, rethinking's cifar/weight-level).
- vgg16_cifar / vgg19_cifar: VGG with BatchNorm for 32 px inputs: 3x3 conv-BN-ReLU stacks (no conv
  bias), 4 max-pools (the 5th dropped), the 2x2 map averaged. VGG-16 is cifar/l1-norm-pruning's, with
  a hidden head layer (linear 512-512, BN, ReLU, then the classifier); VGG-19 is
  cifar/network-slimming's, one linear layer on 512 features. BN gamma starts at 0.5, linear layers
  N(0, 0.01) with zero bias.
- densenet40: Huang et al. 2017 DenseNet (not BC), depth 40, growth 12, three dense blocks of 12
  BN-ReLU-conv3x3 layers, transitions BN-ReLU-conv1x1 without compression + 2x2 average pooling, and
  a stem of 2 x growth = 24 channels as both of rethinking-network-pruning's DenseNets (456 features
  at the head); `stem=16` gives Huang et al.'s non-BC stem (448 features).
- wrn28_10: Zagoruyko & Komodakis 2016 WRN-28-10, pre-activation basic blocks at 160/320/640;
  `block_drop` is their dropout between the two convs of a block (0 by default; 0.3 in their
  dropout rows).
- pyramidnet110_a48 / pyramidnet200_a240: Han et al. 2017 PyramidNet as dyhan0920/PyramidNet-PyTorch
  (and clovaai/CutMix-PyTorch's copy) builds it: additive widening, BN-first basic / bottleneck
  blocks without a final ReLU, zero-padded identity shortcuts with 2x2 average pooling where the size
  halves, stem conv-BN without ReLU, a final BN-ReLU before pooling.

All take timm's `num_classes`, `in_chans`, `drop_rate` and expose timm's head interface.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from kebench.nets.archs import TimmHead, timm_kwargs


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _init(model: nn.Module) -> None:
    """Convs N(0, 2 / (k*k*out)), BN 1 / 0, linear layers as nn.Linear draws them: the reference
    ResNet, DenseNet and PyramidNet codes' initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _Net(TimmHead, nn.Module):
    """Shared tail: global average pooling, dropout, linear classifier on `num_features`."""

    def _head(self, features: int, num_classes: int, drop_rate: float) -> None:
        self.num_features = features
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(features, num_classes) if num_classes else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)


class PadShortcut(nn.Module):
    """A parameter-free shortcut: subsample by `stride` (every other pixel, or 2x2 average pooling)
    and append zero channels up to `cout` (He et al.'s option A; l1-norm-pruning's ResNet; PyramidNet)."""

    def __init__(self, cin: int, cout: int, stride: int, pool: bool = False):
        super().__init__()
        self.extra, self.stride, self.pool = cout - cin, stride, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, 2, ceil_mode=True) if self.pool else x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


# ---------------------------------------------------------------------------- ResNet (He et al. 2016)
SHORTCUTS = ("A-pool", "A", "B")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1, self.bn1 = _conv3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3(cout, cout), nn.BatchNorm2d(cout)
        if stride == 1 and cin == cout:
            self.shortcut = nn.Identity()
        elif shortcut in ("A", "A-pool"):
            self.shortcut = PadShortcut(cin, cout, stride, pool=shortcut == "A-pool")
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(_Net):
    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, shortcut: str = "A-pool",
                 drop_rate: float = 0.0, widths=(16, 32, 64), **_):
        super().__init__()
        if (depth - 2) % 6 or shortcut not in SHORTCUTS:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 and shortcut one of {SHORTCUTS}, got {depth}, {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1, self.bn1 = _conv3(in_chans, widths[0]), nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(n):
                blocks.append(BasicBlock(cin, width, 2 if stage and not i else 1, shortcut))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self._head(cin, num_classes, drop_rate)
        _init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(torch.relu(self.bn1(self.conv1(x))))


# ---------------------------------------------------------------------------- VGG for CIFAR
VGG_CIFAR = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


#: width of the hidden head layer: l1-norm-pruning's VGG-16 has one, network-slimming's VGG-19 none
VGG_HIDDEN = {16: 512, 19: 0}


class CifarVGG(_Net):
    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0,
                 width_mult: float = 1.0, hidden: int | None = None, **_):
        super().__init__()
        layers, cin = [], in_chans
        for v in VGG_CIFAR[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                v = max(1, round(v * width_mult))
                layers += [_conv3(cin, v), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        hidden = max(1, round(VGG_HIDDEN[depth] * width_mult)) if hidden is None and VGG_HIDDEN[depth] else hidden
        self.hidden = nn.Sequential(nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)) \
            if hidden else nn.Identity()
        self._head(cin, num_classes, drop_rate)
        if hidden:
            self.head_hidden_size = hidden
            self.reset_classifier(num_classes)
        _init(self)
        for m in self.modules():  # rethinking-network-pruning: BN2d gamma 0.5, linear N(0, 0.01), bias 0
            if isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # a 2x2 map at 32 px: the head's global average = their AvgPool2d(2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.hidden(x.mean((2, 3))))
        return x if pre_logits else self.fc(x)


# ---------------------------------------------------------------------------- DenseNet-40
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), _conv3(cin, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(torch.relu(self.bn(x)))], 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(torch.relu(self.bn(x))), 2)


class CifarDenseNet(_Net):
    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, stem: int | None = None, **_):
        super().__init__()
        n = (depth - 4) // 3
        cin = stem or 2 * growth  # rethinking-network-pruning's DenseNets: 2 x growth; Huang et al.'s non-BC: 16
        self.conv1 = _conv3(in_chans, cin)
        stages = []
        for stage in range(3):
            for _ in range(n):
                stages.append(DenseLayer(cin, growth))
                cin += growth
            if stage < 2:
                stages.append(Transition(cin, cin))
        self.blocks = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        self._head(cin, num_classes, drop_rate)
        _init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.blocks(self.conv1(x))))


# ---------------------------------------------------------------------------- Wide ResNet
class WideBlock(nn.Module):
    """Pre-activation: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus x (or a 1x1 conv of the
    activated x)."""

    def __init__(self, cin: int, cout: int, stride: int, block_drop: float = 0.0):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3(cout, cout)
        self.drop = nn.Dropout(block_drop) if block_drop else nn.Identity()
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(x))
        out = self.conv2(self.drop(torch.relu(self.bn2(self.conv1(a)))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(_Net):
    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, block_drop: float = 0.0, **_):
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = _conv3(in_chans, 16)
        blocks, cin = [], 16
        for stage, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for i in range(n):
                blocks.append(WideBlock(cin, width, 2 if stage and not i else 1, block_drop))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self._head(cin, num_classes, drop_rate)
        _init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.blocks(self.conv1(x))))


# ---------------------------------------------------------------------------- PyramidNet
class PyramidBlock(nn.Module):
    """BN-conv-BN-ReLU-conv-BN (basic) or BN-1x1-BN-ReLU-3x3-BN-ReLU-1x1(x4)-BN (bottleneck), plus
    the zero-padded identity."""

    def __init__(self, cin: int, width: int, stride: int, bottleneck: bool):
        super().__init__()
        cout = width * (4 if bottleneck else 1)
        if bottleneck:
            self.body = nn.Sequential(
                nn.BatchNorm2d(cin), nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                _conv3(width, width, stride), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        else:
            self.body = nn.Sequential(nn.BatchNorm2d(cin), _conv3(cin, width, stride), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True), _conv3(width, width), nn.BatchNorm2d(width))
        self.shortcut = PadShortcut(cin, cout, stride, pool=True)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class PyramidNet(_Net):
    def __init__(self, depth: int = 110, alpha: int = 48, bottleneck: bool = False, num_classes: int = 10,
                 in_chans: int = 3, drop_rate: float = 0.0, **_):
        super().__init__()
        n = (depth - 2) // (9 if bottleneck else 6)
        step = alpha / (3 * n)
        self.conv1, self.bn1 = _conv3(in_chans, 16), nn.BatchNorm2d(16)
        blocks, cin, width = [], 16, 16.0
        for stage in range(3):
            for i in range(n):
                width += step
                block = PyramidBlock(cin, int(round(width)), 2 if stage and not i else 1, bottleneck)
                blocks.append(block)
                cin = block.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self._head(cin, num_classes, drop_rate)
        _init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.blocks(self.bn1(self.conv1(x)))))


# ---------------------------------------------------------------------------- registry
def _resnet(depth):
    def build(pretrained: bool = False, **kwargs) -> CifarResNet:
        return CifarResNet(depth, **timm_kwargs(kwargs))
    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} for CIFAR (He et al. 2016, 16/32/64 channels; avg-pool + zero-pad shortcut)."
    return build


resnet20, resnet32, resnet56, resnet110 = (register_model(_resnet(d)) for d in (20, 32, 56, 110))


@register_model
def vgg16_cifar(pretrained: bool = False, **kwargs) -> CifarVGG:
    """VGG-16 with BN for CIFAR, hidden head layer (rethinking-network-pruning cifar/l1-norm-pruning)."""
    return CifarVGG(16, **timm_kwargs(kwargs))


@register_model
def vgg19_cifar(pretrained: bool = False, **kwargs) -> CifarVGG:
    """VGG-19 with BN for CIFAR, one linear layer (rethinking-network-pruning cifar/network-slimming)."""
    return CifarVGG(19, **timm_kwargs(kwargs))


@register_model
def densenet40(pretrained: bool = False, **kwargs) -> CifarDenseNet:
    """DenseNet-40, growth 12, 24-channel stem (Huang et al. 2017; rethinking-network-pruning's)."""
    return CifarDenseNet(40, 12, **timm_kwargs(kwargs))


@register_model
def wrn28_10(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-28-10 (Zagoruyko & Komodakis 2016)."""
    return WideResNet(28, 10, **timm_kwargs(kwargs))


@register_model
def pyramidnet110_a48(pretrained: bool = False, **kwargs) -> PyramidNet:
    """PyramidNet-110, alpha 48, basic blocks (Han et al. 2017)."""
    return PyramidNet(110, 48, False, **timm_kwargs(kwargs))


@register_model
def pyramidnet200_a240(pretrained: bool = False, **kwargs) -> PyramidNet:
    """PyramidNet-200, alpha 240, bottleneck blocks (Han et al. 2017; the CutMix / AutoAugment CIFAR net)."""
    return PyramidNet(200, 240, True, **timm_kwargs(kwargs))
