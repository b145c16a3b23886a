"""Shared fixtures: tiny CIFAR-10 look-alikes in both on-disk layouts, and an isolated environment.

Every test runs with CNNKIT_CACHE pointing at its own temporary folder, without CNNKIT_DATA, and
with the CIFAR-10 download URL on a closed local port, so no test reads the user's cache or the
real dataset, or downloads anything, by accident. Tests that want the real
CIFAR-10 ask for the `real_data_root` fixture, which uses the CNNKIT_DATA the session started with.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data import CIFAR10_CLASSES

# Captured before the autouse fixture below removes it from each test's environment.
REAL_DATA = os.environ.get("CNNKIT_DATA")


def make_tiny_arrays(
    n_train_per_class: int,
    n_test_per_class: int,
    classes: list[str] = CIFAR10_CLASSES,
    size: int = 32,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Learnable fake images: (train_x, train_y, test_x, test_y), x uint8 (N, H, W, 3), y int64 (N,).

    Class c has its own brightness (so it stays learnable in grayscale) and its own tint, plus
    per-pixel noise; a tiny model separates the classes in a few epochs. Labels cycle 0, 1, ..., K-1
    like the interleaved order of the real batch files. Same arguments, same pixels.
    """
    rng = np.random.default_rng(seed)
    k = len(classes)
    brightness = np.linspace(50, 205, k) if k > 1 else np.array([128.0])
    angle = 2 * math.pi * np.arange(k) / k
    tint = 40 * np.stack([np.cos(angle), np.cos(angle + 2 * math.pi / 3), np.cos(angle + 4 * math.pi / 3)], axis=1)
    mean_colour = brightness[:, None] + tint  # (K, 3)

    def make(n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n_per_class * k, dtype=np.int64) % k  # (N,)
        noise = rng.normal(0, 20, size=(len(labels), size, size, 3))  # (N, H, W, 3)
        images = np.clip(np.rint(mean_colour[labels][:, None, None, :] + noise), 0, 255).astype(np.uint8)
        return images, labels

    train_x, train_y = make(n_train_per_class)
    test_x, test_y = make(n_test_per_class)
    return train_x, train_y, test_x, test_y


