"""The decoded-tensor cache: one keyed file per source folder, so later runs start in under a second."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from cnnkit.data.splits import CifarData, Split
from cnnkit.errors import CnnkitError
from cnnkit.fileio import atomic_write

# Bump when the cache layout or the decoding changes, so old cache files are rebuilt.
# 2: test_key, the key of the test files alone, so eval can trust the test split without listing train.
CACHE_FORMAT = 2
CACHE_KEYS = {"format", "key", "test_key", "classes", "train_images", "train_labels", "test_images", "test_labels"}
# An image folder with its own val/ split adds these two; a cache without them has no val split.
VAL_KEYS = {"val_images", "val_labels"}


def default_cache_dir() -> Path:
    env = os.environ.get("CNNKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnnkit"


def _cache_key(source_dir: Path, listing: list[tuple[str, int, int]], variant: str = "") -> str:
    # repr of (str, int, int) tuples is exact and unambiguous, and fast for 60k entries. `variant`
    # (e.g. "coarse", "64x64"): what else the decoded tensors depend on; "" keeps CIFAR-10's keys as they were.
    parts = (CACHE_FORMAT, str(source_dir), listing, variant) if variant else (CACHE_FORMAT, str(source_dir), listing)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _cache_path(cache_dir: Path, source_dir: Path, prefix: str = "cifar10", variant: str = "") -> Path:
    # One file per source folder (and variant: an image folder at 32×32 and at 64×64 are two datasets,
    # and alternating runs must not decode each other's away): a changed source overwrites its cache
    # instead of piling up.
    identity = f"{source_dir}\0{variant}" if variant else str(source_dir)
    name = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"{prefix}-{name}.pt"


def _read_cache(path: Path, key: str, *, key_name: str = "key",
                splits_wanted: tuple[str, ...] = ("train", "test")) -> CifarData | None:
    """The cached tensors if `path` is a complete cache for `key`; None means rebuild.

    With key_name="test_key" and splits_wanted=("test",), only the test split is checked and
    returned (its `train` is None): the cache answers for the test files alone.
    """
    if not path.is_file():
        return None
    try:
        # mmap: the tensors are paged in from the file on use, so a hit costs milliseconds.
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(blob, dict) or set(blob) not in (CACHE_KEYS, CACHE_KEYS | VAL_KEYS):
            return None
        if blob["format"] != CACHE_FORMAT or blob[key_name] != key:
            return None
        classes = blob["classes"]
        has_val = "val_images" in blob and "train" in splits_wanted
        splits = []
        for name in (*splits_wanted, "val") if has_val else splits_wanted:
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
        if any(split.images.shape[1:] != splits[0].images.shape[1:] for split in splits):
            return None
    except Exception:  # torn or foreign file: rebuilding is always safe
        return None
    if len(splits) == 1:
        return CifarData(None, splits[0], list(classes), source="")
    return CifarData(splits[0], splits[1], list(classes), source="", val=splits[2] if has_val else None)


def _write_cache(path: Path, key: str, data: CifarData, test_key: str) -> bool:
    blob = {
        "format": CACHE_FORMAT,
        "key": key,
        "test_key": test_key,
        "classes": list(data.classes),
        "train_images": data.train.images,
        "train_labels": data.train.labels,
        "test_images": data.test.images,
        "test_labels": data.test.labels,
    }
    if data.val is not None:
        blob.update(val_images=data.val.images, val_labels=data.val.labels)
    try:
        atomic_write(path, lambda f: torch.save(blob, f))
    except (CnnkitError, OSError):  # a read-only or full cache folder only costs speed
        return False
    return True
