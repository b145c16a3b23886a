"""Issue 28: CIFAR-100, MNIST, Fashion-MNIST and the user's own image folder, from files these tests write
in each format; class names that travel with the checkpoint; the refusals, one line each.

No real CIFAR-100 or MNIST is on these machines: the layouts are written here byte by byte (the
pickles as torchvision's tarball holds them, IDX headers by hand) and the downloads are served from
127.0.0.1, as tests/test_download.py does for CIFAR-10.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder, make_tiny_arrays
from http_files import Server, md5
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from cnnkit.build import NOT_GIVEN, check_model_builds, class_count, input_shape, model_from_config
from cnnkit.cli import app
from cnnkit.config import load_config
from cnnkit.data import DATASETS, Decoding, prepare_data, take_subset, to_grayscale
from cnnkit.data import image_folder as image_folder_mod
from cnnkit.data.cifar100 import COARSE_CLASSES, COARSE_OF, FINE_CLASSES
from cnnkit.data.download import CIFAR100, download_archive
from cnnkit.data.idx import FASHION_MNIST_CLASSES, MNIST_CLASSES
from cnnkit.data.sources import (
    CIFAR100_SOURCE,
    FASHION_MNIST_SOURCE,
    IMAGE_FOLDER_SOURCE,
    MNIST_SOURCE,
    load_source,
)
from cnnkit.errors import CheckpointError, ConfigError, DataError
from cnnkit.evaluation.evaluate import check_classes
from cnnkit.evaluation.predict import load_image
from cnnkit.models import MODELS

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    # As conftest does for CIFAR-10: a download these tests did not ask for fails at once, locally.
    for name in ("CIFAR100", "MNIST", "FASHION_MNIST"):
        monkeypatch.setenv(f"CNNKIT_{name}_URL", "http://127.0.0.1:9/")
        monkeypatch.delenv(f"CNNKIT_{name}_MD5", raising=False)


# ---------------------------------------------------------------------------------------------
# Files in each format


def make_cifar100(root: Path, n_train_per_class: int = 1, n_test_per_class: int = 1) -> Path:
    """`root/cifar-100-python/{train,test,meta}` as the tarball holds them: bytes keys, fine and coarse labels."""
    train_x, train_y, test_x, test_y = make_tiny_arrays(n_train_per_class, n_test_per_class, FINE_CLASSES, 32)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    coarse_of = np.array([COARSE_CLASSES.index(COARSE_OF[name]) for name in FINE_CLASSES])
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        blob = {b"filenames": [f"{i}.png".encode() for i in range(len(x))], b"batch_label": name.encode(),
                b"fine_labels": [int(v) for v in y], b"coarse_labels": [int(v) for v in coarse_of[y]],
                b"data": np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072))}
        (folder / name).write_bytes(pickle.dumps(blob))
    meta = {b"fine_label_names": [n.encode() for n in FINE_CLASSES],
            b"coarse_label_names": [n.encode() for n in COARSE_CLASSES]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return folder


def idx_bytes(array: np.ndarray, kind: int = 0x08) -> bytes:
    return bytes([0, 0, kind, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def make_idx(root: Path, folder: str = "MNIST/raw", n_train_per_class: int = 3, n_test_per_class: int = 2,
             gz: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST's four IDX files (learnable 28×28 digits-to-be) in `root/folder`; returns the arrays written."""
    train_x, train_y, test_x, test_y = make_tiny_arrays(n_train_per_class, n_test_per_class, MNIST_CLASSES, 28)
    arrays = {"train-images-idx3-ubyte": train_x[..., 0], "train-labels-idx1-ubyte": train_y.astype(np.uint8),
              "t10k-images-idx3-ubyte": test_x[..., 0], "t10k-labels-idx1-ubyte": test_y.astype(np.uint8)}
    where = root / folder
    where.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(np.ascontiguousarray(array))
        if gz:
            (where / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (where / name).write_bytes(data)
    return train_x[..., 0], train_y, test_x[..., 0], test_y


COLOURS = {"cat": (200, 70, 60), "dog": (70, 190, 70), "frog": (60, 80, 210), "owl": (220, 210, 90)}
FORMATS = [("png", "RGB"), ("jpg", "RGB"), ("bmp", "L"), ("webp", "RGB"), ("png", "P"), ("png", "RGBA"),
           ("png", "LA"), ("png", "I;16")]
SIZES = [(64, 64), (80, 48), (33, 90), (64, 64), (17, 23)]


def make_pictures(root: Path, classes=("cat", "dog", "frog"), n_train: int = 8, n_test: int = 4, n_val: int = 0,
                  seed: int = 0) -> Path:
    """An image folder as a user has one: pictures of many sizes, modes and formats, a class a colour."""
    rng = np.random.default_rng(seed)
    count = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for name in classes if n else ():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                ext, mode = FORMATS[count % len(FORMATS)]
                width, height = SIZES[count % len(SIZES)]
                count += 1
                pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 25, (height, width, 3)), 0, 255)
                im = Image.fromarray(pixels.astype(np.uint8), "RGB")
                if mode == "I;16":
                    im = Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257)  # 16-bit gray
                elif mode != "RGB":
                    im = im.convert(mode)
                im.save(folder / f"{i:03d}.{ext}")
    return root


