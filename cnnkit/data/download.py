"""Fetching the datasets: CIFAR-10 and CIFAR-100 (one tarball each, unpacked into `root/cifar-10-batches-py/`
and `root/cifar-100-python/`), MNIST and Fashion-MNIST (four gzipped IDX files each, kept as they are
in `root/MNIST/raw/` and `root/FashionMNIST/raw/`, torchvision's folders), every file md5-checked.

Our own few lines rather than `torchvision.datasets.CIFAR10(download=True)`: that one prints a
tqdm bar from library code, leaves a partial tarball behind when interrupted, and cannot report
progress to a caller. Here progress goes to a callback (the CLI draws it), the tarball is streamed
into a hidden temporary file and md5-checked before anything is unpacked, the folder is unpacked
under a temporary name and renamed into place, and a failure at any step leaves `root` as it was.

The URL and md5 can be overridden with env CNNKIT_CIFAR10_URL / CNNKIT_CIFAR10_MD5 (a mirror, or
the tests' local server) or with the function's arguments; likewise CNNKIT_CIFAR100_URL / _MD5, and
CNNKIT_MNIST_URL / CNNKIT_FASHION_MNIST_URL (the folder the four files are in) with _MD5 (their
four md5s, comma-separated, in the order train images, train labels, test images, test labels).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cnnkit.data.batches import BATCHES_DIRNAME, META_FILE, TEST_BATCH, TRAIN_BATCHES
from cnnkit.errors import DataError, one_line

# torchvision.datasets.CIFAR10.url / .tgz_md5
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
URL_ENV, MD5_ENV = "CNNKIT_CIFAR10_URL", "CNNKIT_CIFAR10_MD5"

# (bytes so far, total bytes or None when the server does not say)
Progress = Callable[[int, int | None], None]

CHUNK = 1 << 20
TIMEOUT_S = 30.0  # per socket operation: a dead mirror fails in seconds, a slow one still finishes


class DownloadFailed(DataError):
    """The download did not produce a checked copy; `reason` is a short phrase ("no network: ...")."""

    def __init__(self, reason: str, url: str) -> None:
        super().__init__(f"download from {url} failed ({reason})")
        self.reason = reason
        self.url = url


@dataclass(frozen=True)
class Archive:
    """A dataset shipped as one .tar.gz holding one folder of files."""

    title: str  # "CIFAR-10", for messages
    url: str
    md5: str
    url_env: str
    md5_env: str
    folder: str  # the one folder inside, e.g. cifar-10-batches-py
    files: tuple[str, ...]  # what must be in it, checked before it is renamed into place

    def source(self, url: str | None = None, md5: str | None = None) -> tuple[str, str]:
        """The (url, md5) to fetch: arguments beat env beat torchvision's."""
        return (url or os.environ.get(self.url_env) or self.url,
                (md5 or os.environ.get(self.md5_env) or self.md5).lower())


CIFAR10 = Archive("CIFAR-10", CIFAR10_URL, CIFAR10_MD5, URL_ENV, MD5_ENV, BATCHES_DIRNAME,
                  (META_FILE, *TRAIN_BATCHES, TEST_BATCH))
# torchvision.datasets.CIFAR100.url / .tgz_md5
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100 = Archive("CIFAR-100", CIFAR100_URL, CIFAR100_MD5, "CNNKIT_CIFAR100_URL", "CNNKIT_CIFAR100_MD5",
                   "cifar-100-python", ("meta", "train", "test"))


@dataclass(frozen=True)
class FileSet:
    """A dataset shipped as separate files in one folder of a mirror (MNIST's four .gz files)."""

    title: str
    base_url: str  # the mirror's folder, ending in /
    url_env: str
    md5_env: str
    files: tuple[tuple[str, str], ...]  # (file name, md5)
    folder: str  # where they go under the root, torchvision's: MNIST/raw

    def source(self, base_url: str | None = None, md5s: list[str] | None = None) -> tuple[str, list[str]]:
        base = base_url or os.environ.get(self.url_env) or self.base_url
        env = os.environ.get(self.md5_env)
        md5s = md5s or ([m.strip().lower() for m in env.split(",")] if env else [m for _, m in self.files])
        if len(md5s) != len(self.files):
            raise DownloadFailed(f"{self.md5_env} must list {len(self.files)} md5s (comma-separated), "
                                 f"got {len(md5s)}", base)
        return (base if base.endswith("/") else base + "/"), md5s


IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
# torchvision.datasets.MNIST.mirrors[1] / .resources (the first mirror, yann.lecun.com, is often down)
MNIST = FileSet("MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/", "CNNKIT_MNIST_URL", "CNNKIT_MNIST_MD5",
                tuple(zip(IDX_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                      "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
                          strict=True)), "MNIST/raw")
# torchvision.datasets.FashionMNIST.mirrors / .resources
FASHION_MNIST = FileSet("Fashion-MNIST", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                        "CNNKIT_FASHION_MNIST_URL", "CNNKIT_FASHION_MNIST_MD5",
                        tuple(zip(IDX_FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                              "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
                                  strict=True)), "FashionMNIST/raw")


def cifar10_source(url: str | None = None, md5: str | None = None) -> tuple[str, str]:
    """The (url, md5) to fetch: arguments beat env CNNKIT_CIFAR10_URL / _MD5 beat torchvision's."""
    return CIFAR10.source(url, md5)


def download_cifar10(root: str | os.PathLike, *, url: str | None = None, md5: str | None = None,
                     progress: Progress | None = None, timeout: float = TIMEOUT_S) -> Path:
    """Download, check and unpack CIFAR-10 into `root`; return `root/cifar-10-batches-py`.

    Raises DownloadFailed (a DataError) with the reason; on any failure `root` is left as it was
    (a folder this call created is removed again).
    """
    return download_archive(CIFAR10, root, url=url, md5=md5, progress=progress, timeout=timeout)


