"""What `--download` can fetch, and from where: the public datasets' files (URLs, mirrors, MD5s) and
why the others cannot be fetched. A leaf module, so the loaders can end their missing-data errors
with `hint()` without importing the downloader (which imports them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Fetch:
    """One file to fetch: its URLs (mirrors, tried in order), the folder under the temporary root
    it goes to, its MD5 (None: the layout check afterwards is the only check) and whether it is an
    archive to extract there (the archive itself is then removed)."""

    urls: tuple[str, ...]
    into: str = ""
    md5: str | None = None
    extract: bool = True


@dataclass(frozen=True)
class Download:
    folder: str  # the folder placed in the data root; the loader finds the dataset there
    fetches: Callable[[], list[Fetch]]  # lazy: reading torchvision's constants imports torchvision


def _tv(cls: str):
    import torchvision.datasets

    return getattr(torchvision.datasets, cls)


def _cifar(cls: str) -> Download:
    return Download({"CIFAR10": "cifar-10-batches-py", "CIFAR100": "cifar-100-python"}[cls],
                    lambda: [Fetch((_tv(cls).url,), md5=_tv(cls).tgz_md5)])


def _mnist() -> list[Fetch]:
    mnist = _tv("MNIST")
    return [Fetch(tuple(m + f for m in mnist.mirrors), "MNIST/raw", md5) for f, md5 in mnist.resources]


def _flowers() -> list[Fetch]:
    fl = _tv("Flowers102")
    files = fl._file_dict
    return [Fetch((fl._download_url_prefix + files["image"][0],), "flowers-102", files["image"][1]),
            *(Fetch((fl._download_url_prefix + files[k][0],), "flowers-102", files[k][1], extract=False)
              for k in ("label", "setid"))]


# Official archives of the datasets torchvision has no class for (MD5s of the official files).
TINY_IMAGENET_URL, TINY_IMAGENET_MD5 = "http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de"
CUB_URL, CUB_MD5 = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz", "97eceeb196236b17998738112f37df78"
DOGS_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs/"
MIT67_IMAGES_URL = "http://groups.csail.mit.edu/vision/LabelMe/NewImages/indoorCVPR_09.tar"
MIT67_LISTS_URL = "https://web.mit.edu/torralba/www/"

DOWNLOADS: dict[str, Download] = {
    "cifar10": _cifar("CIFAR10"),
    "cifar100": _cifar("CIFAR100"),
    "mnist": Download("MNIST", _mnist),
    "flowers102": Download("flowers-102", _flowers),
    "aircraft": Download("fgvc-aircraft-2013b", lambda: [Fetch((_tv("FGVCAircraft")._URL,))]),
    "tiny-imagenet": Download("tiny-imagenet-200", lambda: [Fetch((TINY_IMAGENET_URL,), md5=TINY_IMAGENET_MD5)]),
    "cub200": Download("CUB_200_2011", lambda: [Fetch((CUB_URL,), md5=CUB_MD5)]),
    "dogs": Download("stanford_dogs", lambda: [Fetch((DOGS_URL + f,), "stanford_dogs") for f in ("images.tar", "lists.tar")]),
    "mit67": Download("mit67", lambda: [Fetch((MIT67_IMAGES_URL,), "mit67"),
                                        *(Fetch((MIT67_LISTS_URL + f,), "mit67", extract=False)
                                          for f in ("TrainImages.txt", "TestImages.txt"))]),
}

#: Why the others cannot be fetched for you.
NOT_DOWNLOADABLE = {
    "imagenet": "ILSVRC-2012 is given only to registered users who accept its terms of access (an image-net.org "
                "account, or Kaggle's imagenet-object-localization-challenge)",
    "cars196": "its official page no longer serves the archives (torchvision's StanfordCars downloader was "
               "withdrawn for that reason), and the copies that circulate are unofficial mirrors",
    "folder": "'folder' is your own data",
}


def _base(name: str) -> str:
    """A retrieval variant reads its classification dataset's files."""
    return name.removesuffix("-retrieval")


def downloadable(name: str) -> bool:
    return _base(name) in DOWNLOADS


def hint(name: str) -> str:
    """The sentence a missing-data error ends with."""
    if downloadable(name):
        return (f"kebench never downloads data unless asked: pass --download (or run 'kebench data download "
                f"{name} --data-root DIR') to fetch it.")
    return "kebench never downloads data itself."
