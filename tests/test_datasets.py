"""The six paper datasets: every fixture layout loads through the real code path with exact split
sizes, 0-based labels that match each image, and test-transform pixels equal to PIL's; layout
errors name the expected tree; `kebench data check` and `kebench run` work from the CLI."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fixtures_datasets as fx  # noqa: E402

from kebench import data as datasets  # noqa: E402
from kebench.config import RunConfig  # noqa: E402
from kebench.data import paper  # noqa: E402
from kebench.data.pipeline import BatchStream  # noqa: E402
from kebench.errors import UserError  # noqa: E402

RES = 32


def load(fixture: fx.Fixture, tmp_path: Path, resolution: int = RES, **options):
    opts = {"cache_dir": str(tmp_path / "cache"), "workers": 1, **options}
    cfg = RunConfig(data=fixture.name, data_root=str(fixture.root), resolution=resolution, data_options=opts)
    return datasets.load(cfg)


def class_of(split, colors) -> torch.Tensor:
    """Nearest palette colour of each image's mean colour (fixture images are class colour + zero-mean
    gradient), over each image's real region where the split keeps aspect ratios in padded slots."""
    if split.extent is None:
        means = split.images.float().mean((2, 3))
    else:
        means = torch.stack([img[:, :min(h, w), :max(h, w)].float().mean((1, 2))
                             for img, (h, w) in zip(split.images, split.extent.tolist())])
    return torch.cdist(means, torch.tensor(colors, dtype=torch.float32)).argmin(1)


