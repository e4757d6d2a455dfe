"""kebench's own architectures, registered in timm's model registry so that `--arch NAME` works
everywhere a timm name does (`kebench list archs` shows them):

- sepnet_r / sepnet_b: SEP-Nets (Li, Wang, Lv, Yang, "SEP-Nets: Small and Effective Pattern
  Networks", 2017), small networks built from pattern (3 x 3) and transform (1 x 1) convolutions;
  -B computes every 3 x 3 filter as its binary sign pattern (kebench.nets.pattern.BinaryConv2d).
- evonet: the genome-built network family of the architecture searches (kebench.nets.genome).
- resnet18_tiny: timm's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 64 px
  Tiny-ImageNet: its four stages then see 64/32/16/8 px maps, about the 56/28/14/7 px that
  ResNet-18 sees on 224 px ImageNet (timm's own stem would leave 16 px after the stem, 2 px at the end).
"""
from __future__ import annotations

import torch
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from kebench.nets.pattern import BinaryConv2d

#: SEP-Net stages: (output channels, SEP modules, stride of the first), after a 3x3 stride-2 stem of 32.
#: The talk gives each network's size, not its layer table; these widths match the sizes it gives,
#: with a 1000-class head: SEP-Net-R 1.30 M parameters / 5.21 MB (talk: 1.3 M, 5.2 MB) and SEP-Net-B
#: 1.11 M parameters (talk: 1.1 M), narrower in its last two stages. SEP-Net-B's size, with every
#: 3x3 pattern weight at 1 bit, is 2.54 MB against the talk's 4.2 MB: 4.2 MB at 1.1 M parameters leaves
#: room for only ~52 k one-bit weights, so the talk's SEP-Net-B binarizes far fewer weights than all
#: of its 3x3 convolutions; which ones is not given (docs/fidelity.md).
SEPNET_STAGES = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (300, 1, 2))
SEPNET_B_STAGES = ((64, 1, 1), (128, 2, 2), (240, 2, 2), (256, 1, 2))
SEPNET_STEM = 32
#: The SEP module's inner width: a 1x1 "squeeze" to out/REDUCE channels before the pattern residual block.
SEPNET_REDUCE = 2


def _conv_bn(cin: int, cout: int, k: int, stride: int, binary: bool = False) -> nn.Sequential:
    conv = (BinaryConv2d if binary and k > 1 else nn.Conv2d)(cin, cout, k, stride, k // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


class PatternResidualBlock(nn.Module):
    """relu(BN(3x3 pattern conv(x)) + BN(1x1 transform conv(x))): the 1x1 path adds transformed
    feature maps to the pattern feature maps (SEP-Nets Sec. 4)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, binary: bool = False):
        super().__init__()
        self.pattern = _conv_bn(cin, cout, 3, stride, binary)
        self.transform = _conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pattern(x) + self.transform(x))


class SEPModule(nn.Module):
    """1x1 squeeze -> pattern residual block -> 1x1 expand, added to the module's input (a 1x1
    projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, binary: bool = False):
        super().__init__()
        mid = max(8, cout // SEPNET_REDUCE)
        self.squeeze = nn.Sequential(*_conv_bn(cin, mid, 1, 1), nn.ReLU(inplace=True))
        self.prb = PatternResidualBlock(mid, mid, stride, binary)
        self.expand = _conv_bn(mid, cout, 1, 1)
        self.shortcut = nn.Identity() if cin == cout and stride == 1 else _conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.expand(self.prb(self.squeeze(x))) + self.shortcut(x))


class TimmHead:
    """timm's classifier interface for kebench's own nets (`fc` on `num_features`, or on
    `head_hidden_size` where a hidden head layer precedes it), so objectives that replace the head
    (cosine, embedding) treat them like any timm model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, *_) -> None:
        width = getattr(self, "head_hidden_size", None) or self.num_features
        self.fc = nn.Linear(width, num_classes) if num_classes else nn.Identity()


class SEPNet(TimmHead, nn.Module):
    """A 3x3 stem, SEP modules in four stages, global average pooling and a linear classifier."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, binary: bool = False, drop_rate: float = 0.0,
                 stages=SEPNET_STAGES, stem: int = SEPNET_STEM, **_):
        super().__init__()
        # the stem stays full precision (as the binarize regime leaves it by default)
        self.stem = nn.Sequential(*_conv_bn(in_chans, stem, 3, 2), nn.ReLU(inplace=True))
        blocks, cin = [], stem
        for cout, count, stride in stages:
            for i in range(count):
                blocks.append(SEPModule(cin, cout, stride if i == 0 else 1, binary))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes) if num_classes else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)


def timm_kwargs(kwargs: dict) -> dict:
    """Drop timm's pretrained-config arguments (kebench never loads pretrained weights)."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return kwargs


@register_model
def sepnet_r(pretrained: bool = False, **kwargs) -> SEPNet:
    """SEP-Net-R: raw (full-precision) pattern and transform convolutions."""
    return SEPNet(binary=False, **timm_kwargs(kwargs))


@register_model
def sepnet_b(pretrained: bool = False, **kwargs) -> SEPNet:
    """SEP-Net-B: every 3x3 pattern filter after the stem computed and stored as its scaled sign pattern."""
    return SEPNet(binary=True, **{"stages": SEPNET_B_STAGES, **timm_kwargs(kwargs)})


@register_model
def resnet18_tiny(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-18 for 64 px inputs (Tiny-ImageNet): timm's ResNet with a 3x3 stride-1 stem of 64 and no
    max-pool. A timm ResNet of Basic blocks, so neuroevo grows it (`layers` sets the blocks per stage)."""
    kwargs = timm_kwargs(kwargs)
    model = ResNet(block=BasicBlock, layers=kwargs.pop("layers", [2, 2, 2, 2]), **kwargs)
    model.conv1 = nn.Conv2d(model.conv1.in_channels, model.conv1.out_channels, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as timm inits convs
    model.maxpool = nn.Identity()
    return model
