"""Datasets that need no download: scikit-learn's digits (the default) and a synthetic set for tests."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kebench.data.spec import DataBundle, DatasetSpec, Split, register
from kebench.errors import UserError


def _to_uint8(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """float images in [0, 1], [N, C, h, w] -> uint8 [N, C, resolution, resolution] (bilinear)."""
    if images.shape[-1] != resolution:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _digits_arrays():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # values 0..16
    y = torch.tensor(digits.target, dtype=torch.int64)
    # A fixed stratified split: every run, seed and method sees the same 1437 / 360 images.
    tr, te = train_test_split(torch.arange(len(y)).numpy(), test_size=0.2, stratify=y.numpy(), random_state=0)
    return x, y, torch.as_tensor(tr), torch.as_tensor(te)


#: RandomResizedCrop's area range on digits (torchvision's default is 0.08-1).
DIGITS_CROP_SCALE = (0.8, 1.0)


def load_digits_bundle(cfg) -> DataBundle:
    res = cfg.resolution or 32
    x, y, tr, te = _digits_arrays()
    images = _to_uint8(x, res)
    return DataBundle(
        name="digits", task="classification",
        train=Split(images[tr], y[tr]), test=Split(images[te], y[te]),
        num_classes=10, in_chans=1, resolution=res, mean=(0.3,), std=(0.4,),
        # Mild crops and no flip: a mirrored digit is another glyph, and an 8x8 glyph fills its square,
        # so a crop keeps >= 80% of the area (at most ~1.8 of the 8 pixel columns or rows cut).
        crop_scale=DIGITS_CROP_SCALE, flip=False,
        info={"source": "sklearn.datasets.load_digits", "split": "stratified 80/20, random_state=0"},
    )


def load_digits_retrieval(cfg) -> DataBundle:
    """Class-disjoint: train on digits 0-4, test (retrieval) on 5-9."""
    res = cfg.resolution or 32
    x, y, _, _ = _digits_arrays()
    images = _to_uint8(x, res)
    train, test = y < 5, y >= 5
    return DataBundle(
        name="digits-retrieval", task="retrieval",
        train=Split(images[train], y[train]), test=Split(images[test], y[test] - 5),
        num_classes=5, in_chans=1, resolution=res, mean=(0.3,), std=(0.4,),
        crop_scale=(0.6, 1.0), flip=False,
        info={"source": "sklearn.datasets.load_digits", "split": "classes 0-4 train, 5-9 test"},
    )


SYNTHETIC_OPTIONS = {"classes": 4, "size": 16, "train_per_class": 24, "test_per_class": 8, "channels": 3, "noise": 0.15}


def load_synthetic(cfg) -> DataBundle:
    """Learnable random data: each class is a smooth random prototype plus noise. For tests."""
    opts = SYNTHETIC.parse_options(cfg.data_options)
    if opts["classes"] < 2 or opts["size"] < 4 or opts["train_per_class"] < 1 or opts["test_per_class"] < 1:
        raise UserError(f"Synthetic data needs classes >= 2, size >= 4 and >= 1 image per class; got {opts}.")
    res = cfg.resolution or opts["size"]
    gen = torch.Generator().manual_seed(1234)
    c, s, ch = opts["classes"], opts["size"], opts["channels"]
    protos = F.interpolate(torch.rand(c, ch, 4, 4, generator=gen), size=(s, s), mode="bilinear", align_corners=False)

    def make(per_class):
        y = torch.arange(c).repeat_interleave(per_class)
        x = protos[y] + opts["noise"] * torch.randn(len(y), ch, s, s, generator=gen)
        return Split(_to_uint8(x, res), y)

    return DataBundle(
        name="synthetic", task="classification", train=make(opts["train_per_class"]),
        test=make(opts["test_per_class"]), num_classes=c, in_chans=ch, resolution=res,
        mean=(0.5,) * ch, std=(0.3,) * ch, crop_scale=(0.7, 1.0), flip=True, info={"options": opts},
    )


# The first command a user runs trains on digits, so its defaults are sized for a 2-core CPU: timm's
# test_resnet (a 0.37 M-parameter ResNet, one block per stage, stride 32) at 40 px (the 8x8 images
# upsampled 5x) for 5 epochs. 40 px is the smallest multiple of 8 at which every stage of a stride-32
# network still sees a 2x2 map (40 -> 20 -> 10 -> 10 -> 5 -> 3 -> 2): below that the last stages run
# on 1x1 maps and their k x k weights only ever multiply zero padding (the earlier resnet10t at 16 px
# ran its last two stages so). docs/ke.md has the measurements. Any --arch / --resolution / --epochs
# overrides them; the paper datasets keep the paper's settings.
DIGITS_DEFAULTS = {"arch": "test_resnet", "resolution": 40, "epochs": 5}
register(DatasetSpec("digits", "classification", load_digits_bundle,
                     "scikit-learn's 8x8 handwritten digits, 10 classes, 1437 train / 360 test (embedded default)",
                     defaults=dict(DIGITS_DEFAULTS)))
register(DatasetSpec("digits-retrieval", "retrieval", load_digits_retrieval,
                     "digits, class-disjoint: train on 0-4, retrieve among 5-9 (embedded)",
                     defaults={"lr": 0.0256}))
SYNTHETIC = register(DatasetSpec("synthetic", "classification", load_synthetic,
                                 "random class prototypes plus noise; sizes set with --data-opt (for tests)",
                                 defaults={"epochs": 2, "batch_size": 16}, options=SYNTHETIC_OPTIONS))