def download_archive(archive: Archive, root: str | os.PathLike, *, url: str | None = None, md5: str | None = None,
                     progress: Progress | None = None, timeout: float = TIMEOUT_S) -> Path:
    """Download, check and unpack `archive` into `root`; return `root/<its folder>` (see download_cifar10)."""
    url, md5 = archive.source(url, md5)
    root = Path(root).expanduser()
    target = root / archive.folder
    created = _missing_parents(root)
    tarball = scratch = None
    done = False
    try:
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd, tarball = tempfile.mkstemp(prefix=f".{archive.folder}.tar.gz.", suffix=".part", dir=root)
        except OSError as exc:
            raise DownloadFailed(f"cannot write to {root}: {exc.strerror or exc}", url) from exc
        with os.fdopen(fd, "wb") as f:
            digest = _fetch(url, f, progress, timeout)
        if digest != md5:
            raise DownloadFailed(f"checksum mismatch: md5 {digest}, expected {md5}; the file was damaged "
                                 "in transit or the mirror serves another file — nothing was kept", url)
        scratch = Path(tempfile.mkdtemp(prefix=f".{archive.folder}-extract.", dir=root))
        _unpack(Path(tarball), scratch, url, archive.folder)
        for name in archive.files:  # every expected file is there, or a DataError naming the first missing
            if not (scratch / archive.folder / name).is_file():
                raise DataError(f"{scratch / archive.folder / name} is missing")
        try:
            os.replace(scratch / archive.folder, target)
        except OSError:
            if not (target / archive.files[-1]).is_file():  # not a concurrent download that finished first
                raise
        done = True
        return target
    except DownloadFailed:
        raise
    except DataError as exc:  # the archive lacks a file
        raise DownloadFailed(f"the archive is not {archive.title}: {exc}", url) from exc
    except OSError as exc:
        raise DownloadFailed(f"cannot write to {root}: {exc.strerror or exc}", url) from exc
    finally:
        # Also on Ctrl-C: the tarball and the scratch folder go, and on failure the folders made here.
        if tarball is not None:
            Path(tarball).unlink(missing_ok=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if not done:
            _remove_created(created)


def download_files(fileset: FileSet, root: str | os.PathLike, *, base_url: str | None = None,
                   md5s: list[str] | None = None, progress: Progress | None = None,
                   timeout: float = TIMEOUT_S) -> Path:
    """Download and md5-check each file of `fileset` into `root/<its folder>` (MNIST/raw); return that folder.

    The files are fetched into a hidden folder beside it and renamed into place together once all are
    checked, so a failure (or Ctrl-C) at any point leaves `root` as it was.
    """
    base, md5s = fileset.source(base_url, md5s)
    root = Path(root).expanduser()
    target = root / fileset.folder
    created = _missing_parents(target.parent)
    scratch = None
    done = False
    url = base
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-download.", dir=target.parent))
        except OSError as exc:
            raise DownloadFailed(f"cannot write to {target.parent}: {exc.strerror or exc}", url) from exc
        so_far = 0
        for (name, _), md5 in zip(fileset.files, md5s, strict=True):
            url = base + name
            # One bar over all the files: what the earlier files brought, plus this one's bytes.
            step = None if progress is None else (lambda done, total, base_n=so_far: progress(base_n + done, None))
            with open(scratch / name, "wb") as f:
                digest = _fetch(url, f, step, timeout)
            if digest != md5:
                raise DownloadFailed(f"checksum mismatch: md5 {digest}, expected {md5}; the file was damaged "
                                     "in transit or the mirror serves another file — nothing was kept", url)
            so_far += (scratch / name).stat().st_size
        try:
            os.replace(scratch, target)
        except OSError:
            if not (target / fileset.files[-1][0]).is_file():  # not a concurrent download that finished first
                raise
        done = True
        return target
    except DownloadFailed:
        raise
    except OSError as exc:
        raise DownloadFailed(f"cannot write to {target.parent}: {exc.strerror or exc}", url) from exc
    finally:
        if scratch is not None and not done:
            shutil.rmtree(scratch, ignore_errors=True)
        if not done:
            _remove_created(created)


def _fetch(url: str, f, progress: Progress | None, timeout: float) -> str:
    """Stream `url` into the open file `f`; return the md5 of what arrived."""
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": "cnnkit"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            if progress is not None:
                progress(0, total)
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                f.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            if total is not None and done != total:
                raise DownloadFailed(f"connection closed after {done:,} of {total:,} bytes", url)
    except DownloadFailed:
        raise
    except urllib.error.HTTPError as exc:
        raise DownloadFailed(f"HTTP {exc.code} {exc.reason}", url) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadFailed(_network_reason(exc, url, timeout), url) from exc
    return digest.hexdigest()


def _network_reason(exc: BaseException, url: str, timeout: float) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    host = urllib.request.urlparse(url).hostname or url
    if isinstance(reason, socket.gaierror):
        return f"no network: cannot resolve {host}"
    if isinstance(reason, ConnectionRefusedError):
        return f"no network: {host} refused the connection"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no network: no answer from {host} in {timeout:g} s"
    if isinstance(reason, OSError) and reason.errno is not None and reason.strerror:
        return f"network error: {reason.strerror}"
    return one_line(reason) if isinstance(reason, BaseException) else str(reason)


def _unpack(tarball: Path, into: Path, url: str, folder: str = BATCHES_DIRNAME) -> None:
    """Extract only the regular files under `folder`/ (no links, no paths out of `into`)."""
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) != 2 or parts[0] != folder or parts[1] in ("..", "."):
                    continue  # directories are made below; anything else has no place in the dataset
                source = archive.extractfile(member)
                (into / folder).mkdir(exist_ok=True)
                with source, open(into / folder / parts[1], "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # disk full or unwritable: reported as such by the caller
        raise DownloadFailed(f"the archive cannot be unpacked: {one_line(exc)}", url) from exc


def _missing_parents(root: Path) -> list[Path]:
    """`root` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for folder in (root, *root.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _remove_created(created: list[Path]) -> None:
    for folder in created:  # deepest first; stops at the first one that is not empty
        try:
            folder.rmdir()
        except OSError:
            break
