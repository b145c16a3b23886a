"""cnnkit.data: both on-disk layouts, the cache, every error message, and the batch tensor ops."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_batches_dir, make_image_folder, make_tiny_arrays
from PIL import Image

import cnnkit.data.image_folder as image_folder_mod
from cnnkit.data import (
    CIFAR10_CLASSES,
    CifarData,
    Split,
    augment_batch,
    channel_stats,
    default_cache_dir,
    epoch_permutation,
    load_cifar10,
    normalize,
    resolve_data_root,
    split_train_val,
    take_subset,
    to_grayscale,
)
from cnnkit.errors import ConfigError, DataError

# From torchvision.datasets.CIFAR10.train_list.
OFFICIAL_MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f"}


def class_major(split: Split) -> Split:
    """Reorder to all of class 0, then class 1, ... keeping the order within a class."""
    order = torch.argsort(split.labels, stable=True)
    return Split(split.images[order], split.labels[order])


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.suffix == ".pt")


# ---------------------------------------------------------------------------------------------
# Layouts


def test_both_layouts_give_the_same_pixels_and_labels(tmp_path: Path) -> None:
    make_batches_dir(tmp_path / "b", n_train_per_class=6, n_test_per_class=3, seed=7)
    make_image_folder(tmp_path / "f", n_train_per_class=6, n_test_per_class=3, seed=7)
    from_batches = load_cifar10(tmp_path / "b")
    from_folder = load_cifar10(tmp_path / "f")

    for d in (from_batches, from_folder):
        assert isinstance(d, CifarData)
        assert d.classes == CIFAR10_CLASSES
        assert (len(d.train), len(d.test)) == (60, 30)
        assert d.train.images.shape == (60, 3, 32, 32) and d.test.images.shape == (30, 3, 32, 32)
        assert d.train.images.dtype == torch.uint8 and d.train.labels.dtype == torch.int64
        assert d.train.images.is_contiguous() and d.test.images.is_contiguous()
        assert torch.bincount(d.train.labels).tolist() == [6] * 10

    # The batch files interleave classes; the folder is class-major. Same content either way.
    for a, b in ((from_batches.train, from_folder.train), (from_batches.test, from_folder.test)):
        a = class_major(a)
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.labels, b.labels)

    # And the pixels are exactly the generated ones, in CHW.
    train_x, train_y, _, _ = make_tiny_arrays(6, 3, seed=7)
    assert torch.equal(from_batches.train.images, torch.from_numpy(train_x).permute(0, 3, 1, 2))
    assert from_batches.train.labels.tolist() == train_y.tolist()
    assert "cifar-10-batches-py" in from_batches.source and "image folder" in from_folder.source


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batches_written_with_any_pickle_protocol_load(tmp_path: Path, protocol: int) -> None:
    # Protocol 2 spells bytes as _codecs.encode, protocol 5 rebuilds arrays with _frombuffer.
    make_batches_dir(tmp_path, n_train_per_class=2, n_test_per_class=1, protocol=protocol)
    d = load_cifar10(tmp_path)
    assert (len(d.train), len(d.test)) == (20, 10)


class _Python2Pickler(pickle._Pickler):
    """Writes like the Python 2 pickler that made the real batch files: every str and bytes as a
    py2 `str` (BINSTRING), and numpy's globals under their 1.x names (numpy.core.multiarray)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def save_numpy_global(self, obj, name=None) -> None:
        module = "numpy.core.multiarray" if obj.__name__ == "_reconstruct" else "numpy"
        self.write(pickle.GLOBAL + f"{module}\n{obj.__name__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str
    dispatch[type] = save_numpy_global
    dispatch[type(len)] = save_numpy_global  # builtin functions such as _reconstruct


def test_batches_pickled_by_python2_load(tiny_batches_root: Path) -> None:
    expected = load_cifar10(tiny_batches_root, cache_dir=tiny_batches_root / "cache")
    folder = tiny_batches_root / "cifar-10-batches-py"
    for path in folder.iterdir():
        with open(path, "rb") as f:
            content = pickle.load(f)
        with open(path, "wb") as f:
            _Python2Pickler(f, protocol=2).dump(content)
    assert b"numpy.core.multiarray" in (folder / "data_batch_1").read_bytes()
    d = load_cifar10(tiny_batches_root, cache_dir=tiny_batches_root / "cache")
    assert "decoded" in d.source and d.classes == CIFAR10_CLASSES
    assert torch.equal(d.train.images, expected.train.images)
    assert torch.equal(d.test.labels, expected.test.labels)


def test_tiny_image_root_is_learnable(tiny_image_root: Path) -> None:
    # Other tests train on it: nearest class-mean colour (and brightness alone) must beat chance.
    d = load_cifar10(tiny_image_root)
    def colour(x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3))  # (N, 3)

    def brightness(x: torch.Tensor) -> torch.Tensor:
        return to_grayscale(x).float().mean(dim=(2, 3))  # (N, 1)

    for features in (colour, brightness):
        train_f, test_f = features(d.train.images), features(d.test.images)  # (N, F)
        centroids = torch.stack([train_f[d.train.labels == c].mean(0) for c in range(10)])  # (10, F)
        predicted = torch.cdist(test_f, centroids).argmin(1)  # (N_test,)
        assert (predicted == d.test.labels).float().mean() > 0.9


