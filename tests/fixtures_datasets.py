"""Tiny copies of the six paper datasets, written in the exact layouts their official archives
extract to (docs/datasets.md), with the awkward cases real copies have: Aircraft variant names with
spaces and slashes and ids with leading zeros, MIT-67 file names with spaces, a list entry that
differs from its file in case only and a last line without newline, uint16 Flowers ids up to
08189, 1-based .mat labels, Cars in both layouts.

Every image of class c is PALETTE[c] plus a zero-mean gradient, so a test can tell an image's class
from its mean colour. One larger *probe* image per dataset (test split) carries a fine pattern and
is big enough that the cache decodes it through `Image.draft`; tests compare its pixels after the
test transform against a plain PIL Resize + CenterCrop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200), (40, 200, 200)]
GRADIENT = 40  # peak-to-peak amplitude of the per-image gradient
SMALL = (40, 30)  # (w, h) of ordinary fixture images
PROBE = (240, 180)  # (w, h) of the probe: 1/4-scale JPEG draft at resolution 32 (cached side 37)
BANNER_PX = 20
BANNER_COLOR = (255, 255, 255)


@dataclass
class Fixture:
    name: str
    root: Path  # what --data-root gets
    sizes: dict[str, int]  # images per split
    classes: int  # classes the model is trained on
    class_colors: dict[str, list]  # split -> per 0-based label, the palette colour of its images
    probe: Path  # a test-split image
    probe_label: int
    options: dict = field(default_factory=dict)


def image_array(color, size, probe: bool = False, banner: bool = False) -> np.ndarray:
    """uint8 HxWx3: the class colour plus a zero-mean gradient (plus a pattern for the probe)."""
    w, h = size
    x = np.linspace(-0.5, 0.5, w)[None, :]
    y = np.linspace(-0.5, 0.5, h)[:, None]
    grads = [x + 0 * y, y + 0 * x, (x + y) / 2]
    img = np.stack([c + GRADIENT * g for c, g in zip(color, grads)], axis=-1)
    if probe:
        img += 25 * (np.sin(2 * np.pi * x * w / 23) * np.cos(2 * np.pi * y * h / 31))[..., None]
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if banner:  # FGVC-Aircraft: a copyright banner added below the picture
        img = np.concatenate([img, np.broadcast_to(np.array(BANNER_COLOR, np.uint8), (BANNER_PX, w, 3))], axis=0)
    return img


def write_jpeg(path: Path, color, *, probe: bool = False, banner: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_array(color, PROBE if probe else SMALL, probe, banner)).save(path, quality=95)
    return path


def _savemat(path: Path, data: dict) -> None:
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), data)


def _cell(strings) -> np.ndarray:
    """A MATLAB cell column of strings, as the Stanford Dogs lists hold them: (N, 1) object array."""
    out = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        out[i, 0] = np.array([s])
    return out


def _row_cell(strings) -> np.ndarray:
    out = np.empty((1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        out[0, i] = np.array([s])
    return out


def _struct(records: list[dict]) -> np.ndarray:
    """A (1, N) MATLAB struct array; scalars as (1, 1) uint8/uint16 arrays, strings as 1-element arrays."""
    fields = list(records[0])
    arr = np.zeros((1, len(records)), dtype=[(f, "O") for f in fields])
    for i, rec in enumerate(records):
        vals = []
        for f in fields:
            v = rec[f]
            if isinstance(v, str):
                vals.append(np.array([v]))
            else:
                vals.append(np.array([[v]], dtype=np.uint8 if v < 256 else np.uint16))
        arr[0, i] = tuple(vals)
    return arr


# ---------------------------------------------------------------------------- builders
def build_flowers102(root: Path, class_ids=(1, 2, 3)) -> Fixture:
    """`class_ids`: the imagelabels.mat labels of the listed images' classes (a subset copy: 5, 17, 102);
    unlisted images keep label 1."""
    d = root / "flowers-102"
    per_class = {"train": 2, "val": 1, "test": 2}
    n_classes, n_ids = len(class_ids), 8189
    labels = np.ones((1, n_ids), dtype=np.uint8)
    ids = {s: [] for s in per_class}
    next_id = 1
    probe = None
    for c in range(n_classes):
        for split, k in per_class.items():
            for j in range(k):
                last = c == n_classes - 1 and split == "test" and j == k - 1
                i = n_ids if last else next_id  # the probe is image_08189.jpg (uint16 id, 5 digits)
                next_id += 0 if last else 1
                labels[0, i - 1] = class_ids[c]
                ids[split].append(i)
                path = write_jpeg(d / "jpg" / f"image_{i:05d}.jpg", PALETTE[c], probe=last)
                probe = path if last else probe
    write_jpeg(d / "jpg" / "image_00999.jpg", PALETTE[0])  # unlisted files are ignored
    _savemat(d / "imagelabels.mat", {"labels": labels})
    _savemat(d / "setid.mat", {"trnid": np.array([ids["train"]], np.uint16), "valid": np.array([ids["val"]], np.uint16),
                               "tstid": np.array([ids["test"]], np.uint16)})
    sizes = {s: n_classes * k for s, k in per_class.items()}
    return Fixture("flowers102", root, sizes, n_classes, {s: PALETTE[:n_classes] for s in sizes}, probe, n_classes - 1)


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani"]


def build_cub200(root: Path, retrieval: bool = False) -> Fixture:
    d = root / "CUB_200_2011"
    per_class = {1: 3, 0: 2}  # is_training_image -> images per class
    recs = []
    for c, cname in enumerate(CUB_CLASSES):
        for is_train, k in per_class.items():
            for j in range(k):
                recs.append((c, is_train, f"{cname}/{cname.split('.', 1)[1]}_{j + 1:04d}_{is_train}.jpg"))
    order = np.random.default_rng(0).permutation(len(recs))  # ids not grouped by class
    lines = {k: [] for k in ("images", "labels", "split", "boxes")}
    probe, probe_label = None, None
    for image_id, r in enumerate(order, 1):
        c, is_train, rel = recs[r]
        is_probe = probe is None and not is_train and c == len(CUB_CLASSES) - 1
        path = write_jpeg(d / "images" / rel, PALETTE[c], probe=is_probe)
        if is_probe:
            probe, probe_label = path, c
        lines["images"].append(f"{image_id} {rel}")
        lines["labels"].append(f"{image_id} {c + 1}")
        lines["split"].append(f"{image_id} {is_train}")
        lines["boxes"].append(f"{image_id} 1.0 2.0 30.0 20.0")
    for key, fname in (("images", "images.txt"), ("labels", "image_class_labels.txt"),
                       ("split", "train_test_split.txt"), ("boxes", "bounding_boxes.txt")):
        (d / fname).write_text("\n".join(lines[key]) + "\n")
    (d / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(CUB_CLASSES, 1)))
    n = len(CUB_CLASSES)
    if retrieval:
        half = n // 2
        per = sum(per_class.values())
        return Fixture("cub200-retrieval", root, {"train": half * per, "test": (n - half) * per}, half,
                       {"train": PALETTE[:half], "test": PALETTE[half:n]}, probe, probe_label - half)
    return Fixture("cub200", root, {"train": n * per_class[1], "test": n * per_class[0]}, n,
                   {"train": PALETTE[:n], "test": PALETTE[:n]}, probe, probe_label)


AIRCRAFT_VARIANTS = ["707-320", "F/A-18", "Falcon 2000"]


def build_aircraft(root: Path) -> Fixture:
    d = root / "fgvc-aircraft-2013b" / "data"
    per_class = {"train": 2, "val": 1, "test": 2}
    lists = {s: [] for s in per_class}
    serial = 34309
    probe = None
    for c, name in enumerate(AIRCRAFT_VARIANTS):
        for split, k in per_class.items():
            for j in range(k):
                image_id = f"{serial:07d}"  # leading zeros: "0034309"
                serial += 1117
                is_probe = probe is None and split == "test" and c == 1
                path = write_jpeg(d / "images" / f"{image_id}.jpg", PALETTE[c], probe=is_probe, banner=True)
                probe = path if is_probe else probe
                lists[split].append(f"{image_id} {name}")
    for split, lines in lists.items():
        (d / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    (d / "images_variant_trainval.txt").write_text("\n".join(lists["train"] + lists["val"]) + "\n")
    (d / "variants.txt").write_text("\n".join(AIRCRAFT_VARIANTS) + "\n")
    sizes = {s: len(v) for s, v in lists.items()}
    return Fixture("aircraft", root, sizes, len(AIRCRAFT_VARIANTS), {s: PALETTE[:3] for s in sizes}, probe, 1)


MIT_CATEGORIES = ["bathroom", "mall", "winecellar"]


def build_mit67(root: Path) -> Fixture:
    d = root
    counts = {"bathroom": (3, 1), "mall": (2, 1), "winecellar": (3, 2)}  # not an exact 80/20
    train, test = [], []
    probe = None
    for c, cat in enumerate(MIT_CATEGORIES):
        n_train, n_test = counts[cat]
        for j in range(n_train + n_test):
            fname = f"shopping mall {j}.jpg" if cat == "mall" else f"{cat}_{j:03d}.jpg"
            is_probe = probe is None and cat == "winecellar" and j == n_train
            path = write_jpeg(d / "Images" / cat / fname, PALETTE[c], probe=is_probe)
            probe = path if is_probe else probe
            entry = f"{cat}/{fname}"
            if cat == "bathroom" and j == 0:
                entry = f"{cat}/{fname.upper().replace('.JPG', '.jpg')}"  # differs from the file in case only
            (train if j < n_train else test).append(entry)
    write_jpeg(d / "Images" / "mall" / "not listed.jpg", PALETTE[1])
    (d / "TrainImages.txt").write_bytes(("\r\n".join(train) + "\r\n").encode())  # CRLF
    (d / "TestImages.txt").write_text("\n".join(test))  # no newline after the last line
    return Fixture("mit67", root, {"train": len(train), "test": len(test)}, 3,
                   {"train": PALETTE[:3], "test": PALETTE[:3]}, probe, 2)


DOG_BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def build_dogs(root: Path, class_ids=(1, 2, 3)) -> Fixture:
    """`class_ids`: the .mat labels of DOG_BREEDS (a subset copy: 4, 60, 120)."""
    d = root
    per_class = {"train": 2, "test": 1}
    lists = {s: ([], []) for s in per_class}
    probe = None
    for c, breed in enumerate(DOG_BREEDS):
        wnid = breed.split("-")[0]
        for split, k in per_class.items():
            for j in range(k):
                stem = f"{wnid}_{1000 * c + 10 * j + (split == 'test')}"
                is_probe = probe is None and split == "test" and c == 0
                path = write_jpeg(d / "Images" / breed / f"{stem}.jpg", PALETTE[c], probe=is_probe)
                probe = path if is_probe else probe
                ann = d / "Annotation" / breed / stem
                ann.parent.mkdir(parents=True, exist_ok=True)
                ann.write_text(f"<annotation><filename>{stem}</filename></annotation>\n")
                lists[split][0].append(f"{breed}/{stem}.jpg")
                lists[split][1].append(class_ids[c])
    for split, (files, labels) in lists.items():
        _savemat(d / f"{split}_list.mat", {
            "file_list": _cell(files), "annotation_list": _cell([f[:-4] for f in files]),
            "labels": np.array(labels, dtype=np.float64).reshape(-1, 1)})
    return Fixture("dogs", root, {s: len(v[0]) for s, v in lists.items()}, 3,
                   {"train": PALETTE[:3], "test": PALETTE[:3]}, probe, 0)


CAR_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012", "Acura TL Type-S 2008"]


def _car_records(per_class: dict[str, int], n: int):
    for c in range(n):
        for split, k in per_class.items():
            for j in range(k):
                yield c, split, j


def car_names(n: int) -> list[str]:
    """A meta's class_names for a subset copy: n names, the one at position k (1-based) 'car model k'."""
    return [f"car model {k}" for k in range(1, n + 1)]


