"""Model construction: timm for everything it has, and the networks extension point besides:
torchvision's GoogLeNet (no aux heads), and what registry.yaml's `networks:` and the `kebench.networks`
entry points contribute (a function (num_classes, in_chans, **kwargs) -> nn.Module, e.g. SEP-Net,
evonet), imported only when its name is used."""
from __future__ import annotations

import fnmatch

import timm
import timm.models.densenet
import torch
import torchvision
from torch import nn
from torchvision.models.googlenet import Inception

from kebench import registry
from kebench.errors import UserError, unknown_choice


class GoogLeNet(torchvision.models.GoogLeNet):
    """torchvision's GoogLeNet with timm's head interface, so every arch looks alike to kebench."""

    def __init__(self, num_classes: int, in_chans: int = 3):
        super().__init__(num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=True)
        if in_chans != 3:
            self.conv1.conv = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.num_features = self.fc.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
                     "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d",
                     "inception4e", "maxpool4", "inception5a", "inception5b"):
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


class GoogLeNet5x5(GoogLeNet):
    """GoogLeNet with the original's inception blocks (Szegedy et al. 2015, Table 1): the third branch
    ends in a 5x5 conv, where torchvision's has a 3x3 (kept there for its pretrained weights). The
    network of the SEP-Nets talk's 27.96 -> 17.62 MB; unlike the original it keeps torchvision's batch
    norm (the original: conv biases and local response normalisation) and has no auxiliary heads."""

    def __init__(self, num_classes: int, in_chans: int = 3):
        super().__init__(num_classes=num_classes, in_chans=in_chans)
        for block in self.modules():
            if isinstance(block, Inception):
                old = block.branch3[1].conv
                block.branch3[1].conv = nn.Conv2d(old.in_channels, old.out_channels, 5, padding=2, bias=False)
                nn.init.trunc_normal_(block.branch3[1].conv.weight, std=0.01, a=-2, b=2)  # torchvision's init


TORCHVISION_ARCHS = {"googlenet": GoogLeNet, "googlenet_5x5": GoogLeNet5x5}
#: The network extension point: kebench's own, registry.yaml's `networks:`, `kebench.networks` entry points.
NETWORKS = registry.Extensions("network", "networks", TORCHVISION_ARCHS)


def list_archs(pattern: str | None = None) -> list[str]:
    names = sorted(set(timm.list_models()) | set(NETWORKS.names()))
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def check_arch(name: str) -> None:
    if name in NETWORKS or timm.is_model(name):
        return
    import difflib
    import re

    names = list_archs()
    starting = [n for n in names if n.startswith(name.lower())][:3]  # vit_tiny -> vit_tiny_patch16_224
    close = starting + [n for n in difflib.get_close_matches(name, names, n=5, cutoff=0.75) if n not in starting]
    family = re.match(r"[a-z]+", name.lower())
    search = f"'{family.group(0)}*'" if family else "'PATTERN'"
    raise UserError(f"Unknown arch '{name}'." + (f" Did you mean: {', '.join(close[:5])}?" if close else "")
                    + f" Search the {len(names)} networks (timm's and kebench's) with: kebench list archs {search}")


def create_model(arch: str, num_classes: int, in_chans: int = 3, init: str = "timm", **kwargs) -> nn.Module:
    """A randomly initialised model (never pretrained: the papers train from scratch), initialised
    as timm (or torchvision) builds it, or `init="ke-official"` as the official KE code does."""
    if init not in INITS:
        raise unknown_choice("init", init, list(INITS))
    return INITS[init](_build(arch, num_classes, in_chans, **kwargs))


def _build(arch: str, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    check_arch(arch)
    if arch in NETWORKS:
        return NETWORKS.get(arch)(num_classes=num_classes, in_chans=in_chans, **kwargs)
    vgg = arch.startswith("vgg")
    if vgg:
        kwargs.setdefault("drop_rate", VGG_DROPOUT)
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"timm could not build '{arch}' with {num_classes} classes and {in_chans} input channels: {exc}") from None
    if vgg:
        torchvision_vgg_head(model)
    return model


#: torchvision's VGG classifier: Linear-ReLU-Dropout(0.5)-Linear-ReLU-Dropout(0.5)-Linear.
VGG_DROPOUT = 0.5