def test_batches_folder_itself_can_be_the_root(tiny_batches_root: Path) -> None:
    a = load_cifar10(tiny_batches_root)
    b = load_cifar10(tiny_batches_root / "cifar-10-batches-py")
    assert torch.equal(a.train.images, b.train.images)


def test_md5_mismatching_copy_still_loads(tiny_batches_root: Path) -> None:
    # A re-made copy never has the official checksums; torchvision would refuse it, we must not.
    batch = tiny_batches_root / "cifar-10-batches-py" / "data_batch_1"
    assert hashlib.md5(batch.read_bytes()).hexdigest() != OFFICIAL_MD5["data_batch_1"]
    d = load_cifar10(tiny_batches_root)
    assert len(d.train) == 100 and len(d.test) == 40


def test_custom_classes_are_sorted_and_any_size_works(tmp_path: Path) -> None:
    classes = ["zebra", "apple", "mango"]
    make_image_folder(tmp_path, n_train_per_class=3, n_test_per_class=2, classes=classes, size=24)
    d = load_cifar10(tmp_path)
    assert d.classes == ["apple", "mango", "zebra"]
    assert d.train.images.shape == (9, 3, 24, 24)
    assert d.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    expected = np.array(Image.open(tmp_path / "train" / "zebra" / "0001.png"))  # (H, W, C)
    assert torch.equal(d.train.images[7], torch.from_numpy(expected).permute(2, 0, 1))


def test_extensions_are_case_insensitive_and_other_files_ignored(tmp_path: Path) -> None:
    make_image_folder(tmp_path, n_train_per_class=2, n_test_per_class=1, classes=["a", "b"])
    (tmp_path / "train" / "a" / "0001.png").rename(tmp_path / "train" / "a" / "0001.PNG")
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "b" / ".DS_Store").write_bytes(b"\0\1")
    d = load_cifar10(tmp_path)
    assert len(d.train) == 4 and len(d.test) == 2