def build_cars196(root: Path, layout: str = "devkit", retrieval: bool = False, class_ids=None, meta=None) -> Fixture:
    """`class_ids`: the annotations' class fields (default 1..4, one PALETTE colour each, in id
    order); `meta`: the class_names (default CAR_CLASSES, or car_names(196) for a subset)."""
    per_class = {"train": 2, "test": 2}
    class_ids = list(class_ids or range(1, len(CAR_CLASSES) + 1))
    meta = meta or (CAR_CLASSES if class_ids == list(range(1, len(CAR_CLASSES) + 1)) else car_names(196))
    n = len(class_ids)
    probe, probe_label = None, None
    box = {"bbox_x1": 1, "bbox_y1": 2, "bbox_x2": 30, "bbox_y2": 20}
    if layout == "devkit":
        d = root / "stanford_cars"
        annos = {"train": [], "test": []}
        for c, split, j in _car_records(per_class, n):
            fname = f"{len(annos[split]) + 1:05d}.jpg"
            is_probe = probe is None and split == "test" and c == 3
            path = write_jpeg(d / f"cars_{split}" / fname, PALETTE[c], probe=is_probe)
            if is_probe:
                probe, probe_label = path, c
            annos[split].append({**box, "class": class_ids[c], "fname": fname})
        _savemat(d / "devkit" / "cars_meta.mat", {"class_names": _row_cell(meta)})
        _savemat(d / "devkit" / "cars_train_annos.mat", {"annotations": _struct(annos["train"])})
        _savemat(d / "cars_test_annos_withlabels.mat", {"annotations": _struct(annos["test"])})  # not under devkit/
    else:
        d = root
        annos = []
        for c, split, j in _car_records(per_class, n):
            rel = f"car_ims/{len(annos) + 1:06d}.jpg"
            is_probe = probe is None and split == "test" and c == 3
            path = write_jpeg(d / rel, PALETTE[c], probe=is_probe)
            if is_probe:
                probe, probe_label = path, c
            annos.append({"relative_im_path": rel, **box, "class": class_ids[c], "test": int(split == "test")})
        _savemat(d / "cars_annos.mat", {"annotations": _struct(annos), "class_names": _row_cell(meta)})
    per = sum(per_class.values())
    if retrieval:  # ids 1-98 train, 99-196 test; ids all on one side (the default 1..4): halves
        half = sum(k <= 98 for k in class_ids) % n or n // 2
        return Fixture("cars196-retrieval", root, {"train": half * per, "test": (n - half) * per}, half,
                       {"train": PALETTE[:half], "test": PALETTE[half:n]}, probe, probe_label - half)
    return Fixture("cars196", root, {s: n * k for s, k in per_class.items()}, n,
                   {"train": PALETTE[:n], "test": PALETTE[:n]}, probe, probe_label)


