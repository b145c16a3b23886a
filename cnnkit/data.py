"""CIFAR-10 loading, caching and the whole-batch tensor ops the trainer runs on the device.

The dataset is decoded once into uint8 tensors (N, C, H, W) and cached on disk, so every later
run starts in well under a second. Two layouts are read:

  - torchvision's `cifar-10-batches-py/` (the original pickles), read through a restricted
    unpickler that can only rebuild numpy arrays, so a tampered file cannot run code;
  - an image folder `root/{train,test}/<class>/*.jpg|png|...`, decoded with Pillow.

Nothing here decodes images inside the epoch loop: augmentation and normalisation work on whole
uint8 batches already on the training device.
"""

from __future__ import annotations

import codecs
import hashlib
import multiprocessing as mp
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnkit.errors import CnnkitError, DataError
from cnnkit.fileio import atomic_write

CIFAR10_CLASSES: list[str] = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]

BATCHES_DIRNAME = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))  # for str.endswith
# Below this many images, forking decoder processes costs more than it saves.
PARALLEL_MIN_IMAGES = 4096

# Bump when the cache layout or the decoding changes, so old cache files are rebuilt.
CACHE_FORMAT = 1
CACHE_KEYS = {"format", "key", "classes", "train_images", "train_labels", "test_images", "test_labels"}

HOW_TO_POINT = "point at the data with --data-root DIR, env CNNKIT_DATA, or data.root in the config"


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8, contiguous
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass
class CifarData:
    train: Split
    test: Split
    classes: list[str]
    source: str  # one human line: where the data came from and whether the cache was used


# ---------------------------------------------------------------------------------------------
# Where the data and the cache live


def resolve_data_root(cli_root: str | None, config_root: str | None) -> Path | None:
    """--data-root beats env CNNKIT_DATA beats the config's data.root; None if none is given."""
    for candidate in (cli_root, os.environ.get("CNNKIT_DATA"), config_root):
        if candidate:  # an empty string (e.g. `CNNKIT_DATA=`) counts as not given
            return Path(candidate).expanduser()
    return None


