"""The six paper datasets, read from the folders their official archives extract to.

Each dataset has a *lister* (annotation files -> per split, the relative image paths and 0-based
labels, in a fixed order) and one shared loader that turns a listing into a `DataBundle` through
the decode-once cache (`cache.py`). `kebench data check` uses the same listers. Layouts are those
of docs/datasets.md; nothing is downloaded unless asked (`download.py`, `--download`).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kebench.data import cache as cachemod
from kebench.data.sources import hint as download_hint
from kebench.data.spec import DATASETS, DataBundle, DatasetSpec, register
from kebench.errors import UserError, unknown_choice

# KE paper (Taha et al., CVPR 2021) transforms: train RandomResizedCrop(224) + flip,
# test Resize(256) + CenterCrop(224); ImageNet normalisation.
DEFAULT_RESOLUTION = 224
TEST_RESIZE_RATIO = 256 / 224
CROP_SCALE = (0.08, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# FGVC-Aircraft README: every image carries a 20-pixel copyright banner at the bottom.
AIRCRAFT_BANNER_PX = 20
# KE paper common training setup (all classification baselines): SGD, cosine from lr 0.256,
# batch 32, 200 epochs per generation, and the official code's 5-epoch linear warm-up at the start
# of every generation (ahmdtaha/knowledge_evolution, cosine_lr with warmup_length 5). Every pass
# that restarts its schedule warms up alike, so KE and the baselines stay comparable; a pass caps
# the warm-up at a quarter of its schedule (engine.effective_warmup), so short runs still decay.
CLASSIFICATION_DEFAULTS = {"lr": 0.256, "batch_size": 32, "epochs": 200, "warmup_epochs": 5}
# KE paper section 4.2 (metric learning): lr 0.0256, batch 125 = 25 classes x 5 images; the same
# per-generation warm-up as classification (one training code path for both tasks).
RETRIEVAL_DEFAULTS = {"lr": 0.0256, "batch_size": 125, "epochs": 200, "warmup_epochs": 5}

# Options every paper dataset takes (--data-opt KEY=VALUE); cache_dir "" means $KEBENCH_CACHE or
# ~/.cache/kebench, workers 0 means one per CPU core (at most 16); decode: where images decoded on
# demand (streamed, or a cache that would not fit) are decoded, cachemod.DECODERS.
COMMON_OPTIONS = {"cache_dir": "", "cache_budget_gb": 32.0, "workers": 0, "max_bad": 10, "decode": "auto"}


@dataclass
class Listing:
    """One dataset on disk: image paths relative to `base`, 0-based labels, per split, in a fixed order."""

    base: Path
    classes: list[str]
    splits: dict[str, list[tuple[str, int]]]
    layout: str = ""  # which official layout was found (Cars has two)
    #: The class ids of the copy, in label order (a subset copy may use ids 1, 2 and 101); None: the
    #: dataset names its classes (Aircraft, MIT-67), or 1..len(classes).
    class_ids: list[int] | None = None
    train_classes: int | None = None  # retrieval: classes 0..train_classes-1 train, the rest test

    def half(self) -> int:
        """Classes in the training part of a class-disjoint split (the first half by default)."""
        return len(self.classes) // 2 if self.train_classes is None else self.train_classes


@dataclass
class PaperDataset:
    name: str
    title: str
    lister: Callable  # (root: Path) -> Listing (retrieval: the whole dataset, split by last_train_id)
    layout: str  # the expected tree, for error messages and docs
    source: str  # where the official archives come from
    official: dict  # split -> image count of the official copy
    task: str = "classification"
    options: dict = field(default_factory=dict)  # dataset-specific --data-opt defaults
    description: str = ""
    #: Images used at their own size (Tiny-ImageNet's 64 px): a square cache at `resolution`, no test
    #: resize, CIFAR-style pad-and-crop training (`DataBundle.pad_crop`). None: the KE paper's transforms.
    native: int | None = None
    pad_crop: int = 4
    defaults: dict | None = None  # RunConfig defaults; None: the KE paper's (by task)
    official_classes: int | None = None  # classes of the official copy (data check compares a subset)
    #: Retrieval: the last class id of the training side (CUB 100, Cars 98; the class-disjoint split).
    last_train_id: int | None = None


PAPER: dict[str, PaperDataset] = {}


# ---------------------------------------------------------------------------- helpers
def _layout_error(ds: PaperDataset, root: Path, problem: str) -> UserError:
    return UserError(
        f"{ds.title} ('{ds.name}') was not found under {root}: {problem}\n"
        f"Expected layout (as the official archives extract):\n{ds.layout}\n"
        f"Get the archives from {ds.source} and extract them under the data root "
        f"(--data-root or KEBENCH_DATA). {download_hint(ds.name)}"
    )


def _locate(ds: PaperDataset, root: Path, candidates: list[str], markers: list[str]) -> Path:
    """The first candidate folder (relative to root; "" = root) that holds every marker path."""
    best = None
    for cand in candidates:
        d = root / cand if cand else root
        if not d.is_dir():
            continue
        missing = [m for m in markers if not (d / m).exists()]
        if not missing:
            return d
        if best is None or len(missing) < len(best[1]):
            best = (d, missing)
    if best is None or len(best[1]) == len(markers):
        tried = ", ".join(str(root / c) if c else str(root) for c in candidates)
        raise _layout_error(ds, root, f"none of {tried} holds {markers[0]}.")
    raise _layout_error(ds, root, f"{best[0]} lacks {', '.join(best[1])}.")


def _lines(path: Path) -> list[str]:
    """Non-empty lines, whole (names may hold spaces); CRLF and a missing final newline are fine."""
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return [ln for ln in text.splitlines() if ln.strip()]


def _pairs(ds: PaperDataset, root: Path, path: Path) -> list[tuple[str, str]]:
    """'<key> <value with spaces>' lines, split on the first whitespace only."""
    out = []
    for n, ln in enumerate(_lines(path), 1):
        parts = ln.strip().split(None, 1)
        if len(parts) != 2:
            raise _layout_error(ds, root, f"{path} line {n} is not '<id> <value>': {ln!r}.")
        out.append((parts[0], parts[1].strip()))
    return out


def _int(ds, root, path, text) -> int:
    try:
        return int(text)
    except ValueError:
        raise _layout_error(ds, root, f"{path} holds '{text}' where a number was expected.") from None


def _loadmat(ds: PaperDataset, root: Path, path: Path, keys: list[str]) -> dict:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError on damaged files
        raise _layout_error(ds, root, f"{path} is not a readable MATLAB file ({exc}).") from None
    missing = [k for k in keys if k not in mat]
    if missing:
        raise _layout_error(ds, root, f"{path} lacks the key(s) {', '.join(missing)}.")
    return mat


def _mat_str(x) -> str:
    """A MATLAB string as scipy returns it (an array holding one str) -> str."""
    while isinstance(x, np.ndarray):
        x = x.reshape(-1)[0] if x.size else ""
    return str(x)


def _mat_int(x) -> int:
    return int(np.asarray(x).reshape(-1)[0])


def id_ranges(ids: list[int]) -> str:
    """Sorted ids, runs collapsed: [1, 2, 3, 7, 150] -> '1-3, 7, 150'."""
    runs: list[list[int]] = []
    for k in ids:
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _undeclared(ds, root, splits: dict[str, list[tuple[str, int]]], declared, where: Callable[[str, int], str],
                outside: str) -> None:
    """A layout error naming the first image whose class id the files do not declare."""
    for split, items in splits.items():
        for i, (_, k) in enumerate(items):
            if k not in declared:
                raise _layout_error(ds, root, f"{where(split, i)} has class {k}, {outside}.")


def _by_id(base: Path, names, splits: dict[str, list[tuple[str, int]]], layout: str = "", ids: bool = True) -> Listing:
    """Class ids are labels, not positions: the copy's classes are the declared ids its annotation
    lists use, in id order, remapped to 0..K-1 (a Cars copy using ids 3, 7 and 150 has three classes,
    named by id). `names` maps an id to its class name; `ids=False` for datasets whose classes are
    names (Aircraft, MIT-67), where the positions are no ids worth reporting."""
    used = sorted({k for items in splits.values() for _, k in items})
    label = {k: i for i, k in enumerate(used)}
    return Listing(base, [names[k] for k in used], {s: [(p, label[k]) for p, k in items] for s, items in splits.items()},
                   layout, used if ids else None)


# ---------------------------------------------------------------------------- listers
FLOWERS_CLASSES, DOGS_CLASSES = 102, 120  # ids 1..N: neither ships a class list to declare them


def _list_flowers(root: Path) -> Listing:
    ds = PAPER["flowers102"]
    d = _locate(ds, root, ["flowers-102", ""], ["jpg", "imagelabels.mat", "setid.mat"])
    labels = _loadmat(ds, root, d / "imagelabels.mat", ["labels"])["labels"].astype(np.int64).reshape(-1)
    setid = _loadmat(ds, root, d / "setid.mat", ["trnid", "valid", "tstid"])
    splits, image_ids = {}, {}
    keys = {"train": "trnid", "val": "valid", "test": "tstid"}
    for split, key in keys.items():
        ids = setid[key].astype(np.int64).reshape(-1)  # uint16 in the file: widen before arithmetic
        bad = ids[(ids < 1) | (ids > len(labels))]
        if len(bad):
            raise _layout_error(ds, root, f"setid.mat '{key}' lists image id {bad[0]}, but imagelabels.mat "
                                          f"has labels for ids 1..{len(labels)} only.")
        image_ids[split] = ids
        splits[split] = [(f"jpg/image_{i:05d}.jpg", int(labels[i - 1])) for i in ids]
    declared = range(1, FLOWERS_CLASSES + 1)
    _undeclared(ds, root, splits, declared,
                lambda s, i: f"image id {image_ids[s][i]} (setid.mat '{keys[s]}', labelled in imagelabels.mat)",
                f"outside 1..{FLOWERS_CLASSES}, the Flowers-102 class ids")
    return _by_id(d, {k: f"flower {k}" for k in declared}, splits)


def _list_cub(root: Path) -> Listing:
    ds = PAPER["cub200"]
    d = _locate(ds, root, ["CUB_200_2011", ""], ["images", "images.txt", "image_class_labels.txt",
                                                "train_test_split.txt", "classes.txt"])
    paths = {k: v for k, v in _pairs(ds, root, d / "images.txt")}
    labels = {k: _int(ds, root, "image_class_labels.txt", v) for k, v in _pairs(ds, root, d / "image_class_labels.txt")}
    train = {k: v.strip() == "1" for k, v in _pairs(ds, root, d / "train_test_split.txt")}
    names = {_int(ds, root, "classes.txt", k): name for k, name in _pairs(ds, root, d / "classes.txt")}
    for what, table in (("image_class_labels.txt", labels), ("train_test_split.txt", train)):
        missing = set(paths) - set(table)
        if missing:
            raise _layout_error(ds, root, f"{what} has no entry for image id {sorted(missing, key=int)[0]} of images.txt.")
    order = sorted(paths, key=lambda k: _int(ds, root, "images.txt", k))
    splits = {"train": [k for k in order if train[k]], "test": [k for k in order if not train[k]]}
    ids = sorted(names)
    _undeclared(ds, root, {s: [(k, labels[k]) for k in keys] for s, keys in splits.items()}, names,
                lambda s, i: f"image id {splits[s][i]}",
                f"which classes.txt does not list (it lists {len(ids)} class ids, {id_ranges(ids)})")
    return _by_id(d, names, {s: [("images/" + paths[k], labels[k]) for k in keys] for s, keys in splits.items()})


def _disjoint(listing: Listing, last_train_id: int) -> Listing:
    """Metric-learning protocol: every image, train on the classes with ids up to `last_train_id`
    (CUB 1-100, Cars 1-98: the first half of the official classes), test on the others (labels
    re-based to 0). The split follows the ids, so a subset copy keeps it; a copy whose ids all lie on
    one side of the boundary (a renumbered toy copy) splits its classes in halves instead."""
    ids = listing.class_ids or list(range(1, len(listing.classes) + 1))
    half = sum(1 for k in ids if k <= last_train_id)
    if half in (0, len(ids)):
        half = len(ids) // 2
    everything = [item for items in listing.splits.values() for item in items]
    return Listing(listing.base, listing.classes, {
        "train": [(p, y) for p, y in everything if y < half],
        "test": [(p, y - half) for p, y in everything if y >= half],
    }, listing.layout, ids, half)


def _list_aircraft(root: Path) -> Listing:
    ds = PAPER["aircraft"]
    files = {s: f"data/images_variant_{s}.txt" for s in ("train", "val", "test")}
    d = _locate(ds, root, ["fgvc-aircraft-2013b", ""], ["data/images", "data/variants.txt", *files.values()])
    variants = [ln.strip() for ln in _lines(d / "data/variants.txt")]
    index = {v: i for i, v in enumerate(variants)}
    splits = {}
    for split, rel in files.items():
        items = []
        for image_id, name in _pairs(ds, root, d / rel):  # names hold spaces and slashes: "F/A-18"
            if name not in index:
                raise _layout_error(ds, root, f"{rel} names variant '{name}' (image {image_id}), which is not in data/variants.txt.")
            items.append((f"data/images/{image_id}.jpg", index[name]))  # ids keep their leading zeros
        splits[split] = items
    return _by_id(d, variants, splits, ids=False)  # positions in variants.txt, for the variants the lists use


def _list_mit67(root: Path) -> Listing:
    ds = PAPER["mit67"]
    d = _locate(ds, root, ["", "mit67", "MIT67", "indoorCVPR_09", "mit_indoor_67"],
                ["Images", "TrainImages.txt", "TestImages.txt"])
    categories = sorted(p.name for p in (d / "Images").iterdir() if p.is_dir())
    cat_index = {c: i for i, c in enumerate(categories)}
    cat_folded = {c.casefold(): c for c in categories}
    folded: dict[str, str] | None = None  # lower-cased relative path -> real one, built on first need

    def resolve(entry: str) -> str:
        nonlocal folded
        for cand in (entry, entry.strip()):
            if (d / "Images" / cand).is_file():
                return cand
        if folded is None:  # some list entries differ from the files in case only
            folded = {}
            for c in categories:
                for f in (d / "Images" / c).iterdir():
                    folded[f"{c}/{f.name}".casefold()] = f"{c}/{f.name}"
        return folded.get(entry.strip().casefold(), entry.strip())

    splits = {}
    for split, listfile in (("train", "TrainImages.txt"), ("test", "TestImages.txt")):
        items = []
        for entry in _lines(d / listfile):  # whole lines: file names contain spaces
            rel = resolve(entry)
            cat = cat_folded.get(rel.split("/", 1)[0].casefold()) if "/" in rel else None
            if cat is None:
                raise _layout_error(ds, root, f"{listfile} lists '{entry}', whose category has no folder under Images/.")
            items.append(("Images/" + cat + "/" + rel.split("/", 1)[1], cat_index[cat]))
        splits[split] = items
    return _by_id(d, categories, splits, ids=False)  # the categories the lists use


def _list_dogs(root: Path) -> Listing:
    ds = PAPER["dogs"]
    d = _locate(ds, root, ["", "dogs", "stanford_dogs", "StanfordDogs", "Stanford_Dogs"],
                ["Images", "train_list.mat", "test_list.mat"])
    splits, names, ids = {}, {}, {}  # names: class id -> breed folder; ids: the reverse, to catch mislabels
    for split in ("train", "test"):
        mat = _loadmat(ds, root, d / f"{split}_list.mat", ["file_list", "labels"])
        files = [_mat_str(x) for x in mat["file_list"].reshape(-1)]
        labels = [int(round(float(v))) for v in mat["labels"].reshape(-1)]
        if len(files) != len(labels):
            raise _layout_error(ds, root, f"{split}_list.mat has {len(files)} files but {len(labels)} labels.")
        splits[split] = [("Images/" + f, y) for f, y in zip(files, labels)]
    _undeclared(ds, root, splits, range(1, DOGS_CLASSES + 1),
                lambda s, i: f"{s}_list.mat entry {i + 1} ({splits[s][i][0]})",
                f"outside 1..{DOGS_CLASSES}, the Stanford Dogs class ids")
    for split, items in splits.items():
        for rel, y in items:
            breed = rel.split("/")[1] if rel.count("/") > 1 else "Images"
            if names.setdefault(y, breed) != breed:
                raise _layout_error(ds, root, f"{split}_list.mat gives {rel} class {y}, which the lists also give to "
                                              f"{names[y]}/: one class id per breed folder.")
            if ids.setdefault(breed, y) != y:
                raise _layout_error(ds, root, f"{split}_list.mat gives {rel} class {y}, but other images of {breed}/ "
                                              f"have class {ids[breed]}: one class id per breed folder.")
    return _by_id(d, names, splits)


def _list_cars(root: Path) -> Listing:
    ds = PAPER["cars196"]
    devkit = ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_train", "cars_test"]
    allinone = ["car_ims", "cars_annos.mat"]
    candidates = [root / "stanford_cars", root, root / "cars196", root / "StanfordCars"]
    for d in candidates:
        if all((d / m).exists() for m in devkit):
            test_annos = next((p for p in (d / "cars_test_annos_withlabels.mat", d / "devkit/cars_test_annos_withlabels.mat")
                               if p.is_file()), None)
            if test_annos is None:
                raise _layout_error(ds, root, f"{d} has the devkit layout but lacks cars_test_annos_withlabels.mat "
                                              f"(the labelled test annotations, a separate download).")
            meta = _loadmat(ds, root, d / "devkit/cars_meta.mat", ["class_names"])["class_names"]
            splits, files = {}, {}
            for split, folder, path in (("train", "cars_train", d / "devkit/cars_train_annos.mat"), ("test", "cars_test", test_annos)):
                annos = _loadmat(ds, root, path, ["annotations"])["annotations"].reshape(-1)
                if "class" not in (annos.dtype.names or ()):
                    raise _layout_error(ds, root, f"{path} has no 'class' field (the unlabelled test annotations?).")
                splits[split] = [(f"{folder}/{_mat_str(a['fname'])}", _mat_int(a["class"])) for a in annos]
                files[split] = path.name
            return _cars_by_id(ds, root, d, meta, "devkit/cars_meta.mat", splits, files, "devkit")
        if all((d / m).exists() for m in allinone):
            mat = _loadmat(ds, root, d / "cars_annos.mat", ["annotations", "class_names"])
            splits = {"train": [], "test": []}
            for a in mat["annotations"].reshape(-1):
                splits["test" if _mat_int(a["test"]) else "train"].append((_mat_str(a["relative_im_path"]), _mat_int(a["class"])))
            return _cars_by_id(ds, root, d, mat["class_names"], "cars_annos.mat", splits,
                               {"train": "cars_annos.mat", "test": "cars_annos.mat"}, "all-in-one")
    present = [str(d) for d in candidates if d.is_dir()]
    raise _layout_error(ds, root, "neither the devkit layout (stanford_cars/devkit/...) nor the all-in-one layout "
                                  f"(car_ims/ + cars_annos.mat) is complete in {', '.join(present) or root}.")


def _cars_by_id(ds, root, d: Path, class_names, meta: str, splits, files: dict, layout: str) -> Listing:
    """Cars' 1-based `class` fields are positions in the meta's class_names: they declare ids
    1..len(class_names), and a subset copy (a meta of 196 names, annotations using 3, 7 and 150) has
    the classes its annotations use."""
    names = {i: _mat_str(x) for i, x in enumerate(class_names.reshape(-1), 1)}
    _undeclared(ds, root, splits, names, lambda s, i: f"image {splits[s][i][0]} ({files[s]})",
                f"outside 1..{len(names)}, the class ids {meta} declares (a class id is a position in its "
                f"{len(names)} class_names)")
    return _by_id(d, names, splits, layout)


# ---------------------------------------------------------------------------- the loader
def data_root(cfg_root: str | None, ds: PaperDataset) -> Path:
    text = cfg_root or os.environ.get("KEBENCH_DATA")
    if not text:
        raise UserError(
            f"Dataset '{ds.name}' ({ds.title}) is read from a local folder: pass --data-root PATH or set "
            f"KEBENCH_DATA.\nExpected layout under it:\n{ds.layout}\nGet the archives from {ds.source}. "
            f"{download_hint(ds.name)}")
    root = Path(text).expanduser()
    if not root.is_dir():
        raise _layout_error(ds, root, "that folder does not exist.")
    return root


def parse_options(ds: PaperDataset, given: dict) -> dict:
    opts = DATASETS[ds.name].parse_options(given)
    if opts["cache_budget_gb"] < 0 or opts["workers"] < 0 or opts["max_bad"] < 0:
        raise UserError(f"--data-opt cache_budget_gb, workers and max_bad must be >= 0; got {opts}.")
    cachemod.check_decoder(opts["decode"])
    return opts


def list_dataset(name: str, root: Path) -> Listing:
    """The listing the loader uses (one for retrieval variants: their class-disjoint split)."""
    ds = PAPER[name]
    listing = ds.lister(root)
    return listing if ds.last_train_id is None else _disjoint(listing, ds.last_train_id)


def load_paper(name: str, cfg) -> DataBundle:
    ds = PAPER[name]
    opts = parse_options(ds, dict(cfg.data_options))
    root = data_root(cfg.data_root, ds)
    listing = list_dataset(name, root)
    res = cfg.resolution or ds.native or DEFAULT_RESOLUTION
    size = res if ds.native else round(res * TEST_RESIZE_RATIO)
    banner = AIRCRAFT_BANNER_PX if opts.get("crop_banner") else 0
    # streamed datasets (ImageNet) are decoded by DataLoader workers every epoch, never cached whole
    budget = 0 if opts.get("stream") else opts["cache_budget_gb"] * 2**30
    cache_dir = Path(opts["cache_dir"]).expanduser() if opts["cache_dir"] else cachemod.default_dir()
    cache_name = name.removesuffix("-retrieval") if ds.task == "retrieval" else name

    splits, unusable, cache_info = {}, [], {}
    for split, items in listing.splits.items():
        got = cachemod.open_split(cache_name, split if ds.task == "classification" else f"disjoint-{split}",
                                  listing.base, items, size=size, banner_px=banner,
                                  keep_aspect=split == "train" and not ds.native,
                                  cache_dir=cache_dir,
                                  budget_bytes=budget, workers=opts["workers"], decode=opts["decode"])
        splits[split] = got.split
        unusable += [{"split": split, "path": str(listing.base / p), "reason": r} for p, r in got.unusable]
        cache_info[split] = got.info
    if len(unusable) > opts["max_bad"]:
        shown = "\n".join(f"  {u['path']}: {u['reason']}" for u in unusable[:20])
        raise UserError(
            f"{len(unusable)} images of '{name}' under {listing.base} are missing or unreadable, more than "
            f"max_bad={opts['max_bad']}:\n{shown}{'' if len(unusable) <= 20 else chr(10) + '  ...'}\n"
            f"Re-extract the official archives (see 'kebench data check {name}'), or raise the limit "
            f"with --data-opt max_bad=N to skip them.")
    half = listing.half()
    for split, sp in splits.items():  # a class with no usable image makes the benchmark meaningless
        first, count = ((0, half) if split == "train" else (half, len(listing.classes) - half)) \
            if ds.task == "retrieval" else (0, len(listing.classes))
        present = torch.bincount(sp.labels, minlength=count)[:count] if len(sp) else torch.zeros(count)
        empty = [listing.classes[first + c] for c in range(count) if present[c] == 0]
        if empty:
            raise UserError(
                f"'{name}' under {listing.base}: {len(empty)} class(es) have no usable image in the {split} "
                f"split ({', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}), so the dataset cannot be "
                f"trained and evaluated fairly. Re-extract the official archives; 'kebench data check {name}' "
                f"lists the missing and unreadable files.")
    if unusable:
        warnings.warn(f"{len(unusable)} missing or unreadable image(s) of '{name}' skipped "
                      f"(listed in result.json under data.unusable), e.g. {unusable[0]['path']}: {unusable[0]['reason']}",
                      stacklevel=2)
    modes = {i["mode"] for i in cache_info.values()}
    if "dataloader" in modes and not opts.get("stream"):
        reason = next(i["reason"] for i in cache_info.values() if i["mode"] == "dataloader")
        warnings.warn(f"'{name}': {reason}; decoding with DataLoader workers every epoch instead (slower). "
                      f"Raise --data-opt cache_budget_gb or free disk space to cache it.", stacklevel=2)

    num_classes = half if ds.task == "retrieval" else len(listing.classes)
    sizes = {s: len(sp) for s, sp in splits.items()}
    options = {k: v for k, v in opts.items() if k in ds.options}
    info = {
        "root": str(listing.base), "layout": listing.layout or "official",
        "classes": len(listing.classes), "official_classes": ds.official_classes, "splits": sizes,
        "official_sizes": ds.official, "matches_official": sizes == ds.official,
        "options": options, "resolution": res, "cached_size": size,
        "transform": {"train": f"RandomResizedCrop({res}, scale={CROP_SCALE}) + flip, drawn from the whole "
                               f"image after Resize({size}) (longer side capped at {cachemod.MAX_ASPECT * size})",
                      "test": f"Resize({size}) + CenterCrop({res})"} if not ds.native else
                     {"train": f"Resize({res}) + pad {ds.pad_crop} + RandomCrop({res}) + flip", "test": f"Resize({res})"},
        "test_resize_ratio": size / res,  # the cache is already at the test resize: center_view only crops
        "cache": cache_info, "unusable": {"count": len(unusable), "files": unusable},
    }
    if listing.class_ids is not None:  # which classes a subset copy trained on
        info["class_ids"] = id_ranges(listing.class_ids)
    if ds.task == "retrieval":
        ids = listing.class_ids or list(range(1, len(listing.classes) + 1))
        info["split"] = (f"class-disjoint: train on class ids {id_ranges(ids[:half])} ({half} classes), test on "
                         f"{id_ranges(ids[half:])} ({len(ids) - half})") if 0 < half < len(ids) else "class-disjoint"
    return DataBundle(
        name=name, task=ds.task, train=splits["train"], val=splits.get("val"), test=splits["test"],
        num_classes=num_classes, in_chans=3, resolution=res, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        crop_scale=CROP_SCALE, flip=True, pad_crop=ds.pad_crop if ds.native else None, info=info)


# ---------------------------------------------------------------------------- the registry
def _add(ds: PaperDataset) -> None:
    PAPER[ds.name] = ds
    defaults = ds.defaults if ds.defaults is not None else \
        RETRIEVAL_DEFAULTS if ds.task == "retrieval" else CLASSIFICATION_DEFAULTS
    register(DatasetSpec(ds.name, ds.task, lambda cfg, n=ds.name: load_paper(n, cfg), ds.description, dict(defaults),
                         options={**COMMON_OPTIONS, **ds.options}))


_FLOWERS = "  <root>/flowers-102/jpg/image_00001.jpg ... image_08189.jpg\n  <root>/flowers-102/imagelabels.mat\n  <root>/flowers-102/setid.mat"
_CUB = ("  <root>/CUB_200_2011/images/001.Black_footed_Albatross/*.jpg\n  <root>/CUB_200_2011/images.txt\n"
        "  <root>/CUB_200_2011/image_class_labels.txt\n  <root>/CUB_200_2011/train_test_split.txt\n"
        "  <root>/CUB_200_2011/classes.txt")
_AIRCRAFT = ("  <root>/fgvc-aircraft-2013b/data/images/<7-digit id>.jpg\n  <root>/fgvc-aircraft-2013b/data/variants.txt\n"
             "  <root>/fgvc-aircraft-2013b/data/images_variant_{train,val,test}.txt")
_MIT67 = ("  <root>/Images/<category>/<file>.jpg   (or <root>/mit67/Images/..., <root>/indoorCVPR_09/Images/...)\n"
          "  <root>/TrainImages.txt\n  <root>/TestImages.txt")
_DOGS = ("  <root>/Images/n02085620-Chihuahua/n02085620_10074.jpg   (or <root>/stanford_dogs/Images/...)\n"
         "  <root>/train_list.mat\n  <root>/test_list.mat")
_CARS = ("  devkit layout:\n  <root>/stanford_cars/devkit/cars_meta.mat\n  <root>/stanford_cars/devkit/cars_train_annos.mat\n"
         "  <root>/stanford_cars/cars_test_annos_withlabels.mat\n  <root>/stanford_cars/cars_train/00001.jpg ...\n"
         "  <root>/stanford_cars/cars_test/00001.jpg ...\n  or the all-in-one layout:\n"
         "  <root>/car_ims/000001.jpg ... 016185.jpg   (or <root>/stanford_cars/car_ims/...)\n  <root>/cars_annos.mat")

_SOURCES = {
    "flowers102": "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz extracts to jpg/; put it, "
                  "imagelabels.mat and setid.mat in a folder named flowers-102)",
    "cub200": "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)",
    "aircraft": "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (fgvc-aircraft-2013b.tar.gz)",
    "mit67": "https://web.mit.edu/torralba/www/indoor.html (indoorCVPR_09.tar, TrainImages.txt, TestImages.txt)",
    "dogs": "http://vision.stanford.edu/aditya86/ImageNetDogs/ (images.tar and lists.tar)",
    "cars196": "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (car_devkit.tgz, cars_train.tgz, cars_test.tgz "
               "and cars_test_annos_withlabels.mat; or car_ims.tgz and cars_annos.mat; mirrors exist where the "
               "page is offline)",
}

_add(PaperDataset("flowers102", "Oxford Flowers-102", _list_flowers, _FLOWERS, _SOURCES["flowers102"],
                  {"train": 1020, "val": 1020, "test": 6149}, official_classes=FLOWERS_CLASSES,
                  description="Oxford Flowers-102, 102 classes, 1020 train / 1020 val / 6149 test (local folder)"))
_add(PaperDataset("cub200", "CUB-200-2011", _list_cub, _CUB, _SOURCES["cub200"], {"train": 5994, "test": 5794},
                  official_classes=200,
                  description="CUB-200-2011 birds, 200 classes, 5994 train / 5794 test (local folder)"))
_add(PaperDataset("aircraft", "FGVC-Aircraft 2013b", _list_aircraft, _AIRCRAFT, _SOURCES["aircraft"],
                  {"train": 3334, "val": 3333, "test": 3333}, options={"crop_banner": True}, official_classes=100,
                  description="FGVC-Aircraft 2013b, 100 variants, 3334 train / 3333 val / 3333 test; "
                              "20-px banner cropped (--data-opt crop_banner=false keeps it)"))
_add(PaperDataset("mit67", "MIT Indoor-67", _list_mit67, _MIT67, _SOURCES["mit67"], {"train": 5360, "test": 1340},
                  official_classes=67,
                  description="MIT Indoor-67 scenes, 67 classes, 5360 train / 1340 test (local folder)"))
_add(PaperDataset("dogs", "Stanford Dogs", _list_dogs, _DOGS, _SOURCES["dogs"], {"train": 12000, "test": 8580},
                  official_classes=DOGS_CLASSES,
                  description="Stanford Dogs, 120 breeds, 12000 train / 8580 test (local folder)"))
_add(PaperDataset("cars196", "Stanford Cars-196", _list_cars, _CARS, _SOURCES["cars196"], {"train": 8144, "test": 8041},
                  official_classes=196,
                  description="Stanford Cars, 196 classes, 8144 train / 8041 test; devkit or all-in-one layout"))
_add(PaperDataset("cub200-retrieval", "CUB-200-2011", _list_cub, _CUB, _SOURCES["cub200"],
                  {"train": 5864, "test": 5924}, task="retrieval", official_classes=200, last_train_id=100,
                  description="CUB-200-2011, class-disjoint: train on classes 1-100 (5864), retrieve among 101-200 (5924)"))
_add(PaperDataset("cars196-retrieval", "Stanford Cars-196", _list_cars, _CARS,
                  _SOURCES["cars196"], {"train": 8054, "test": 8131}, task="retrieval", official_classes=196, last_train_id=98,
                  description="Stanford Cars, class-disjoint: train on classes 1-98 (8054), retrieve among 99-196 (8131)"))


def names() -> list[str]:
    return sorted(PAPER)


def get(name: str) -> PaperDataset:
    if name not in PAPER:
        raise unknown_choice("paper dataset", name, names(), hint="(embedded datasets like digits need no check)")
    return PAPER[name]
