"""Where a dataset comes from: the data root, which layout it holds, the download, and the cache in front.

A `Source` is one dataset's ways of sitting on disk (its `Layout`s, tried in order) and its download.
CIFAR-10: torchvision's `cifar-10-batches-py/` (cnnkit.data.batches) or an image folder
`root/{train,test}/<class>/` of 32×32 pictures (cnnkit.data.image_folder). CIFAR-100:
`cifar-100-python/` (cnnkit.data.cifar100) or an image folder. MNIST and Fashion-MNIST: the raw IDX
files (cnnkit.data.idx). `imagefolder`: the user's own pictures, any size and number of classes.
Each is decoded once into uint8 tensors (N, C, H, W) and cached (cnnkit.data.cache). With no root
named anywhere, the root is `./data` (torchvision's convention), and a dataset that can be downloaded
is downloaded there when it is not there yet (cnnkit.data.download).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnkit.data import cifar100, idx
from cnnkit.data.batches import BATCHES_DIRNAME, META_FILE, TEST_BATCH, TRAIN_BATCHES, _decode_batches, _list_batches
from cnnkit.data.cache import _cache_key, _cache_path, _read_cache, _write_cache, default_cache_dir
from cnnkit.data.download import (
    CIFAR100,
    FASHION_MNIST,
    MNIST,
    DownloadFailed,
    Progress,
    download_archive,
    download_cifar10,
    download_files,
)
from cnnkit.data.image_folder import (
    _decode_image_folder,
    decode_pictures,
    folder_splits,
    list_folder,
    subset_listing,
)
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
    """The folder to read a dataset from, and what named it."""

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


Entry = tuple[str, int, int]  # (file under the layout's folder, size, mtime_ns): what the cache is keyed on


@dataclass(frozen=True)
class Decoding:
    """What a run asks of the decode beyond the files themselves (cnnkit.data.datasets fills it from
    the config): CIFAR-100's labels, and for an image folder of any pictures their size, channels and
    a subset chosen before decoding (so a folder too big for memory can be cut down)."""

    labels: str = "fine"  # "fine" | "coarse" (CIFAR-100's superclasses)
    size: tuple[int, int] | None = None  # (H, W) each picture is brought to (image folders of any size)
    channels: int = 3  # 1: the luma, computed while decoding (data.grayscale on an image folder)
    subset: int | None = None  # images per split, balanced over classes, chosen from the listing


@dataclass(frozen=True)
class Layout:
    """One way a dataset sits on disk, and how to list (for the cache key), decode and name its images."""

    label: str  # what messages and `cnnkit data` call it: "cifar-10-batches-py", "image folder", ...
    find: Callable[[Path], Path | None]  # the folder under the root that holds it, or None (or a DataError)
    looked_for: Callable[[Path], str]  # where `find` looked under a root, for the not-found line
    # (folder, test split only?, decoding) → (listing, files skipped as not pictures)
    listing: Callable[[Path, bool, Decoding], tuple[list[Entry], int]]
    # (folder, listing, decoding) → the tensors; the result's train is None when the listing has no train part
    decode: Callable[[Path, list[Entry], Decoding], CifarData]
    test_part: Callable[[list[Entry]], list[Entry]]  # the entries of a full listing the test split comes from
    names: Callable[[CifarData, list[Entry]], None]  # each image's origin, for reports that point at files
    variant: Callable[[Decoding], str] = lambda decoding: ""  # what else the cache depends on ("" for none)


@dataclass(frozen=True)
class Source:
    """A dataset's layouts, in the order they are tried, and how to download it (None: it cannot be)."""

    name: str  # the registry name; the cache file's prefix
    title: str  # "CIFAR-10", in messages
    layouts: tuple[Layout, ...]
    fetch: Callable[[Path, Progress | None], Path] | None = None
    fetched: str = ""  # the folder a download leaves under the root


# ------------------------------------------------------------------------------------------ layouts


