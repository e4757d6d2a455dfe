"""Datasets stored as class folders of image files: ImageNet (ILSVRC-2012), Tiny-ImageNet-200 and
`folder`, any ImageFolder tree. They are listed here and loaded by the paper datasets' loader
(`paper.load_paper`), so `kebench data check` and the decode cache work alike.

ImageNet is streamed (`--data-opt stream=true`, its default): DataLoader worker processes decode
each epoch's batches ahead of the training step (libjpeg at a reduced scale where the image is
larger than needed), as no disk holds 1.28M decoded images comfortably; on CUDA the workers only
read the files and nvjpeg decodes the JPEGs on the GPU (`--data-opt decode`, cache.LazyImages).
Scale it with more `--data-opt workers=N` and with DDP across GPUs and nodes.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from kebench.data.paper import (PaperDataset, Listing, _add, _layout_error, _loadmat, _lines,
                                _mat_int, _mat_str, PAPER)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


def _images_in(folder: Path) -> list[str]:
    """Image file names directly in `folder`, sorted (scandir: one directory read, no stat per file)."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.name.startswith("."))


def _class_dirs(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


# ---------------------------------------------------------------------------- ImageNet
def _imagenet_base(ds, root: Path) -> Path:
    for cand in (root, root / "imagenet", root / "ILSVRC2012", root / "ILSVRC" / "Data" / "CLS-LOC",
                 root / "imagenet" / "ILSVRC" / "Data" / "CLS-LOC"):
        if (cand / "train").is_dir() and (cand / "val").is_dir():
            return cand
    raise _layout_error(ds, root, f"no folder under {root} holds both train/ and val/.")


def _val_labels(ds, root: Path, base: Path, files: list[str]) -> dict[str, str]:
    """Flat val/: image file -> wnid, from LOC_val_solution.csv or the devkit's ground truth."""
    near = [base, root, base.parent, base.parent.parent.parent]
    csv_path = next((d / "LOC_val_solution.csv" for d in near if (d / "LOC_val_solution.csv").is_file()), None)
    if csv_path is not None:
        out = {}
        with open(csv_path, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if n == 1 and row and row[0] == "ImageId":
                    continue
                if len(row) < 2 or not row[1].split():
                    raise _layout_error(ds, root, f"{csv_path} line {n} is not 'ImageId,wnid ...': {row!r}.")
                out[row[0]] = row[1].split()[0]
        return {f: out[Path(f).stem] for f in files if Path(f).stem in out}
    devkits = [d / sub for d in near for sub in ("ILSVRC2012_devkit_t12", "")]
    gt = next((d / "data" / "ILSVRC2012_validation_ground_truth.txt" for d in devkits
               if (d / "data" / "ILSVRC2012_validation_ground_truth.txt").is_file()), None)
    if gt is None:
        raise _layout_error(ds, root, f"{base / 'val'} holds images but no class folders, and no labels were found: "
                                      "neither LOC_val_solution.csv nor ILSVRC2012_devkit_t12/data/"
                                      "ILSVRC2012_validation_ground_truth.txt (with meta.mat).")
    meta = gt.parent / "meta.mat"
    if not meta.is_file():
        raise _layout_error(ds, root, f"{gt} needs meta.mat beside it (ILSVRC ids -> wnids).")
    synsets = _loadmat(ds, root, meta, ["synsets"])["synsets"].reshape(-1)
    wnid = {_mat_int(s["ILSVRC2012_ID"]): _mat_str(s["WNID"]) for s in synsets}
    ids = [int(x) for x in _lines(gt)]
    out = {}
    for f in files:  # ILSVRC2012_val_00000001.JPEG is line 1
        try:
            k = int(Path(f).stem.rsplit("_", 1)[1])
        except (IndexError, ValueError):
            continue
        if 1 <= k <= len(ids) and ids[k - 1] in wnid:
            out[f] = wnid[ids[k - 1]]
    return out


def _list_imagenet(root: Path, name: str = "imagenet") -> Listing:
    ds = PAPER[name]
    base = _imagenet_base(ds, root)
    classes = _class_dirs(base / "train")
    if not classes:
        raise _layout_error(ds, root, f"{base / 'train'} has no class folders (train/<wnid>/*.JPEG).")
    index = {c: i for i, c in enumerate(classes)}
    train = [(f"train/{c}/{f}", index[c]) for c in classes for f in _images_in(base / "train" / c)]
    val_dirs = _class_dirs(base / "val")
    if val_dirs:
        unknown = [d for d in val_dirs if d not in index]
        if unknown:
            raise _layout_error(ds, root, f"val/ has class folder(s) {', '.join(unknown[:5])} that train/ lacks.")
        val = [(f"val/{c}/{f}", index[c]) for c in val_dirs for f in _images_in(base / "val" / c)]
        layout = "class folders"
    else:
        files = _images_in(base / "val")
        labels = _val_labels(ds, root, base, files)
        unlabelled = [f for f in files if f not in labels]
        if unlabelled:
            raise _layout_error(ds, root, f"val image {unlabelled[0]} has no label in the ground truth "
                                          f"({len(unlabelled)} of {len(files)} unlabelled).")
        unknown = sorted({w for w in labels.values() if w not in index})
        if unknown:
            raise _layout_error(ds, root, f"the val ground truth names class(es) {', '.join(unknown[:5])} "
                                          f"that train/ lacks.")
        val = [(f"val/{f}", index[labels[f]]) for f in files]
        layout = "flat val + ground truth"
    return Listing(base, classes, {"train": train, "test": val}, layout)


# ---------------------------------------------------------------------------- Tiny-ImageNet
def _list_tiny(root: Path) -> Listing:
    ds = PAPER["tiny-imagenet"]
    base = next((d for d in (root / "tiny-imagenet-200", root) if (d / "wnids.txt").is_file()), None)
    if base is None:
        raise _layout_error(ds, root, f"neither {root / 'tiny-imagenet-200'} nor {root} holds wnids.txt.")
    for need in ("train", "val/images", "val/val_annotations.txt"):
        if not (base / need).exists():
            raise _layout_error(ds, root, f"{base} lacks {need}.")
    classes = [ln.strip() for ln in _lines(base / "wnids.txt")]
    index = {c: i for i, c in enumerate(classes)}
    train = []
    for c in classes:
        folder = base / "train" / c / "images"
        if not folder.is_dir():
            raise _layout_error(ds, root, f"{folder} is missing (class {c} of wnids.txt).")
        train += [(f"train/{c}/images/{f}", index[c]) for f in _images_in(folder)]
    labels = {}
    for n, ln in enumerate(_lines(base / "val/val_annotations.txt"), 1):
        parts = ln.split("\t")
        if len(parts) < 2:
            raise _layout_error(ds, root, f"val/val_annotations.txt line {n} is not 'file<TAB>wnid<TAB>box': {ln!r}.")
        if parts[1] not in index:
            raise _layout_error(ds, root, f"val/val_annotations.txt line {n} names class {parts[1]}, not in wnids.txt.")
        labels[parts[0]] = index[parts[1]]
    files = _images_in(base / "val/images")
    unlabelled = [f for f in files if f not in labels]
    if unlabelled:
        raise _layout_error(ds, root, f"val image {unlabelled[0]} has no label in val/val_annotations.txt "
                                      f"({len(unlabelled)} of {len(files)} unlabelled).")
    val = [(f"val/images/{f}", labels[f]) for f in files]
    return Listing(base, classes, {"train": train, "test": val})


# ---------------------------------------------------------------------------- any ImageFolder tree
def _list_folder(root: Path) -> Listing:
    """torchvision's ImageFolder parser (`find_classes`, `make_dataset`) on train/ and val/ or test/."""
    from torchvision.datasets.folder import find_classes, make_dataset

    ds = PAPER["folder"]
    if not (root / "train").is_dir():
        raise _layout_error(ds, root, f"{root / 'train'} is not a folder.")
    evals = [s for s in ("val", "test") if (root / s).is_dir()]
    if not evals:
        raise _layout_error(ds, root, f"{root} has train/ but neither val/ nor test/.")
    try:
        classes, index = find_classes(str(root / "train"))
    except FileNotFoundError as exc:
        raise _layout_error(ds, root, f"{exc}.") from None
    splits = {}
    for split in ("train", *evals):
        sub = root / split
        extra = [d for d in _class_dirs(sub) if d not in index]
        if extra:
            raise _layout_error(ds, root, f"{sub} has class folder(s) {', '.join(extra[:5])} that train/ lacks.")
        try:
            samples = make_dataset(str(sub), index, extensions=IMAGE_EXTENSIONS, allow_empty=split != "train")
        except FileNotFoundError as exc:
            raise _layout_error(ds, root, f"{sub}: {exc}") from None
        splits[split] = [(os.path.relpath(p, root).replace(os.sep, "/"), y) for p, y in samples]
    # a tree with val/ only evaluates on it; with both, val/ is the validation split and test/ the test split
    if "test" not in splits:
        splits["test"] = splits.pop("val")
    return Listing(root, classes, splits, " + ".join(f"{s}/" for s in ("train", *evals)))


_IMAGENET = ("  <root>/train/n01440764/n01440764_10026.JPEG ...   (1000 wnid folders)\n"
             "  <root>/val/n01440764/ILSVRC2012_val_00000293.JPEG ...   (class folders, after valprep), or\n"
             "  <root>/val/ILSVRC2012_val_00000001.JPEG ... flat, with labels from\n"
             "    <root>/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt + meta.mat, or\n"
             "    <root>/LOC_val_solution.csv (Kaggle: <root>/ILSVRC/Data/CLS-LOC/{train,val})")
_TINY = ("  <root>/tiny-imagenet-200/wnids.txt\n  <root>/tiny-imagenet-200/train/<wnid>/images/<wnid>_<k>.JPEG\n"
         "  <root>/tiny-imagenet-200/val/images/val_<k>.JPEG\n  <root>/tiny-imagenet-200/val/val_annotations.txt")
_FOLDER = ("  <root>/train/<class>/<image>   (any image format PIL reads)\n"
           "  <root>/val/<class>/<image> and/or <root>/test/<class>/<image>")

# Tiny-ImageNet at its own 64 px, trained with the CIFAR recipe (4-px pad + crop, flip) and the
# CIFAR-style step schedule; ImageNet normalisation (it is a subset of ImageNet).
TINY_DEFAULTS = {"arch": "resnet18", "lr": 0.1, "batch_size": 128, "epochs": 100, "weight_decay": 5e-4,
                 "lr_schedule": "step", "warmup_epochs": 0}
# ImageNet: He et al. 2016 / torchvision's reference recipe: SGD 0.1 at batch 256, 90 epochs, LR x0.1
# every 30 epochs (step at 1/3 and 2/3), weight decay 1e-4.
IMAGENET_DEFAULTS = {"arch": "resnet50", "lr": 0.1, "batch_size": 256, "epochs": 90, "weight_decay": 1e-4,
                     "lr_schedule": "step", "lr_milestones": [1 / 3, 2 / 3], "warmup_epochs": 0}

_add(PaperDataset("imagenet", "ImageNet ILSVRC-2012", _list_imagenet, _IMAGENET,
                  "https://image-net.org/download-images (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, "
                  "ILSVRC2012_devkit_t12.tar.gz) or Kaggle's imagenet-object-localization-challenge",
                  {"train": 1281167, "test": 50000}, options={"stream": True}, defaults=IMAGENET_DEFAULTS,
                  official_classes=1000,
                  description="ImageNet ILSVRC-2012, 1000 classes, 1281167 train / 50000 val; streamed by "
                              "DataLoader workers (never cached whole)"))
_add(PaperDataset("tiny-imagenet", "Tiny-ImageNet-200", _list_tiny, _TINY,
                  "http://cs231n.stanford.edu/tiny-imagenet-200.zip", {"train": 100000, "test": 10000},
                  native=64, defaults=TINY_DEFAULTS, official_classes=200,
                  description="Tiny-ImageNet-200, 200 classes, 100000 train / 10000 val, 64 px (cached)"))
_add(PaperDataset("folder", "ImageFolder tree", _list_folder, _FOLDER,
                  "your own data (any tree torchvision's ImageFolder reads)", {}, options={"stream": False},
                  description="any ImageFolder tree: train/<class>/ and val/ or test/ (the KE paper's "
                              "transforms; --data-opt stream=true streams instead of caching)"))
