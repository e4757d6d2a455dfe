"""CIFAR-10/100, MNIST, ImageNet, Tiny-ImageNet and `folder`: tiny copies in the real on-disk
formats load with exact sizes, labels and pixels; damaged files end in one clear error; `data
check` warns about subsets; the CIFAR recipe (pad + crop + flip, each dataset's own statistics)."""
from __future__ import annotations

import json
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fixtures_datasets as fx  # noqa: E402

from kebench import data as datasets  # noqa: E402
from kebench.config import RunConfig  # noqa: E402
from kebench.data import arrays  # noqa: E402
from kebench.data.pipeline import BatchStream, pad_crop  # noqa: E402
from kebench.errors import UserError  # noqa: E402


def load(name, root, tmp_path=None, resolution=None, **options):
    if tmp_path is not None:
        options = {"cache_dir": str(tmp_path / "cache"), "workers": 1, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # subset warnings: asserted where they matter
        return datasets.load(RunConfig(data=name, data_root=str(root), data_options=options, resolution=resolution))


def _cli(argv, capsys):
    from kebench.cli import main

    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ---------------------------------------------------------------------------- CIFAR
def test_cifar10_folder_loads_images_labels_and_recipe(tmp_path):
    labels = fx.build_cifar(tmp_path, "cifar10")
    with pytest.warns(UserWarning, match="subset"):
        b = datasets.load(RunConfig(data="cifar10", data_root=str(tmp_path)))
    assert (len(b.train), len(b.test)) == (28, 10) and b.num_classes == 10 and b.resolution == 32
    assert b.train.labels.tolist() == labels["train"] and b.test.labels.tolist() == labels["test"]
    assert b.train.images.shape == (28, 3, 32, 32) and b.train.images.dtype == torch.uint8
    # channel-major rows: pixel (0, 0) of the red plane carries the row index, the rest the class colour
    assert b.train.images[:20, 0, 0, 0].tolist() == list(range(20))
    assert b.test.images[3, :, 5, 7].tolist() == list(fx.PALETTE[3])
    assert b.pad_crop == 4 and b.flip and b.mean == arrays.CIFAR10_MEAN and b.std == arrays.CIFAR10_STD
    assert b.info["matches_official"] is False and b.info["official_sizes"] == {"train": 50000, "test": 10000}


def test_cifar100_archive_has_its_own_statistics(tmp_path):
    labels = fx.build_cifar(tmp_path, "cifar100", per_class=1, archive=True)
    assert not (tmp_path / "cifar-100-python").exists()
    b = load("cifar100", tmp_path)
    assert b.num_classes == 100 and b.train.labels.tolist() == labels["train"]
    assert b.info["layout"] == "archive"
    assert b.mean == arrays.CIFAR100_MEAN != arrays.CIFAR10_MEAN  # the classic copy error, ruled out
    assert datasets.get_spec("cifar100").defaults["lr_schedule"] == "step"


def test_pad_crop_matches_torchvision_random_crop():
    from torchvision.transforms import functional as TF

    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [8, 3], [4, 4]])
    flips = torch.tensor([False, True, False])
    got = pad_crop(x, 4, offsets, flips)
    for i in range(3):
        ref = TF.crop(TF.pad(x[i], [4]), int(offsets[i, 0]), int(offsets[i, 1]), 8, 8)
        ref = TF.hflip(ref) if flips[i] else ref
        assert torch.equal(got[i], ref.float())
    assert torch.equal(pad_crop(x, 4, torch.full((3, 2), 4), torch.zeros(3, dtype=torch.bool)), x.float())


def test_cifar_training_batches_are_padded_crops(tmp_path):
    fx.build_cifar(tmp_path, "cifar10")
    b = load("cifar10", tmp_path)
    stream = BatchStream(b, b.train, batch_size=28, device=torch.device("cpu"), train=True)
    x, y = stream.load(torch.arange(28), torch.Generator().manual_seed(0))
    assert x.shape == (28, 3, 32, 32)
    zero = ((0 - torch.tensor(b.mean)) / torch.tensor(b.std)).view(3, 1, 1)
    border = torch.isclose(x, zero.expand_as(x[0])).all(1)  # zero-padding pixels after normalisation
    assert border.any() and not border.all()
    xt, _ = BatchStream(b, b.test, batch_size=10, device=torch.device("cpu"), train=False).load(torch.arange(10))
    mean, std = torch.tensor(b.mean).view(3, 1, 1) * 255, torch.tensor(b.std).view(3, 1, 1) * 255
    assert torch.allclose(xt * std + mean, b.test.images.float(), atol=1e-3)  # test: the image as it is


