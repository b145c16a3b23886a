"""The datasets, in a name → entry registry: their input size and classes, and how to prepare them.

Preparing a dataset turns `config.data` into the splits a run trains, selects and tests on, with
the normalisation statistics resolved. A dataset read from disk is a `Source` (cnnkit.data.sources:
its layouts and download) and one registry line; the preparation is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from cnnkit.data.download import Progress
from cnnkit.data.sources import (
    CIFAR10_SOURCE,
    CIFAR100_SOURCE,
    FASHION_MNIST_SOURCE,
    IMAGE_FOLDER_SOURCE,
    MNIST_SOURCE,
    Decoding,
    Source,
    choose_data_root,
    fetch_source,
    load_source,
    peek_classes,
    shown_path,
)
from cnnkit.data.splits import Split, split_train_val, take_subset
from cnnkit.data.transforms import channel_stats, to_grayscale
from cnnkit.errors import ConfigError


class Config(Protocol):
    """What a dataset reads of a run's config (a cnnkit.config.Config): its data section. Not imported
    from cnnkit.config, which imports this registry to check data.dataset."""

    @property
    def data(self) -> Any: ...


@dataclass
class Prepared:
    train: Split
    val: Split | None
    test: Split | None
    classes: list[str]
    source: str
    mean: list[float]
    std: list[float]


@dataclass
class PreparedTest:
    """The test split alone, as `cnnkit eval` and `cnnkit export` see it (subset, grayscale applied)."""

    test: Split
    classes: list[str]
    source: str
    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class DatasetEntry:
    channels: int  # of its images (data.grayscale makes any dataset one channel)
    input_size: tuple[int, int]  # (H, W) of its images; data.input_size changes it
    num_classes: int | None  # None: the classes are the folders of the user's image folder
    prepare: Callable[[Config, str | None], Prepared]  # (config, --data-root) → the run's splits
    # (config, --data-root) → the test split only; the config's data.mean/std are the resolved ones
    prepare_test: Callable[[Config, str | None], PreparedTest]
    source: Source | None = None  # where it is read from and how it is downloaded (None: built in)
    coarse_classes: int | None = None  # with data.labels: coarse (CIFAR-100's 20 superclasses); None: no such labels
    description: str = ""  # one line for `cnnkit data` and the docs


def stripes_image() -> torch.Tensor:
    """The seed's 6×8 picture: white (1) with the middle four columns black (0), as uint8."""
    x = torch.full((6, 8), 255, dtype=torch.uint8)
    x[:, 2:6] = 0
    return x.reshape(1, 1, 6, 8)  # (1, 1, 6, 8)


def _prepare_stripes(config: Config, data_root: str | None = None) -> Prepared:
    split = Split(stripes_image(), torch.zeros(1, dtype=torch.int64))
    return Prepared(split, None, split, ["stripes"], "the seed's 6×8 striped picture", [0.0], [1.0])


def _prepare_stripes_test(config: Config, data_root: str | None = None) -> PreparedTest:
    p = _prepare_stripes(config, data_root)
    return PreparedTest(p.test, p.classes, p.source, p.mean, p.std)


def decoding_for(data) -> Decoding:
    """What the decode itself must do for this data section. Only an image folder of the user's pictures
    is decoded at data.input_size and (with data.grayscale) as luma, and cut to data.subset before
    decoding: its pictures can be of any size, and too many of them for the memory."""
    entry = DATASETS[data.dataset]
    if entry.source is IMAGE_FOLDER_SOURCE:
        size = tuple(data.input_size) if data.input_size else entry.input_size
        return Decoding(data.labels, size, 1 if data.grayscale else 3, data.subset)
    return Decoding(data.labels)


