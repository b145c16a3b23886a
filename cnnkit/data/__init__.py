"""CIFAR-10 (and the seed's stripes picture) as uint8 tensors, and the whole-batch ops on them.

One job a module:
  sources       the data root, which layout it holds, the download, the cache in front (load_cifar10)
  batches       the cifar-10-batches-py pickles, through a restricted unpickler
  image_folder  root/{train,test}/<class>/ images, listed and decoded (in parallel) with Pillow
  cache         the keyed on-disk tensor cache
  splits        Split, the train/val hold-out, balanced subsets, the epoch order
  transforms    whole-batch augment, normalise, grayscale, channel statistics
  datasets      the dataset registry and `prepare_data` (config → a run's splits and statistics)
"""

from cnnkit.data.cache import default_cache_dir
from cnnkit.data.datasets import DATASETS, DatasetEntry, Prepared, prepare_data, to_device
from cnnkit.data.image_folder import CIFAR10_CLASSES
from cnnkit.data.sources import load_cifar10, resolve_data_root
from cnnkit.data.splits import CifarData, Split, epoch_permutation, split_train_val, take_subset
from cnnkit.data.transforms import (
    alternating_flips,
    augment_batch,
    channel_stats,
    channel_tensors,
    normalize,
    to_grayscale,
)

__all__ = [
    "CIFAR10_CLASSES", "DATASETS", "CifarData", "DatasetEntry", "Prepared", "Split", "alternating_flips",
    "augment_batch", "channel_tensors",
    "channel_stats", "default_cache_dir", "epoch_permutation", "load_cifar10", "normalize", "prepare_data",
    "resolve_data_root", "split_train_val", "take_subset", "to_device", "to_grayscale",
]
