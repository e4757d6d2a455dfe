"""`--download`: fetch a dataset into the data root, in the layout kebench's loader reads.

Nothing is downloaded unless asked (`kebench data download NAME`, or `--download` on `kebench run`
and `kebench data check`). A dataset the loader already finds is never fetched again. A download
lands in a temporary folder under the data root, is read there with the dataset's own lister or
reader, and only then renamed into place, so an interrupted or failed download never leaves a
layout that looks complete. Fetching is torchvision's (`download_url`, `download_and_extract_archive`,
its MD5 checks and redirects); URLs and checksums come from torchvision's dataset classes where
torchvision knows the dataset, else from the dataset's official page.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable

from kebench.data.sources import DOWNLOADS, NOT_DOWNLOADABLE, Download, Fetch, _base
from kebench.errors import UserError

#: Seconds a stalled connection waits before the download counts as failed (no network, a
#: firewall that drops packets): without it urllib can wait forever.
TIMEOUT_S = 60


def _dataset(name: str):
    """The registered record of a dataset read from a data root (paper or array dataset)."""
    from kebench import data
    from kebench.data import arrays, paper

    data.get_spec(name)  # an unknown name: the usual "unknown dataset" error with the choices
    if name in arrays.ARRAYS:
        return arrays.ARRAYS[name]
    if name in paper.PAPER:
        return paper.PAPER[name]
    raise UserError(f"Dataset '{name}' is not read from a data root (it ships with kebench or comes from a "
                    f"plugin): there is nothing to download.")


def is_local(name: str) -> bool:
    """Whether `name` is read from a data root (the datasets --download applies to)."""
    from kebench import data
    from kebench.data import arrays, paper

    data.names()  # every built-in dataset module registered
    return name in arrays.ARRAYS or name in paper.PAPER


def _problem(name: str, root: Path) -> UserError | None:
    """None where kebench's own lister / reader finds the dataset under root, else its error."""
    from kebench.data import arrays, paper

    try:
        if name in arrays.ARRAYS:
            arrays.read(name, root)
        else:
            paper.list_dataset(name, root)
    except UserError as exc:
        return exc
    return None


def _by_hand(ds, root: Path) -> str:
    return f"the files come from {ds.source}; put them under {root} as:\n{ds.layout}"


def ensure(name: str, data_root: str | None, say: Callable[[str], None] = print) -> Path:
    """The data root holding `name`, downloaded into it first where kebench cannot find it there.
    Raises UserError (exit 2) where it cannot be downloaded or the download fails."""
    from kebench.data import paper

    ds = _dataset(name)
    text = data_root or os.environ.get("KEBENCH_DATA")
    if not text:
        paper.data_root(None, ds)  # the usual "pass --data-root PATH or set KEBENCH_DATA" error
    root = Path(text).expanduser()
    problem = _problem(name, root) if root.is_dir() else UserError(f"{root} does not exist.")
    if problem is None:
        say(f"{ds.title} ('{name}') is already under {root}: not downloaded again.")
        return root
    base = _base(name)
    if base not in DOWNLOADS:
        reason = NOT_DOWNLOADABLE.get(base, "kebench knows no public download for it")
        raise UserError(f"{ds.title} ('{name}') cannot be downloaded automatically: {reason}. It is not in the "
                        f"data root yet: {_first_line(problem)} Get it by hand: {_by_hand(ds, root)}")
    dl = DOWNLOADS[base]
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _lock(root / f".{dl.folder}.kebench-download.lock"):
            if _problem(name, root) is None:  # another process (a DDP rank, a parallel seed) fetched it meanwhile
                return root
            if (root / dl.folder).exists():
                raise UserError(f"{root / dl.folder} exists, but kebench cannot read {ds.title} ('{name}') from it: "
                                f"{_first_line(problem)} --download does not overwrite existing files: remove "
                                f"{root / dl.folder} and download again, or complete it by hand: {_by_hand(ds, root)}")
            _fetch_into(name, ds, dl, root, say)
    except OSError as exc:  # the data root itself: no permission, a full disk, a read-only mount
        raise UserError(f"Downloading {ds.title} ('{name}') into {root} failed writing there: {exc}. Nothing was "
                        f"placed in {root}. Get it by hand: {_by_hand(ds, root)}") from None
    return root


def _first_line(exc: Exception) -> str:
    """An error's first line (its problem, without the layout that follows), as a sentence."""
    line = str(exc).splitlines()[0].strip() if str(exc).strip() else type(exc).__name__
    return line if line.endswith(".") else line + "."


def _fetch_into(name: str, ds, dl: Download, root: Path, say) -> None:
    fetches = dl.fetches()
    urls = [f.urls[0] for f in fetches]
    tmp = Path(tempfile.mkdtemp(prefix=f".{dl.folder}.download-", dir=root))
    try:
        say(f"downloading {ds.title} ('{name}') into {root / dl.folder}: {', '.join(urls)}")
        for f in fetches:
            _fetch_one(f, tmp)
        problem = _problem(name, tmp)
        if problem is not None:
            raise UserError(f"The download of {ds.title} ('{name}') from {', '.join(urls)} did not give the layout "
                            f"kebench reads ({_first_line(problem)}); nothing was placed in {root}. "
                            f"Get it by hand: {_by_hand(ds, root)}")
        if (root / dl.folder).exists():  # placed by another process after all: keep that copy
            return
        os.replace(tmp / dl.folder, root / dl.folder)  # one rename: the layout appears complete or not at all
        say(f"{ds.title} ('{name}') is in {root / dl.folder}")
    except _Failed as exc:
        raise UserError(f"Downloading {ds.title} ('{name}') failed: {exc} Nothing was placed in {root} (the partial "
                        f"download was removed). Without a network, or where the server refuses, get it by hand: "
                        f"{_by_hand(ds, root)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Failed(Exception):
    """Every URL of one file failed; the message names each with its reason."""


def _fetch_one(f: Fetch, tmp: Path) -> None:
    from torchvision.datasets import utils as tvu

    folder = tmp / f.into
    errors = []
    for url in f.urls:
        try:
            with _timeout(TIMEOUT_S):
                if f.extract:
                    tvu.download_and_extract_archive(url, str(folder), md5=f.md5, remove_finished=True)
                else:
                    tvu.download_url(url, str(folder), md5=f.md5)
            return
        except Exception as exc:  # URLError, timeouts, HTTP errors, a bad checksum, a damaged archive
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one paragraph
            if "corrupted" in reason:
                reason += " (the MD5 checksum did not match the official file)"
            errors.append(f"{url} ({reason})")
            for leftover in folder.glob(Path(url).name + "*") if folder.is_dir() else ():
                leftover.unlink(missing_ok=True)  # a partial file: the next mirror starts clean
    raise _Failed(f"tried {'; '.join(errors)}.")


@contextlib.contextmanager
def _timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


@contextlib.contextmanager
def _lock(path: Path):
    """One download per dataset and data root across processes (DDP ranks started by torchrun)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent downloads each finish; the first rename wins
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # a later process finds the data and never locks
            fcntl.flock(f, fcntl.LOCK_UN)