@pytest.mark.parametrize("damage, expected", [
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "not a readable CIFAR pickle"),
    (lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2)), "lacks the key(s) labels"),
    (lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})), "expected uint8 (N, 3072)"),
    (lambda p: p.unlink(), "data_batch_3"),
])
def test_damaged_cifar_is_a_clear_error(tmp_path, damage, expected):
    fx.build_cifar(tmp_path, "cifar10")
    damage(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(UserError) as err:
        load("cifar10", tmp_path)
    assert expected in str(err.value) and "cifar-10-batches-py/" in str(err.value)


def test_cifar_pickle_may_not_build_other_objects(tmp_path):
    fx.build_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Path("x")}))
    with pytest.raises(UserError, match="refusing to load"):
        load("cifar10", tmp_path)


# ---------------------------------------------------------------------------- MNIST
@pytest.mark.parametrize("gz, flat", [(True, False), (False, True)])
def test_mnist_idx_files_raw_or_gz(tmp_path, gz, flat):
    labels = fx.build_mnist(tmp_path, gz=gz, flat=flat)
    b = load("mnist", tmp_path)
    assert (len(b.train), len(b.test), b.in_chans, b.resolution) == (20, 10, 1, 28)
    assert b.train.labels.tolist() == labels["train"].tolist()
    assert b.train.images[:, 0, 3, 3].tolist() == (20 * labels["train"] + 5).tolist()
    assert not b.flip and b.pad_crop == 0  # no augmentation: a mirrored digit is another glyph
    rgb = load("mnist", tmp_path, channels=3)
    assert rgb.in_chans == 3 and rgb.train.images.shape == (20, 3, 28, 28) and len(rgb.mean) == 3
    assert torch.equal(rgb.train.images[:, 2], b.train.images[:, 0])


def test_mnist_wrong_magic_and_truncation(tmp_path):
    fx.build_mnist(tmp_path, gz=False, flat=True)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(fx.idx_bytes(np.zeros(10), 2051))  # an images magic on a labels file
    with pytest.raises(UserError, match="magic number 2049"):
        load("mnist", tmp_path)
    path.write_bytes(fx.idx_bytes(np.zeros(10), 2049)[:-3])
    with pytest.raises(UserError, match="truncated"):
        load("mnist", tmp_path)
    path.unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        load("mnist", tmp_path)


# ---------------------------------------------------------------------------- ImageNet, Tiny-ImageNet, folder
@pytest.mark.parametrize("val", ["folders", "devkit", "csv"])
def test_imagenet_val_layouts_and_streaming(tmp_path, val):
    labels = fx.build_imagenet(tmp_path / "data", val=val)
    b = load("imagenet", tmp_path / "data", tmp_path, )
    assert b.num_classes == 3 and (len(b.train), len(b.test)) == (9, 6)
    expected = sorted(labels["test"]) if val == "folders" else labels["test"]  # class folders list by class
    assert b.train.labels.tolist() == labels["train"] and b.test.labels.tolist() == expected
    assert all(i["mode"] == "dataloader" for i in b.info["cache"].values())  # streamed, never cached
    assert not (tmp_path / "cache" / "imagenet").exists()
    # decoded on demand, in the cache's per-image transform: the class colour survives
    means = b.test.images[torch.arange(6)].float().mean((2, 3))
    assert torch.cdist(means, torch.tensor(fx.PALETTE[:3], dtype=torch.float32)).argmin(1).tolist() == expected


def test_imagenet_val_image_without_label_is_refused(tmp_path):
    fx.build_imagenet(tmp_path, val="csv")
    fx._write_small_jpeg(tmp_path / "val" / "ILSVRC2012_val_00000099.JPEG", fx.PALETTE[0])
    with pytest.raises(UserError, match="ILSVRC2012_val_00000099.JPEG has no label"):
        load("imagenet", tmp_path)
    (tmp_path / "LOC_val_solution.csv").unlink()
    with pytest.raises(UserError, match="LOC_val_solution.csv"):
        load("imagenet", tmp_path)


