"""Fetching CIFAR-10: torchvision's `cifar-10-python.tar.gz`, md5-checked, unpacked into `root/cifar-10-batches-py/`.

Our own few lines rather than `torchvision.datasets.CIFAR10(download=True)`: that one prints a
tqdm bar from library code, leaves a partial tarball behind when interrupted, and cannot report
progress to a caller. Here progress goes to a callback (the CLI draws it), the tarball is streamed
into a hidden temporary file and md5-checked before anything is unpacked, the folder is unpacked
under a temporary name and renamed into place, and a failure at any step leaves `root` as it was.

The URL and md5 can be overridden with env CNNKIT_CIFAR10_URL / CNNKIT_CIFAR10_MD5 (a mirror, or
the tests' local server) or with the function's arguments.
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
from pathlib import Path, PurePosixPath

from cnnkit.data.batches import BATCHES_DIRNAME, _list_batches
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


def cifar10_source(url: str | None = None, md5: str | None = None) -> tuple[str, str]:
    """The (url, md5) to fetch: arguments beat env CNNKIT_CIFAR10_URL / _MD5 beat torchvision's."""
    return (url or os.environ.get(URL_ENV) or CIFAR10_URL, (md5 or os.environ.get(MD5_ENV) or CIFAR10_MD5).lower())


def download_cifar10(root: str | os.PathLike, *, url: str | None = None, md5: str | None = None,
                     progress: Progress | None = None, timeout: float = TIMEOUT_S) -> Path:
    """Download, check and unpack CIFAR-10 into `root`; return `root/cifar-10-batches-py`.

    Raises DownloadFailed (a DataError) with the reason; on any failure `root` is left as it was
    (a folder this call created is removed again).
    """
    url, md5 = cifar10_source(url, md5)
    root = Path(root).expanduser()
    target = root / BATCHES_DIRNAME
    created = _missing_parents(root)
    tarball = scratch = None
    done = False
    try:
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd, tarball = tempfile.mkstemp(prefix=".cifar-10-python.tar.gz.", suffix=".part", dir=root)
        except OSError as exc:
            raise DownloadFailed(f"cannot write to {root}: {exc.strerror or exc}", url) from exc
        with os.fdopen(fd, "wb") as f:
            digest = _fetch(url, f, progress, timeout)
        if digest != md5:
            raise DownloadFailed(f"checksum mismatch: md5 {digest}, expected {md5}; the file was damaged "
                                 "in transit or the mirror serves another file — nothing was kept", url)
        scratch = Path(tempfile.mkdtemp(prefix=".cifar-10-extract.", dir=root))
        _unpack(Path(tarball), scratch, url)
        _list_batches(scratch / BATCHES_DIRNAME)  # every expected file is there, or a DataError naming it
        try:
            os.replace(scratch / BATCHES_DIRNAME, target)
        except OSError:
            if not (target / "test_batch").is_file():  # not a concurrent download that finished first
                raise
        done = True
        return target
    except DownloadFailed:
        raise
    except DataError as exc:  # the archive lacks a batch file
        raise DownloadFailed(f"the archive is not CIFAR-10: {exc}", url) from exc
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


def _unpack(tarball: Path, into: Path, url: str) -> None:
    """Extract only the regular files under cifar-10-batches-py/ (no links, no paths out of `into`)."""
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) != 2 or parts[0] != BATCHES_DIRNAME or parts[1] in ("..", "."):
                    continue  # directories are made below; anything else has no place in CIFAR-10
                source = archive.extractfile(member)
                (into / BATCHES_DIRNAME).mkdir(exist_ok=True)
                with source, open(into / BATCHES_DIRNAME / parts[1], "wb") as out:
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
