"""The splits of a dataset and how to cut them: train/val hold-out, balanced subsets, epoch order.

Every choice is a function of (data, size, seed), never of hidden generator state, so a resumed
run or another DDP rank makes the same one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnkit.errors import DataError


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8, contiguous
    labels: torch.Tensor  # (N,) int64
    # Where each image came from, when the source says (an image folder: "test/cat/0042.jpg" under
    # the data root; the batches layout: "test_batch[42]"), so a report can point at the file.
    names: list[str] | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def keep(self, mask: torch.Tensor) -> Split:
        """The images where `mask` (N,) bool is true, in their order; names follow."""
        names = None if self.names is None else [n for n, k in zip(self.names, mask.tolist(), strict=True) if k]
        return Split(self.images[mask], self.labels[mask], names)


@dataclass
class CifarData:
    train: Split | None  # None when only the test split was read (eval)
    test: Split
    classes: list[str]
    source: str  # one human line: where the data came from and whether the cache was used
    # What load_cifar10 found, for `cnnkit data`: "cifar-10-batches-py" or "image folder", the folder
    # read, the cache file, and "read" | "written" | "not writable" | "" (not consulted).
    layout: str = ""
    folder: Path | None = None
    cache_path: Path | None = None
    cache: str = ""
    # An image folder's own val/<class>/ split, when it has one (else validation is cut from train).
    val: Split | None = None
    # Files in an image folder's class folders that are not pictures by their name (notes.txt), skipped.
    skipped: int = 0


def _balanced_quotas(counts: list[int], n: int) -> list[int]:
    """Split `n` over classes as equally as their sizes allow; leftovers go to the lowest labels."""
    quotas = [0] * len(counts)
    remaining = n
    while remaining > 0:
        open_classes = [c for c in range(len(counts)) if quotas[c] < counts[c]]
        share = remaining // len(open_classes)
        if share == 0:
            for c in open_classes[:remaining]:
                quotas[c] += 1
            break
        for c in open_classes:
            take = min(share, counts[c] - quotas[c])
            quotas[c] += take
            remaining -= take
    return quotas


def _class_counts(labels: torch.Tensor) -> list[int]:
    return torch.bincount(labels.cpu()).tolist()


def split_train_val(train: Split, val_size: int, seed: int) -> tuple[Split, Split | None]:
    """Hold out `val_size` images, the same number per class as far as possible, picked at random."""
    if val_size == 0:
        return train, None
    if not 0 <= val_size < len(train):
        raise DataError(f"val_size {val_size} is out of range: it must be between 0 and {len(train) - 1}")
    generator = torch.Generator().manual_seed(seed)
    labels = train.labels.cpu()  # (N,)
    is_val = torch.zeros(len(train), dtype=torch.bool)  # (N,)
    for c, quota in enumerate(_balanced_quotas(_class_counts(labels), val_size)):
        members = torch.nonzero(labels == c).squeeze(1)  # (n_c,)
        chosen = members[torch.randperm(len(members), generator=generator)[:quota]]
        is_val[chosen] = True
    # Both parts keep the original order, so the result depends only on (data, val_size, seed).
    is_val = is_val.to(train.labels.device)
    return train.keep(~is_val), train.keep(is_val)


def take_subset(split: Split, n: int) -> Split:
    """The first `n` images, keeping classes balanced: each class gives its first ~n/K images."""
    if n >= len(split):
        return split
    if n < 0:
        raise DataError(f"subset size {n} is negative: it must be between 0 and {len(split)}")
    labels = split.labels.cpu()  # (N,)
    keep = torch.zeros(len(split), dtype=torch.bool)  # (N,)
    for c, quota in enumerate(_balanced_quotas(_class_counts(labels), n)):
        keep[torch.nonzero(labels == c).squeeze(1)[:quota]] = True
    return split.keep(keep.to(split.labels.device))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch `epoch`: a function of (seed, epoch) only, so a resumed run or another
    DDP rank computes the same one without sharing any generator state."""
    digest = hashlib.sha256(f"cnnkit-epoch:{seed}:{epoch}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(n, generator=generator)  # (n,) int64