def cli(*args: str, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def fails(*args: str) -> str:
    """Exit 2, exactly one stderr line starting with 'error:', no traceback; returns the line."""
    result = cli(*args, code=2)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def write_config(tmp_path: Path, data: dict, model: str = "lenet", train: dict | None = None,
                 name: str = "run") -> Path:
    config = {"model": {"name": model}, "data": data, "optim": {"name": "adam", "lr": 0.003},
              "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 256, "threads": 1, "device": "cpu",
                        **(train or {})},
              "output": {"dir": str(tmp_path / "runs")}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def run_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []


# ---------------------------------------------------------------------------------------------
# CIFAR-100


def test_cifar100_pickles_give_fine_or_coarse_labels_with_their_names(tmp_path: Path) -> None:
    make_cifar100(tmp_path / "d", n_train_per_class=2)
    cache = tmp_path / "cache"
    fine = load_source(CIFAR100_SOURCE, tmp_path / "d", cache_dir=cache)
    assert fine.classes == FINE_CLASSES and fine.layout == "cifar-100-python"
    assert fine.train.images.shape == (200, 3, 32, 32) and fine.test.labels.tolist() == list(range(100))
    coarse = load_source(CIFAR100_SOURCE, tmp_path / "d", cache_dir=cache, decoding=Decoding("coarse"))
    assert coarse.classes == COARSE_CLASSES
    expected = [COARSE_CLASSES.index(COARSE_OF[name]) for name in FINE_CLASSES]
    assert coarse.test.labels.tolist() == expected and torch.equal(coarse.train.images, fine.train.images)
    assert coarse.test.names[7] == "test[7]"
    assert len(list(cache.glob("cifar100-*.pt"))) == 2  # fine and coarse are cached side by side
    again = load_source(CIFAR100_SOURCE, tmp_path / "d", cache_dir=cache, decoding=Decoding("coarse"))
    assert "cached" in again.source and again.classes == COARSE_CLASSES


def test_cifar100_image_folder_copy_maps_its_folders_to_superclasses(tmp_path: Path) -> None:
    make_image_folder(tmp_path, 2, 1, classes=["apple", "bee", "beetle", "orange"])
    data = load_source(CIFAR100_SOURCE, tmp_path, decoding=Decoding("coarse"))
    assert data.classes == ["fruit_and_vegetables", "insects"]
    assert data.train.labels.tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    (tmp_path / "train" / "apple").rename(tmp_path / "train" / "apples")
    (tmp_path / "test" / "apple").rename(tmp_path / "test" / "apples")
    with pytest.raises(DataError, match="train/apples is not one of CIFAR-100's 100 classes"):
        load_source(CIFAR100_SOURCE, tmp_path, decoding=Decoding("coarse"))


def test_cifar100_coarse_trains_a_twenty_class_model_and_the_checkpoint_names_them(tmp_path: Path) -> None:
    make_cifar100(tmp_path / "d")
    config = write_config(tmp_path, {"dataset": "cifar100", "root": str(tmp_path / "d"), "labels": "coarse"},
                          train={"batch_size": 50})
    cli("train", "--config", config, "--quiet")
    (run,) = run_dirs(tmp_path)
    payload = torch.load(run / "best.pt", weights_only=True)
    assert payload["classes"] == COARSE_CLASSES and payload["model"]["fc3.weight"].shape[0] == 20
    out = json.loads(cli("eval", "--checkpoint", run / "best.pt", "--json").stdout)
    assert sorted(out["per_class"]) == sorted(COARSE_CLASSES)



def test_cifar100_download_is_checked_unpacked_and_reported(tmp_path: Path, server: Server,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_cifar100(tmp_path / "src")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname="cifar-100-python")
    body = buffer.getvalue()
    server.files["/c100.tar.gz"] = body
    damaged = bytearray(body)
    damaged[len(damaged) // 2] ^= 0xFF
    server.files["/bad.tar.gz"] = bytes(damaged)
    with pytest.raises(DataError, match="checksum mismatch"):
        download_archive(CIFAR100, tmp_path / "new" / "d", url=server.url("/bad.tar.gz"), md5=md5(body))
    assert not (tmp_path / "new").exists()  # nothing left behind
    seen: list[tuple[int, int | None]] = []
    got = download_archive(CIFAR100, tmp_path / "d", url=server.url("/c100.tar.gz"), md5=md5(body),
                           progress=lambda done, total: seen.append((done, total)))
    assert got == tmp_path / "d" / "cifar-100-python" and seen[-1] == (len(body), len(body))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["cifar-100-python"]
    # The CLI way: env URL and md5, into an empty folder, with the bar's lines.
    monkeypatch.setenv("CNNKIT_CIFAR100_URL", server.url("/c100.tar.gz"))
    monkeypatch.setenv("CNNKIT_CIFAR100_MD5", md5(body))
    out = cli("data", "--dataset", "cifar100", "--data-root", tmp_path / "e", "--download").stdout
    assert "downloading CIFAR-100" in out and "downloaded and checked" in out and "100 classes" in out


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST


@pytest.mark.parametrize(("folder", "gz"), [("MNIST/raw", True), ("MNIST/raw", False), ("", True)])
def test_idx_files_plain_or_gz_in_torchvision_s_folders(tmp_path: Path, folder: str, gz: bool) -> None:
    train_x, train_y, test_x, test_y = make_idx(tmp_path, folder, gz=gz)
    data = load_source(MNIST_SOURCE, tmp_path)
    assert data.classes == MNIST_CLASSES and data.layout == "MNIST IDX"
    assert data.train.images.shape == (30, 1, 28, 28) and data.test.images.dtype == torch.uint8
    assert torch.equal(data.train.images[:, 0], torch.from_numpy(train_x))
    assert data.test.labels.tolist() == test_y.tolist() and data.test.names[3] == "t10k-images-idx3-ubyte[3]"


def test_fashion_mnist_reads_its_own_folder_beside_mnist(tmp_path: Path) -> None:
    make_idx(tmp_path, "MNIST/raw", n_train_per_class=1)
    make_idx(tmp_path, "FashionMNIST/raw", n_train_per_class=2)
    data = load_source(FASHION_MNIST_SOURCE, tmp_path)
    assert data.classes == FASHION_MNIST_CLASSES and len(data.train) == 20


class SeedCNN(nn.Module):
    """Seed 003's BatchNorm CNN, as the article writes it (its fixed 50·5·5 flatten: 1×28×28 input)."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(1, 25, kernel_size=3), nn.BatchNorm2d(25), nn.ReLU(inplace=True))
        self.layer2 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2))
        self.layer3 = nn.Sequential(nn.Conv2d(25, 50, kernel_size=3), nn.BatchNorm2d(50), nn.ReLU(inplace=True))
        self.layer4 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2))
        self.fc = nn.Sequential(nn.Linear(50 * 5 * 5, 1024), nn.ReLU(inplace=True), nn.Linear(1024, 128),
                                nn.ReLU(inplace=True), nn.Linear(128, 10))

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.view(x.size(0), -1))


def test_mnist_bn_cnn_config_trains_seed_003_s_network_exactly(tmp_path: Path) -> None:
    make_idx(tmp_path / "d", n_train_per_class=4)
    config = REPO / "configs" / "mnist_bn_cnn.yaml"
    sets = [f"data.root={tmp_path / 'd'}", "data.val_split=10", "train.epochs=1", "train.batch_size=10",
            "train.threads=1", f"output.dir={tmp_path / 'runs'}"]
    cfg = load_config(config, sets)
    assert input_shape(cfg) == (1, 28, 28)
    cli("train", "--config", config, *(a for s in sets for a in ("--set", s)), "--quiet")
    (run,) = run_dirs(tmp_path)
    weights = torch.load(run / "best.pt", weights_only=True)["model"]
    seed = SeedCNN()
    ours, theirs = list(weights.items()), list(seed.state_dict().items())
    assert [tuple(v.shape) for _, v in ours] == [tuple(v.shape) for _, v in theirs]  # same layers, same order
    seed.load_state_dict({name: value for (name, _), (_, value) in zip(theirs, ours, strict=True)})
    model = model_from_config(cfg, 10)
    model.load_state_dict(weights)
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(seed.eval()(x), model.eval()(x), atol=1e-6)


def test_mnist_download_fetches_four_checked_files(tmp_path: Path, server: Server,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx(tmp_path / "src", "raw")
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    bodies = [(tmp_path / "src" / "raw" / n).read_bytes() for n in names]
    for name, body in zip(names, bodies, strict=True):
        server.files[f"/mnist/{name}"] = body
    monkeypatch.setenv("CNNKIT_MNIST_URL", server.url("/mnist/"))
    monkeypatch.setenv("CNNKIT_MNIST_MD5", ",".join([md5(bodies[0]), md5(bodies[1]), "0" * 32, md5(bodies[3])]))
    line = fails("data", "--dataset", "mnist", "--data-root", tmp_path / "d", "--download")
    assert "checksum mismatch" in line and "t10k-images-idx3-ubyte.gz" in line
    assert not (tmp_path / "d").exists()  # the three good files are not kept either
    monkeypatch.setenv("CNNKIT_MNIST_MD5", ",".join(md5(b) for b in bodies))
    out = cli("data", "--dataset", "mnist", "--data-root", tmp_path / "d", "--download").stdout
    assert "downloading MNIST" in out and "images: 1×28×28 uint8; train 30, test 20; 10 classes" in out
    assert sorted(p.name for p in (tmp_path / "d" / "MNIST" / "raw").iterdir()) == sorted(names)
    again = cli("data", "--dataset", "mnist", "--data-root", tmp_path / "d", "--download").stdout
    assert "already there" in again and server.requests == 3 + 4  # the failed try stopped at the bad file


# ---------------------------------------------------------------------------------------------
# The user's own image folder


def test_pictures_of_any_size_mode_and_format_become_what_predict_sees(tmp_path: Path) -> None:
    root = make_pictures(tmp_path / "photos", n_train=5, n_test=3, n_val=2)
    (root / "train" / "cat" / "notes.txt").write_text("not a picture")
    cache = tmp_path / "cache"
    data = load_source(IMAGE_FOLDER_SOURCE, root, cache_dir=cache, decoding=Decoding(size=(40, 24)))
    assert data.classes == ["cat", "dog", "frog"] and data.skipped == 1 and "1 file skipped" in data.source
    assert (len(data.train), len(data.val), len(data.test)) == (15, 6, 9)
    assert data.train.images.shape == (15, 3, 40, 24)
    for split in (data.train, data.val, data.test):
        for image, name in zip(split.images, split.names, strict=True):
            expected, _, _ = load_image(root / name, (3, 40, 24))
            assert torch.equal(image, expected), name
    gray = load_source(IMAGE_FOLDER_SOURCE, root, cache_dir=cache, decoding=Decoding(size=(40, 24), channels=1))
    assert torch.equal(gray.test.images, to_grayscale(data.test.images))
    cached = load_source(IMAGE_FOLDER_SOURCE, root, cache_dir=cache, decoding=Decoding(size=(40, 24)))
    assert "cached" in cached.source and torch.equal(cached.val.images, data.val.images)
    assert cached.val.names == data.val.names
    assert len(list(cache.glob("imagefolder-*.pt"))) == 2  # RGB and gray side by side


def test_pictures_decoded_by_forked_workers_are_the_same(tmp_path: Path, monkeypatch) -> None:
    root = make_pictures(tmp_path / "photos", n_train=3, n_test=2)
    serial = load_source(IMAGE_FOLDER_SOURCE, root, cache_dir=tmp_path / "c1", decoding=Decoding(size=(20, 20)))
    monkeypatch.setattr(image_folder_mod, "PICTURES_PARALLEL_MIN", 0)
    parallel = load_source(IMAGE_FOLDER_SOURCE, root, cache_dir=tmp_path / "c2", decoding=Decoding(size=(20, 20)))
    assert torch.equal(serial.train.images, parallel.train.images)
    assert torch.equal(serial.test.labels, parallel.test.labels)
    (root / "test" / "dog" / "001.jpg").write_bytes(b"not a picture")  # the error crosses the pool intact
    with pytest.raises(DataError, match=r"test/dog/001.jpg \(not a picture Pillow can read\)"):
        load_source(IMAGE_FOLDER_SOURCE, root, cache_dir=tmp_path / "c3", decoding=Decoding(size=(20, 20)))


def test_subset_chosen_before_decoding_is_take_subset_s_choice(tmp_path: Path) -> None:
    make_image_folder(tmp_path, 6, 3, classes=["a", "b", "c"], size=8)
    whole = load_source(IMAGE_FOLDER_SOURCE, tmp_path, decoding=Decoding(size=(8, 8)))
    cut = load_source(IMAGE_FOLDER_SOURCE, tmp_path, cache_dir=tmp_path / "c2", decoding=Decoding(size=(8, 8),
                                                                                                   subset=7))
    expected = take_subset(whole.train, 7)
    assert torch.equal(cut.train.images, expected.images) and cut.train.names == expected.names
    assert len(cut.test) == 7


def test_a_val_folder_is_the_validation_split(tmp_path: Path) -> None:
    root = make_pictures(tmp_path / "photos", n_train=4, n_test=2, n_val=2)
    config = write_config(tmp_path, {"dataset": "imagefolder", "root": str(root)})
    cfg = load_config(config)
    prepared = prepare_data(cfg)
    assert cfg.data.input_size == (32, 32)  # the default size, recorded in the run's config
    assert len(prepared.val) == 6 and len(prepared.train) == 12 and prepared.val.names[0].startswith("val/cat/000.")
    line = fails("train", "--config", config, "--set", "data.val_split=3")
    assert "has its own val/ folder (6 images)" in line and "data.val_split: 0" in line
    assert run_dirs(tmp_path) == []


@pytest.fixture(scope="module")
def photos_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """lenet trained on a three-class folder of 64×64-ish pictures, at data.input_size 48×48, with TTA."""
    tmp = tmp_path_factory.mktemp("photos_run")
    root = make_pictures(tmp / "photos", n_train=12, n_test=4)
    config = write_config(tmp, {"dataset": "imagefolder", "root": str(root), "input_size": [48, 48],
                                "val_split": 6, "augment": True, "crop_padding": 2},
                          train={"epochs": 2, "tta": "flip"})
    cli("train", "--config", config, "--quiet")
    (run,) = run_dirs(tmp)
    return root, run


def test_train_on_an_image_folder_records_its_classes_size_and_statistics(photos_run) -> None:
    root, run = photos_run
    payload = torch.load(run / "best.pt", weights_only=True)
    assert payload["classes"] == ["cat", "dog", "frog"]
    saved = payload["config"]["data"]
    assert saved["input_size"] == [48, 48] and len(saved["mean"]) == 3 and len(saved["std"]) == 3
    prepared = prepare_data(load_config(run / "config.yaml", ["data.mean=null", "data.std=null"]))
    assert saved["mean"] == pytest.approx(prepared.mean)  # computed on the training split, as recorded


def test_eval_predict_look_and_export_name_the_user_s_classes(photos_run, tmp_path: Path) -> None:
    root, run = photos_run
    out = json.loads(cli("eval", "--checkpoint", run / "best.pt", "--worst", "3", "--tta", "--json").stdout)
    assert set(out["per_class"]) == {"cat", "dog", "frog"} and "tta_accuracy" in out
    assert all(w["file"].startswith("test/") and w["true"] in ("cat", "dog", "frog") for w in out["worst"])
    shown = cli("eval", "--checkpoint", run / "best.pt").stdout
    assert "frog" in shown and "confusion" in shown
    predicted = json.loads(cli("predict", "--checkpoint", run / "best.pt", root / "test" / "dog",
                               "--top-k", "3", "--json").stdout)
    assert predicted["input"] == [3, 48, 48]
    assert all({t["class"] for t in p["top"]} == {"cat", "dog", "frog"} for p in predicted["predictions"])
    looked = json.loads(cli("look", "--checkpoint", run / "best.pt", root / "test" / "frog" / "000.png",
                            "--out", tmp_path / "look", "--json").stdout)
    assert {t["class"] for t in looked["images"][0]["top"]} == {"cat", "dog", "frog"} and looked["input"] == [3, 48, 48]
    exported = cli("export", "--checkpoint", run / "best.pt", "--out", tmp_path / "m.pt2").stdout
    assert "over the classes cat, dog, frog" in exported
    extra = {"classes.json": ""}
    torch.export.load(tmp_path / "m.pt2", extra_files=extra)
    assert json.loads(extra["classes.json"]) == ["cat", "dog", "frog"]


def test_a_checkpoint_on_data_with_other_classes_is_one_line(photos_run, tmp_path: Path) -> None:
    _, run = photos_run
    other = make_pictures(tmp_path / "other", classes=("cat", "dog", "owl"), n_train=2, n_test=1)
    line = fails("eval", "--checkpoint", run / "best.pt", "--data-root", other)
    assert "trained on 3 classes" in line and "the data has owl" in line and "the checkpoint knows frog" in line


def test_classes_in_another_order_are_named() -> None:
    with pytest.raises(CheckpointError, match="another order.*label 0 is 'a' to the checkpoint and 'b'"):
        check_classes("x.pt", ["a", "b"], ["b", "a"], "here")
    check_classes("x.pt", [], ["b", "a"], "here")  # an old checkpoint without names is taken as it is


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


def _folder_without_a_test_class(tmp: Path) -> dict:
    root = make_pictures(tmp / "p", n_train=2, n_test=1)
    for f in (root / "test" / "dog").iterdir():
        f.unlink()
    (root / "test" / "dog").rmdir()
    return {"dataset": "imagefolder", "root": str(root)}


def _empty_class(tmp: Path) -> dict:
    root = make_pictures(tmp / "p", n_train=2, n_test=1)
    for f in (root / "train" / "frog").iterdir():
        f.unlink()
    (root / "train" / "frog" / "readme.md").write_text("empty")
    return {"dataset": "imagefolder", "root": str(root)}


def _one_class(tmp: Path) -> dict:
    return {"dataset": "imagefolder", "root": str(make_pictures(tmp / "p", classes=("cat",), n_train=2, n_test=1))}


def _not_an_image(tmp: Path) -> dict:
    root = make_pictures(tmp / "p", n_train=2, n_test=1)
    (root / "train" / "dog" / "001.jpg").write_bytes(b"this is a text file named like a picture")
    return {"dataset": "imagefolder", "root": str(root)}


def _idx(damage: bytes | None = None, kind: int | None = None, truncate: int | None = None):
    def make(tmp: Path) -> dict:
        make_idx(tmp / "d", "MNIST/raw", gz=False)
        path = tmp / "d" / "MNIST" / "raw" / "train-images-idx3-ubyte"
        raw = bytearray(path.read_bytes())
        if damage is not None:
            raw[: len(damage)] = damage
        if kind is not None:
            raw[2] = kind
        path.write_bytes(bytes(raw[:truncate] if truncate else raw))
        return {"dataset": "mnist", "root": str(tmp / "d")}
    return make


def _cifar100_without_meta(tmp: Path) -> dict:
    (make_cifar100(tmp / "d") / "meta").unlink()
    return {"dataset": "cifar100", "root": str(tmp / "d")}


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def _cifar100_hostile_pickle(tmp: Path) -> dict:
    (make_cifar100(tmp / "d") / "train").write_bytes(pickle.dumps({b"data": _RunsCode()}))
    return {"dataset": "cifar100", "root": str(tmp / "d")}


def _coarse_on(dataset: str):
    return lambda tmp: {"dataset": dataset, "labels": "coarse"}


BAD = {
    "class folder missing from test/": (_folder_without_a_test_class, ["test/dog is missing", "exists in train/"]),
    "empty class folder": (_empty_class, ["train/frog has no images", "1 file that is not a picture by its name"]),
    "one class only": (_one_class, ["train has one class folder (cat)", "at least 2 classes"]),
    "a file that is not an image": (_not_an_image, ["train/dog/001.jpg (not a picture Pillow can read)",
                                                    "cannot decode image", "never skipped"]),
    "IDX magic": (_idx(damage=b"PK"), ["train-images-idx3-ubyte is not an IDX file", "starts with 50 4b 08 03"]),
    "IDX gzipped, named plain": (_idx(damage=b"\x1f\x8b"), ["gzip-compressed but not named .gz",
                                                            "rename it train-images-idx3-ubyte.gz"]),
    "IDX element type": (_idx(kind=0x0D), ["type 0x0d (float)", "expected 0x08"]),
    "IDX truncated": (_idx(truncate=4000), ["header says 30×28×28 = 23,520 bytes", "holds 3,984", "re-download"]),
    "IDX header cut": (_idx(truncate=9), ["IDX header is cut short"]),
    "CIFAR-100 without meta": (_cifar100_without_meta, ["cifar-100-python/meta is missing",
                                                        "fine_label_names", "re-extract"]),
    "CIFAR-100 pickle that would run code": (_cifar100_hostile_pickle, [
        "cifar-100-python/train is not a CIFAR-100 batch", "system, which is refused because it could run code"]),
    "coarse on cifar10": (_coarse_on("cifar10"), ["data.labels", "cifar10 does not have", "cifar100"]),
    "coarse on mnist": (_coarse_on("mnist"), ["data.labels", "mnist does not have"]),
    "coarse on imagefolder": (_coarse_on("imagefolder"), ["data.labels", "imagefolder does not have"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    make, needles = BAD[case]
    config = write_config(tmp_path, make(tmp_path))
    line = fails("train", "--config", config)
    for needle in needles:
        assert needle in line, (needle, line)
    assert run_dirs(tmp_path) == []
    assert not list(Path(tmp_path).rglob("*.pt"))  # no cache, no checkpoint


def test_a_folder_too_big_for_the_memory_says_what_it_needs_and_what_shrinks_it(tmp_path: Path, monkeypatch) -> None:
    root = make_pictures(tmp_path / "p", n_train=3, n_test=1)
    monkeypatch.setattr(image_folder_mod, "available_memory", lambda: 100_000)
    config = write_config(tmp_path, {"dataset": "imagefolder", "root": str(root), "input_size": [64, 64]})
    line = fails("train", "--config", config)
    for needle in ("decodes to 147 KB (12 images of 3×64×64 bytes)", "2× that", "the 100 KB of memory free",
                   "data.input_size (at [32, 32]: 37 KB)", "data.grayscale: true (49 KB)", "data.subset"):
        assert needle in line, (needle, line)
    assert run_dirs(tmp_path) == [] and not list(tmp_path.rglob("*.pt"))


@pytest.mark.parametrize(("sets", "needles"), [
    (["data.dataset=stripes", "data.input_size=[8,8]"], ["data.input_size", "6×8 by definition"]),
    (["data.input_size=[4,4]", "data.augment=true", "data.pad_mode=reflect"],
     ["data.crop_padding=4 with data.pad_mode=reflect", "4×4", "data.crop_padding=3"]),
    (["data.dataset=mnist", "data.labels=coarse"], ["--set data.labels=coarse", "superclasses"]),
])
def test_config_refusals(sets: list[str], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, sets)
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message


# ---------------------------------------------------------------------------------------------
# Everything else on them: models, a model from a file, shapes, cnnkit data


@pytest.mark.parametrize("name", [n for n in MODELS if n != "edge"])
def test_every_registry_model_takes_the_data_s_channels_and_classes(name: str) -> None:
    for sets, shape, classes in ((["data.dataset=mnist"], (1, 28, 28), 10),
                                 (["data.dataset=cifar100", "data.labels=coarse"], (3, 32, 32), 20),
                                 (["data.dataset=imagefolder", "data.input_size=[48,64]"], (3, 48, 64), 3)):
        cfg = load_config(None, [f"model.name={name}", *sets])
        with torch.device("meta"):
            model = model_from_config(cfg, 3 if classes == 3 else None)
            out = model(torch.empty(2, *input_shape(cfg)))
        assert input_shape(cfg) == shape and tuple(out.shape) == (2, classes)


MODEL_FILE = """
from torch import nn


class TenWay(nn.Module):
    def __init__(self):  # a zoo's model: ten classes built in
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

    def forward(self, x):
        return self.net(x)
"""


def test_a_model_with_ten_outputs_meets_a_three_class_folder_in_one_line(tmp_path: Path, monkeypatch) -> None:
    root = make_pictures(tmp_path / "p", n_train=2, n_test=1)
    (tmp_path / "zoo.py").write_text(textwrap.dedent(MODEL_FILE))
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, {"dataset": "imagefolder"}, model="zoo.py:TenWay")
    cfg = load_config(config)
    check_model_builds(cfg)  # where the run will read the data is not said: no folder is guessed at
    assert NOT_GIVEN is not None and class_count(cfg) == 2  # sized for the shapes-only build
    with pytest.raises(ConfigError, match=r"output .* is \(2, 10\), but the data has 3 classes"):
        check_model_builds(cfg, str(root))  # told: refused before any picture is decoded
    line = fails("train", "--config", config, "--data-root", root)  # the run checks the loaded classes
    assert "the data has 3 classes" in line
    # No checkpoint or metrics: at most the empty run folder fit makes before it builds the model.
    assert not [p for run in run_dirs(tmp_path) for p in run.iterdir()]


def test_shapes_of_a_config_on_an_image_folder(tmp_path: Path) -> None:
    root = make_pictures(tmp_path / "p", classes=("cat", "dog", "frog", "owl"), n_train=1, n_test=1)
    config = write_config(tmp_path, {"dataset": "imagefolder", "root": str(root), "input_size": [64, 64]},
                          model="bn_cnn")
    out = json.loads(cli("shapes", "--config", config, "--json").stdout)
    assert out["input"] == [3, 64, 64] and out["layers"][-1]["output"][-1] == 4


def test_data_command_shows_layout_counts_classes_and_cache(tmp_path: Path) -> None:
    root = make_pictures(tmp_path / "p", n_train=3, n_test=2, n_val=1)
    (root / "test" / "cat" / "Thumbs.db").write_bytes(b"\0")
    out = cli("data", "--dataset", "imagefolder", "--data-root", root).stdout
    assert "found: image folder" in out and "train 9, val 3 (its own val/), test 6; 3 classes" in out
    assert "skipped: 1 file" in out and "frog" in out and "decoded and written now" in out
    make_idx(tmp_path / "m", "FashionMNIST/raw")
    out = cli("data", "--dataset", "fashion_mnist", "--data-root", tmp_path / "m").stdout
    assert "FashionMNIST IDX" in out and "Ankle boot" in out
    assert "nothing to read" in cli("data", "--dataset", "stripes").stdout
    line = fails("data", "--dataset", "mnist", "--data-root", tmp_path / "none")
    assert "does not exist" in line and "cnnkit data --dataset mnist --download" in line
    assert "did you mean 'mnist'" in fails("data", "--dataset", "minst")


def test_registry_entries_say_what_they_are() -> None:
    for name, entry in DATASETS.items():
        assert entry.description, name
        assert entry.num_classes is None or entry.num_classes >= 1


def test_a_picture_is_turned_upright_by_its_exif_orientation(tmp_path):
    # A phone photo stored sideways with EXIF Orientation 6 ("rotate 90° clockwise to view") reaches the
    # model upright: the same pixels as the picture saved already turned, with no tag.
    from PIL import Image

    from cnnkit.data.pictures import fit_picture

    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # (H, W, 3): wider than tall
    pixels[:, :10] = (255, 0, 0)  # a red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    Image.fromarray(pixels).save(tmp_path / "sideways.png", exif=exif)
    Image.fromarray(np.ascontiguousarray(np.rot90(pixels, k=-1))).save(tmp_path / "upright.png")
    with Image.open(tmp_path / "sideways.png") as a, Image.open(tmp_path / "upright.png") as b:
        turned, upright = fit_picture(a, 32, 32), fit_picture(b, 32, 32)
    assert np.array_equal(turned, upright)
    assert turned[0, :, 0].mean() > 200 and turned[-1, :, 0].mean() < 50  # the band is now at the top
