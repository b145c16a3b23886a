"""The datasets (CIFAR-10, CIFAR-100, MNIST, Fashion-MNIST, the user's own image folder, the seed's
stripes picture) as uint8 tensors, and the whole-batch ops on them.

One job a module:
  sources       the data root (./data by default), each dataset's layouts, the cache in front (load_source)
  download      tarballs and file sets fetched, md5-checked and put in place atomically, progress to a callback
  batches       the cifar-10-batches-py pickles, through a restricted unpickler
  cifar100      the cifar-100-python pickles (fine and coarse labels) and the superclass table
  idx           MNIST's raw IDX files, plain or .gz
  image_folder  root/{train,val,test}/<class>/ images, listed and decoded (in parallel) with Pillow
  pictures      the rule a picture of any size and mode becomes a model's input by (also predict's)
  cache         the keyed on-disk tensor cache
  splits        Split, the train/val hold-out, balanced subsets, the epoch order
  transforms    whole-batch augment, normalise, grayscale, channel statistics
  datasets      the dataset registry and `prepare_data` (config → a run's splits and statistics)
"""

from cnnkit.data.cache import default_cache_dir
from cnnkit.data.datasets import (
    DATASETS,
    DatasetEntry,
    Prepared,
    PreparedTest,
    data_shape,
    fetch_data,
    known_class_count,
    prepare_data,
    prepare_test,
    to_device,
)
from cnnkit.data.download import CIFAR10_MD5, CIFAR10_URL, download_cifar10
from cnnkit.data.image_folder import CIFAR10_CLASSES
from cnnkit.data.sources import (
    DEFAULT_DATA_ROOT,
    DataReport,
    DataRoot,
    Decoding,
    Source,
    choose_data_root,
    fetch_cifar10,
    fetch_source,
    inspect_cifar10,
    inspect_source,
    load_cifar10,
    load_cifar10_test,
    load_source,
    resolve_data_root,
)
from cnnkit.data.splits import CifarData, Split, epoch_permutation, split_train_val, take_subset
from cnnkit.data.transforms import (
    alternating_flips,
    augment_batch,
    channel_stats,
    channel_tensors,
    jitter_batch,
    jitter_draws,
    normalize,
    to_grayscale,
)

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MD5", "CIFAR10_URL", "DATASETS", "DEFAULT_DATA_ROOT", "CifarData", "DataReport",
    "DataRoot", "Decoding", "Source", "data_shape", "fetch_source", "inspect_source", "known_class_count",
    "load_source",
    "DatasetEntry", "Prepared", "PreparedTest", "Split", "alternating_flips", "augment_batch", "channel_tensors",
    "channel_stats", "choose_data_root", "default_cache_dir", "download_cifar10", "epoch_permutation",
    "fetch_cifar10", "fetch_data", "inspect_cifar10", "jitter_batch", "jitter_draws", "load_cifar10",
    "load_cifar10_test", "normalize",
    "prepare_data", "prepare_test",
    "resolve_data_root", "split_train_val", "take_subset", "to_device", "to_grayscale",
]