def test_tiny_imagenet_native_64px(tmp_path):
    labels = fx.build_tiny_imagenet(tmp_path / "data")
    b = load("tiny-imagenet", tmp_path / "data", tmp_path)
    assert (b.resolution, b.pad_crop, b.num_classes) == (64, 4, 3)
    assert b.train.images.shape[-2:] == (64, 64) and b.train.extent is None
    assert b.train.labels.tolist() == labels["train"] and b.test.labels.tolist() == labels["test"]
    ann = tmp_path / "data/tiny-imagenet-200/val/val_annotations.txt"
    ann.write_text("".join(ann.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(UserError, match="val_2.JPEG has no label in val/val_annotations.txt"):
        load("tiny-imagenet", tmp_path / "data", tmp_path)


def test_folder_tree(tmp_path):
    fx.build_folder(tmp_path / "a", evals=("val",))
    b = load("folder", tmp_path / "a", tmp_path)
    assert b.num_classes == 2 and (len(b.train), len(b.test), b.val) == (6, 2, None)
    assert b.test.labels.tolist() == [0, 1]
    fx.build_folder(tmp_path / "b", evals=("val", "test"))
    b = load("folder", tmp_path / "b", tmp_path)
    assert (len(b.val), len(b.test)) == (2, 2) and b.info["layout"] == "train/ + val/ + test/"
    fx._write_small_jpeg(tmp_path / "b" / "test" / "bird" / "x.jpg", fx.PALETTE[2])
    with pytest.raises(UserError, match="bird"):
        load("folder", tmp_path / "b", tmp_path)
    with pytest.raises(UserError, match="neither val/ nor test/"):
        fx._write_small_jpeg(tmp_path / "c" / "train" / "x" / "1.jpg", fx.PALETTE[0])
        load("folder", tmp_path / "c", tmp_path)


# ---------------------------------------------------------------------------- CLI
def test_data_check_warns_about_subsets_and_fails_on_damage(tmp_path, capsys):
    fx.build_cifar(tmp_path, "cifar10")
    code, text = _cli(["data", "check", "cifar10", "--data-root", str(tmp_path)], capsys)
    assert code == 0 and "warning:" in text and "the official copy has 50000" in text and "ok: 38 images" in text
    code, text = _cli(["data", "check", "cifar10", "--data-root", str(tmp_path), "--strict"], capsys)
    assert code == 1
    fx.build_mnist(tmp_path / "m", gz=True)
    path = tmp_path / "m/MNIST/raw/train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:10])
    code, text = _cli(["data", "check", "mnist", "--data-root", str(tmp_path / "m")], capsys)
    assert code == 2 and "train-images-idx3-ubyte.gz" in text and "Traceback" not in text
    fx.build_imagenet(tmp_path / "i", val="devkit")
    code, text = _cli(["data", "check", "imagenet", "--data-root", str(tmp_path / "i"), "--workers", "1"], capsys)
    assert code == 0 and "flat val + ground truth" in text and "1281167" in text


def test_cli_run_cifar10_step_schedule(tmp_path, capsys):
    fx.build_cifar(tmp_path / "data", "cifar10")
    out = tmp_path / "r"
    code, text = _cli(["run", "--data", "cifar10", "--data-root", str(tmp_path / "data"), "--arch", "resnet20",
                       "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--out", str(out), "--quiet"], capsys)
    assert code == 0, text
    (path,) = out.glob("*/result.json")
    result = json.loads(path.read_text())
    cfg = result["config"]
    assert (cfg["lr_schedule"], cfg["lr_milestones"], cfg["lr_gamma"], cfg["weight_decay"]) == ("step", [0.5, 0.75], 0.1, 1e-4)
    assert result["data"]["splits"] == {"train": 28, "test": 10}


# ---------------------------------------------------------------------------- streamed decoding
def _slot(path, size, keep_aspect):
    """The decode cache's slot of one image (PIL's resize), as a [3, H, W] tensor."""
    from kebench.data import cache

    return torch.from_numpy(np.array(cache.to_slot(cache.decode_image(path, size, 0, keep_aspect), size, keep_aspect)[0])).permute(2, 0, 1)


def test_streamed_workers_decode_whole_batches_as_the_cache_does(tmp_path):
    """DataLoader workers decode a batch at a time into one channels-last uint8 batch (torchvision's
    decoder for plain JPEGs, PIL for large JPEGs, grayscale, CMYK and PNG), within one grey level of
    the decode cache's pixels, the slot beyond each image black; an epoch's batches arrive in order."""
    names = fx.build_imagenet_mixed(tmp_path / "data")
    b = load("imagenet", tmp_path / "data", tmp_path, resolution=32)
    images = b.train.images
    assert [p.name for p in images.paths] == names and b.info["cache"]["train"]["decode"] == "auto"
    stream = BatchStream(b, b.train, batch_size=8, device=torch.device("cpu"), train=True)
    assert stream.images is images  # on a CPU the workers decode (decode=auto)
    order = [torch.tensor([5, 0, 17, 3, 4, 9, 1, 2]), torch.tensor([6, 7, 8, 10, 11, 12, 13, 14])]
    images.plan(order)
    for index in order:
        x = images[index]
        first = x if index is order[0] else first
        assert x.shape == (8, 3, 37, 74) and x.is_contiguous(memory_format=torch.channels_last)
        for row, i in zip(x, index.tolist()):
            h, w = sorted(b.train.extent[i].tolist())
            assert (row.int() - _slot(images.paths[i], 37, True).int()).abs().max() <= 1
            assert row[:, :h, :w].float().mean() > 20 and row[:, h:].sum() == 0 and row[:, :, w:].sum() == 0 and w < 74
    assert not images._pending and images._loader is not None
    loader = images._loader
    images.plan(order[::-1])  # the next epoch reuses the same worker processes
    assert torch.equal(images[order[1]], x) and images._loader is loader
    images.plan(order)  # an epoch left unfinished: the next one still gets its own batches
    assert torch.equal(images[order[0]], first) and torch.equal(images[order[1]], x) and not images._pending
    test = b.test.images[torch.arange(len(b.test))]  # evaluation: the center square, decoded synchronously
    assert all((row.int() - _slot(p, 37, False).int()).abs().max() <= 1 for row, p in zip(test, b.test.images.paths))


def test_decode_option_chooses_gpu_only_for_jpegs_on_cuda_and_refuses_the_impossible(tmp_path):
    from kebench.data import cache

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert cache.choose_decoder("auto", cuda, ["a/x.JPEG", "b/y.jpg"]) == "gpu"
    assert cache.choose_decoder("auto", cuda, ["a/x.JPEG", "b/y.png"]) == "cpu"
    assert cache.choose_decoder("auto", cpu, ["a/x.JPEG"]) == "cpu"
    assert cache.choose_decoder("cpu", cuda, ["a/x.JPEG"]) == "cpu"
    assert cache.choose_decoder("gpu", cuda, ["b/y.png"]) == "gpu"  # asked for: refusals fall back per image
    with pytest.raises(UserError, match="decode=gpu decodes JPEGs with nvjpeg on a CUDA device.*this run is on cpu"):
        cache.choose_decoder("gpu", cpu, ["a/x.JPEG"])
    fx.build_imagenet(tmp_path / "data")
    with pytest.raises(UserError, match="decode='nvjpeg' is not one of auto, cpu, gpu"):
        load("imagenet", tmp_path / "data", tmp_path, decode="nvjpeg")
    b = load("imagenet", tmp_path / "data", tmp_path, decode="gpu")
    with pytest.raises(UserError, match="decode=gpu"):
        BatchStream(b, b.train, batch_size=4, device=torch.device("cpu"), train=True)


def test_gpu_decoding_reads_bytes_in_workers_and_falls_back_per_image(tmp_path, monkeypatch):
    """With GPU decoding the workers only read the plain JPEGs (bytes); grayscale, CMYK and PNG files
    are decoded by PIL in the workers. `decode_jpeg` runs here on the CPU (the path `decoded_on` a
    GPU takes, with torchvision's CPU decoder); a batch it refuses is decoded image by image, and an
    image it refuses by PIL from the same bytes. Every way gives the CPU workers' pixels (libjpeg's
    reduced-scale decoding of the large JPEG aside)."""
    import torchvision.io

    from kebench.data import cache

    fx.build_imagenet_mixed(tmp_path / "data")
    b = load("imagenet", tmp_path / "data", tmp_path, resolution=32)
    cpu = b.train.images
    gpu = cpu.decoded_on(torch.device("cpu"))
    index = torch.arange(18)
    item = gpu._dataset[index.tolist()]
    plain = [k for k, p in enumerate(cpu.paths) if p.stem.split("_")[-1] in ("wide", "tall", "big")]
    assert [k for k, _ in item[2]] == plain and item[1] == [k for k in range(18) if k not in plain]
    assert all(torch.equal(data, torch.frombuffer(bytearray(cpu.paths[k].read_bytes()), dtype=torch.uint8))
               for k, data in item[2])
    assert item[0].shape == (18 - len(plain), 3, 37, 74)
    reference = cpu[index]
    big = torch.tensor(["big" in p.name for p in cpu.paths])

    def close(x):
        d = (x.int() - reference.int()).abs()
        return d[~big].max() <= 1 and d[big].float().mean() < 4

    gpu.plan([index])
    assert close(gpu[index]) and not gpu._pending  # through the worker and the assembly
    real, calls = torchvision.io.decode_jpeg, []

    def picky(data, **kw):  # refuses every batch, and the tall JPEGs one by one
        calls.append(len(data) if isinstance(data, list) else 1)
        if isinstance(data, list) and len(data) > 1:
            raise RuntimeError("nvjpeg: batch refused")
        one = data[0] if isinstance(data, list) else data
        if any(torch.equal(one, d) for k, d in item[2] if "tall" in cpu.paths[k].name):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    assert close(gpu._assemble(item, 18)) and calls == [len(plain)] + [1] * len(plain)
    assert cache._decode_jpegs([], torch.device("cpu")) == []
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda data, **kw: (_ for _ in ()).throw(RuntimeError("no nvjpeg")))
    with pytest.warns(UserWarning, match="refused every JPEG of a batch"):
        assert close(gpu._assemble(item, 18))
