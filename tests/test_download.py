"""`--download` and `kebench data download`: nothing fetched without the flag; no network is a clear
error that leaves nothing behind; a download (torchvision's, fed tiny archives in the real formats
instead of the network) lands in the layout the loader reads; datasets without a public download
(ImageNet, Cars) say where to get them. No test touches the network."""
from __future__ import annotations

import io
import shutil
import socket
import sys
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

import pytest
from torchvision.datasets import utils as tvu

sys.path.insert(0, str(Path(__file__).parent))
import fixtures_datasets as fx  # noqa: E402

from kebench import data as datasets  # noqa: E402
from kebench.config import RunConfig  # noqa: E402
from kebench.data import download, sources  # noqa: E402


def _cli(argv, capsys):
    from kebench.cli import main

    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _flat(text: str) -> str:
    """rich wraps long error lines: compare with the line breaks folded."""
    return " ".join(text.split())


def _load(name, root, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # subset warnings
        return datasets.load(RunConfig(data=name, data_root=str(root),
                                       data_options={} if name in ("cifar10", "cifar100", "mnist") else
                                       {"cache_dir": str(tmp_path / "cache"), "workers": 1}))


@pytest.fixture
def network(monkeypatch):
    """No network: every urlopen is recorded and fails as a machine without one does."""
    calls = []

    def offline(request, *a, **k):
        calls.append(getattr(request, "full_url", request))
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return calls


def _serve(monkeypatch, files: dict, fail: tuple = ()):
    """torchvision's download_url, fed local bytes: `files` maps a URL's file name to its content;
    URLs containing any of `fail` fail like an unreachable mirror. Returns the URLs asked for."""
    asked = []

    def fake_download_url(url, root, filename=None, md5=None, max_redirect_hops=3):
        asked.append(url)
        if any(f in url for f in fail):
            raise urllib.error.URLError("connection refused")
        name = filename or Path(url).name
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / name).write_bytes(files[name])

    monkeypatch.setattr(tvu, "download_url", fake_download_url)
    return asked


