"""Where CIFAR-10 comes from: the data root, which layout it holds, the download, and the cache in front.

Two layouts are read: torchvision's `cifar-10-batches-py/` (cnnkit.data.batches) and an image
folder `root/{train,test}/<class>/` (cnnkit.data.image_folder). Either is decoded once into uint8
tensors (N, C, H, W) and cached (cnnkit.data.cache). With no root named anywhere, the root is
`./data` (torchvision's convention), and CIFAR-10 is downloaded there when it is not there yet
(cnnkit.data.download).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnkit.data.batches import BATCHES_DIRNAME, META_FILE, TEST_BATCH, TRAIN_BATCHES, _decode_batches, _list_batches
from cnnkit.data.cache import _cache_key, _cache_path, _read_cache, _write_cache, default_cache_dir
from cnnkit.data.download import DownloadFailed, Progress, download_cifar10
from cnnkit.data.image_folder import _decode_image_folder, _list_image_folder
from cnnkit.data.splits import CifarData
from cnnkit.errors import DataError


def shown_path(path: str | os.PathLike) -> str:
    """A path as messages show it: relative when it is inside the working folder or beside it
    (data/..., ../shared/data/...), under ~ when it is in the home folder, else absolute.

    Keeps the machine's own layout (its user, its mount points) out of what people copy and share.
    """
    path = Path(path).expanduser().absolute()
    here = Path.cwd()
    for base, prefix in ((here, ""), (here.parent, "../")):
        try:
            return prefix + str(path.relative_to(base))
        except ValueError:
            pass
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except (ValueError, RuntimeError):  # not under it, or no home folder
        return str(path)


HOW_TO_POINT = "point at the data with --data-root DIR, env CNNKIT_DATA, or data.root in the config"
# Relative to the working directory, like torchvision's examples' root="./data".
DEFAULT_DATA_ROOT = "data"


@dataclass(frozen=True)
class DataRoot:
    """The folder to read CIFAR-10 from, and what named it."""

    path: Path
    origin: str  # "--data-root", "CNNKIT_DATA", "data.root" or "default"

    @property
    def is_default(self) -> bool:
        return self.origin == "default"

    def describe(self) -> str:
        if self.is_default:
            return f"{self.path.resolve()} (the default data root: no --data-root, CNNKIT_DATA or data.root given)"
        return f"{self.path} (from {self.origin})" if self.origin else str(self.path)


def resolve_data_root(cli_root: str | None, config_root: str | None) -> Path | None:
    """--data-root beats env CNNKIT_DATA beats the config's data.root; None if none is given."""
    for candidate in (cli_root, os.environ.get("CNNKIT_DATA"), config_root):
        if candidate:  # an empty string (e.g. `CNNKIT_DATA=`) counts as not given
            return Path(candidate).expanduser()
    return None


def choose_data_root(cli_root: str | None, config_root: str | None) -> DataRoot:
    """Like resolve_data_root, but never None: with nothing given, ./data."""
    for origin, candidate in (("--data-root", cli_root), ("CNNKIT_DATA", os.environ.get("CNNKIT_DATA")),
                              ("data.root", config_root)):
        if candidate:
            return DataRoot(Path(candidate).expanduser(), origin)
    return DataRoot(Path(DEFAULT_DATA_ROOT), "default")


def has_cifar10(root: Path) -> bool:
    """Whether `root` holds either layout (a cheap look, nothing decoded)."""
    try:
        return root.is_dir() and _find_source(root) is not None
    except DataError:  # half an image folder: there is something, and loading it will say what is wrong
        return True


def fetch_cifar10(root: DataRoot | Path, *, progress: Progress | None = None, url: str | None = None,
                  md5: str | None = None) -> Path | None:
    """Download CIFAR-10 into `root` unless it already holds a copy; the new folder, or None if none was needed."""
    data_root = root if isinstance(root, DataRoot) else DataRoot(Path(root).expanduser(), "")
    if has_cifar10(data_root.path):
        return None
    if data_root.path.exists() and not data_root.path.is_dir():
        raise DataError(f"data root {data_root.path} is a file, not a folder; {HOW_TO_POINT}")
    try:
        return download_cifar10(data_root.path, url=url, md5=md5, progress=progress)
    except DownloadFailed as exc:
        raise DataError(f"no CIFAR-10 in {data_root.describe()}; download failed ({exc.reason}) "
                        f"from {exc.url}; {HOW_TO_POINT}") from exc


