"""CIFAR-100: torchvision's `cifar-100-python/{train,test,meta}` (one pickle each) and its 20 superclasses.

Each split file holds `data` (N, 3072) like CIFAR-10's batches, with `fine_labels` (100 classes) and
`coarse_labels` (20 superclasses); `meta` names both (`fine_label_names`, `coarse_label_names`). The
pickles go through cnnkit.data.batches' restricted unpickler. An image-folder copy of CIFAR-100
(train/<fine class>/...) reaches the superclasses through COARSE_OF, the dataset's own grouping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnkit.data.batches import _field, _load_pickle
from cnnkit.data.splits import CifarData, Split
from cnnkit.errors import DataError

CIFAR100_DIRNAME = "cifar-100-python"
CIFAR100_FILES = ("meta", "train", "test")
REEXTRACT = "re-extract cifar-100-python.tar.gz (or `cnnkit data --dataset cifar100 --download` into an empty folder)"

# CIFAR-100's superclasses, each with its five classes, as the dataset's own meta and labels group them.
# Both name lists are in label order (alphabetical), as in the meta file.
SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
COARSE_CLASSES: list[str] = sorted(SUPERCLASSES)
FINE_CLASSES: list[str] = sorted(name for members in SUPERCLASSES.values() for name in members)
COARSE_OF: dict[str, str] = {fine: coarse for coarse, members in SUPERCLASSES.items() for fine in members}


def find_cifar100(root: Path) -> Path | None:
    """root/cifar-100-python/, or root itself when it holds the split files (not an image folder's train/)."""
    if (root / CIFAR100_DIRNAME).is_dir():
        return root / CIFAR100_DIRNAME
    if root.name == CIFAR100_DIRNAME or any((root / name).is_file() for name in CIFAR100_FILES):
        return root
    return None


def _missing(path: Path) -> DataError:
    what = " (it holds the class names: fine_label_names and coarse_label_names)" if path.name == "meta" else ""
    return DataError(f"{path} is missing{what}; {REEXTRACT}")


def list_cifar100(folder: Path, splits: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(file, size, mtime_ns) of meta and the split files, for the cache key; a missing one is one line."""
    listing = []
    for name in ("meta", *splits):
        try:
            st = (folder / name).stat()
        except OSError:
            raise _missing(folder / name) from None
        listing.append((name, st.st_size, st.st_mtime_ns))
    return listing


def _load(path: Path) -> dict:
    return _load_pickle(path, "CIFAR-100", "cifar-100-python.tar.gz")


def _names(meta: dict, key: str, path: Path, count: int) -> list[str]:
    names = _field(meta, key, path, "CIFAR-100")
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{path}: '{key}' must be a list of {count} class names; {REEXTRACT}")
    return [n.decode() if isinstance(n, bytes) else n for n in names]


def _read_split(path: Path, labels_key: str, num_classes: int) -> Split:
    batch = _load(path)
    data, labels = _field(batch, "data", path, "CIFAR-100"), _field(batch, labels_key, path, "CIFAR-100")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {getattr(data, 'shape', None)}; "
                        f"{REEXTRACT}")
    try:
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))  # (N,)
    except (TypeError, ValueError):
        labels = None
    ok = labels is not None and labels.shape == (data.shape[0],) and (
        len(labels) == 0 or 0 <= int(labels.min()) <= int(labels.max()) < num_classes)
    if not ok:
        raise DataError(f"{path}: '{labels_key}' must be {data.shape[0]} ints in 0..{num_classes - 1}; {REEXTRACT}")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major: CHW already.
    return Split(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), labels)  # (N, 3, 32, 32)


def decode_cifar100(folder: Path, labels: str = "fine", *, with_train: bool = True) -> CifarData:
    """Both splits (or the test split alone) with the fine (100) or coarse (20) labels and their names."""
    meta_path = folder / "meta"
    if not meta_path.is_file():
        raise _missing(meta_path)
    meta = _load(meta_path)
    coarse = labels == "coarse"
    classes = _names(meta, "coarse_label_names" if coarse else "fine_label_names", meta_path, 20 if coarse else 100)
    key = "coarse_labels" if coarse else "fine_labels"
    train = _read_split(folder / "train", key, len(classes)) if with_train else None
    return CifarData(train, _read_split(folder / "test", key, len(classes)), classes, source="")


def coarse_of_folders(folder_classes: list[str], root: Path) -> tuple[list[str], list[int]]:
    """An image-folder copy's fine classes → (the superclasses, each fine class's superclass index)."""
    unknown = [name for name in folder_classes if name not in COARSE_OF]
    if unknown:
        raise DataError(f"data.labels: coarse needs CIFAR-100's class folders to map them to superclasses, but "
                        f"{root}/train/{unknown[0]} is not one of CIFAR-100's 100 classes ({len(unknown)} such); "
                        "use data.labels: fine, or data.dataset: imagefolder for your own classes")
    used = sorted({COARSE_OF[name] for name in folder_classes})
    return used, [used.index(COARSE_OF[name]) for name in folder_classes]