def _resize(split: Split | None, size: tuple[int, int] | None) -> Split | None:
    """A built-in dataset at data.input_size: bilinear, antialiased when shrinking (the image-folder rule,
    computed by torch on the decoded tensors rather than by Pillow on files; values may differ by one level)."""
    if split is None or size is None or tuple(split.images.shape[2:]) == tuple(size):
        return split
    out = torch.empty((len(split), split.images.shape[1], *size), dtype=torch.uint8)  # (N, C, H', W')
    for lo in range(0, len(split), 4096):  # chunks bound the float temporary
        x = split.images[lo: lo + 4096].float()  # (b, C, H, W)
        y = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)  # (b, C, H', W')
        out[lo: lo + 4096] = y.round_().clamp_(0, 255).to(torch.uint8)
    return Split(out, split.labels, split.names)


def _shaped(split: Split | None, data) -> Split | None:
    """A split at the size and channels the data section asks for (a no-op where they are the decoded ones)."""
    if split is None:
        return None
    if DATASETS[data.dataset].source is not IMAGE_FOLDER_SOURCE:  # an image folder is decoded at that size
        split = _resize(split, tuple(data.input_size) if data.input_size else None)
    if data.grayscale and split.images.shape[1] == 3:
        split = Split(to_grayscale(split.images), split.labels, split.names)
    return split


def _load(config: Config, data_root: str | None, test_only: bool):
    data = config.data
    entry = DATASETS[data.dataset]
    root = choose_data_root(data_root, data.root)  # ./data when nothing names one (downloaded into if empty)
    cache_dir = Path(data.cache_dir).expanduser() if data.cache_dir else None
    loaded = load_source(entry.source, root, cache_dir=cache_dir, download=data.download, decoding=decoding_for(data),
                         test_only=test_only)
    return root, loaded


def _check_stats(mean: list[float], std: list[float], channels: int) -> None:
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"data.mean/data.std: need {channels} values (one per channel), got {len(mean)}/{len(std)}")


def _prepare_source(config: Config, data_root: str | None = None) -> Prepared:
    data = config.data
    root, loaded = _load(config, data_root, test_only=False)
    if DATASETS[data.dataset].num_classes is None and data.input_size is None:
        # An image folder's size is the run's choice, not the dataset's: the run's config (saved with
        # every checkpoint, as the mean/std are) records the one it was decoded at, default or not.
        data.input_size = DATASETS[data.dataset].input_size
    train, val, test = (_shaped(s, data) for s in (loaded.train, loaded.val, loaded.test))
    if data.subset:
        train, test = take_subset(train, data.subset), take_subset(test, data.subset)
        val = take_subset(val, data.subset) if val is not None else None
    if val is not None:
        # The folder's own val/ is the validation split; cutting another one from train/ as well would
        # leave a second, unused hold-out and fewer training images than the user expects.
        if data.val_split:
            raise ConfigError(f"data.val_split={data.val_split}: {shown_path(loaded.folder)} has its own val/ folder "
                              f"({len(val):,} images), which is the validation split; set data.val_split: 0 "
                              "(--set data.val_split=0), or remove val/ to hold out part of train/ instead")
    else:
        if data.val_split >= len(train):
            raise ConfigError(f"data.val_split={data.val_split}: must be less than the {len(train)} training images")
        train, val = split_train_val(train, data.val_split, data.split_seed)  # not train.seed: one val set per sweep
    if data.mean is not None and data.std is not None:
        mean, std = data.mean, data.std
    else:
        # Statistics of the images the model trains on, never of validation or test images;
        # every 10th image gives them to 3 decimals at a tenth of the cost.
        mean, std = channel_stats(train.images[::10])
    _check_stats(mean, std, train.images.shape[1])
    return Prepared(train, val, test, loaded.classes, loaded.source, list(mean), list(std))


def _prepare_source_test(config: Config, data_root: str | None = None) -> PreparedTest:
    data = config.data
    if data.mean is None or data.std is None:
        # Statistics come from the training images: a config that lacks them needs those read.
        p = _prepare_source(config, data_root)
        return PreparedTest(p.test, p.classes, p.source, p.mean, p.std)
    root, loaded = _load(config, data_root, test_only=True)
    test = _shaped(loaded.test, data)
    if data.subset:
        test = take_subset(test, data.subset)
    _check_stats(data.mean, data.std, test.images.shape[1])
    return PreparedTest(test, loaded.classes, loaded.source, list(data.mean), list(data.std))


