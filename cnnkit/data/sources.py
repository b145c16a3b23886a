"""Where CIFAR-10 comes from: the data root, which layout it holds, the download, and the cache in front.

Two layouts are read: torchvision's `cifar-10-batches-py/` (cnnkit.data.batches) and an image
folder `root/{train,test}/<class>/` (cnnkit.data.image_folder). Either is decoded once into uint8
tensors (N, C, H, W) and cached (cnnkit.data.cache).
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnkit.data.batches import BATCHES_DIRNAME, META_FILE, TEST_BATCH, TRAIN_BATCHES, _decode_batches, _list_batches
from cnnkit.data.cache import _cache_key, _cache_path, _read_cache, _write_cache, default_cache_dir
from cnnkit.data.image_folder import _decode_image_folder, _list_image_folder
from cnnkit.data.splits import CifarData
from cnnkit.errors import DataError, one_line

HOW_TO_POINT = "point at the data with --data-root DIR, env CNNKIT_DATA, or data.root in the config"


def resolve_data_root(cli_root: str | None, config_root: str | None) -> Path | None:
    """--data-root beats env CNNKIT_DATA beats the config's data.root; None if none is given."""
    for candidate in (cli_root, os.environ.get("CNNKIT_DATA"), config_root):
        if candidate:  # an empty string (e.g. `CNNKIT_DATA=`) counts as not given
            return Path(candidate).expanduser()
    return None


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
            f"CIFAR-10 not found in {target} and download failed ({one_line(exc)}); {HOW_TO_POINT}"
        ) from exc
    found = _find_source(target)
    if found is None:
        raise DataError(f"download into {target} did not produce {BATCHES_DIRNAME}/; {HOW_TO_POINT}")
    return found


def _download_split(root: Path, train: bool) -> None:
    from torchvision.datasets import CIFAR10  # slow to import; only needed here

    CIFAR10(str(root), train=train, download=True)