def default_cache_dir() -> Path:
    env = os.environ.get("CNNKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnnkit"


# ---------------------------------------------------------------------------------------------
# Loading


def load_cifar10(root: Path | None, *, cache_dir: Path | None = None, download: bool = False) -> CifarData:
    """Find CIFAR-10 under `root`, decode it (or reuse the cache) and return uint8 tensors on the CPU."""
    root = Path(root).expanduser() if root is not None else None
    found = _find_source(root) if root is not None and root.exists() else None
    if found is None:
        if root is not None and root.exists() and not root.is_dir():
            raise DataError(f"data root {root} is a file, not a folder; {HOW_TO_POINT}")
        if download:
            found = _try_download(root, cache_dir)
        elif root is None:
            raise DataError(f"no CIFAR-10 data root given; {HOW_TO_POINT}")
        elif not root.exists():
            raise DataError(f"data root {root} does not exist; {HOW_TO_POINT}")
        else:
            raise DataError(
                f"no CIFAR-10 found in {root}: looked for {root / BATCHES_DIRNAME}/ and for "
                f"{root}/train/<class>/ + {root}/test/<class>/ image folders; {HOW_TO_POINT}"
            )
    layout, source_dir = found
    source_dir = source_dir.resolve()

    # Listing every file (path, size, mtime) is what ties the cache to this exact copy.
    if layout == "batches":
        listing = _list_batches(source_dir)
        describe = f"{BATCHES_DIRNAME} {source_dir}"
    else:
        listing = _list_image_folder(source_dir)
        describe = f"image folder {source_dir}"
    key = _cache_key(source_dir, listing)

    cache_path = _cache_path(cache_dir or default_cache_dir(), source_dir)
    cached = _read_cache(cache_path, key)
    if cached is not None:
        cached.source = f"{describe} (cached: {cache_path})"
        return cached

    if layout == "batches":
        data = _decode_batches(source_dir)
    else:
        data = _decode_image_folder(source_dir, listing)
    if _write_cache(cache_path, key, data):
        data.source = f"{describe} (decoded, cached: {cache_path})"
    else:
        data.source = f"{describe} (decoded, not cached: {cache_path.parent} is not writable)"
    return data


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


def _try_download(root: Path | None, cache_dir: Path | None) -> tuple[str, Path]:
    target = root if root is not None else (cache_dir or default_cache_dir()) / "downloads"
    try:
        for train in (True, False):
            _download_split(target, train)
    except Exception as exc:  # no network, no disk, no torchvision: all end the same way
        raise DataError(
            f"CIFAR-10 not found in {target} and download failed ({_reason(exc)}); {HOW_TO_POINT}"
        ) from exc
    found = _find_source(target)
    if found is None:
        raise DataError(f"download into {target} did not produce {BATCHES_DIRNAME}/; {HOW_TO_POINT}")
    return found


def _download_split(root: Path, train: bool) -> None:
    from torchvision.datasets import CIFAR10  # slow to import; only needed here

    CIFAR10(str(root), train=train, download=True)


# --- cifar-10-batches-py ---------------------------------------------------------------------


def _numpy_core():
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2 (and the shim in 1.26)
    except ImportError:
        from numpy.core import multiarray, numeric
    return multiarray, numeric


_multiarray, _numeric = _numpy_core()

# Everything the batch pickles may name. The original files (Python 2) need only numpy's array
# reconstruction (_reconstruct, under its numpy 1.x or 2.x module name; ndarray; dtype). The last
# three let copies re-pickled by Python 3 load: protocol 5 rebuilds arrays with _frombuffer, and
# protocol <= 2 spells bytes as _codecs.encode(str, "latin1"). None can touch files or processes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("_codecs", "encode"): codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # like the original format: keys come back as bytes
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.path} is not a CIFAR-10 batch: its pickle names {module}.{name}, which is "
                f"refused because it could run code; re-extract cifar-10-python.tar.gz"
            ) from None


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions") from exc
    except Exception as exc:  # truncated or garbled bytes surface as many different exceptions
        raise DataError(
            f"{path} is corrupt or truncated ({type(exc).__name__}: {_reason(exc)}); "
            f"re-extract cifar-10-python.tar.gz"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (a {type(obj).__name__}, not a dict); re-extract it")
    return obj


def _field(batch: dict, key: str, path: Path):
    # Original files have bytes keys; a copy re-pickled by Python 3 may have str keys.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"{path} has no '{key}' entry; it is not a CIFAR-10 batch file, re-extract it")


def _list_batches(source_dir: Path) -> list[tuple[str, int, int]]:
    listing = []
    for name in [META_FILE, *TRAIN_BATCHES, TEST_BATCH]:
        path = source_dir / name
        try:
            st = path.stat()
        except OSError:
            raise DataError(f"{path} is missing; re-extract cifar-10-python.tar.gz into {source_dir.parent}") from None
        listing.append((name, st.st_size, st.st_mtime_ns))
    return listing


def _read_batch(path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _load_pickle(path)
    data, labels = _field(batch, "data", path), _field(batch, "labels", path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {shape}; re-extract it")
    try:
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))  # (N,)
    except (TypeError, ValueError):
        labels = None
    in_range = labels is not None and (len(labels) == 0 or 0 <= int(labels.min()) <= int(labels.max()) < num_classes)
    if not in_range or labels.shape != (data.shape[0],):
        raise DataError(f"{path}: 'labels' must be {data.shape[0]} ints in 0..{num_classes - 1}; re-extract it")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major: that is CHW already.
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # (N, 3, 32, 32)
    return images, labels


def _decode_batches(source_dir: Path) -> CifarData:
    meta_path = source_dir / META_FILE
    names = _field(_load_pickle(meta_path), "label_names", meta_path)
    if not isinstance(names, list) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{meta_path}: 'label_names' must be a list of class names; re-extract it")
    classes = [n.decode() if isinstance(n, bytes) else n for n in names]

    parts = [_read_batch(source_dir / name, len(classes)) for name in TRAIN_BATCHES]
    train = Split(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = Split(*_read_batch(source_dir / TEST_BATCH, len(classes)))
    return CifarData(train, test, classes, source="")


# --- image folder ----------------------------------------------------------------------------


def _list_image_folder(root: Path) -> list[tuple[str, int, int]]:
    """Every image as (relative path, size, mtime_ns), sorted; checks the class folders agree."""
    class_names = {}
    for split in ("train", "test"):
        split_dir = root / split
        try:
            with os.scandir(split_dir) as entries:
                class_names[split] = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        except OSError as exc:
            raise DataError(f"cannot list {split_dir}: {exc.strerror or exc}; check the folder's permissions") from exc
        if not class_names[split]:
            raise DataError(f"{split_dir} has no class folders; expected {split_dir}/<class>/*.jpg")
    for split, other in (("train", "test"), ("test", "train")):
        missing = sorted(set(class_names[other]) - set(class_names[split]))
        if missing:
            raise DataError(
                f"class folder {root / split / missing[0]} is missing (it exists in {other}/); "
                f"train/ and test/ need the same class folders"
            )

    listing = []
    for split in ("train", "test"):
        for name in class_names[split]:
            class_dir = root / split / name
            files = _scan_images(class_dir, prefix=f"{split}/{name}/")
            if not files:
                raise DataError(
                    f"class folder {class_dir} has no images ({'/'.join(sorted(IMAGE_EXTENSIONS))}); "
                    f"add images or remove the folder"
                )
            listing.extend(files)
    return listing


def _scan_images(folder: Path, prefix: str) -> list[tuple[str, int, int]]:
    """(prefix + name, size, mtime_ns) of the images in `folder`, sorted by name.

    The stat per file dominates a cache hit (60k of them); scanning through a directory fd makes
    each one an fstatat relative to the folder instead of a full path lookup (~25% faster).
    """
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if os.scandir in os.supports_fd else None
    files = []
    try:
        with os.scandir(fd if fd is not None else folder) as entries:
            for e in entries:
                if _is_image_name(e.name) and e.is_file():
                    st = e.stat()
                    files.append((prefix + e.name, st.st_size, st.st_mtime_ns))
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror or exc}; check the folder's permissions") from exc
    finally:
        if fd is not None:
            os.close(fd)
    files.sort()
    return files


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _folder_classes(names: list[str]) -> list[str]:
    # CIFAR-10's own label order when the folders are exactly its classes, so labels match the
    # batches layout; otherwise alphabetical, the usual image-folder convention.
    return list(CIFAR10_CLASSES) if sorted(names) == sorted(CIFAR10_CLASSES) else sorted(names)


def _decode_image_folder(root: Path, listing: list[tuple[str, int, int]]) -> CifarData:
    from PIL import Image

    rel_paths = [rel for rel, _, _ in listing]  # train/... first, then test/...
    classes = _folder_classes(sorted({rel.split("/")[1] for rel in rel_paths}))
    class_index = {name: i for i, name in enumerate(classes)}

    # Every image must match the first one; its header tells the size without decoding.
    first = root / rel_paths[0]
    try:
        with Image.open(first) as im:
            size = im.size
    except Exception as exc:
        raise DataError(f"cannot decode image {first} ({_reason(exc)}); replace or remove the file") from exc

    # Pillow parses JPEG headers in Python, so threads contend for the GIL and are slower than
    # one thread; forked processes do help (measured ~1.5x on 2 cores for the 60k CIFAR JPEGs).
    workers = _available_cpus()
    chunks = [rel_paths[a:b] for a, b in _chunk_bounds(len(rel_paths), workers * 4)]
    parts = None
    if workers > 1 and len(rel_paths) >= PARALLEL_MIN_IMAGES and "fork" in mp.get_all_start_methods():
        try:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
                parts = list(pool.map(_decode_files, repeat(root), chunks, repeat(size)))  # first failure in file order
        except (OSError, BrokenProcessPool):  # cannot fork, or a worker died: decode here instead
            parts = None
    if parts is None:
        parts = [_decode_files(root, chunk, size) for chunk in chunks]
    pixels = np.concatenate(parts)  # (N, H, W, C)

    n_train = sum(rel.startswith("train/") for rel in rel_paths)
    labels = torch.tensor([class_index[rel.split("/")[1]] for rel in rel_paths], dtype=torch.int64)  # (N,)
    return CifarData(
        # Separate CHW copies, so neither split's storage holds the other's pixels.
        train=Split(torch.from_numpy(pixels[:n_train]).permute(0, 3, 1, 2).contiguous(), labels[:n_train].clone()),
        test=Split(torch.from_numpy(pixels[n_train:]).permute(0, 3, 1, 2).contiguous(), labels[n_train:].clone()),
        classes=classes,
        source="",
    )


def _decode_files(root: Path, rel_paths: list[str], size: tuple[int, int]) -> np.ndarray:
    """Decode `rel_paths` into (n, H, W, 3) uint8; each must be RGB of `size` (width, height)."""
    from PIL import Image

    width, height = size
    pixels = np.empty((len(rel_paths), height, width, 3), dtype=np.uint8)  # (n, H, W, C)
    for i, rel in enumerate(rel_paths):
        path = root / rel
        try:
            with Image.open(path) as im:
                if im.mode != "RGB" or im.size != size:
                    raise DataError(
                        f"{path} is {im.size[0]}×{im.size[1]} {im.mode}, expected {width}×{height} RGB; "
                        f"convert or remove it"
                    )
                pixels[i] = np.asarray(im)  # (H, W, C)
        except CnnkitError:
            raise
        except Exception as exc:  # Pillow reports corrupt files as OSError, ValueError, SyntaxError...
            raise DataError(f"cannot decode image {path} ({_reason(exc)}); replace or remove the file") from exc
    return pixels


def _reason(exc: BaseException) -> str:
    """An exception as a short phrase on one line (error messages must stay one line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _chunk_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, num=max(parts, 1) + 1, dtype=np.int64).tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))


# --- cache -----------------------------------------------------------------------------------


def _cache_key(source_dir: Path, listing: list[tuple[str, int, int]]) -> str:
    # repr of (str, int, int) tuples is exact and unambiguous, and fast for 60k entries.
    return hashlib.sha256(repr((CACHE_FORMAT, str(source_dir), listing)).encode()).hexdigest()


def _cache_path(cache_dir: Path, source_dir: Path) -> Path:
    # One file per source folder: a changed source overwrites its cache instead of piling up.
    name = hashlib.sha256(str(source_dir).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"cifar10-{name}.pt"


def _read_cache(path: Path, key: str) -> CifarData | None:
    """The cached tensors if `path` is a complete cache for `key`; None means rebuild."""
    if not path.is_file():
        return None
    try:
        # mmap: the tensors are paged in from the file on use, so a hit costs milliseconds.
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(blob, dict) or set(blob) != CACHE_KEYS:
            return None
        if blob["format"] != CACHE_FORMAT or blob["key"] != key:
            return None
        classes = blob["classes"]
        splits = []
        for name in ("train", "test"):
            images, labels = blob[f"{name}_images"], blob[f"{name}_labels"]
            ok = (
                isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.ndim == 4
                and isinstance(labels, torch.Tensor) and labels.dtype == torch.int64
                and labels.shape == images.shape[:1] and len(labels) > 0
                and 0 <= int(labels.min()) and int(labels.max()) < len(classes)
            )
            if not ok:
                return None
            splits.append(Split(images, labels))
        if splits[0].images.shape[1:] != splits[1].images.shape[1:]:
            return None
    except Exception:  # torn or foreign file: rebuilding is always safe
        return None
    return CifarData(splits[0], splits[1], list(classes), source="")


def _write_cache(path: Path, key: str, data: CifarData) -> bool:
    blob = {
        "format": CACHE_FORMAT,
        "key": key,
        "classes": list(data.classes),
        "train_images": data.train.images,
        "train_labels": data.train.labels,
        "test_images": data.test.images,
        "test_labels": data.test.labels,
    }
    try:
        atomic_write(path, lambda f: torch.save(blob, f))
    except (CnnkitError, OSError):  # a read-only or full cache folder only costs speed
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Whole-tensor operations (run on any device)


def _balanced_quotas(counts: list[int], n: int) -> list[int]:
    """Split `n` over classes as equally as their sizes allow; leftovers go to the lowest labels."""
    quotas = [0] * len(counts)
    remaining = n
    while remaining > 0:
        open_classes = [c for c in range(len(counts)) if quotas[c] < counts[c]]
        share = remaining // len(open_classes)
        if share == 0:
            for c in open_classes[:remaining]:
                quotas[c] += 1
            break
        for c in open_classes:
            take = min(share, counts[c] - quotas[c])
            quotas[c] += take
            remaining -= take
    return quotas


def _class_counts(labels: torch.Tensor) -> list[int]:
    return torch.bincount(labels.cpu()).tolist()


def split_train_val(train: Split, val_size: int, seed: int) -> tuple[Split, Split | None]:
    """Hold out `val_size` images, the same number per class as far as possible, picked at random."""
    if val_size == 0:
        return train, None
    if not 0 <= val_size < len(train):
        raise DataError(f"val_size {val_size} is out of range: it must be between 0 and {len(train) - 1}")
    generator = torch.Generator().manual_seed(seed)
    labels = train.labels.cpu()  # (N,)
    is_val = torch.zeros(len(train), dtype=torch.bool)  # (N,)
    for c, quota in enumerate(_balanced_quotas(_class_counts(labels), val_size)):
        members = torch.nonzero(labels == c).squeeze(1)  # (n_c,)
        chosen = members[torch.randperm(len(members), generator=generator)[:quota]]
        is_val[chosen] = True
    # Both parts keep the original order, so the result depends only on (data, val_size, seed).
    is_val = is_val.to(train.labels.device)
    return (
        Split(train.images[~is_val], train.labels[~is_val]),
        Split(train.images[is_val], train.labels[is_val]),
    )


def take_subset(split: Split, n: int) -> Split:
    """The first `n` images, keeping classes balanced: each class gives its first ~n/K images."""
    if n >= len(split):
        return split
    if n < 0:
        raise DataError(f"subset size {n} is negative: it must be between 0 and {len(split)}")
    labels = split.labels.cpu()  # (N,)
    keep = torch.zeros(len(split), dtype=torch.bool)  # (N,)
    for c, quota in enumerate(_balanced_quotas(_class_counts(labels), n)):
        keep[torch.nonzero(labels == c).squeeze(1)[:quota]] = True
    keep = keep.to(split.labels.device)
    return Split(split.images[keep], split.labels[keep])


def to_grayscale(images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 1, H, W), ITU-R 601 luma rounded like Pillow's convert("L")."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"to_grayscale expects (N, 3, H, W) images, got {tuple(images.shape)}")
    # Integer weights summing to 2**16 (Pillow's), plus half for rounding: exact and device-independent.
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32, device=images.device).view(1, 3, 1, 1)
    out = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=torch.uint8, device=images.device)
    for start in range(0, images.shape[0], chunk):  # chunks bound the int32 temporary
        x = images[start:start + chunk].to(torch.int32)  # (b, 3, H, W)
        y = ((x * weights).sum(dim=1, keepdim=True) + 32768) >> 16  # (b, 1, H, W)
        out[start:start + chunk] = y.to(torch.uint8)
    return out


def channel_stats(images: torch.Tensor, chunk: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of images/255, accumulated in float64 chunk by chunk."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64, device=images.device)
    total_sq = torch.zeros(channels, dtype=torch.float64, device=images.device)
    for start in range(0, images.shape[0], chunk):
        # float32 within a chunk (float64 is ~10x slower on the CPU), float64 across chunks.
        x = images[start:start + chunk].to(torch.float32) / 255  # (b, C, H, W)
        total += x.sum(dim=(0, 2, 3)).double()
        total_sq += (x * x).sum(dim=(0, 2, 3)).double()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch `epoch`: a function of (seed, epoch) only, so a resumed run or another
    DDP rank computes the same one without sharing any generator state."""
    digest = hashlib.sha256(f"cnnkit-epoch:{seed}:{epoch}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(n, generator=generator)  # (n,) int64


def augment_batch(
    images: torch.Tensor, *, crop_padding: int, hflip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random zero-padded crop and random horizontal flip (p=0.5), each image its own draw.

    The random numbers come from `generator` on the CPU (crop offsets first, then flips), so the
    result is identical on every device. All images are gathered in one indexing op.
    """
    if crop_padding <= 0 and not hflip:
        return images
    B, C, H, W = images.shape
    p = max(crop_padding, 0)
    dy = torch.randint(0, 2 * p + 1, (B,), generator=generator)  # (B,) top of the crop window
    dx = torch.randint(0, 2 * p + 1, (B,), generator=generator)  # (B,) left of the crop window
    rows = dy[:, None] + torch.arange(H)  # (B, H) rows of the padded image to read
    cols = dx[:, None] + torch.arange(W)  # (B, W)
    if hflip:
        flip = torch.rand(B, generator=generator) < 0.5  # (B,)
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # (B, W) reading right-to-left flips
    device = images.device
    padded = F.pad(images, (p, p, p, p)) if p else images  # (B, C, H+2p, W+2p), zeros around
    return padded[
        torch.arange(B, device=device)[:, None, None, None],
        torch.arange(C, device=device)[None, :, None, None],
        rows.to(device)[:, None, :, None],
        cols.to(device)[:, None, None, :],
    ]  # (B, C, H, W)


def normalize(
    images: torch.Tensor, mean: list[float], std: list[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> (x/255 - mean)/std in `dtype`, on images.device."""
    # Computed in float32 even for half dtypes, then cast once.
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    x = images.to(torch.float32).div_(255).sub_(mean_t).div_(std_t)  # (B, C, H, W)
    return x.to(dtype)