def test_parallel_decode_matches_serial(tiny_image_root: Path, tmp_path: Path, monkeypatch) -> None:
    serial = load_cifar10(tiny_image_root, cache_dir=tmp_path / "c1")
    monkeypatch.setattr(image_folder_mod, "PARALLEL_MIN_IMAGES", 0)
    parallel = load_cifar10(tiny_image_root, cache_dir=tmp_path / "c2")
    assert torch.equal(serial.train.images, parallel.train.images)
    assert torch.equal(serial.test.labels, parallel.test.labels)


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_hit_returns_identical_tensors(tiny_image_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_cifar10(tiny_image_root, cache_dir=cache)
    assert "decoded" in first.source and len(cache_files(cache)) == 1
    second = load_cifar10(tiny_image_root, cache_dir=cache)
    assert "cached" in second.source and "decoded" not in second.source
    assert str(cache_files(cache)[0]) in second.source
    assert second.classes == first.classes
    for a, b in ((first.train, second.train), (first.test, second.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert b.images.dtype == torch.uint8 and b.images.is_contiguous()


def test_every_image_knows_its_file_decoded_cached_cut_and_in_the_test_only_read(tiny_image_root: Path,
                                                                                 tmp_path: Path) -> None:
    # What `eval --worst` shows: each image's path under the root, the very file its pixels came from.
    from cnnkit.data import load_cifar10_test

    cache = tmp_path / "cache"
    files = {split: sorted(p.relative_to(tiny_image_root).as_posix() for p in (tiny_image_root / split).glob("*/*"))
             for split in ("train", "test")}
    decoded = load_cifar10(tiny_image_root, cache_dir=cache)
    cached = load_cifar10(tiny_image_root, cache_dir=cache)
    test_only = load_cifar10_test(tiny_image_root, cache_dir=cache)
    assert "decoded" in decoded.source and "cached" in cached.source and "cached" in test_only.source
    for data in (decoded, cached, test_only):
        splits = {"test": data.test} if data.train is None else {"train": data.train, "test": data.test}
        for name, split in splits.items():
            # Class folders sort by name, CIFAR-10's labels do not: compare by class name.
            assert sorted(split.names) == files[name]
            assert [n.split("/")[1] for n in split.names] == [data.classes[c] for c in split.labels.tolist()]
            first = Image.open(tiny_image_root / split.names[0])
            assert torch.equal(torch.from_numpy(np.array(first)).permute(2, 0, 1), split.images[0])
    # Names follow a subset and a validation split image for image.
    test = decoded.test
    sub = take_subset(test, 7)
    rest, val = split_train_val(decoded.train, 10, seed=0)
    for part, whole in ((sub, test), (rest, decoded.train), (val, decoded.train)):
        where = [whole.names.index(n) for n in part.names]
        assert torch.equal(part.images, whole.images[where]) and torch.equal(part.labels, whole.labels[where])


def test_batches_layout_names_test_images_by_their_row(tiny_batches_root: Path, tmp_path: Path) -> None:
    data = load_cifar10(tiny_batches_root, cache_dir=tmp_path)
    assert data.test.names == [f"test_batch[{i}]" for i in range(len(data.test))]


def test_default_cache_dir_is_used(tiny_batches_root: Path) -> None:
    load_cifar10(tiny_batches_root)
    assert len(cache_files(default_cache_dir())) == 1
    assert "cached" in load_cifar10(tiny_batches_root).source


def test_changed_source_invalidates_the_cache(tiny_image_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = load_cifar10(tiny_image_root, cache_dir=cache)
    changed = tiny_image_root / "train" / "cat" / "0000.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(changed)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # in case the clock is coarse
    after = load_cifar10(tiny_image_root, cache_dir=cache)
    assert "decoded" in after.source
    index = 3 * 20  # cat is label 3; 20 images per class, first file of the class
    assert after.train.labels[index] == 3
    assert (after.train.images[index] == 7).all() and not (before.train.images[index] == 7).all()
    assert len(cache_files(cache)) == 1  # the same source overwrites its cache file

    # A new file invalidates it too.
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tiny_image_root / "test" / "dog" / "9999.png")
    assert len(load_cifar10(tiny_image_root, cache_dir=cache).test) == 101


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "wrong_keys", "wrong_shapes"])
def test_damaged_cache_is_rebuilt(tiny_batches_root: Path, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    good = load_cifar10(tiny_batches_root, cache_dir=cache)
    [path] = cache_files(cache)
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(blob)))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "wrong_keys":
        torch.save({"format": 1, "key": "x"}, path)
    else:
        loaded = torch.load(path, weights_only=True)
        loaded["train_labels"] = loaded["train_labels"][:5]
        torch.save(loaded, path)

    rebuilt = load_cifar10(tiny_batches_root, cache_dir=cache)
    assert "decoded" in rebuilt.source
    assert torch.equal(rebuilt.train.images, good.train.images)
    assert torch.equal(rebuilt.train.labels, good.train.labels)
    assert "cached" in load_cifar10(tiny_batches_root, cache_dir=cache).source  # healthy again