def torchvision_vgg_head(model: nn.Module) -> nn.Module:
    """Make a timm VGG's head torchvision's (the VGG of the KE paper's ablation). timm builds it as
    fc1 (7x7 conv) - ReLU - drop - fc2 (1x1 conv) - ReLU, then pool - drop - fc: with drop_rate 0.5
    the dropouts sit where torchvision's two Dropout(0.5) do, and at 224 px (a 7x7 feature map; timm
    pools smaller maps up to 7x7 as torchvision's AdaptiveAvgPool2d(7) does) fc1/fc2 compute
    torchvision's Linear(25088, 4096) / Linear(4096, 4096). timm initialises those two convs as
    convs (Kaiming); torchvision draws its Linear layers from N(0, 0.01) with zero bias: do so."""
    for fc in (model.pre_logits.fc1, model.pre_logits.fc2):
        nn.init.normal_(fc.weight, 0, 0.01)
        nn.init.zeros_(fc.bias)
    return model


@torch.no_grad()
def ke_official_init(model: nn.Module) -> nn.Module:
    """Re-initialise a freshly built model as ahmdtaha/knowledge_evolution does (generation 1; the
    re-drawn reset-hypothesis is a separate rule, kebench.nets.split):

    * ResNet (models/builder.py, its defaults `--init kaiming_normal --mode fan_in --nonlinearity
      relu`): every conv and linear weight ~ N(0, 2 / fan_in); linear bias as nn.Linear draws it;
      every BatchNorm gamma 1, beta 0 (timm instead draws convs with fan_out and zeroes the last BN
      gamma of each residual block).
    * DenseNet (models/split_densenet.py): the same convs (torchvision's kaiming_normal_, also
      N(0, 2 / fan_in)), the classifier from the builder (N(0, 2 / fan_in)) with bias 0; BN 1 / 0.
    * GoogLeNet (models/split_googlenet.py): conv and linear weights from scipy's truncnorm(-2, 2,
      scale=0.01), i.e. N(0, 0.01) cut at +-0.02 (torchvision cuts at +-2, which never bites); BN 1 / 0.
    * VGG: the KE paper's ablation uses torchvision's VGG11_bn, whose initialisation timm's VGG (with
      kebench's torchvision head) already is: left as built.
    * Any other network: the KE builder's rule (convs and linears N(0, 2 / fan_in), BN 1 / 0).
    """
    import timm.models.vgg

    if isinstance(model, timm.models.vgg.VGG):
        return model
    googlenet = isinstance(model, GoogLeNet)
    densenet = isinstance(model, timm.models.densenet.DenseNet)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if isinstance(m, nn.Linear):
                m.reset_parameters()  # nn.Linear's own bias draw, as the KE builder leaves it
                if densenet:
                    nn.init.zeros_(m.bias)
            if googlenet:
                nn.init.trunc_normal_(m.weight, std=0.01, a=-0.02, b=0.02)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


#: --init: how generation 1's weights are drawn.
INITS = {"timm": lambda model: model, "ke-official": ke_official_init}


#: Input sizes tried, smallest first, to tell a user which resolution a network needs.
PROBE_SIZES = (24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512)


def _forward_problem(model: nn.Module, in_chans: int, size: int) -> str | None:
    """Why a dry forward pass of two `size`-px images fails (None when it works). Eval mode and no
    grad: no BatchNorm statistic moves; the RNG state is put back, so the run's numbers do not change."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            model(torch.zeros(2, in_chans, size, size, device=device))
        return None
    except Exception as exc:  # noqa: BLE001 - any layer's complaint means "not at this size"
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0] if text else ''}".strip(": ")
    finally:
        model.train(was_training)


def check_input_size(model: nn.Module, arch: str, in_chans: int, resolution: int, data: str = "") -> None:
    """Refuse, before anything trains, a network that cannot take this run's images (a pooling layer
    with nothing left to pool at 16 px, a ViT built for 224 px), naming the resolution it needs."""
    problem = _forward_problem(model, in_chans, resolution)
    if problem is None:
        return
    declared = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    declared = declared[-1] if declared else None
    sizes = sorted({*PROBE_SIZES, *([declared] if declared else [])})
    works = next((s for s in sizes if s > resolution and _forward_problem(model, in_chans, s) is None), None)
    of = f" of dataset '{data}'" if data else ""
    msg = f"Network '{arch}' cannot take the {resolution}x{resolution} px images{of} (a dry forward pass failed: {problem})."
    if works is not None:
        exact = works == declared and _forward_problem(model, in_chans, works + 32) is not None
        msg += (f" It needs {works} px input: add --resolution {works}." if exact else
                f" It works from {works} px: add --resolution {works} (or more"
                + (f"; timm declares {declared} px" if declared else "") + ").")
    elif declared:
        msg += f" timm declares {declared} px input for it; try --resolution {declared}."
    msg += " Or pick a network made for small images (e.g. resnet10t; see 'kebench list archs')."
    raise UserError(msg)


def count_params(model: nn.Module) -> int:
    """Trainable parameters only: masks and running statistics are buffers and are not counted."""
    return sum(p.numel() for p in model.parameters())