def eval_view(bundle, split, index: int) -> torch.Tensor:
    """One image after kebench's test transform, de-normalised to 0..255 floats [3, R, R]."""
    stream = BatchStream(bundle, split, batch_size=8, device=torch.device("cpu"), train=False)
    x, _ = stream.load(torch.tensor([index]))
    mean = torch.tensor(bundle.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(bundle.std).view(1, 3, 1, 1) * 255
    return (x * std + mean)[0]


def pil_reference(path: Path, resolution: int, banner: int = 0) -> torch.Tensor:
    """torchvision's Resize(round(R*256/224)) + CenterCrop(R) on the fully decoded image."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    im = Image.open(path).convert("RGB")
    if banner:
        im = im.crop((0, 0, im.width, im.height - banner))
    im = TF.center_crop(TF.resize(im, round(resolution * 256 / 224)), [resolution, resolution])
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float()


@pytest.mark.parametrize("key", list(fx.BUILDERS))
def test_fixture_loads_with_exact_splits_labels_and_pixels(key, tmp_path):
    fixture = fx.build(key, tmp_path / "data")
    bundle = load(fixture, tmp_path)
    spec = datasets.get_spec(fixture.name)
    assert bundle.task == spec.task == ("retrieval" if "retrieval" in key else "classification")
    sizes = {s: len(getattr(bundle, s)) for s in ("train", "val", "test") if getattr(bundle, s) is not None}
    assert sizes == fixture.sizes
    assert bundle.info["splits"] == fixture.sizes and bundle.info["unusable"]["count"] == 0
    assert bundle.num_classes == fixture.classes
    assert bundle.resolution == RES and bundle.in_chans == 3 and bundle.crop_scale == (0.08, 1.0) and bundle.flip
    for split_name in sizes:
        split = getattr(bundle, split_name)
        assert split.labels.dtype == torch.int64 and split.images.dtype == torch.uint8
        side = round(RES * 256 / 224)  # training splits keep the aspect ratio: 2x-wide slots
        assert split.images.shape[1:] == (3, side, 2 * side if split_name == "train" else side)
        assert (split.extent is not None) == (split_name == "train")
        assert int(split.labels.min()) == 0  # 0-based
        assert int(split.labels.max()) == len(fixture.class_colors[split_name]) - 1
        assert torch.equal(class_of(split, fixture.class_colors[split_name]), split.labels)
    if bundle.task == "retrieval":  # class-disjoint: test classes are the second half, re-based to 0
        assert bundle.info["split"].startswith("class-disjoint")
        assert set(fixture.class_colors["train"]).isdisjoint(fixture.class_colors["test"])

    listing = paper.list_dataset(fixture.name, fixture.root)
    probe = [str(listing.base / rel) for rel, _ in listing.splits["test"]].index(str(fixture.probe))
    assert int(bundle.test.labels[probe]) == fixture.probe_label
    got = eval_view(bundle, bundle.test, probe)
    ref = pil_reference(fixture.probe, RES, banner=fx.BANNER_PX if fixture.name == "aircraft" else 0)
    diff = (got - ref).abs()
    # The cache decodes the probe at 1/4 JPEG scale (Image.draft); PIL's full decode differs by ~1 level.
    assert diff.mean() < 2.0 and diff.max() < 10, (diff.mean(), diff.max())
    assert ref.std() > 10  # the probe has real structure: a shifted or squeezed crop would not pass


def test_awkward_names_are_read_whole(tmp_path):
    air = fx.build("aircraft", tmp_path / "air")
    listing = paper.list_dataset("aircraft", air.root)
    assert listing.classes == ["707-320", "F/A-18", "Falcon 2000"]
    assert listing.splits["train"][0][0] == "data/images/0034309.jpg"  # leading zeros kept
    assert {y for _, y in listing.splits["test"]} == {0, 1, 2}

    mit = fx.build("mit67", tmp_path / "mit")
    listing = paper.list_dataset("mit67", mit.root)
    train = [rel for rel, _ in listing.splits["train"]]
    assert "Images/bathroom/bathroom_000.jpg" in train  # listed as BATHROOM_000.jpg: matched ignoring case
    assert "Images/mall/shopping mall 0.jpg" in train  # a space in the name
    assert listing.splits["test"][-1] == ("Images/winecellar/winecellar_004.jpg", 2)  # last line, no newline
    assert all((listing.base / rel).is_file() for rel in train)

    flowers = fx.build("flowers102", tmp_path / "fl")
    listing = paper.list_dataset("flowers102", flowers.root)
    assert listing.splits["test"][-1] == ("jpg/image_08189.jpg", 2)  # uint16 id 8189, 5 digits


def test_aircraft_banner_is_cropped_by_default_and_recorded(tmp_path):
    fixture = fx.build("aircraft", tmp_path / "data")
    cropped = load(fixture, tmp_path)
    kept = load(fixture, tmp_path, crop_banner="false")
    assert cropped.info["options"] == {"crop_banner": True} and kept.info["options"] == {"crop_banner": False}
    bottom = lambda b: b.test.images[:, :, -1, :].float().mean().item()  # noqa: E731
    assert bottom(kept) > 245  # the white banner is in the bottom rows
    assert bottom(cropped) < 200
    assert cropped.info["cache"]["train"]["file"] != kept.info["cache"]["train"]["file"]
    assert cropped.info["cache"]["test"]["file"] != kept.info["cache"]["test"]["file"]


def test_root_from_environment_variable(tmp_path, monkeypatch):
    fixture = fx.build("dogs", tmp_path / "data")
    monkeypatch.setenv("KEBENCH_DATA", str(fixture.root))
    cfg = RunConfig(data="dogs", data_root=None, resolution=RES,
                    data_options={"cache_dir": str(tmp_path / "cache"), "workers": 1})
    assert len(datasets.load(cfg).train) == fixture.sizes["train"]


def test_missing_root_names_the_flag_layout_and_source(tmp_path, monkeypatch):
    monkeypatch.delenv("KEBENCH_DATA", raising=False)
    with pytest.raises(UserError) as e:
        datasets.load(RunConfig(data="aircraft", data_root=None))
    msg = str(e.value)
    assert "--data-root" in msg and "KEBENCH_DATA" in msg
    assert "fgvc-aircraft-2013b/data/variants.txt" in msg and "robots.ox.ac.uk" in msg
    with pytest.raises(UserError, match="does not exist"):
        datasets.load(RunConfig(data="cub200", data_root=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("name, breaks, expected", [
    ("aircraft", "fgvc-aircraft-2013b/data/variants.txt", "lacks data/variants.txt"),
    ("cub200", "CUB_200_2011/train_test_split.txt", "lacks train_test_split.txt"),
    ("flowers102", "flowers-102/setid.mat", "lacks setid.mat"),
    ("mit67", "TestImages.txt", "lacks TestImages.txt"),
    ("dogs", "train_list.mat", "lacks train_list.mat"),
    ("cars196", "stanford_cars/cars_test_annos_withlabels.mat", "lacks cars_test_annos_withlabels.mat"),
])
def test_broken_layout_says_what_is_missing(tmp_path, name, breaks, expected):
    fixture = fx.build(name, tmp_path / "data")
    (fixture.root / breaks).unlink()
    with pytest.raises(UserError) as e:
        load(fixture, tmp_path)
    assert expected in str(e.value) and "Expected layout" in str(e.value) and "never downloads" in str(e.value)


def test_annotation_errors_are_user_errors(tmp_path):
    fixture = fx.build("aircraft", tmp_path / "data")
    lst = fixture.root / "fgvc-aircraft-2013b/data/images_variant_test.txt"
    lst.write_text(lst.read_text() + "0000001 Boeing 999\n")
    with pytest.raises(UserError, match="names variant 'Boeing 999'"):
        load(fixture, tmp_path)
    fixture = fx.build("flowers102", tmp_path / "fl")
    (fixture.root / "flowers-102/imagelabels.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match="not a readable MATLAB file"):
        load(fixture, tmp_path)


def test_unknown_option_is_refused(tmp_path):
    fixture = fx.build("cub200", tmp_path / "data")
    with pytest.raises(UserError, match="crop_banner"):  # an Aircraft option, not CUB's
        load(fixture, tmp_path, crop_banner="true")


def _break_two_images(fixture: fx.Fixture, split: str = "train") -> list[str]:
    listing = paper.list_dataset(fixture.name, fixture.root)
    first, second = (listing.base / listing.splits[split][i][0] for i in (0, 3))
    first.write_bytes(first.read_bytes()[:200])  # truncated JPEG
    second.unlink()
    return [str(first), str(second)]


def test_unusable_images_are_skipped_listed_and_counted(tmp_path):
    fixture = fx.build("cub200", tmp_path / "data")
    broken = _break_two_images(fixture)
    with pytest.warns(UserWarning, match="2 missing or unreadable"):
        bundle = load(fixture, tmp_path)
    assert len(bundle.train) == fixture.sizes["train"] - 2
    unusable = bundle.info["unusable"]
    assert unusable["count"] == 2
    assert sorted(f["path"] for f in unusable["files"]) == sorted(broken)
    reasons = {f["path"]: f["reason"] for f in unusable["files"]}
    assert reasons[broken[1]] == "missing" and reasons[broken[0]].startswith("unreadable")
    assert torch.equal(class_of(bundle.train, fixture.class_colors["train"]), bundle.train.labels)
    with pytest.raises(UserError) as e:
        load(fixture, tmp_path, max_bad=1)
    assert "max_bad=1" in str(e.value) and broken[0] in str(e.value)


def test_train_fraction_on_a_cached_split(tmp_path):
    fixture = fx.build("cub200", tmp_path / "data")
    cfg = RunConfig(data="cub200", data_root=str(fixture.root), resolution=RES, train_fraction=0.34,
                    data_options={"cache_dir": str(tmp_path / "cache"), "workers": 1})
    bundle = datasets.load(cfg)
    assert torch.bincount(bundle.train.labels).tolist() == [1, 1, 1, 1]
    assert torch.equal(class_of(bundle.train, fixture.class_colors["train"]), bundle.train.labels)


def test_list_datasets_shows_the_paper_datasets():
    assert {"flowers102", "cub200", "aircraft", "mit67", "dogs", "cars196", "cub200-retrieval",
            "cars196-retrieval"} <= set(datasets.names())
    assert datasets.get_spec("cars196-retrieval").defaults["lr"] == 0.0256
    assert datasets.get_spec("aircraft").defaults == {"lr": 0.256, "batch_size": 32, "epochs": 200, "warmup_epochs": 5}
    assert datasets.get_spec("cub200-retrieval").defaults["warmup_epochs"] == 5  # KE code: every generation
    assert datasets.get_spec("digits").defaults.get("warmup_epochs", 0) == 0  # quick checks stay quick


# ---------------------------------------------------------------------------- CLI
def _cli(argv, capsys):
    from kebench.cli import main

    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_cli_run_aircraft_end_to_end(tmp_path, capsys):
    fixture = fx.build("aircraft", tmp_path / "data")
    out = tmp_path / "results"
    code, text = _cli(["run", "--data", "aircraft", "--data-root", str(fixture.root), "--arch", "test_resnet",
                       "--resolution", "32", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
                       "--out", str(out), "--quiet", "--data-opt", f"cache_dir={tmp_path / 'cache'}",
                       "--data-opt", "workers=1"], capsys)
    assert code == 0, text
    (result_path,) = out.glob("*/result.json")
    result = json.loads(result_path.read_text())
    assert result["status"] == "complete" and result["dataset"] == "aircraft"
    assert result["data"]["options"] == {"crop_banner": True}
    assert result["data"]["splits"] == {"train": 6, "val": 3, "test": 6}
    assert result["data"]["unusable"]["count"] == 0
    assert result["config"]["lr"] == 0.256 and result["training"]["steps"] == 1  # 6 images, batch 4, drop_last
    assert 0.0 <= result["final"]["top1"] <= 1.0


def test_cli_run_missing_root_and_broken_layout_exit_2(tmp_path, capsys):
    code, text = _cli(["run", "--data", "aircraft", "--data-root", str(tmp_path / "missing"), "--arch", "test_resnet",
                       "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "r"), "--quiet"], capsys)
    assert code == 2 and "does not exist" in text and "variants.txt" in text
    fixture = fx.build("aircraft", tmp_path / "data")
    (fixture.root / "fgvc-aircraft-2013b/data/images_variant_val.txt").unlink()
    code, text = _cli(["run", "--data", "aircraft", "--data-root", str(fixture.root), "--arch", "test_resnet",
                       "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "r"), "--quiet"], capsys)
    assert code == 2 and "images_variant_val.txt" in text and "Traceback" not in text


def test_cli_data_check(tmp_path, capsys):
    fixture = fx.build("cars196", tmp_path / "data")
    code, text = _cli(["data", "check", "cars196", "--data-root", str(fixture.root), "--workers", "1"], capsys)
    assert code == 0, text
    assert "devkit layout" in text and "ok: 16 images in 2 splits" in text
    code, text = _cli(["data", "check", "cars196", "--data-root", str(fixture.root), "--strict"], capsys)
    assert code == 1 and "the official copy has 8144" in text
    listing = paper.list_dataset("cars196", fixture.root)
    victim = listing.base / listing.splits["test"][2][0]
    victim.write_bytes(b"\xff\xd8\xff garbage")
    code, text = _cli(["data", "check", "cars196", "--data-root", str(fixture.root), "--workers", "1"], capsys)
    assert code == 1 and "unreadable" in text and victim.name in text and "1 listed images are missing" in text
    code, text = _cli(["data", "check", "cars196", "--data-root", str(tmp_path / "empty")], capsys)
    assert code == 2 and "does not exist" in text
    os.makedirs(tmp_path / "empty")
    code, text = _cli(["data", "check", "cars196", "--data-root", str(tmp_path / "empty")], capsys)
    assert code == 2 and "neither the devkit layout" in text
    code, text = _cli(["data", "check", "digits", "--data-root", str(tmp_path)], capsys)
    assert code == 2 and "Unknown paper dataset 'digits'" in text


def test_the_digits_default_network_runs_no_stage_below_2x2():
    """At the default arch and resolution every k x k conv (and pool) of the network sees a map of at
    least 2x2: on a 1x1 map a 3x3 conv's off-centre weights only ever multiply zero padding (the
    earlier default, resnet10t at 16 px, ran its last two stages so)."""
    from torch import nn

    from kebench.config import resolve
    from kebench.nets.models import create_model

    cfg = resolve({})
    sizes = {}

    def record(name):
        return lambda module, args, out: sizes.__setitem__(name, (tuple(args[0].shape[-2:]), tuple(out.shape[-2:])))

    def traced(arch, resolution):
        model = create_model(arch, 10, in_chans=1).eval()
        sizes.clear()
        hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules()
                 if (isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1) or isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
        with torch.no_grad():
            model(torch.zeros(1, 1, resolution, resolution))
        for h in hooks:
            h.remove()
        return min(min(i + o) for i, o in sizes.values())

    assert len(sizes) == 0 and traced(cfg.arch, cfg.resolution) == 2
    assert len([n for n in sizes if "layer4" in n]) >= 2  # the last stage was traced
    assert traced("resnet10t", 16) == 1 and traced(cfg.arch, 32) == 1  # what the check catches


def test_cub_subset_with_sparse_class_ids(tmp_path, capsys):
    """A CUB copy listing class ids 1, 2 and 101: ids are labels (remapped to 0..2), the retrieval
    split follows the ids (1-100 train, 101-200 test), and data check warns about the subset."""
    fixture = fx.build("cub200", tmp_path / "data")
    d = fixture.root / "CUB_200_2011"
    names = [ln.split(" ", 1)[1] for ln in (d / "classes.txt").read_text().splitlines()]
    ids = {1: 1, 2: 2, 3: 101}  # drop class 4: its images go, class 3 becomes id 101
    labels = dict(ln.split() for ln in (d / "image_class_labels.txt").read_text().splitlines())
    keep = {k for k, c in labels.items() if int(c) in ids}
    for fname in ("images.txt", "train_test_split.txt", "bounding_boxes.txt"):
        lines = (d / fname).read_text().splitlines()
        (d / fname).write_text("".join(ln + "\n" for ln in lines if ln.split()[0] in keep))
    (d / "image_class_labels.txt").write_text("".join(f"{k} {ids[int(c)]}\n" for k, c in labels.items() if k in keep))
    (d / "classes.txt").write_text("".join(f"{ids[i]} {names[i - 1]}\n" for i in (1, 2, 3)))
    b = load(fx.Fixture("cub200", fixture.root, {}, 3, {}, fixture.probe, 0), tmp_path)
    assert b.num_classes == 3 and (len(b.train), len(b.test)) == (9, 6)
    assert torch.equal(class_of(b.train, fx.PALETTE[:3]), b.train.labels)  # id 101 -> label 2, its colour
    r = load(fx.Fixture("cub200-retrieval", fixture.root, {}, 2, {}, fixture.probe, 0), tmp_path)
    assert r.num_classes == 2 and sorted(set(r.train.labels.tolist())) == [0, 1] and set(r.test.labels.tolist()) == {0}
    assert len(r.test) == 5 and "test on 101 (1)" in r.info["split"]
    code, text = _cli(["data", "check", "cub200-retrieval", "--data-root", str(fixture.root), "--workers", "1"], capsys)
    assert code == 0 and "warning:" in text and "subset" in text
    (d / "classes.txt").write_text("".join(f"{ids[i]} {names[i - 1]}\n" for i in (1, 2)))
    with pytest.raises(UserError, match="has class 101, which classes.txt does not list"):
        load(fx.Fixture("cub200", fixture.root, {}, 3, {}, fixture.probe, 0), tmp_path)


# ---------------------------------------------------------------------------- subset copies: class ids are labels
CARS_IDS = (3, 7, 98, 99, 150)  # spans the Cars retrieval boundary (1-98 train, 99-196 test)
SUBSETS = {  # key -> (builder, the copy's class ids, its class names by id)
    "cars196": (lambda root: fx.build_cars196(root, class_ids=CARS_IDS), CARS_IDS,
                [f"car model {k}" for k in CARS_IDS]),
    "cars196-allinone": (lambda root: fx.build_cars196(root, "all-in-one", class_ids=CARS_IDS), CARS_IDS,
                         [f"car model {k}" for k in CARS_IDS]),
    "flowers102": (lambda root: fx.build_flowers102(root, class_ids=(5, 17, 102)), (5, 17, 102),
                   ["flower 5", "flower 17", "flower 102"]),
    "dogs": (lambda root: fx.build_dogs(root, class_ids=(4, 60, 120)), (4, 60, 120), fx.DOG_BREEDS),
}


def _plain(text: str) -> str:
    return " ".join(text.split())  # the console wraps long lines


@pytest.mark.parametrize("key", list(SUBSETS))
def test_subset_copy_remaps_class_ids_to_labels_in_id_order(key, tmp_path):
    """A copy using class ids 3, 7, 98, 99 and 150 of a full 196-name meta (or Flowers labels 5, 17, 102
    with the unlisted images labelled 1, or Dogs 4, 60, 120) has exactly those classes, labels 0..K-1
    in id order, names by id."""
    build, ids, names = SUBSETS[key]
    fixture = build(tmp_path / "data")
    listing = paper.list_dataset(fixture.name, fixture.root)
    assert listing.class_ids == list(ids) and listing.classes == names
    b = load(fixture, tmp_path)
    assert b.num_classes == len(ids) and b.info["class_ids"] == paper.id_ranges(list(ids))
    per_class = {"cars196": {"train": 2, "test": 2}, "flowers102": {"train": 2, "val": 1, "test": 2},
                 "dogs": {"train": 2, "test": 1}}[fixture.name]
    for split, k in per_class.items():
        labels = getattr(b, split).labels
        assert labels.tolist() == [c for c in range(len(ids)) for _ in range(k)]  # the fixture writes class-major
        assert torch.equal(class_of(getattr(b, split), fx.PALETTE[:len(ids)]), labels)  # each id's own images


@pytest.mark.parametrize("layout", ["devkit", "all-in-one"])
def test_cars_subset_keeps_the_retrieval_split_by_id(layout, tmp_path, capsys):
    fixture = fx.build_cars196(tmp_path / "data", layout, retrieval=True, class_ids=CARS_IDS)
    listing = paper.list_dataset("cars196-retrieval", fixture.root)
    assert listing.half() == 3 and listing.class_ids == list(CARS_IDS)  # 3, 7, 98 | 99, 150
    b = load(fixture, tmp_path)
    assert b.num_classes == 3 and (len(b.train), len(b.test)) == (12, 8)
    assert sorted(set(b.train.labels.tolist())) == [0, 1, 2] and sorted(set(b.test.labels.tolist())) == [0, 1]
    assert torch.equal(class_of(b.train, fx.PALETTE[:3]), b.train.labels)
    assert torch.equal(class_of(b.test, fx.PALETTE[3:5]), b.test.labels)  # ids 99 and 150, re-based to 0, 1
    assert b.info["split"] == "class-disjoint: train on class ids 3, 7, 98 (3 classes), test on 99, 150 (2)"
    code, text = _cli(["data", "check", "cars196-retrieval", "--data-root", str(fixture.root), "--workers", "1"], capsys)
    text = _plain(text)
    assert code == 0, text
    assert ("warning: train: 3 classes (class ids 3, 7, 98), the official split has 98 (class ids 1-98) "
            "(a subset: it trains, but its numbers are not the paper's)") in text
    assert "warning: test: 2 classes (class ids 99, 150), the official split has 98 (class ids 99-196)" in text
    assert "warning: train: 12 images listed, the official copy has 8054" in text


@pytest.mark.parametrize("build, message", [
    (lambda root: fx.build_cars196(root, class_ids=(3, 7, 150), meta=fx.car_names(3)),
     "image cars_train/00003.jpg (cars_train_annos.mat) has class 7, outside 1..3, the class ids "
     "devkit/cars_meta.mat declares (a class id is a position in its 3 class_names)."),
    (lambda root: fx.build_cars196(root, "all-in-one", class_ids=(3, 7, 150), meta=fx.car_names(3)),
     "image car_ims/000005.jpg (cars_annos.mat) has class 7, outside 1..3, the class ids cars_annos.mat "
     "declares (a class id is a position in its 3 class_names)."),
    (lambda root: fx.build_flowers102(root, class_ids=(5, 17, 103)),
     "image id 11 (setid.mat 'trnid', labelled in imagelabels.mat) has class 103, outside 1..102, the "
     "Flowers-102 class ids."),
    (lambda root: fx.build_dogs(root, class_ids=(4, 60, 121)),
     "train_list.mat entry 5 (Images/n02085936-Maltese_dog/n02085936_2000.jpg) has class 121, outside 1..120, "
     "the Stanford Dogs class ids."),
    (lambda root: fx.build_dogs(root, class_ids=(4, 4, 120)),
     "train_list.mat gives Images/n02085782-Japanese_spaniel/n02085782_1000.jpg class 4, which the lists also "
     "give to n02085620-Chihuahua/: one class id per breed folder."),
])
def test_an_undeclared_class_is_a_layout_error_naming_the_image(build, message, tmp_path, capsys):
    fixture = build(tmp_path / "data")
    with pytest.raises(UserError) as e:
        load(fixture, tmp_path)
    assert message in str(e.value) and "Expected layout" in str(e.value)
    code, text = _cli(["data", "check", fixture.name, "--data-root", str(fixture.root)], capsys)
    assert code == 2 and message in _plain(text) and "Traceback" not in text


@pytest.mark.parametrize("key, warning", [
    ("cars196", "warning: 5 classes (class ids 3, 7, 98-99, 150), the official copy has 196 "
                "(a subset: it trains, but its numbers are not the paper's)"),
    ("flowers102", "warning: 3 classes (class ids 5, 17, 102), the official copy has 102"),
    ("dogs", "warning: 3 classes (class ids 4, 60, 120), the official copy has 120"),
])
def test_data_check_warns_which_classes_a_subset_has(key, warning, tmp_path, capsys, monkeypatch):
    build, ids, _ = SUBSETS[key]
    fixture = build(tmp_path / "data")
    argv = ["data", "check", fixture.name, "--data-root", str(fixture.root), "--workers", "1"]
    code, text = _cli(argv, capsys)
    text = _plain(text)
    assert code == 0 and warning in text and f": {len(ids)} classes" in text, text
    assert f"ok: {sum(fixture.sizes.values())} images in {len(fixture.sizes)} splits" in text
    code, text = _cli([*argv, "--strict"], capsys)
    assert code == 1 and "problem: " + warning.removeprefix("warning: ").split(" (a subset")[0] in _plain(text)
    monkeypatch.setattr(paper.PAPER[fixture.name], "official_classes", len(ids))  # as many classes: no class line
    code, text = _cli(argv, capsys)
    assert code == 0 and "classes (class ids" not in _plain(text)


def test_declared_classes_no_list_uses_are_not_classes_of_the_copy(tmp_path, capsys):
    """Aircraft names its classes: a variants.txt listing a variant no image list uses (a subset copy
    that kept the official file) loads the used variants, in variants.txt order; so does a CUB
    classes.txt naming a class without images. data check names them."""
    fixture = fx.build("aircraft", tmp_path / "data")
    variants = fixture.root / "fgvc-aircraft-2013b/data/variants.txt"
    variants.write_text("Boeing 747\n" + variants.read_text() + "DC-3\n")
    listing = paper.list_dataset("aircraft", fixture.root)
    assert listing.classes == fx.AIRCRAFT_VARIANTS and listing.class_ids is None
    b = load(fixture, tmp_path)
    assert b.num_classes == 3 and torch.equal(class_of(b.test, fx.PALETTE[:3]), b.test.labels)
    code, text = _cli(["data", "check", "aircraft", "--data-root", str(fixture.root), "--workers", "1"], capsys)
    assert code == 0 and "warning: 3 classes (707-320, F/A-18, Falcon 2000), the official copy has 100" in _plain(text)
    fixture = fx.build("cub200", tmp_path / "cub")
    classes = fixture.root / "CUB_200_2011/classes.txt"
    classes.write_text(classes.read_text() + "200 200.Common_Yellowthroat\n")
    listing = paper.list_dataset("cub200", fixture.root)
    assert listing.class_ids == [1, 2, 3, 4] and listing.classes == fx.CUB_CLASSES
