"""The `cifar-10-batches-py/` layout: the original pickles, read through a restricted unpickler.

The unpickler can only rebuild numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.splits import CifarData, Split
from cnnkit.errors import DataError, one_line

BATCHES_DIRNAME = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"


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
    def __init__(self, file, path: Path, dataset: str = "CIFAR-10", archive: str = "cifar-10-python.tar.gz") -> None:
        super().__init__(file, encoding="bytes")  # like the original format: keys come back as bytes
        self.path, self.dataset, self.archive = path, dataset, archive

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.path} is not a {self.dataset} batch: its pickle names {module}.{name}, which is "
                f"refused because it could run code; re-extract {self.archive}"
            ) from None


def _load_pickle(path: Path, dataset: str = "CIFAR-10", archive: str = "cifar-10-python.tar.gz") -> dict:
    """The dict in a batch pickle (CIFAR-10's, or CIFAR-100's with `dataset`/`archive` naming it in messages)."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path, dataset, archive).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions") from exc
    except Exception as exc:  # truncated or garbled bytes surface as many different exceptions
        raise DataError(
            f"{path} is corrupt or truncated ({type(exc).__name__}: {one_line(exc)}); "
            f"re-extract {archive}"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a {dataset} batch (a {type(obj).__name__}, not a dict); re-extract it")
    return obj


def _field(batch: dict, key: str, path: Path, dataset: str = "CIFAR-10"):
    # Original files have bytes keys; a copy re-pickled by Python 3 may have str keys.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"{path} has no '{key}' entry; it is not a {dataset} batch file, re-extract it")


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
def _decode_batches(source_dir: Path, *, with_train: bool = True) -> CifarData:
    """Both splits, or with `with_train=False` the test batch alone (its `train` is None)."""
    meta_path = source_dir / META_FILE
    names = _field(_load_pickle(meta_path), "label_names", meta_path)
    if not isinstance(names, list) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{meta_path}: 'label_names' must be a list of class names; re-extract it")
    classes = [n.decode() if isinstance(n, bytes) else n for n in names]

    train = None
    if with_train:
        parts = [_read_batch(source_dir / name, len(classes)) for name in TRAIN_BATCHES]
        train = Split(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = Split(*_read_batch(source_dir / TEST_BATCH, len(classes)))
    return CifarData(train, test, classes, source="")