def _by_prefix(listing: list[Entry], prefix: str) -> list[Entry]:
    return [entry for entry in listing if entry[0].startswith(prefix)]


def _name_folder_images(data: CifarData, listing: list[Entry]) -> None:
    """An image folder's images are its sorted listing, split by split (the order they were decoded
    in, cached or not): each is named by its path under the root (test/cat/0042.jpg)."""
    for split, prefix in ((data.train, "train/"), (data.val, "val/"), (data.test, "test/")):
        if split is not None:
            names = [rel for rel, _, _ in _by_prefix(listing, prefix)]
            split.names = names if len(names) == len(split) else None


def _name_rows(file: str) -> Callable[[CifarData, list[Entry]], None]:
    """A layout of one file per split names each test image by its row of that file (test_batch[42])."""
    def name(data: CifarData, listing: list[Entry]) -> None:
        data.test.names = [f"{file}[{i}]" for i in range(len(data.test))]
    return name


def _find_batches(root: Path) -> Path | None:
    if (root / BATCHES_DIRNAME).is_dir():
        return root / BATCHES_DIRNAME
    batch_files = (META_FILE, TEST_BATCH, TRAIN_BATCHES[0])
    if root.name == BATCHES_DIRNAME or any((root / name).exists() for name in batch_files):
        return root
    return None


def _find_folder(root: Path) -> Path | None:
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        missing = root / ("test" if has_train else "train")
        raise DataError(f"{missing}/ is missing: an image-folder dataset needs both train/ and test/ in {root}")
    return root if has_train else None


def _looked_for_folder(path: Path) -> str:
    return f"{path}/train/<class>/ + {path}/test/<class>/ image folders"


def _batches_listing(folder: Path, test_only: bool, decoding: Decoding) -> tuple[list[Entry], int]:
    listing = _list_batches(folder)
    return (_batches_test_part(listing) if test_only else listing), 0


def _batches_test_part(listing: list[Entry]) -> list[Entry]:
    return [entry for entry in listing if entry[0] in (META_FILE, TEST_BATCH)]


def _batches_decode(folder: Path, listing: list[Entry], decoding: Decoding) -> CifarData:
    return _decode_batches(folder, with_train=any(entry[0] == TRAIN_BATCHES[0] for entry in listing))


BATCHES = Layout(BATCHES_DIRNAME, _find_batches, lambda path: f"{path / BATCHES_DIRNAME}/", _batches_listing,
                 _batches_decode, _batches_test_part, _name_rows(TEST_BATCH))


def _cifar10_folder_listing(folder: Path, test_only: bool, decoding: Decoding) -> tuple[list[Entry], int]:
    return list_folder(folder, ("test",) if test_only else ("train", "test"))


def _cifar10_folder_decode(folder: Path, listing: list[Entry], decoding: Decoding) -> CifarData:
    data = _decode_image_folder(folder, listing)
    if not any(rel.startswith("train/") for rel, _, _ in listing):
        data.train = None
    return data


# CIFAR-10 as an image folder: 32×32 RGB pictures, each checked to be exactly that (a copy, not a resize).
CIFAR10_FOLDER = Layout("image folder", _find_folder, _looked_for_folder, _cifar10_folder_listing,
                        _cifar10_folder_decode, lambda listing: _by_prefix(listing, "test/"), _name_folder_images)


def _pictures_listing(min_classes: int) -> Callable[[Path, bool, Decoding], tuple[list[Entry], int]]:
    def listing(folder: Path, test_only: bool, decoding: Decoding) -> tuple[list[Entry], int]:
        entries, skipped = list_folder(folder, ("test",) if test_only else folder_splits(folder),
                                       min_classes=min_classes)
        return subset_listing(entries, decoding.subset), skipped
    return listing


def _pictures_decode(folder: Path, listing: list[Entry], decoding: Decoding) -> CifarData:
    return decode_pictures(folder, listing, decoding.size or (32, 32), decoding.channels)