def load_cifar10(root: DataRoot | Path | None, *, cache_dir: Path | None = None, download: bool = False,
                 progress: Progress | None = None) -> CifarData:
    """Find CIFAR-10 under `root`, decode it (or reuse the cache) and return uint8 tensors on the CPU.

    A root that holds no copy is downloaded into when `download` is set or the root is the default
    one (`choose_data_root` with nothing given); `progress` then hears the bytes as they arrive.
    """
    layout, source_dir = _locate(root, cache_dir, download, progress)
    source_dir = source_dir.resolve()

    # Listing every file (path, size, mtime) is what ties the cache to this exact copy.
    if layout == "batches":
        listing = _list_batches(source_dir)
        describe = f"{BATCHES_DIRNAME} {shown_path(source_dir)}"
    else:
        listing = _list_image_folder(source_dir)
        describe = f"image folder {shown_path(source_dir)}"
    key, test_key = _cache_key(source_dir, listing), _cache_key(source_dir, _test_part(layout, listing))

    cache_path = _cache_path(cache_dir or default_cache_dir(), source_dir)
    cached = _read_cache(cache_path, key)
    if cached is not None:
        cached.source = f"{describe} (cached: {shown_path(cache_path)})"
        return _found(cached, layout, source_dir, cache_path, "read", listing)

    if layout == "batches":
        data = _decode_batches(source_dir)
    else:
        data = _decode_image_folder(source_dir, listing)
    if _write_cache(cache_path, key, data, test_key):
        data.source = f"{describe} (decoded, cached: {shown_path(cache_path)})"
        return _found(data, layout, source_dir, cache_path, "written", listing)
    data.source = f"{describe} (decoded, not cached: {shown_path(cache_path.parent)} is not writable)"
    return _found(data, layout, source_dir, cache_path, "not writable", listing)


def _found(data: CifarData, layout: str, folder: Path, cache_path: Path, cache: str,
           listing: list[tuple[str, int, int]]) -> CifarData:
    data.layout = BATCHES_DIRNAME if layout == "batches" else "image folder"
    data.folder, data.cache_path, data.cache = folder, cache_path, cache
    _name_images(data, layout, listing)
    return data


def _name_images(data: CifarData, layout: str, listing: list[tuple[str, int, int]]) -> None:
    """Each image's origin, for reports that point at files (`eval --worst`): an image folder's
    images are its sorted listing, train/ then test/ (the order they were decoded in, cached or
    not); the batches layout's test images are the rows of its one test file."""
    if layout == "batches":
        data.test.names = [f"{TEST_BATCH}[{i}]" for i in range(len(data.test))]
        return
    for split, prefix in ((data.train, "train/"), (data.test, "test/")):
        if split is not None:
            names = [rel for rel, _, _ in listing if rel.startswith(prefix)]
            split.names = names if len(names) == len(split) else None


def load_cifar10_test(root: DataRoot | Path | None, *, cache_dir: Path | None = None, download: bool = False,
                      progress: Progress | None = None) -> CifarData:
    """The test split alone (the result's `train` is None): what `cnnkit eval` needs.

    Lists only the test files (10k stats, not 60k) and reads the test tensors from the cache when
    the cache's test key matches; otherwise decodes the test files alone and leaves the cache be
    (a cache holds both splits; the next training run writes it).
    """
    layout, source_dir = _locate(root, cache_dir, download, progress)
    source_dir = source_dir.resolve()
    if layout == "batches":
        listing = _test_part(layout, _list_batches(source_dir))
        describe = f"{BATCHES_DIRNAME} {shown_path(source_dir)}"
    else:
        listing = _list_image_folder(source_dir, splits=("test",))
        describe = f"image folder {shown_path(source_dir)}"
    cache_path = _cache_path(cache_dir or default_cache_dir(), source_dir)
    cached = _read_cache(cache_path, _cache_key(source_dir, listing), key_name="test_key", splits_wanted=("test",))
    if cached is not None:
        cached.source = f"{describe}, test split (cached: {shown_path(cache_path)})"
        return _found(cached, layout, source_dir, cache_path, "read", listing)
    if layout == "batches":
        data = _decode_batches(source_dir, with_train=False)
    else:
        data = _decode_image_folder(source_dir, listing)
        data.train = None
    data.source = f"{describe}, test split (decoded)"
    return _found(data, layout, source_dir, cache_path, "", listing)


