"""MNIST and Fashion-MNIST: the raw IDX files torchvision keeps in `root/MNIST/raw/` (plain or .gz).

An IDX file is a 4-byte magic (0, 0, the element type, the number of dimensions), one big-endian
uint32 per dimension, then the elements row-major. MNIST's are unsigned bytes (type 0x08): images
N×28×28, labels N. Each header is checked against the file's length before anything is read into
tensors, so a damaged file is one line naming it, not a reshape error.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.splits import CifarData, Split
from cnnkit.errors import DataError, one_line

# The four files, by role; each may be plain or gzipped (torchvision keeps both after extracting).
IDX_NAMES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
UBYTE = 0x08
IDX_TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int", 0x0D: "float",
                  0x0E: "double"}

MNIST_CLASSES = [str(d) for d in range(10)]
# torchvision.datasets.FashionMNIST.classes
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]


def find_idx(root: Path, folder_name: str) -> Path | None:
    """The folder under `root` holding the IDX files: torchvision's root/MNIST/raw/, root/MNIST/,
    root/raw/ or root itself (the first that has the training images), else None."""
    for folder in (root / folder_name / "raw", root / folder_name, root / "raw", root):
        base = folder / IDX_NAMES["train_images"]
        if base.is_file() or base.with_name(base.name + ".gz").is_file():
            return folder
    return None


def _file_of(folder: Path, role: str, download_hint: str) -> Path:
    base = folder / IDX_NAMES[role]
    for path in (base, base.with_name(base.name + ".gz")):  # the plain file reads faster
        if path.is_file():
            return path
    raise DataError(f"{base} (or {base.name}.gz) is missing: the IDX layout needs train-images, train-labels, "
                    f"t10k-images and t10k-labels; {download_hint}")


def list_idx(folder: Path, splits: tuple[str, ...], download_hint: str) -> list[tuple[str, int, int]]:
    """(file name, size, mtime_ns) of the IDX files of `splits`, for the cache key."""
    listing = []
    for split in splits:
        for kind in ("images", "labels"):
            path = _file_of(folder, f"{split}_{kind}", download_hint)
            try:
                st = path.stat()
            except OSError as exc:
                raise DataError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions") from exc
            listing.append((path.name, st.st_size, st.st_mtime_ns))
    return listing


def read_idx(path: Path, ndim: int, hint: str) -> np.ndarray:
    """The array in an IDX file (plain or .gz), checked: unsigned bytes, `ndim` dimensions, every byte there."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except OSError as exc:
        if isinstance(exc, gzip.BadGzipFile) or exc.errno is None:
            raise DataError(f"{path} is not a readable .gz file ({one_line(exc)}); {hint}") from exc
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions") from exc
    except (EOFError, zlib.error) as exc:
        raise DataError(f"{path} is truncated or corrupt ({type(exc).__name__}: {one_line(exc)}); {hint}") from exc
    if raw[:2] == b"\x1f\x8b":
        raise DataError(f"{path} is gzip-compressed but not named .gz: rename it {path.name}.gz (or gunzip it)")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        first = raw[:4].hex(" ") or "nothing"
        raise DataError(f"{path} is not an IDX file: it starts with {first}, where an IDX header starts with 00 00; "
                        f"{hint}")
    kind, dims = raw[2], raw[3]
    if kind != UBYTE:
        name = IDX_TYPE_NAMES.get(kind, "unknown")
        raise DataError(f"{path}: its IDX header says elements of type 0x{kind:02x} ({name}), expected 0x08 "
                        f"(unsigned bytes, as MNIST's); {hint}")
    if dims != ndim:
        raise DataError(f"{path}: its IDX header says {dims} dimensions, expected {ndim} "
                        f"({'N×28×28 images' if ndim == 3 else 'N labels'}); {hint}")
    if len(raw) < 4 + 4 * dims:
        raise DataError(f"{path}: its IDX header is cut short ({len(raw)} bytes); {hint}")
    shape = struct.unpack(f">{dims}I", raw[4: 4 + 4 * dims])
    body = len(raw) - 4 - 4 * dims
    expected = int(np.prod(shape, dtype=np.int64))
    if body != expected:
        shown = "×".join(map(str, shape))
        raise DataError(f"{path}: its IDX header says {shown} = {expected:,} bytes of data but the file holds "
                        f"{body:,}; it is truncated or corrupt, {hint}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def decode_idx(folder: Path, classes: list[str], hint: str, *, with_train: bool = True) -> CifarData:
    """Both splits as uint8 (N, 1, 28, 28) and int64 labels (or, `with_train=False`, the test split alone)."""
    splits = {}
    for split in ("train", "test") if with_train else ("test",):
        images_path, labels_path = _file_of(folder, f"{split}_images", hint), _file_of(folder, f"{split}_labels", hint)
        images, labels = read_idx(images_path, 3, hint), read_idx(labels_path, 1, hint)
        if len(images) != len(labels):
            raise DataError(f"{images_path} holds {len(images):,} images but {labels_path} {len(labels):,} labels; "
                            f"the two files belong to different copies, {hint}")
        if len(labels) and int(labels.max()) >= len(classes):
            raise DataError(f"{labels_path}: label {int(labels.max())} is out of range 0..{len(classes) - 1}; {hint}")
        if len(labels) == 0:
            raise DataError(f"{images_path} holds no images; {hint}")
        splits[split] = Split(torch.from_numpy(images.copy()).unsqueeze(1),  # (N, 1, H, W) uint8
                              torch.from_numpy(labels.astype(np.int64)))  # (N,)
    return CifarData(splits.get("train"), splits["test"], list(classes), source="")