def _pictures_variant(decoding: Decoding) -> str:
    height, width = decoding.size or (32, 32)
    return f"{height}x{width}" + ("-gray" if decoding.channels == 1 else "")


# The user's own pictures: any size, mode and format, any number (≥ 2) of classes, an optional val/.
PICTURES = Layout("image folder", _find_folder, _looked_for_folder, _pictures_listing(2), _pictures_decode,
                  lambda listing: _by_prefix(listing, "test/"), _name_folder_images, _pictures_variant)


def _cifar100_listing(folder: Path, test_only: bool, decoding: Decoding) -> tuple[list[Entry], int]:
    return cifar100.list_cifar100(folder, ("test",) if test_only else ("train", "test")), 0


def _cifar100_decode(folder: Path, listing: list[Entry], decoding: Decoding) -> CifarData:
    return cifar100.decode_cifar100(folder, decoding.labels, with_train=any(e[0] == "train" for e in listing))


CIFAR100_PICKLES = Layout(
    cifar100.CIFAR100_DIRNAME, cifar100.find_cifar100, lambda path: f"{path / cifar100.CIFAR100_DIRNAME}/",
    _cifar100_listing, _cifar100_decode, lambda listing: [e for e in listing if e[0] in ("meta", "test")],
    _name_rows("test"), lambda decoding: "coarse" if decoding.labels == "coarse" else "")


def _cifar100_folder_listing(folder: Path, test_only: bool, decoding: Decoding) -> tuple[list[Entry], int]:
    return list_folder(folder, ("test",) if test_only else ("train", "test"))


def _cifar100_folder_decode(folder: Path, listing: list[Entry], decoding: Decoding) -> CifarData:
    data = decode_pictures(folder, listing, (32, 32), 3)
    if decoding.labels == "coarse":
        classes, coarse_index = cifar100.coarse_of_folders(data.classes, folder)
        mapping = torch.tensor(coarse_index, dtype=torch.int64)  # (K_fine,) fine label → superclass label
        for split in (data.train, data.test):
            if split is not None:
                split.labels = mapping[split.labels]  # (N,)
        data.classes = classes
    return data


CIFAR100_FOLDER = Layout("image folder", _find_folder, _looked_for_folder, _cifar100_folder_listing,
                         _cifar100_folder_decode, lambda listing: _by_prefix(listing, "test/"), _name_folder_images,
                         lambda decoding: "coarse" if decoding.labels == "coarse" else "")


def _idx_layout(folder_name: str, classes: list[str], hint: str) -> Layout:
    """MNIST-like raw IDX files, in root/<folder_name>/raw/ as torchvision keeps them (or root/raw/, root/)."""
    def listing(folder: Path, test_only: bool, decoding: Decoding) -> tuple[list[Entry], int]:
        return idx.list_idx(folder, ("test",) if test_only else ("train", "test"), hint), 0

    def decode(folder: Path, entries: list[Entry], decoding: Decoding) -> CifarData:
        return idx.decode_idx(folder, classes, hint, with_train=any(e[0].startswith("train-") for e in entries))

    return Layout(f"{folder_name} IDX", lambda root: idx.find_idx(root, folder_name),
                  lambda path: f"{path / folder_name / 'raw'}/ (or {path}/) with train-images-idx3-ubyte[.gz] and "
                               "the other three IDX files",
                  listing, decode, lambda entries: [e for e in entries if e[0].startswith("t10k-")],
                  _name_rows(idx.IDX_NAMES["test_images"]))


def _fetch_archive(archive):
    return lambda root, progress: download_archive(archive, root, progress=progress)


def _fetch_files(fileset):
    return lambda root, progress: download_files(fileset, root, progress=progress)


CIFAR10_SOURCE = Source("cifar10", "CIFAR-10", (BATCHES, CIFAR10_FOLDER),
                        lambda root, progress: download_cifar10(root, progress=progress), BATCHES_DIRNAME)