def test_unwritable_cache_dir_just_skips_caching(tiny_batches_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    d = load_cifar10(tiny_batches_root, cache_dir=blocker / "cache")  # cannot mkdir under a file
    assert len(d.train) == 100 and "not cached" in d.source


# ---------------------------------------------------------------------------------------------
# Unsafe pickles


class _CreatesFile:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


class _RunsCommand:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("payload", [_CreatesFile, _RunsCommand])
def test_malicious_batch_pickle_is_refused(tiny_batches_root: Path, tmp_path: Path, payload) -> None:
    target = tmp_path / "pwned"
    batch = tiny_batches_root / "cifar-10-batches-py" / "data_batch_2"
    with open(batch, "wb") as f:
        pickle.dump({b"data": payload(target), b"labels": []}, f)
    with pytest.raises(DataError, match="data_batch_2") as info:
        load_cifar10(tiny_batches_root)
    assert "refused" in str(info.value)
    assert not target.exists()


def test_malicious_meta_pickle_is_refused(tiny_batches_root: Path, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    with open(tiny_batches_root / "cifar-10-batches-py" / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": _CreatesFile(target)}, f)
    with pytest.raises(DataError, match="batches.meta"):
        load_cifar10(tiny_batches_root)
    assert not target.exists()


# ---------------------------------------------------------------------------------------------
# Errors: one line each, naming the file or folder


def assert_one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


HOW_TO = ("--data-root DIR", "CNNKIT_DATA", "data.root")


def test_no_root_given(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar10(None)
    assert_one_line(info, *HOW_TO)


def test_root_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "nowhere")
    assert_one_line(info, str(tmp_path / "nowhere"), "does not exist", *HOW_TO)


def test_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(b"x")
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "data.bin")
    assert_one_line(info, str(tmp_path / "data.bin"), "is a file")


def test_root_holds_neither_layout(tmp_path: Path) -> None:
    (tmp_path / "something_else").mkdir()
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert_one_line(info, str(tmp_path), "cifar-10-batches-py", "train/", *HOW_TO)


@pytest.mark.parametrize("missing", ["train", "test"])
def test_split_folder_missing(tmp_path: Path, missing: str) -> None:
    make_image_folder(tmp_path, 1, 1, classes=["a", "b"])
    for p in sorted((tmp_path / missing).rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (tmp_path / missing).rmdir()
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert_one_line(info, str(tmp_path / missing), "missing")


def test_class_folder_missing_in_one_split(tmp_path: Path) -> None:
    make_image_folder(tmp_path, 1, 1, classes=["a", "b"])
    (tmp_path / "test" / "b" / "0000.png").unlink()
    (tmp_path / "test" / "b").rmdir()
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert_one_line(info, str(tmp_path / "test" / "b"), "missing")


def test_empty_class_folder(tmp_path: Path) -> None:
    make_image_folder(tmp_path, 1, 1, classes=["a", "b"])
    (tmp_path / "train" / "b" / "0000.png").unlink()
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert_one_line(info, str(tmp_path / "train" / "b"), "no images")


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image(tmp_path: Path, monkeypatch, damage: str, parallel: bool) -> None:
    if parallel:  # the error must cross the process pool intact
        monkeypatch.setattr(image_folder_mod, "PARALLEL_MIN_IMAGES", 0)
    make_image_folder(tmp_path, 2, 1, classes=["a", "b"])
    bad = tmp_path / "train" / "b" / "0001.png"
    bad.write_bytes(os.urandom(200) if damage == "garbage" else bad.read_bytes()[:120])
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert_one_line(info, str(bad))


@pytest.mark.parametrize(
    "image, described",
    [
        (Image.new("RGB", (28, 28)), "is 28×28 RGB, expected 32×32 RGB"),
        (Image.new("L", (32, 32)), "is 32×32 L, expected 32×32 RGB"),
        (Image.new("RGBA", (32, 32)), "is 32×32 RGBA, expected 32×32 RGB"),
    ],
)
def test_image_of_wrong_size_or_mode(tmp_path: Path, image: Image.Image, described: str) -> None:
    make_image_folder(tmp_path, 2, 1, classes=["a", "b"])
    bad = tmp_path / "test" / "b" / "0003.png"
    image.save(bad)
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert_one_line(info, f"{bad} {described}")


@pytest.mark.parametrize("name", ["data_batch_3", "test_batch", "batches.meta"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing", "not_a_dict"])
def test_bad_batch_file(tiny_batches_root: Path, name: str, damage: str) -> None:
    path = tiny_batches_root / "cifar-10-batches-py" / name
    if damage == "truncated":
        blob = path.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(500))
    elif damage == "missing":
        path.unlink()
    else:
        with open(path, "wb") as f:
            pickle.dump([1, 2, 3], f)
    with pytest.raises(DataError) as info:
        load_cifar10(tiny_batches_root)
    assert_one_line(info, str(path.resolve()))


@pytest.mark.parametrize(
    "batch",
    [
        {b"labels": [0]},
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},
        {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"cat", b"dog"]},
        {b"data": [1, 2], b"labels": [0, 1]},
    ],
    ids=["no_data", "wrong_width", "wrong_dtype", "label_count", "label_range", "label_type", "data_type"],
)
def test_batch_with_wrong_contents(tiny_batches_root: Path, batch: dict) -> None:
    path = tiny_batches_root / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(DataError) as info:
        load_cifar10(tiny_batches_root)
    assert_one_line(info, str(path.resolve()))


# The download itself is tested against a local HTTP server in test_download.py.


# ---------------------------------------------------------------------------------------------
# Where things live


def test_resolve_data_root_precedence(monkeypatch, tmp_path: Path) -> None:
    assert resolve_data_root(None, None) is None
    assert resolve_data_root(None, "/cfg") == Path("/cfg")
    monkeypatch.setenv("CNNKIT_DATA", "/env")
    assert resolve_data_root(None, "/cfg") == Path("/env")
    assert resolve_data_root("/cli", "/cfg") == Path("/cli")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_root("~/data", None) == tmp_path / "data"
    monkeypatch.setenv("CNNKIT_DATA", "")
    assert resolve_data_root(None, "~/cfg") == tmp_path / "cfg"


def test_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CNNKIT_CACHE", "~/mycache")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "mycache"
    monkeypatch.delenv("CNNKIT_CACHE")
    assert default_cache_dir() == tmp_path / ".cache" / "cnnkit"


# ---------------------------------------------------------------------------------------------
# Split, subset


def indexed_split(counts: list[int]) -> Split:
    """Images whose first pixel is their index (mod 256, plus a second byte), labels class-major."""
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])  # (N,)
    images = torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8)  # (N, 3, 4, 4)
    index = torch.arange(len(labels))
    images[:, 0, 0, 0] = (index % 256).to(torch.uint8)
    images[:, 1, 0, 0] = (index // 256).to(torch.uint8)
    shuffle = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return Split(images[shuffle].contiguous(), labels[shuffle])


def ids(split: Split) -> list[int]:
    return (split.images[:, 0, 0, 0].long() + 256 * split.images[:, 1, 0, 0].long()).tolist()


def test_split_train_val_is_stratified_disjoint_and_seeded() -> None:
    train = indexed_split([50] * 10)
    rest, val = split_train_val(train, 100, seed=3)
    assert (len(rest), len(val)) == (400, 100)
    assert torch.bincount(val.labels).tolist() == [10] * 10
    assert sorted(ids(rest) + ids(val)) == list(range(500))
    # Both parts keep the original relative order.
    position = {i: p for p, i in enumerate(ids(train))}
    assert [position[i] for i in ids(val)] == sorted(position[i] for i in ids(val))

    again, val_again = split_train_val(train, 100, seed=3)
    assert ids(val_again) == ids(val) and ids(again) == ids(rest)
    _, other = split_train_val(train, 100, seed=4)
    assert ids(other) != ids(val)


def test_split_train_val_uneven() -> None:
    train = indexed_split([3, 20, 20])
    rest, val = split_train_val(train, 13, seed=0)
    assert torch.bincount(val.labels, minlength=3).tolist() == [3, 5, 5]
    assert len(rest) == 30


def test_split_train_val_edges() -> None:
    train = indexed_split([5, 5])
    assert split_train_val(train, 0, seed=0) == (train, None)
    _, val = split_train_val(train, 9, seed=0)
    assert len(val) == 9
    for bad in (10, 11, -1):
        with pytest.raises(DataError, match="between 0 and 9"):
            split_train_val(train, bad, seed=0)


def test_take_subset_is_balanced_and_takes_the_first_of_each_class() -> None:
    split = indexed_split([30, 30, 30, 30])
    sub = take_subset(split, 10)
    assert torch.bincount(sub.labels).tolist() == [3, 3, 2, 2]
    for c, n in enumerate([3, 3, 2, 2]):
        first_of_class = [i for i, label in zip(ids(split), split.labels.tolist(), strict=True) if label == c][:n]
        assert [i for i, label in zip(ids(sub), sub.labels.tolist(), strict=True) if label == c] == first_of_class
    # Original order is kept.
    position = {i: p for p, i in enumerate(ids(split))}
    assert [position[i] for i in ids(sub)] == sorted(position[i] for i in ids(sub))
    assert take_subset(split, 120) is split and take_subset(split, 1000) is split
    assert len(take_subset(split, 0)) == 0


def test_take_subset_small_class_gives_its_share_to_others() -> None:
    sub = take_subset(indexed_split([2, 30, 30]), 20)
    assert torch.bincount(sub.labels).tolist() == [2, 9, 9]


# ---------------------------------------------------------------------------------------------
# Grayscale, stats, permutation


def test_to_grayscale_matches_pillow() -> None:
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(5, 8, 9, 3), dtype=np.uint8)  # (N, H, W, C)
    images = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    gray = to_grayscale(images, chunk=2)
    assert gray.shape == (5, 1, 8, 9) and gray.dtype == torch.uint8
    expected = np.stack([np.asarray(Image.fromarray(x).convert("L")) for x in hwc])  # (N, H, W)
    assert torch.equal(gray[:, 0], torch.from_numpy(expected))
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert (to_grayscale(white) == 255).all()