def _test_part(layout: str, listing: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The entries of a full listing that the test split is decoded from."""
    if layout == "batches":
        return [entry for entry in listing if entry[0] in (META_FILE, TEST_BATCH)]
    return [entry for entry in listing if entry[0].startswith("test/")]


def _locate(root: DataRoot | Path | None, cache_dir: Path | None, download: bool,
            progress: Progress | None) -> tuple[str, Path]:
    """("batches" | "folder", folder) of the copy under `root`, downloading one first where allowed."""
    if root is None:
        if not download:
            raise DataError(f"no CIFAR-10 data root given; {HOW_TO_POINT}")
        root = DataRoot((cache_dir or default_cache_dir()) / "downloads", "the cache folder")
    data_root = root if isinstance(root, DataRoot) else DataRoot(Path(root).expanduser(), "")
    path = data_root.path
    where = data_root.describe()
    found = _find_source(path) if path.exists() else None
    if found is not None:
        return found
    if path.exists() and not path.is_dir():
        raise DataError(f"data root {where} is a file, not a folder; {HOW_TO_POINT}")
    if download or data_root.is_default:
        fetch_cifar10(data_root, progress=progress)
        found = _find_source(path)
        if found is None:
            raise DataError(f"download into {path} did not produce {BATCHES_DIRNAME}/; {HOW_TO_POINT}")
        return found
    if not path.exists():
        raise DataError(f"data root {where} does not exist; {HOW_TO_POINT}")
    raise DataError(
        f"no CIFAR-10 found in {where}: looked for {path / BATCHES_DIRNAME}/ and for "
        f"{path}/train/<class>/ + {path}/test/<class>/ image folders; {HOW_TO_POINT}"
    )


def _find_source(root: Path) -> tuple[str, Path] | None:
    """Return ("batches" | "folder", folder) for the layout found at `root`, or None."""
    if not root.is_dir():
        return None
    if (root / BATCHES_DIRNAME).is_dir():
        return "batches", root / BATCHES_DIRNAME
    batch_files = (META_FILE, TEST_BATCH, TRAIN_BATCHES[0])
    if root.name == BATCHES_DIRNAME or any((root / name).exists() for name in batch_files):
        return "batches", root
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        missing = root / ("test" if has_train else "train")
        raise DataError(f"{missing}/ is missing: an image-folder dataset needs both train/ and test/ in {root}")
    if has_train:
        return "folder", root
    return None


@dataclass
class DataReport:
    """What `cnnkit data` shows: where it looked, what it found there, and the cache in front."""

    root: DataRoot
    downloaded: Path | None  # the folder this call downloaded, if it did
    data: CifarData

    def counts(self, split: str) -> list[int]:
        part = getattr(self.data, split)
        return torch.bincount(part.labels, minlength=len(self.data.classes)).tolist()


def inspect_cifar10(cli_root: str | None, config_root: str | None = None, *, cache_dir: Path | None = None,
                    download: bool = False, progress: Progress | None = None) -> DataReport:
    """Find (with `download`, fetch first) and read CIFAR-10 the way a run would, and say what is there.

    Without `download`, an empty root is an error that says how to fetch it: looking never downloads.
    """
    root = choose_data_root(cli_root, config_root)
    downloaded = fetch_cifar10(root, progress=progress) if download else None
    if not download and not has_cifar10(root.path):
        if root.path.exists() and not root.path.is_dir():
            raise DataError(f"data root {root.describe()} is a file, not a folder; {HOW_TO_POINT}")
        what = "does not exist" if not root.path.exists() else "holds no CIFAR-10"
        raise DataError(f"data root {root.describe()} {what}; `cnnkit data --download` fetches it there, "
                        f"or {HOW_TO_POINT}")
    return DataReport(root, downloaded, load_cifar10(root, cache_dir=cache_dir))