CIFAR100_SOURCE = Source("cifar100", "CIFAR-100", (CIFAR100_PICKLES, CIFAR100_FOLDER), _fetch_archive(CIFAR100),
                         cifar100.CIFAR100_DIRNAME)
MNIST_SOURCE = Source("mnist", "MNIST",
                      (_idx_layout("MNIST", idx.MNIST_CLASSES,
                                   "re-download it (`cnnkit data --dataset mnist --download` into an empty folder)"),),
                      _fetch_files(MNIST), MNIST.folder)
FASHION_MNIST_SOURCE = Source(
    "fashion_mnist", "Fashion-MNIST",
    (_idx_layout("FashionMNIST", idx.FASHION_MNIST_CLASSES,
                 "re-download it (`cnnkit data --dataset fashion_mnist --download` into an empty folder)"),),
    _fetch_files(FASHION_MNIST), FASHION_MNIST.folder)
IMAGE_FOLDER_SOURCE = Source("imagefolder", "image folder", (PICTURES,))


# ------------------------------------------------------------------------------------------ loading


def _find(source: Source, root: Path) -> tuple[Layout, Path] | None:
    """(layout, folder) of the first of `source`'s layouts found at `root`, or None."""
    if not root.is_dir():
        return None
    for layout in source.layouts:
        folder = layout.find(root)
        if folder is not None:
            return layout, folder
    return None


def has_data(source: Source, root: Path) -> bool:
    """Whether `root` holds any of the dataset's layouts (a cheap look, nothing decoded)."""
    try:
        return root.is_dir() and _find(source, root) is not None
    except DataError:  # half an image folder: there is something, and loading it will say what is wrong
        return True


def has_cifar10(root: Path) -> bool:
    """Whether `root` holds either layout (a cheap look, nothing decoded)."""
    return has_data(CIFAR10_SOURCE, root)


def fetch_source(source: Source, root: DataRoot | Path, *, progress: Progress | None = None,
                 fetch: Callable[[Path, Progress | None], Path] | None = None) -> Path | None:
    """Download the dataset into `root` unless it already holds a copy; the new folder, or None if none was needed."""
    data_root = root if isinstance(root, DataRoot) else DataRoot(Path(root).expanduser(), "")
    if has_data(source, data_root.path):
        return None
    if data_root.path.exists() and not data_root.path.is_dir():
        raise DataError(f"data root {data_root.path} is a file, not a folder; {HOW_TO_POINT}")
    fetch = fetch or source.fetch
    if fetch is None:
        raise DataError(f"no {source.title} in {data_root.describe()}, and an image folder cannot be downloaded; "
                        f"{HOW_TO_POINT}")
    try:
        return fetch(data_root.path, progress)
    except DownloadFailed as exc:
        raise DataError(f"no {source.title} in {data_root.describe()}; download failed ({exc.reason}) "
                        f"from {exc.url}; {HOW_TO_POINT}") from exc


def fetch_cifar10(root: DataRoot | Path, *, progress: Progress | None = None, url: str | None = None,
                  md5: str | None = None) -> Path | None:
    """Download CIFAR-10 into `root` unless it already holds a copy; the new folder, or None if none was needed."""
    return fetch_source(CIFAR10_SOURCE, root, progress=progress,
                        fetch=lambda path, progress: download_cifar10(path, url=url, md5=md5, progress=progress))