def _tar(folder: Path, arcname: str, mode="w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        t.add(folder, arcname=arcname)
    return buf.getvalue()


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------- (a) no flag, no download
def test_without_the_flag_nothing_is_fetched(tmp_path, network, capsys):
    root = tmp_path / "data"
    root.mkdir()
    code, text = _cli(["data", "check", "cifar10", "--data-root", str(root)], capsys)
    assert code == 2 and "pass --download" in _flat(text) and "kebench data download cifar10" in _flat(text)
    code, text = _cli(["run", "--data", "mnist", "--data-root", str(root), "--epochs", "1", "--device", "cpu",
                       "--out", str(tmp_path / "r"), "--quiet"], capsys)
    assert code == 2 and "never downloads data unless asked" in _flat(text)
    assert network == [] and list(root.iterdir()) == []
    # a dataset without a public download keeps the old sentence
    code, text = _cli(["data", "check", "cars196", "--data-root", str(root)], capsys)
    assert code == 2 and "never downloads data itself" in _flat(text) and "--download" not in text


# ---------------------------------------------------------------------------- (b) no network
@pytest.mark.parametrize("name, url, layout", [
    ("cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "<root>/cifar-100-python/train, test, meta"),
    ("tiny-imagenet", sources.TINY_IMAGENET_URL, "<root>/tiny-imagenet-200/val/val_annotations.txt"),
])
def test_no_network_is_one_clear_error_and_leaves_nothing(tmp_path, network, capsys, name, url, layout):
    root = tmp_path / "new" / "data"  # created by the download
    code, text = _cli(["data", "download", name, "--data-root", str(root)], capsys)
    flat = _flat(text)
    assert code == 2 and "Traceback" not in text
    assert f"('{name}') failed: tried {url} (URLError:" in flat and "Temporary failure in name resolution" in flat
    assert f"Nothing was placed in {root}" in flat and "get it by hand: the files come from" in flat and layout in text
    assert network and network[0] == url
    assert list(root.iterdir()) == []  # no temporary folder, no lock file, no half layout


def test_mnist_names_every_mirror_it_tried(tmp_path, network, capsys):
    code, text = _cli(["data", "check", "mnist", "--download", "--data-root", str(tmp_path)], capsys)
    flat = _flat(text)
    assert code == 2
    assert ("tried https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz (URLError:" in flat
            and "; http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz (URLError:" in flat)
    assert "<root>/MNIST/raw/train-images-idx3-ubyte" in text and list(tmp_path.iterdir()) == []


def test_a_stalled_connection_times_out(tmp_path, monkeypatch, capsys):
    seen = []

    def stalled(request, *a, **k):
        seen.append(socket.getdefaulttimeout())
        raise TimeoutError("timed out")

    monkeypatch.setattr(urllib.request, "urlopen", stalled)
    code, text = _cli(["data", "download", "aircraft", "--data-root", str(tmp_path)], capsys)
    assert code == 2 and "(TimeoutError: timed out)" in _flat(text)
    assert "fgvc-aircraft-2013b.tar.gz" in _flat(text)
    assert seen == [download.TIMEOUT_S] * len(seen) and socket.getdefaulttimeout() is None  # restored


def test_a_checksum_mismatch_is_reported(tmp_path, monkeypatch, capsys):
    """torchvision's own download path (redirect probe, streamed save, MD5 check) on a fake response."""
    class Response(io.BytesIO):
        def __init__(self, url):
            super().__init__(b"not the CIFAR archive")
            self.url, self.length = url, 21

    monkeypatch.setattr(urllib.request, "urlopen", lambda request, *a, **k: Response(request.full_url))
    code, text = _cli(["data", "download", "cifar10", "--data-root", str(tmp_path)], capsys)
    assert code == 2 and "did not match the official file" in _flat(text) and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- (c) a download that works
def test_cifar_download_lands_in_the_layout_the_loader_reads(tmp_path, network, monkeypatch, capsys):
    src = tmp_path / "src"
    labels = fx.build_cifar(src, "cifar10", archive=True)
    asked = _serve(monkeypatch, {"cifar-10-python.tar.gz": (src / "cifar-10-python.tar.gz").read_bytes()})
    root = tmp_path / "data"
    code, text = _cli(["data", "check", "cifar10", "--download", "--data-root", str(root)], capsys)
    assert code == 0, text
    assert asked == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert "ok: 38 images" in text and "the official copy has 50000" in text
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # archive and temp folder gone
    b = _load("cifar10", root, tmp_path)
    assert (len(b.train), len(b.test)) == (28, 10) and b.train.labels.tolist() == labels["train"]
    # there already: not fetched again
    code, text = _cli(["data", "download", "cifar10", "--data-root", str(root)], capsys)
    assert code == 0 and "not downloaded again" in _flat(text) and len(asked) == 1 and network == []


def test_mnist_download_falls_back_to_the_next_mirror(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    fx.build_mnist(src, gz=True, train=30, test=20)
    raw = src / "MNIST" / "raw"
    asked = _serve(monkeypatch, {p.name: p.read_bytes() for p in raw.iterdir()}, fail=("ossci-datasets",))
    root = tmp_path / "data"
    code, text = _cli(["data", "download", "mnist", "--data-root", str(root)], capsys)
    assert code == 0, text
    assert len(asked) == 8 and sum("yann.lecun.com" in u for u in asked) == 4
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(p.name[:-3] for p in raw.iterdir())
    b = _load("mnist", root, tmp_path)
    assert (len(b.train), len(b.test)) == (30, 20) and b.train.labels.tolist() == [i % 10 for i in range(30)]


def test_tiny_imagenet_and_flowers_downloads(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    fx.build_tiny_imagenet(src)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted((src / "tiny-imagenet-200").rglob("*")):
            z.write(p, p.relative_to(src).as_posix())
    fl = fx.build("flowers102", tmp_path / "fsrc")
    base = fl.root / "flowers-102"
    asked = _serve(monkeypatch, {"tiny-imagenet-200.zip": buf.getvalue(), "102flowers.tgz": _tar(base / "jpg", "jpg"),
                                 "imagelabels.mat": (base / "imagelabels.mat").read_bytes(),
                                 "setid.mat": (base / "setid.mat").read_bytes()})
    root = tmp_path / "data"
    code, text = _cli(["data", "download", "tiny-imagenet", "flowers102", "--data-root", str(root)], capsys)
    assert code == 0, text
    assert asked == [sources.TINY_IMAGENET_URL, "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
                     "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
                     "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat"]
    assert sorted(p.name for p in root.iterdir()) == ["flowers-102", "tiny-imagenet-200"]
    assert sorted(p.name for p in (root / "flowers-102").iterdir()) == ["imagelabels.mat", "jpg", "setid.mat"]
    b = _load("tiny-imagenet", root, tmp_path)
    assert (len(b.train), len(b.test), b.num_classes) == (6, 3, 3)
    want = _load("flowers102", fl.root, tmp_path)
    got = _load("flowers102", root, tmp_path / "c2")
    assert {s: len(getattr(got, s)) for s in ("train", "val", "test")} == \
        {s: len(getattr(want, s)) for s in ("train", "val", "test")} and got.train.labels.tolist() == want.train.labels.tolist()


def test_run_download_fetches_once_then_trains(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    fx.build_cifar(src, "cifar100", archive=True)
    asked = _serve(monkeypatch, {"cifar-100-python.tar.gz": (src / "cifar-100-python.tar.gz").read_bytes()})
    root, out = tmp_path / "data", tmp_path / "r"
    code, text = _cli(["run", "--download", "--data", "cifar100", "--data-root", str(root), "--arch", "resnet20",
                       "--seeds", "0,1", "--epochs", "1", "--batch-size", "50", "--device", "cpu",
                       "--out", str(out), "--quiet"], capsys)
    assert code == 0, text
    assert len(asked) == 1 and len(list(out.glob("*/result.json"))) == 2


def test_a_download_in_the_wrong_layout_places_nothing(tmp_path, monkeypatch, capsys):
    junk = tmp_path / "junk"
    (junk / "something-else").mkdir(parents=True)
    (junk / "something-else" / "readme.txt").write_text("not CUB")
    _serve(monkeypatch, {"CUB_200_2011.tgz": _tar(junk / "something-else", "something-else")})
    root = tmp_path / "data"
    code, text = _cli(["data", "download", "cub200-retrieval", "--data-root", str(root)], capsys)
    flat = _flat(text)
    assert code == 2 and "did not give the layout kebench reads" in flat and sources.CUB_URL in flat
    assert list(root.iterdir()) == []


def test_existing_unreadable_copy_is_never_overwritten(tmp_path, network, capsys):
    fx.build_cifar(tmp_path, "cifar100")
    batch = tmp_path / "cifar-100-python" / "train"
    batch.write_bytes(batch.read_bytes()[:100])
    code, text = _cli(["data", "check", "cifar100", "--download", "--data-root", str(tmp_path)], capsys)
    flat = _flat(text)
    assert code == 2 and "does not overwrite existing files" in flat and "not a readable CIFAR pickle" in flat
    assert network == [] and batch.stat().st_size == 100


# ---------------------------------------------------------------------------- (d) no public download
def test_imagenet_and_cars_cannot_be_downloaded(tmp_path, network, capsys):
    code, text = _cli(["data", "check", "imagenet", "--download", "--data-root", str(tmp_path)], capsys)
    flat = _flat(text)
    assert code == 2 and "ImageNet ILSVRC-2012 ('imagenet') cannot be downloaded automatically" in flat
    assert "registered users" in flat and "https://image-net.org/download-images" in flat
    assert f"put them under {tmp_path} as:" in flat and "<root>/train/n01440764/" in text
    code, text = _cli(["data", "download", "cars196-retrieval", "--data-root", str(tmp_path)], capsys)
    assert code == 2 and "cannot be downloaded automatically" in _flat(text) and "cars_annos.mat" in text
    code, text = _cli(["data", "download", "digits", "--data-root", str(tmp_path)], capsys)
    assert code == 2 and "nothing to download" in text
    assert network == [] and list(tmp_path.iterdir()) == []
    # a copy that is there is used as it is, --download or not
    fx.build_imagenet(tmp_path / "in")
    code, text = _cli(["data", "check", "imagenet", "--download", "--data-root", str(tmp_path / "in"),
                       "--workers", "1"], capsys)
    assert code == 0 and "not downloaded again" in _flat(text)


def test_every_downloadable_dataset_is_registered_with_its_folder():
    """Each download places the folder its loader looks in first (the lister's own candidates)."""
    from kebench.data import arrays, paper

    datasets.names()
    for name, dl in sources.DOWNLOADS.items():
        assert name in arrays.ARRAYS or name in paper.PAPER, name
        assert dl.folder in (arrays.ARRAYS.get(name) or paper.PAPER[name]).layout, name
        assert all(f.urls for f in dl.fetches())
    assert not set(sources.DOWNLOADS) & set(sources.NOT_DOWNLOADABLE)
    local = set(arrays.ARRAYS) | {n.removesuffix("-retrieval") for n in paper.PAPER}
    assert local == set(sources.DOWNLOADS) | set(sources.NOT_DOWNLOADABLE)


def test_sweep_download_fetches_each_dataset_once_before_the_runs(tmp_path, monkeypatch, capsys):
    import yaml

    src = tmp_path / "src"
    fx.build_cifar(src, "cifar10", archive=True)
    fx.build_mnist(src, gz=True)
    files = {"cifar-10-python.tar.gz": (src / "cifar-10-python.tar.gz").read_bytes(),
             **{p.name: p.read_bytes() for p in (src / "MNIST" / "raw").iterdir()}}
    asked = _serve(monkeypatch, files)
    root, out = tmp_path / "data", tmp_path / "results"
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"grid": {"data": ["cifar10", "mnist", "synthetic"], "seed": [0, 1]},
                                    "set": {"data_root": str(root), "arch": "resnet20", "epochs": 1,
                                            "batch_size": 16, "device": "cpu"}, "out": str(out)}))
    code, text = _cli(["sweep", str(spec), "--executor", "inline", "--download"], capsys)
    assert code == 0, text
    assert asked.count("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz") == 1 and len(asked) == 5
    assert len(list(out.glob("*/result.json"))) == 6