DATASETS: dict[str, DatasetEntry] = {
    "cifar10": DatasetEntry(3, (32, 32), 10, _prepare_source, _prepare_source_test, CIFAR10_SOURCE,
                            description="CIFAR-10: 50,000 + 10,000 32×32 RGB images of 10 classes"),
    "cifar100": DatasetEntry(3, (32, 32), 100, _prepare_source, _prepare_source_test, CIFAR100_SOURCE, 20,
                             "CIFAR-100: 50,000 + 10,000 32×32 RGB images of 100 classes in 20 superclasses "
                             "(data.labels: coarse)"),
    "mnist": DatasetEntry(1, (28, 28), 10, _prepare_source, _prepare_source_test, MNIST_SOURCE,
                          description="MNIST: 60,000 + 10,000 28×28 grayscale handwritten digits"),
    "fashion_mnist": DatasetEntry(1, (28, 28), 10, _prepare_source, _prepare_source_test, FASHION_MNIST_SOURCE,
                                  description="Fashion-MNIST: 60,000 + 10,000 28×28 grayscale pictures of "
                                              "10 kinds of clothing"),
    "imagefolder": DatasetEntry(3, (32, 32), None, _prepare_source, _prepare_source_test, IMAGE_FOLDER_SOURCE,
                                description="your own pictures: train/<class>/*, test/<class>/* (and val/), any "
                                            "size, brought to data.input_size (32×32 unless set)"),
    # The seed's striped picture, for the edge toy.
    "stripes": DatasetEntry(1, (6, 8), 1, _prepare_stripes, _prepare_stripes_test,
                            description="the seed's 6×8 striped picture, built in (the edge toy's one image)"),
}


def data_shape(data) -> tuple[int, int, int]:
    """(C, H, W) of the images a run gets from a data section: the dataset's own, or data.input_size,
    one channel with data.grayscale."""
    entry = DATASETS[data.dataset]
    channels = 1 if data.grayscale else entry.channels
    height, width = tuple(data.input_size) if data.input_size else entry.input_size
    return channels, height, width


def known_class_count(data, data_root: str | None = None) -> int | None:
    """How many classes the data section's dataset has, without decoding anything: the dataset's own
    number (20 for CIFAR-100's superclasses), or an image folder's class folders counted where a run
    would look (--data-root, CNNKIT_DATA, data.root, ./data); None when no such folder is there yet."""
    entry = DATASETS[data.dataset]
    if data.labels == "coarse" and entry.coarse_classes is not None:
        return entry.coarse_classes
    if entry.num_classes is not None:
        return entry.num_classes
    classes = peek_classes(entry.source, choose_data_root(data_root, data.root).path)
    return len(classes) if classes else None


def prepare_data(config: Config, data_root: str | None = None) -> Prepared:
    return DATASETS[config.data.dataset].prepare(config, data_root)


def prepare_test(config: Config, data_root: str | None = None) -> PreparedTest:
    """The test split only (never the training images, when the config holds its mean/std)."""
    return DATASETS[config.data.dataset].prepare_test(config, data_root)


def fetch_data(config: Config, data_root: str | None = None, progress: Progress | None = None) -> Path | None:
    """Download the config's data where a run would look for it, if a run would and it is not there yet.

    A run downloads into the default root (./data) or, with data.download, into any root. Calling
    this first lets the caller show the download's progress; the folder written, or None.
    """
    source = DATASETS[config.data.dataset].source
    if source is None or source.fetch is None:
        return None
    root = choose_data_root(data_root, config.data.root)
    if not (root.is_default or config.data.download):
        return None
    return fetch_source(source, root, progress=progress)


def to_device(split: Split | None, device: torch.device) -> Split | None:
    if split is None:
        return None
    return Split(split.images.to(device, non_blocking=True), split.labels.to(device, non_blocking=True), split.names)