def load_source(source: Source, root: DataRoot | Path | None, *, cache_dir: Path | None = None,
                download: bool = False, progress: Progress | None = None, decoding: Decoding = Decoding(),
                test_only: bool = False) -> CifarData:
    """Find the dataset under `root`, decode it (or reuse the cache) and return uint8 tensors on the CPU.

    A root that holds no copy is downloaded into when `download` is set or the root is the default
    one (`choose_data_root` with nothing given); `progress` then hears the bytes as they arrive.
    `test_only`: the test split alone (the result's `train` is None), what `cnnkit eval` needs: only
    the test files are listed, and the test tensors are read from the cache when the cache's test key
    matches; otherwise the test files alone are decoded and the cache is left be (a cache holds every
    split; the next training run writes it).
    """
    layout, folder = _locate(source, root, cache_dir, download, progress)
    folder = folder.resolve()
    # Listing every file (path, size, mtime) is what ties the cache to this exact copy.
    listing, skipped = layout.listing(folder, test_only, decoding)
    variant = layout.variant(decoding)
    describe = f"{layout.label} {shown_path(folder)}"
    if layout is PICTURES:
        height, width = decoding.size or (32, 32)
        describe += f" at {height}×{width}" + (" grayscale" if decoding.channels == 1 else "")
    if skipped:
        describe += f", {skipped} file{'s' if skipped != 1 else ''} skipped (not pictures by name)"
    cache_path = _cache_path(cache_dir or default_cache_dir(), folder, source.name, variant)

    if test_only:
        cached = _read_cache(cache_path, _cache_key(folder, listing, variant), key_name="test_key",
                             splits_wanted=("test",))
        if cached is not None:
            cached.source = f"{describe}, test split (cached: {shown_path(cache_path)})"
            return _found(cached, layout, folder, cache_path, "read", listing, skipped)
        data = layout.decode(folder, listing, decoding)
        data.train = data.val = None
        data.source = f"{describe}, test split (decoded)"
        return _found(data, layout, folder, cache_path, "", listing, skipped)

    key, test_key = _cache_key(folder, listing, variant), _cache_key(folder, layout.test_part(listing), variant)
    cached = _read_cache(cache_path, key)
    if cached is not None:
        cached.source = f"{describe} (cached: {shown_path(cache_path)})"
        return _found(cached, layout, folder, cache_path, "read", listing, skipped)
    data = layout.decode(folder, listing, decoding)
    if _write_cache(cache_path, key, data, test_key):
        data.source = f"{describe} (decoded, cached: {shown_path(cache_path)})"
        return _found(data, layout, folder, cache_path, "written", listing, skipped)
    data.source = f"{describe} (decoded, not cached: {shown_path(cache_path.parent)} is not writable)"
    return _found(data, layout, folder, cache_path, "not writable", listing, skipped)


def _found(data: CifarData, layout: Layout, folder: Path, cache_path: Path, cache: str, listing: list[Entry],
           skipped: int) -> CifarData:
    data.layout = layout.label
    data.folder, data.cache_path, data.cache, data.skipped = folder, cache_path, cache, skipped
    layout.names(data, listing)
    return data


def load_cifar10(root: DataRoot | Path | None, *, cache_dir: Path | None = None, download: bool = False,
                 progress: Progress | None = None) -> CifarData:
    """Find CIFAR-10 under `root`, decode it (or reuse the cache) and return uint8 tensors on the CPU.

    A root that holds no copy is downloaded into when `download` is set or the root is the default
    one (`choose_data_root` with nothing given); `progress` then hears the bytes as they arrive.
    """
    return load_source(CIFAR10_SOURCE, root, cache_dir=cache_dir, download=download, progress=progress)


def load_cifar10_test(root: DataRoot | Path | None, *, cache_dir: Path | None = None, download: bool = False,
                      progress: Progress | None = None) -> CifarData:
    """The test split alone (the result's `train` is None): what `cnnkit eval` needs.

    Lists only the test files (10k stats, not 60k) and reads the test tensors from the cache when
    the cache's test key matches; otherwise decodes the test files alone and leaves the cache be
    (a cache holds both splits; the next training run writes it).
    """
    return load_source(CIFAR10_SOURCE, root, cache_dir=cache_dir, download=download, progress=progress,
                       test_only=True)