def make_batches_dir(
    root: Path,
    n_train_per_class: int = 10,
    n_test_per_class: int = 4,
    seed: int = 0,
    *,
    classes: list[str] = CIFAR10_CLASSES,
    protocol: int = pickle.DEFAULT_PROTOCOL,
) -> Path:
    """Write `root/cifar-10-batches-py/` in the original format (32×32 only); return that folder.

    Pixels and labels equal `make_image_folder(root2, same counts, classes, 32, seed)`'s. The md5s
    differ from the real files, as any re-made copy's would.
    """
    train_x, train_y, test_x, test_y = make_tiny_arrays(n_train_per_class, n_test_per_class, classes, 32, seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def write_batch(name: str, label: str, x: np.ndarray, y: np.ndarray, first: int) -> None:
        batch = {
            b"batch_label": label.encode(),
            b"labels": [int(v) for v in y],
            # Row layout: 1024 red, 1024 green, 1024 blue values, each plane row-major.
            b"data": np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072)),
            b"filenames": [f"tiny_{first + i:05d}.png".encode() for i in range(len(x))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)

    bounds = np.linspace(0, len(train_x), 6, dtype=int)
    for i in range(5):
        a, b = bounds[i], bounds[i + 1]
        write_batch(f"data_batch_{i + 1}", f"training batch {i + 1} of 5", train_x[a:b], train_y[a:b], a)
    write_batch("test_batch", "testing batch 1 of 1", test_x, test_y, 0)
    meta = {
        b"num_cases_per_batch": int(bounds[1] - bounds[0]),
        b"label_names": [c.encode() for c in classes],
        b"num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return folder


def make_image_folder(
    root: Path,
    n_train_per_class: int,
    n_test_per_class: int,
    classes: list[str] = CIFAR10_CLASSES,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write `root/{train,test}/<class>/NNNN.png` (lossless, so pixels are exact); return root."""
    root = Path(root)
    train_x, train_y, test_x, test_y = make_tiny_arrays(n_train_per_class, n_test_per_class, classes, size, seed)
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(x[y == c]):
                Image.fromarray(image, "RGB").save(folder / f"{i:04d}.png")
    return root


@pytest.fixture
def tiny_batches_root(tmp_path: Path) -> Path:
    """A folder holding a valid tiny `cifar-10-batches-py/` (10 train + 4 test images per class)."""
    root = tmp_path / "tiny_batches"
    make_batches_dir(root, n_train_per_class=10, n_test_per_class=4)
    return root


@pytest.fixture
def tiny_image_root(tmp_path: Path) -> Path:
    """A learnable tiny image folder: 20 train + 10 test 32×32 PNGs per CIFAR-10 class."""
    return make_image_folder(tmp_path / "tiny_images", n_train_per_class=20, n_test_per_class=10)


def _isolate(mp: pytest.MonkeyPatch, cache: Path) -> None:
    mp.setenv("CNNKIT_CACHE", str(cache))
    # The list of model import paths this user trusts (cnnkit.models.trust): each test starts with none.
    mp.setenv("CNNKIT_CONFIG_DIR", str(cache / "config"))
    mp.delenv("CNNKIT_DATA", raising=False)
    # With no root named, cnnkit downloads into ./data: in tests that must fail fast and locally (a
    # closed port on 127.0.0.1, i.e. "no network"), never reach the internet. test_download.py
    # points these at its own local server.
    mp.setenv("CNNKIT_CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    mp.delenv("CNNKIT_CIFAR10_MD5", raising=False)
    for name in ("CIFAR100", "MNIST", "FASHION_MNIST"):
        mp.setenv(f"CNNKIT_{name}_URL", "http://127.0.0.1:9/")
        mp.delenv(f"CNNKIT_{name}_MD5", raising=False)


@pytest.fixture(scope="session", autouse=True)
def _isolated_session_env(tmp_path_factory: pytest.TempPathFactory):
    """The same isolation for module-scoped fixtures, which pytest sets up before any function-scoped
    one: CNNKIT_DATA beats data.root, so a module fixture training "tiny" data under CI's CNNKIT_DATA
    trained on the real CIFAR-10 instead (73–140 s for test_export's, measured)."""
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, tmp_path_factory.mktemp("cnnkit-cache-session"))
        yield


@pytest.fixture(autouse=True)
def _isolated_data_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    _isolate(monkeypatch, tmp_path_factory.mktemp("cnnkit-cache"))
    # Model import paths trusted in this process (cnnkit.models.trust) do not carry from test to test.
    from cnnkit.models.trust import forget_session

    forget_session()


@pytest.fixture(autouse=True)
def _cpu_suite(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside tests marked `cuda` (tests/test_cuda.py) the suite means the CPU, on a GPU machine too:
    `train.device=auto` and `cnnkit eval` pick the CPU, in this process and in the processes tests
    start, so the assertions written for the CPU (bit-identical resumes, gloo, `device cpu` lines)
    hold wherever `make test` runs. Tests that mean the CPU also say train.device=cpu themselves."""
    if request.node.get_closest_marker("cuda") is not None:
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def real_data_root() -> Path:
    """The real CIFAR-10 from the CNNKIT_DATA the test session started with; skips without it."""
    if not REAL_DATA:
        pytest.skip("CNNKIT_DATA not set: real CIFAR-10 tests skipped")
    root = Path(REAL_DATA).expanduser()
    if not root.is_dir():
        pytest.skip(f"CNNKIT_DATA={REAL_DATA} is not a folder: real CIFAR-10 tests skipped")
    return root


@pytest.fixture(scope="session")
def real_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """One cache of the decoded real CIFAR-10 for the whole session: the first real-data test decodes
    (~10 s), the others read it. Removed at the end: 180 MB should not stay in pytest's kept folders."""
    folder = tmp_path_factory.mktemp("real-cache")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Whatever uses the real data is selectable with `-m real_data` (or `-m "not real_data"`).
    for item in items:
        if "real_data_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: torch's thread pool only adds contention (20–50 ms per op on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_long_run_config(tmp_path: Path) -> Path:
    """A lenet config on a tiny image folder with far more epochs than any test waits for: the run is
    surely still going when a test signals it."""
    import textwrap

    root = make_image_folder(tmp_path / "data", n_train_per_class=4, n_test_per_class=2)
    config = tmp_path / "long.yaml"
    config.write_text(textwrap.dedent(f"""\
        model: {{name: lenet}}
        data: {{root: {root}, val_split: 10}}
        optim: {{name: adam, lr: 0.003}}
        train: {{epochs: 100000, batch_size: 8, eval_batch_size: 64, threads: 1, device: cpu}}
        output: {{dir: {tmp_path / 'runs'}}}
        """))
    return config


@pytest.fixture
def server():
    """A local HTTP server for download tests (tests/http_files.py): set `server.files[path] = bytes`."""
    from http_files import Server

    with Server() as s:
        yield s