def test_channel_stats_matches_direct_computation() -> None:
    images = torch.randint(0, 256, (37, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean, std = channel_stats(images, chunk=8)
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)
    assert len(channel_stats(images[:, :1])[0]) == 1


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch() -> None:
    p = epoch_permutation(1000, seed=5, epoch=2)
    assert p.dtype == torch.int64 and sorted(p.tolist()) == list(range(1000))
    torch.manual_seed(123)  # global RNG state must not matter
    assert torch.equal(epoch_permutation(1000, seed=5, epoch=2), p)
    assert not torch.equal(epoch_permutation(1000, seed=5, epoch=3), p)
    assert not torch.equal(epoch_permutation(1000, seed=6, epoch=2), p)
    assert not torch.equal(epoch_permutation(1000, seed=2, epoch=5), p)


# ---------------------------------------------------------------------------------------------
# Augmentation, normalisation


def random_images(b: int = 64, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    # Values 1..255, so the zero padding is recognisable.
    return torch.randint(1, 256, (b, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_augment_noop_and_flip_only() -> None:
    images = random_images()
    g = torch.Generator().manual_seed(0)
    assert augment_batch(images, crop_padding=0, hflip=False, generator=g) is images

    out = augment_batch(images, crop_padding=0, hflip=True, generator=g)
    assert out.shape == images.shape and out.dtype == torch.uint8
    same = (out == images).flatten(1).all(1)  # (B,)
    flipped = (out == images.flip(3)).flatten(1).all(1)  # (B,)
    assert (same | flipped).all()
    assert same.any() and flipped.any()
    # A given mask (the alternating scheme) is followed exactly, image by image.
    mask = torch.arange(images.shape[0]) % 3 == 0  # (B,)
    out = augment_batch(images, crop_padding=0, hflip=True, generator=g, flip=mask)
    assert torch.equal(out[mask], images[mask].flip(3)) and torch.equal(out[~mask], images[~mask])


@pytest.mark.parametrize("hflip", [False, True])
def test_augment_crops_are_windows_of_the_padded_image(hflip: bool) -> None:
    images = random_images(c=3, h=7, w=9)
    p = 2
    out = augment_batch(images, crop_padding=p, hflip=hflip, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (p, p, p, p))  # (B, C, H+2p, W+2p)

    def window(i: int, dy: int, dx: int, flip: bool) -> torch.Tensor:
        crop = padded[i, :, dy:dy + 7, dx:dx + 9]  # (C, H, W)
        return crop.flip(2) if flip else crop

    offsets, flips = set(), []
    for i in range(len(images)):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            for flip in ((False, True) if hflip else (False,))
            if torch.equal(out[i], window(i, dy, dx, flip))
        ]
        assert matches, f"image {i} is not a window of its padded original"
        offsets.add(matches[0][:2])
        flips.append(matches[0][2])
    assert len(offsets) > 5  # offsets really vary
    assert (0 < sum(flips) < len(flips)) if hflip else not any(flips)


def test_augment_is_deterministic_per_generator() -> None:
    images = random_images()
    a = augment_batch(images, crop_padding=4, hflip=True, generator=torch.Generator().manual_seed(9))
    b = augment_batch(images, crop_padding=4, hflip=True, generator=torch.Generator().manual_seed(9))
    c = augment_batch(images, crop_padding=4, hflip=True, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(9)
    first = augment_batch(images, crop_padding=4, hflip=True, generator=g)
    second = augment_batch(images, crop_padding=4, hflip=True, generator=g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advances


def test_augment_single_channel() -> None:
    images = random_images(c=1)
    out = augment_batch(images, crop_padding=1, hflip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (64, 1, 8, 8)


def test_normalize() -> None:
    images = random_images(b=4, c=3, h=2, w=2)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32 and out.shape == images.shape
    mean_t = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    expected = (images.double() / 255 - mean_t) / std_t
    assert torch.allclose(out.double(), expected, atol=1e-5)
    assert normalize(images, mean, std, dtype=torch.bfloat16).dtype == torch.bfloat16
    gray = normalize(images[:, :1], [0.5], [0.25])
    assert torch.allclose(gray.double(), (images[:, :1].double() / 255 - 0.5) / 0.25, atol=1e-5)
    # Made straight in the model's layout: the same values, channels_last strides, no later copy.
    last = normalize(images, mean, std, memory_format=torch.channels_last)
    assert last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
    assert torch.equal(last, out)


# ---------------------------------------------------------------------------------------------
# The real CIFAR-10 (only with CNNKIT_DATA set)


def test_real_cifar10(real_data_root: Path, real_cache_dir: Path) -> None:
    # The session's one real-data cache: this test usually runs first and decodes it, so the other
    # real-data tests read it instead of decoding again (~10 s each).
    cache = real_cache_dir
    start = time.perf_counter()
    d = load_cifar10(real_data_root, cache_dir=cache)
    first = time.perf_counter() - start
    assert d.classes == CIFAR10_CLASSES
    assert d.train.images.shape == (50000, 3, 32, 32) and d.test.images.shape == (10000, 3, 32, 32)
    assert d.train.images.dtype == torch.uint8 and d.train.labels.dtype == torch.int64
    assert torch.bincount(d.train.labels).tolist() == [5000] * 10
    assert torch.bincount(d.test.labels).tolist() == [1000] * 10

    start = time.perf_counter()
    again = load_cifar10(real_data_root, cache_dir=cache)
    second = time.perf_counter() - start
    assert "cached" in again.source
    assert torch.equal(again.test.images, d.test.images) and torch.equal(again.train.labels, d.train.labels)
    print(f"\nreal CIFAR-10: first load {first:.2f}s ({d.source}); cached load {second:.3f}s")
    # What this CIFAR-10 is, to the pixel: a swapped channel, a transposed or mis-ordered decode fails here.
    if (real_data_root / "train").is_dir():
        # The JPEG image folder (/work/shared/data/cifar10): JPEG moves the statistics a little off the
        # published ones. train/airplane/0000.jpg is image 0; pixel (y 5, x 20) and its transpose (20, 5).
        known_mean, known_std = [0.491250, 0.482090, 0.446521], [0.245232, 0.242782, 0.260629]
        known_pixels = {(0, 5, 20): [241, 242, 237], (0, 20, 5): [8, 8, 10]}
        first_class = "airplane"
    else:
        # The original cifar-10-batches-py: the published statistics; image 0 is data_batch_1's first (a frog).
        known_mean, known_std = [0.491400, 0.482158, 0.446531], [0.247032, 0.243485, 0.261588]
        known_pixels = {(0, 0, 0): [59, 62, 63]}
        first_class = "frog"
    mean, std = channel_stats(again.train.images)
    assert mean == pytest.approx(known_mean, abs=1e-3) and std == pytest.approx(known_std, abs=1e-3), (mean, std)
    for (i, y, x), rgb in known_pixels.items():
        assert d.train.images[i, :, y, x].tolist() == rgb, (i, y, x)
    assert CIFAR10_CLASSES[d.train.labels[0].item()] == first_class


def test_messages_show_paths_relative_or_under_home(tmp_path, monkeypatch):
    """What train/eval/export print about the data names it as the user would (../shared/data, ~/.cache),
    not by the machine's own absolute layout."""
    from cnnkit.data.sources import shown_path

    work, home = tmp_path / "work" / "checkout", tmp_path / "home"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    assert shown_path(work / "data" / "cifar10") == "data/cifar10"
    assert shown_path(tmp_path / "work" / "shared" / "cifar10") == "../shared/cifar10"
    assert shown_path(home / ".cache" / "cnnkit" / "x.pt") == "~/.cache/cnnkit/x.pt"
    assert shown_path("/somewhere/else") == "/somewhere/else"

    root = make_image_folder(tmp_path / "work" / "shared" / "tiny", n_train_per_class=2, n_test_per_class=1)
    monkeypatch.delenv("CNNKIT_CACHE", raising=False)  # the default cache: ~/.cache/cnnkit
    first, second = load_cifar10(root), load_cifar10(root)
    assert first.source.startswith("image folder ../shared/tiny (decoded, cached: ~/.cache/cnnkit/")
    assert second.source.startswith("image folder ../shared/tiny (cached: ~/.cache/cnnkit/")
    assert str(tmp_path) not in first.source + second.source


# ---------------------------------------------------------------------------------------------
# Brightness / contrast jitter (data.brightness, data.contrast)


def _jitter_config(**data):
    from cnnkit.config import Config

    return Config.model_validate({"model": {"name": "lenet"},
                                  "data": {"augment": True, "crop_padding": 2, "pad_mode": "reflect", **data}})


def test_jitter_shifts_then_scales_each_image_by_its_own_draw_for_the_whole_epoch() -> None:
    from cnnkit.tasks import TASKS
    from cnnkit.training.inputs import draw_epoch

    n, b, c = 40, 0.14, 0.13
    draws = draw_epoch(_jitter_config(brightness=b, contrast=c), TASKS["classify"], 0, n, torch.device("cpu"))
    inputs = torch.randn(n, 3, 8, 8)  # (n, C, H, W) normalised
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    out = draws.colour(inputs[idx], idx)  # (n, C, H, W)
    # out = (x + shift) · scale per image: recover both from two pixels and check they are constants.
    x, y = inputs[idx], out
    scale = (y[:, 0, 0, 1] - y[:, 0, 0, 0]) / (x[:, 0, 0, 1] - x[:, 0, 0, 0])  # (n,)
    shift = y[:, 0, 0, 0] / scale - x[:, 0, 0, 0]  # (n,)
    torch.testing.assert_close(out, (x + shift.view(-1, 1, 1, 1)) * scale.view(-1, 1, 1, 1), rtol=1e-4, atol=1e-4)
    assert shift.abs().max() <= b + 1e-4 and (scale - 1).abs().max() <= c + 1e-4
    assert shift.std() > b / 4 and (scale - 1).std() > c / 4  # a draw per image, not one for the batch
    # The same image gets the same draw wherever it sits in the epoch's batches ...
    again = draws.colour(inputs[:5], torch.arange(5))
    torch.testing.assert_close(again, out[torch.argsort(idx)][:5])
    # ... and a new one the next epoch.
    next_epoch = draw_epoch(_jitter_config(brightness=b, contrast=c), TASKS["classify"], 1, n, torch.device("cpu"))
    assert not torch.allclose(next_epoch.colour(inputs[:5], torch.arange(5)), again)


def test_jitter_draws_after_the_crops_so_turning_it_on_keeps_them() -> None:
    from cnnkit.tasks import TASKS
    from cnnkit.training.inputs import draw_epoch

    images = random_images(b=16)
    idx = torch.arange(16)
    off = draw_epoch(_jitter_config(), TASKS["classify"], 3, 16, torch.device("cpu"))
    assert off.shift is None and off.colour(images, idx) is images
    # The crops and flips are those of a generator seeded (seed, epoch), one per image in order.
    g = torch.Generator().manual_seed(0 * 1_000_003 + 3)
    dy, dx = torch.randint(0, 5, (16,), generator=g), torch.randint(0, 5, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    expected = augment_batch(images, crop_padding=2, hflip=True, pad_mode="reflect", flip=flip, offsets=(dy, dx))
    assert torch.equal(off.pixels(images, idx), expected)
    on = draw_epoch(_jitter_config(brightness=0.1), TASKS["classify"], 3, 16, torch.device("cpu"))
    assert torch.equal(on.pixels(images, idx), expected)  # the jitter draws last: the same crops
    assert not torch.equal(on.colour(images.float(), idx), images.float())
    # Per image: image i gets its crop wherever it sits in a batch, alone or with others.
    order = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(off.pixels(images[order], order), expected[order])
    assert torch.equal(off.pixels(images[5:6], idx[5:6]), expected[5:6])


@pytest.mark.parametrize(("setting", "words"), [("data.contrast=1", "data.contrast"),
                                                ("data.brightness=-0.1", "data.brightness")])
def test_jitter_out_of_range_is_refused_by_the_config(setting: str, words: str) -> None:
    from cnnkit.config import load_config

    with pytest.raises(ConfigError, match=words):
        load_config("configs/lenet.yaml", [setting])