def _locate(source: Source, root: DataRoot | Path | None, cache_dir: Path | None, download: bool,
            progress: Progress | None) -> tuple[Layout, Path]:
    """(layout, folder) of the copy under `root`, downloading one first where allowed."""
    if root is None:
        if not download:
            raise DataError(f"no {source.title} data root given; {HOW_TO_POINT}")
        root = DataRoot((cache_dir or default_cache_dir()) / "downloads", "the cache folder")
    data_root = root if isinstance(root, DataRoot) else DataRoot(Path(root).expanduser(), "")
    path = data_root.path
    where = data_root.describe()
    found = _find(source, path) if path.exists() else None
    if found is not None:
        return found
    if path.exists() and not path.is_dir():
        raise DataError(f"data root {where} is a file, not a folder; {HOW_TO_POINT}")
    if (download or data_root.is_default) and source.fetch is not None:
        fetch_source(source, data_root, progress=progress)
        found = _find(source, path)
        if found is None:
            raise DataError(f"download into {path} did not produce {source.fetched}/; {HOW_TO_POINT}")
        return found
    if not path.exists():
        raise DataError(f"data root {where} does not exist; {HOW_TO_POINT}")
    looked = " and for ".join(layout.looked_for(path) for layout in source.layouts)
    raise DataError(f"no {source.title} found in {where}: looked for {looked}; {HOW_TO_POINT}")


@dataclass
class DataReport:
    """What `cnnkit data` shows: where it looked, what it found there, and the cache in front."""

    root: DataRoot
    downloaded: Path | None  # the folder this call downloaded, if it did
    data: CifarData
    title: str = "CIFAR-10"

    def counts(self, split: str) -> list[int]:
        part = getattr(self.data, split)
        if part is None:
            return [0] * len(self.data.classes)
        return torch.bincount(part.labels, minlength=len(self.data.classes)).tolist()


def inspect_source(source: Source, cli_root: str | None, config_root: str | None = None, *,
                   cache_dir: Path | None = None, download: bool = False, progress: Progress | None = None,
                   decoding: Decoding = Decoding()) -> DataReport:
    """Find (with `download`, fetch first) and read a dataset the way a run would, and say what is there.

    Without `download`, an empty root is an error that says how to fetch it: looking never downloads.
    """
    root = choose_data_root(cli_root, config_root)
    downloaded = fetch_source(source, root, progress=progress) if download else None
    if not download and not has_data(source, root.path):
        if root.path.exists() and not root.path.is_dir():
            raise DataError(f"data root {root.describe()} is a file, not a folder; {HOW_TO_POINT}")
        what = "does not exist" if not root.path.exists() else f"holds no {source.title}"
        flag = "" if source.name == "cifar10" else f" --dataset {source.name}"
        fetch = f"`cnnkit data{flag} --download` fetches it there, or " if source.fetch is not None else ""
        raise DataError(f"data root {root.describe()} {what}; {fetch}{HOW_TO_POINT}")
    return DataReport(root, downloaded, load_source(source, root, cache_dir=cache_dir, decoding=decoding),
                      source.title)


def inspect_cifar10(cli_root: str | None, config_root: str | None = None, *, cache_dir: Path | None = None,
                    download: bool = False, progress: Progress | None = None) -> DataReport:
    """Find (with `download`, fetch first) and read CIFAR-10 the way a run would, and say what is there."""
    return inspect_source(CIFAR10_SOURCE, cli_root, config_root, cache_dir=cache_dir, download=download,
                          progress=progress)


def peek_classes(source: Source, root: Path) -> list[str] | None:
    """The class folders of an image folder under `root` (its train/), read without decoding anything;
    None when no image folder is there. What a model is sized by before the data loads."""
    from cnnkit.data.image_folder import _folder_classes, class_folders

    try:
        found = _find(source, root)
    except DataError:
        return None
    if found is None or found[0] is not PICTURES:
        return None
    try:
        names = class_folders(found[1] / "train")
    except DataError:
        return None
    return _folder_classes(names) if names else None