BUILDERS = {
    "flowers102": build_flowers102,
    "cub200": build_cub200,
    "aircraft": build_aircraft,
    "mit67": build_mit67,
    "dogs": build_dogs,
    "cars196": build_cars196,
    "cars196-allinone": lambda root: build_cars196(root, layout="all-in-one"),
    "cub200-retrieval": lambda root: build_cub200(root, retrieval=True),
    "cars196-retrieval": lambda root: build_cars196(root, retrieval=True),
    "cars196-retrieval-allinone": lambda root: build_cars196(root, layout="all-in-one", retrieval=True),
}


def build(key: str, root: Path) -> Fixture:
    """Write the fixture `key` (a dataset name, or a Cars layout variant) under root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return BUILDERS[key](root)


# ---------------------------------------------------------------------------- CIFAR, MNIST, ImageNet, folders
def cifar_pickle(path: Path, data: np.ndarray, labels, label_key: str, protocol: int = 2) -> Path:
    """One CIFAR batch as the official archives hold it: a Python-2 pickle (protocol 2) with bytes keys."""
    import pickle

    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {b"batch_label": b"fixture", label_key.encode(): list(labels), b"data": data,
           b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def cifar_images(labels) -> np.ndarray:
    """(N, 3072) uint8, channel-major: image i is a flat PALETTE colour of its class, with pixel
    (0, 0) of the red plane set to i % 256 (so order and layout are checkable)."""
    labels = np.asarray(labels)
    colors = np.array([PALETTE[y % len(PALETTE)] for y in labels], dtype=np.uint8)
    x = np.repeat(colors[:, :, None], 1024, axis=2).reshape(len(labels), 3072)
    x[:, 0] = np.arange(len(labels)) % 256
    return x


def build_cifar(root: Path, which: str = "cifar10", per_class: int = 2, archive: bool = False) -> dict:
    """A tiny CIFAR copy in torchvision's folder layout (or as the .tar.gz): `per_class` train
    images per class in each train batch file, 1 test image per class. Returns the labels per split."""
    import pickle
    import tarfile

    classes = 10 if which == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python")
    key = "labels" if which == "cifar10" else "fine_labels"
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if which == "cifar10" else ["train"]
    labels = {"train": [], "test": []}
    for f in train_files:
        y = [c for c in range(classes) for _ in range(per_class)] if f in ("data_batch_1", "train") else [0, 1]
        cifar_pickle(folder / f, cifar_images(y), y, key)
        labels["train"] += y
    y = list(range(classes))
    cifar_pickle(folder / ("test_batch" if which == "cifar10" else "test"), cifar_images(y), y, key)
    labels["test"] = y
    meta = ({b"label_names": [f"c{c}".encode() for c in range(10)]} if which == "cifar10"
            else {b"fine_label_names": [f"f{c}".encode() for c in range(100)], b"coarse_label_names": []})
    (folder / ("batches.meta" if which == "cifar10" else "meta")).write_bytes(pickle.dumps(meta, protocol=2))
    if archive:
        name = "cifar-10-python.tar.gz" if which == "cifar10" else "cifar-100-python.tar.gz"
        with tarfile.open(root / name, "w:gz") as t:
            t.add(folder, arcname=folder.name)
        import shutil

        shutil.rmtree(folder)
    return labels


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    import struct

    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def build_mnist(root: Path, gz: bool = True, flat: bool = False, train: int = 20, test: int = 10) -> dict:
    """The four idx files (MNIST/raw/ or flat, raw or .gz); image i of label y is filled with 20*y + 5."""
    import gzip

    folder = root if flat else root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, stem in (("train", train, "train"), ("test", test, "t10k")):
        y = np.arange(n) % 10
        x = np.broadcast_to((20 * y + 5).astype(np.uint8)[:, None, None], (n, 28, 28)).copy()
        for name, arr, magic in ((f"{stem}-images-idx3-ubyte", x, 2051), (f"{stem}-labels-idx1-ubyte", y, 2049)):
            blob = idx_bytes(arr, magic)
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
        out[split] = y
    return out


def _write_small_jpeg(path: Path, color, size=(20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_array(color, size)).save(path, quality=95)


IMAGENET_WNIDS = ["n01440764", "n01443537", "n01484850"]


def build_imagenet(root: Path, val: str = "folders", per_class: int = 3) -> dict:
    """train/<wnid>/*.JPEG and val/ as class folders, flat + devkit ground truth ("devkit"), or flat +
    LOC_val_solution.csv ("csv"). Val image k (1-based) has class (k - 1) % 3."""
    for c, w in enumerate(IMAGENET_WNIDS):
        for i in range(per_class):
            _write_small_jpeg(root / "train" / w / f"{w}_{i}.JPEG", PALETTE[c])
    val_labels = [(k - 1) % len(IMAGENET_WNIDS) for k in range(1, 7)]
    for k, c in enumerate(val_labels, 1):
        name = f"ILSVRC2012_val_{k:08d}.JPEG"
        _write_small_jpeg(root / "val" / (IMAGENET_WNIDS[c] if val == "folders" else "") / name, PALETTE[c])
    if val == "devkit":
        # ILSVRC ids are not in wnid order: id 1 is the last wnid here
        ids = {IMAGENET_WNIDS[2]: 1, IMAGENET_WNIDS[0]: 2, IMAGENET_WNIDS[1]: 3}
        data = root / "ILSVRC2012_devkit_t12" / "data"
        _savemat(data / "meta.mat", {"synsets": _struct([{"ILSVRC2012_ID": ids[w], "WNID": w} for w in IMAGENET_WNIDS])})
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
            "".join(f"{ids[IMAGENET_WNIDS[c]]}\n" for c in val_labels))
    elif val == "csv":
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
            f"ILSVRC2012_val_{k:08d},{IMAGENET_WNIDS[c]} 1 2 3 4 {IMAGENET_WNIDS[c]} 5 6 7 8\n"
            for k, c in enumerate(val_labels, 1)))
    return {"train": [c for c in range(3) for _ in range(per_class)], "test": val_labels}


#: The files of `build_imagenet_mixed`, per class: (name, (w, h), PIL mode, format). At resolution 32
#: (cached side 37) "big" is decoded by libjpeg at 1/4 scale, the others at full size; the grayscale
#: and CMYK JPEGs and the PNG under a .JPEG name (ImageNet's train set has each) are not plain JPEGs.
MIXED_FILES = [("wide", (60, 45), "RGB", "JPEG"), ("tall", (45, 60), "RGB", "JPEG"), ("big", (200, 150), "RGB", "JPEG"),
               ("gray", (60, 45), "L", "JPEG"), ("cmyk", (60, 45), "CMYK", "JPEG"), ("png", (60, 45), "RGB", "PNG")]


def photo(size, seed: int) -> np.ndarray:
    """A smooth random RGB picture of (w, h), like a photo for a JPEG codec (no flat colour)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8))
    return np.asarray(small.resize(size, Image.BICUBIC))


def build_imagenet_mixed(root: Path) -> list[str]:
    """An ILSVRC tree (class-folder val) whose train images are MIXED_FILES for each of 3 classes;
    returns the train files' names in listing order."""
    names = []
    for c, w in enumerate(IMAGENET_WNIDS):
        for k, (name, size, mode, fmt) in enumerate(MIXED_FILES):
            path = root / "train" / w / f"{w}_{name}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(size, 10 * c + k)).convert(mode).save(path, format=fmt, quality=92)
        names += sorted(f"{w}_{name}.JPEG" for name, *_ in MIXED_FILES)
        for i in range(2):
            _write_small_jpeg(root / "val" / w / f"ILSVRC2012_val_{3 * i + c + 1:08d}.JPEG", PALETTE[c], (60, 45))
    return names


def build_tiny_imagenet(root: Path, per_class: int = 2) -> dict:
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(w + "\n" for w in IMAGENET_WNIDS))
    for c, w in enumerate(IMAGENET_WNIDS):
        for i in range(per_class):
            _write_small_jpeg(base / "train" / w / "images" / f"{w}_{i}.JPEG", PALETTE[c], (64, 64))
    lines = []
    for k in range(len(IMAGENET_WNIDS)):
        _write_small_jpeg(base / "val" / "images" / f"val_{k}.JPEG", PALETTE[k], (64, 64))
        lines.append(f"val_{k}.JPEG\t{IMAGENET_WNIDS[k]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    return {"train": [c for c in range(3) for _ in range(per_class)], "test": [0, 1, 2]}


def build_folder(root: Path, evals=("val",)) -> dict:
    classes = ["cat", "dog"]
    for c, name in enumerate(classes):
        for i in range(3):
            _write_small_jpeg(root / "train" / name / f"{i}.jpg", PALETTE[c])
        for split in evals:
            _write_small_jpeg(root / split / name / f"{split}_{c}.png", PALETTE[c])
    return {"classes": classes}
