"""The image-folder layout `root/{train,test}/<class>/*.jpg|png|...`, listed and decoded with Pillow."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import repeat
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.pictures import fit_picture
from cnnkit.data.splits import CifarData, Split, _balanced_quotas
from cnnkit.errors import CnnkitError, DataError, one_line

CIFAR10_CLASSES: list[str] = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))  # for str.endswith
# Below this many images, forking decoder processes costs more than it saves.
PARALLEL_MIN_IMAGES = 4096
# Pictures of any size are resized too, so each costs more than a CIFAR JPEG: forking pays off sooner.
PICTURES_PARALLEL_MIN = 512
# A run holds the decoded images about twice at its peak (the decoded splits, then the training
# images less the validation ones copied out of them), so decoding is refused above half the free memory.
MEMORY_FACTOR = 2


def _list_image_folder(root: Path, splits: tuple[str, ...] = ("train", "test")) -> list[tuple[str, int, int]]:
    """Every image of `splits` as (relative path, size, mtime_ns), sorted; checks the class folders agree.

    `splits=("test",)` lists the test images alone (eval's 10k stats instead of 60k), in the same
    order and with the same entries as the test part of the full listing.
    """
    return list_folder(root, splits)[0]


def folder_splits(root: Path) -> tuple[str, ...]:
    """The splits of an image folder of any classes: train, its own val/ when it has one, and test."""
    return ("train", "val", "test") if (root / "val").is_dir() else ("train", "test")


def class_folders(split_dir: Path) -> list[str]:
    """The class folders of one split, sorted (hidden ones skipped); a cheap look, nothing decoded."""
    try:
        with os.scandir(split_dir) as entries:
            return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot list {split_dir}: {exc.strerror or exc}; check the folder's permissions") from exc


def list_folder(root: Path, splits: tuple[str, ...], *, min_classes: int = 1) -> tuple[list[tuple[str, int, int]], int]:
    """(the listing of `splits` as `_list_image_folder` gives it, how many files were skipped as not pictures).

    A file is a picture by its name's ending (IMAGE_EXTENSIONS, any case); others (notes.txt, Thumbs.db)
    are skipped and counted, never decoded. With `min_classes` 2, an image folder of one class is refused.
    """
    class_names = {}
    for split in splits:
        split_dir = root / split
        class_names[split] = class_folders(split_dir)
        if not class_names[split]:
            raise DataError(f"{split_dir} has no class folders; expected {split_dir}/<class>/*.jpg")
    pairs = [(a, b) for a in splits for b in splits if a != b]
    for split, other in pairs:
        missing = sorted(set(class_names[other]) - set(class_names[split]))
        if missing:
            need = " and ".join(f"{s}/" for s in splits) if len(splits) == 2 else \
                ", ".join(f"{s}/" for s in splits[:-1]) + f" and {splits[-1]}/"
            raise DataError(
                f"class folder {root / split / missing[0]} is missing (it exists in {other}/); "
                f"{need} need the same class folders"
            )
    first = class_names[splits[0]]
    if len(first) < min_classes:
        raise DataError(f"{root / splits[0]} has one class folder ({first[0]}); a classifier needs at least "
                        f"{min_classes} classes — add a folder of pictures per class")

    listing = []
    skipped = 0
    for split in splits:
        for name in class_names[split]:
            class_dir = root / split / name
            files, others = _scan_images(class_dir, prefix=f"{split}/{name}/")
            if not files:
                held = ("" if not others else "; it holds 1 file that is not a picture by its name" if others == 1
                        else f"; it holds {others} files that are not pictures by their names")
                raise DataError(
                    f"class folder {class_dir} has no images ({'/'.join(sorted(IMAGE_EXTENSIONS))}){held}; "
                    f"add images or remove the folder"
                )
            listing.extend(files)
            skipped += others
    return listing, skipped


def _scan_images(folder: Path, prefix: str) -> tuple[list[tuple[str, int, int]], int]:
    """((prefix + name, size, mtime_ns) of the images in `folder`, sorted by name; how many other files).

    The stat per file dominates a cache hit (60k of them); scanning through a directory fd makes
    each one an fstatat relative to the folder instead of a full path lookup (~25% faster).
    """
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if os.scandir in os.supports_fd else None
    files = []
    others = 0
    try:
        with os.scandir(fd if fd is not None else folder) as entries:
            for e in entries:
                if _is_image_name(e.name) and e.is_file():
                    st = e.stat()
                    files.append((prefix + e.name, st.st_size, st.st_mtime_ns))
                elif not e.name.startswith(".") and e.is_file():
                    others += 1
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror or exc}; check the folder's permissions") from exc
    finally:
        if fd is not None:
            os.close(fd)
    files.sort()
    return files, others


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
        raise DataError(f"cannot decode image {first} ({one_line(exc)}); replace or remove the file") from exc

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
            raise DataError(f"cannot decode image {path} ({one_line(exc)}); replace or remove the file") from exc
    return pixels


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _chunk_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, num=max(parts, 1) + 1, dtype=np.int64).tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))


# ---------------------------------------------------------------------------- pictures of any size


def subset_listing(listing: list[tuple[str, int, int]], n: int | None) -> list[tuple[str, int, int]]:
    """`data.subset` applied before decoding: in each split, the first files of each class, balanced as
    cnnkit.data.take_subset would pick them from the decoded images (same quotas, same order)."""
    if n is None:
        return listing
    kept = []
    for split in dict.fromkeys(rel.split("/")[0] for rel, _, _ in listing):
        entries = [e for e in listing if e[0].startswith(split + "/")]
        if n >= len(entries):
            kept += entries
            continue
        classes = list(dict.fromkeys(e[0].split("/")[1] for e in entries))  # in label order: sorted
        by_class = {c: [e for e in entries if e[0].split("/")[1] == c] for c in classes}
        # take_subset's quotas are over labels 0..K-1; the label order is _folder_classes', which for
        # CIFAR-10's own names differs from sorted: follow it so the same images are chosen.
        order = _folder_classes(classes)
        quotas = _balanced_quotas([len(by_class[c]) for c in order], n)
        keep = {e[0] for c, q in zip(order, quotas, strict=True) for e in by_class[c][:q]}
        kept += [e for e in entries if e[0] in keep]
    return kept


def decode_pictures(root: Path, listing: list[tuple[str, int, int]], size: tuple[int, int],
                    channels: int = 3) -> CifarData:
    """Decode an image folder of pictures of any size, mode and format into uint8 (N, C, H, W) per split,
    each brought to `size` (H, W) by cnnkit.data.pictures' rule; labels by class folder.

    The listing's splits (train/, an optional val/, test/) come back as the result's train, val and
    test (train is None when the listing has no train/). Refused before decoding when the decoded
    tensors would not fit in the free memory (check_memory).
    """
    rel_paths = [rel for rel, _, _ in listing]
    classes = _folder_classes(sorted({rel.split("/")[1] for rel in rel_paths}))
    class_index = {name: i for i, name in enumerate(classes)}
    height, width = size
    check_memory(root, len(rel_paths), channels, height, width)

    parts: dict[str, list[str]] = {}
    for rel in rel_paths:
        parts.setdefault(rel.split("/")[0], []).append(rel)
    workers = _available_cpus()
    parallel = workers > 1 and len(rel_paths) >= PICTURES_PARALLEL_MIN and "fork" in mp.get_all_start_methods()
    splits: dict[str, Split] = {}
    pool = None
    try:
        if parallel:
            try:
                pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
            except OSError:  # cannot fork: decode here instead
                pool = None
        for split, paths in parts.items():
            # Each split its own tensor, filled chunk by chunk: no concatenated copy, and neither split's
            # storage holds the other's pixels.
            images = torch.empty((len(paths), channels, height, width), dtype=torch.uint8)  # (N, C, H, W)
            bounds = _chunk_bounds(len(paths), workers * 4)
            chunks = [paths[a:b] for a, b in bounds]
            done = False
            if pool is not None:
                try:
                    results = pool.map(_fit_files, repeat(root), chunks, repeat(size), repeat(channels))
                    for (a, b), pixels in zip(bounds, results, strict=True):  # first failure in file order
                        images[a:b] = torch.from_numpy(pixels)
                    done = True
                except BrokenProcessPool:  # a worker died: decode here instead, this split and the next
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = None
            if not done:
                for (a, b), chunk in zip(bounds, chunks, strict=True):
                    images[a:b] = torch.from_numpy(_fit_files(root, chunk, size, channels))
            labels = torch.tensor([class_index[rel.split("/")[1]] for rel in paths], dtype=torch.int64)  # (N,)
            splits[split] = Split(images, labels)
    finally:
        if pool is not None:
            pool.shutdown()
    return CifarData(splits.get("train"), splits["test"], classes, source="", val=splits.get("val"))


def _fit_files(root: Path, rel_paths: list[str], size: tuple[int, int], channels: int) -> np.ndarray:
    """Decode `rel_paths` into (n, C, H, W) uint8, each picture brought to `size` (H, W)."""
    from PIL import Image, UnidentifiedImageError

    height, width = size
    pixels = np.empty((len(rel_paths), height, width, channels), dtype=np.uint8)  # (n, H, W, C)
    for i, rel in enumerate(rel_paths):
        path = root / rel
        try:
            with Image.open(path) as im:
                pixels[i] = fit_picture(im, height, width, channels)  # (H, W, C)
        except Exception as exc:  # Pillow reports bad files as OSError, ValueError, SyntaxError, bomb errors...
            # Refused, not skipped: a picture dropped in silence would change the class balance and the
            # test set a number is measured on, and a file that fails to decode is usually a broken copy.
            why = "not a picture Pillow can read" if isinstance(exc, UnidentifiedImageError) else one_line(exc)
            raise DataError(f"cannot decode image {path} ({why}); replace or remove the file "
                            "(a file named as a picture is never skipped)") from exc
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))  # (n, C, H, W)


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux's MemAvailable), or None where it cannot be told."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < size * 10 else f"{n / size:.0f} {unit}"
    return f"{n:.0f} bytes"


def check_memory(root: Path, n: int, channels: int, height: int, width: int) -> None:
    """Refuse, before decoding, an image folder whose decoded images a run cannot hold in memory: one
    line with the size it needs and the settings that shrink it (cnnkit keeps a dataset in memory as
    uint8 tensors, and streams nothing from disk during an epoch)."""
    free = available_memory()
    decoded = n * channels * height * width
    if free is None or decoded * MEMORY_FACTOR <= free:
        return
    smaller = 32 if max(height, width) > 32 else max(8, min(height, width) // 2)
    at_smaller = n * channels * smaller * smaller
    gray = f", data.grayscale: true ({_gb(decoded // 3)})" if channels == 3 else ""
    raise DataError(
        f"{root} decodes to {_gb(decoded)} ({n:,} images of {channels}×{height}×{width} bytes) and a run holds about "
        f"{MEMORY_FACTOR}× that, more than the {_gb(free)} of memory free; shrink it with data.input_size "
        f"(at [{smaller}, {smaller}]: {_gb(at_smaller)}){gray}, or data.subset: N (N images per split, balanced over "
        "classes), or free memory"
    )
