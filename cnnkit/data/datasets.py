"""The datasets, in a name → entry registry: their input size and classes, and how to prepare them.

Preparing a dataset turns `config.data` into the splits a run trains, selects and tests on, with
the normalisation statistics resolved. The next dataset is one function and one registry line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from cnnkit.data.download import Progress
from cnnkit.data.sources import choose_data_root, fetch_cifar10, load_cifar10, load_cifar10_test
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
    input_size: tuple[int, int]  # (H, W)
    num_classes: int
    prepare: Callable[[Config, str | None], Prepared]  # (config, --data-root) → the run's splits
    # (config, --data-root) → the test split only; the config's data.mean/std are the resolved ones
    prepare_test: Callable[[Config, str | None], PreparedTest]


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


def _prepare_cifar10(config: Config, data_root: str | None = None) -> Prepared:
    data = config.data
    root = choose_data_root(data_root, data.root)  # ./data when nothing names one (downloaded into if empty)
    cache_dir = Path(data.cache_dir).expanduser() if data.cache_dir else None
    loaded = load_cifar10(root, cache_dir=cache_dir, download=data.download)
    train, test = loaded.train, loaded.test
    if data.grayscale:
        train = Split(to_grayscale(train.images), train.labels, train.names)
        test = Split(to_grayscale(test.images), test.labels, test.names)
    if data.subset:
        train, test = take_subset(train, data.subset), take_subset(test, data.subset)
    if data.val_split >= len(train):
        raise ConfigError(f"data.val_split={data.val_split}: must be less than the {len(train)} training images")
    train, val = split_train_val(train, data.val_split, data.split_seed)  # not train.seed: one val set per sweep
    if data.mean is not None and data.std is not None:
        mean, std = data.mean, data.std
    else:
        # Statistics of the images the model trains on, never of validation or test images;
        # every 10th image gives them to 3 decimals at a tenth of the cost.
        mean, std = channel_stats(train.images[::10])
    channels = train.images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"data.mean/data.std: need {channels} values (one per channel), got {len(mean)}/{len(std)}")
    return Prepared(train, val, test, loaded.classes, loaded.source, list(mean), list(std))


def _prepare_cifar10_test(config: Config, data_root: str | None = None) -> PreparedTest:
    data = config.data
    if data.mean is None or data.std is None:
        # Statistics come from the training images: a config that lacks them needs those read.
        p = _prepare_cifar10(config, data_root)
        return PreparedTest(p.test, p.classes, p.source, p.mean, p.std)
    root = choose_data_root(data_root, data.root)
    cache_dir = Path(data.cache_dir).expanduser() if data.cache_dir else None
    loaded = load_cifar10_test(root, cache_dir=cache_dir, download=data.download)
    test = loaded.test
    if data.grayscale:
        test = Split(to_grayscale(test.images), test.labels, test.names)
    if data.subset:
        test = take_subset(test, data.subset)
    channels = test.images.shape[1]
    if len(data.mean) != channels or len(data.std) != channels:
        raise ConfigError(f"data.mean/data.std: need {channels} values (one per channel), "
                          f"got {len(data.mean)}/{len(data.std)}")
    return PreparedTest(test, loaded.classes, loaded.source, list(data.mean), list(data.std))


DATASETS: dict[str, DatasetEntry] = {
    "cifar10": DatasetEntry(3, (32, 32), 10, _prepare_cifar10, _prepare_cifar10_test),
    # The seed's striped picture, for the edge toy.
    "stripes": DatasetEntry(1, (6, 8), 1, _prepare_stripes, _prepare_stripes_test),
}


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
    if config.data.dataset != "cifar10":
        return None
    root = choose_data_root(data_root, config.data.root)
    if not (root.is_default or config.data.download):
        return None
    return fetch_cifar10(root, progress=progress)


def to_device(split: Split | None, device: torch.device) -> Split | None:
    if split is None:
        return None
    return Split(split.images.to(device, non_blocking=True), split.labels.to(device, non_blocking=True), split.names)
