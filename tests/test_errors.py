"""Issue 4's table of bad inputs: each is one clear line from the library and from the CLI.

Every case checks both sides: the library raises the right `CnnkitError` subclass with a message
naming the file, key or value; and `cnnkit <cmd>` prints exactly one line on stderr starting with
"error:", no traceback, and exits 2. Also here: safe loading (a hostile pickle runs nothing) and
numerical faults (NaN/inf loss, grad clipping).
"""

from __future__ import annotations

import ast
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_batches_dir, make_image_folder
from PIL import Image
from typer.testing import CliRunner

from cnnkit.cli import app
from cnnkit.config import load_config
from cnnkit.data import load_cifar10
from cnnkit.errors import (
    CheckpointError,
    CnnkitError,
    ConfigError,
    DataError,
    DeviceError,
    RunError,
    TrainingError,
)
from cnnkit.evaluation.evaluate import evaluate_checkpoint
from cnnkit.models import MODELS
from cnnkit.optim.registry import OPTIMIZERS, SCHEDULES
from cnnkit.training.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from cnnkit.training.fit import fit, resume_config

runner = CliRunner()
PACKAGE = Path(__file__).resolve().parents[1] / "cnnkit"


# ---------------------------------------------------------------------------------------------
# Helpers


def lib_error(cls: type[CnnkitError], fn, *args, **kwargs) -> str:
    """Call `fn`; it must raise `cls` with a one-line message, which is returned."""
    with pytest.raises(cls) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


def assert_mentions(message: str, *fragments: str) -> None:
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def cli_error(*args: str, code: int = 2) -> str:
    """Run `cnnkit *args`: exit `code`, exactly one stderr line starting "error:", no traceback."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def small_config(tmp: Path, root: Path, *extra: str, epochs: int = 1):
    return load_config(None, [
        "model.name=lenet", f"data.root={root}", "data.val_split=10", f"train.epochs={epochs}",
        "train.batch_size=16", "train.eval_batch_size=64", "optim.lr=0.003", f"output.dir={tmp / 'runs'}",
        "train.threads=1", *extra,
    ])


def train_args(tmp: Path, root: Path, *extra: str) -> list[str]:
    """`cnnkit train` arguments for a quick run on `root`."""
    sets = [f"data.root={root}", "data.val_split=10", "train.epochs=1", "train.batch_size=16",
            f"output.dir={tmp / 'runs'}", "train.threads=1", *extra]
    return ["train", "--config", "configs/lenet.yaml", "--quiet", *[x for s in sets for x in ("--set", s)]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One lenet run of one epoch on a small image folder: its data root, run folder and best.pt."""
    base = tmp_path_factory.mktemp("trained")
    root = make_image_folder(base / "data", n_train_per_class=6, n_test_per_class=2)
    config = small_config(base, root, f"data.cache_dir={base / 'cache'}")
    result = fit(config, run_name="run")
    return {"base": base, "root": root, "run": result.run_dir, "best": result.run_dir / "best.pt"}


@pytest.fixture
def small_root(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", n_train_per_class=4, n_test_per_class=2)


# ---------------------------------------------------------------------------------------------
# Config

MODEL_LIST, OPTIM_LIST, SCHEDULE_LIST = (", ".join(r) for r in (MODELS, OPTIMIZERS, SCHEDULES))

CONFIG_CASES = {
    "malformed_yaml": ("model: [lenet\ntrain: {epochs: 3}\n", ["malformed YAML", "line 2"]),
    "not_a_mapping": ("- model\n- train\n", ["expected a mapping", "got a list"]),
    "scalar_document": ("42\n", ["expected a mapping", "got the number 42", "train: {epochs: 3}"]),
    "unknown_section": ("modle:\n  name: lenet\n", ["unknown key 'modle'", "did you mean 'model'"]),
    "unknown_key": ("train:\n  epoch: 3\n", ["unknown key 'train.epoch'", "did you mean 'epochs'"]),
    "wrong_type": ("train:\n  epochs: three\n", ["train.epochs", "integer", "'three'"]),
    "wrong_type_section": ("train: 5\n", ["train: must be a mapping of its keys", "epochs", "got 5"]),
    "epochs_zero": ("train:\n  epochs: 0\n", ["train.epochs", "greater than or equal to 1", "got 0"]),
    "epochs_negative": ("train:\n  epochs: -2\n", ["train.epochs", "got -2"]),
    "batch_size_zero": ("train:\n  batch_size: 0\n", ["train.batch_size", "got 0"]),
    "batch_size_negative": ("train:\n  batch_size: -8\n", ["train.batch_size", "got -8"]),
    "lr_zero": ("optim:\n  lr: 0\n", ["optim.lr", "greater than 0", "got 0"]),
    "lr_negative": ("optim:\n  lr: -0.1\n", ["optim.lr", "got -0.1"]),
    "unknown_model": ("model:\n  name: lenett\n", ["unknown model 'lenett'", "did you mean 'lenet'", MODEL_LIST]),
    "unknown_optimiser": ("optim:\n  name: rmsprop\n", ["unknown optimiser 'rmsprop'", OPTIM_LIST]),
    "unknown_schedule": ("schedule:\n  name: cos\n", ["unknown schedule 'cos'", "did you mean 'cosine'",
                                                       SCHEDULE_LIST]),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_file(tmp_path: Path, case: str) -> None:
    text, fragments = CONFIG_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    message = lib_error(ConfigError, load_config, path)
    assert_mentions(message, str(path), *fragments)
    line = cli_error("config", "show", "--config", path)
    assert_mentions(line, str(path), *fragments)
    # The same file through `train` fails the same way, before touching any data.
    assert cli_error("train", "--config", path) == line


SET_CASES = {
    "no_equals": ("train.epochs", ["--set 'train.epochs'", "expected section.key=value"]),
    "empty_key": ("=3", ["expected section.key=value"]),
    "unknown_key": ("train.epoch=3", ["--set train.epoch=3", "unknown key 'train.epoch'", "did you mean 'epochs'"]),
    "unknown_section": ("trian.epochs=3", ["unknown key 'trian'", "did you mean 'train'"]),
    "bad_value": ("train.batch_size=0", ["--set train.batch_size=0", "train.batch_size", "got 0"]),
    "unknown_name": ("optim.name=adamm", ["unknown optimiser 'adamm'", "did you mean 'adam'", OPTIM_LIST]),
}


@pytest.mark.parametrize("case", SET_CASES)
def test_bad_set(case: str) -> None:
    text, fragments = SET_CASES[case]
    assert_mentions(lib_error(ConfigError, load_config, None, [text]), *fragments)
    assert_mentions(cli_error("config", "show", "--set", text), *fragments)


def test_val_split_not_below_training_size(tmp_path: Path, small_root: Path) -> None:
    # 4 images per class × 10 classes = 40 training images.
    message = lib_error(ConfigError, fit, small_config(tmp_path, small_root, "data.val_split=40"))
    assert_mentions(message, "data.val_split=40", "40 training images")
    line = cli_error(*train_args(tmp_path, small_root, "data.val_split=40"))
    assert_mentions(line, "data.val_split=40", "40 training images")
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch) -> None:
    import cnnkit.cli

    # --debug sets a module-level flag that outlives the invocation; undo it after this test.
    monkeypatch.setitem(cnnkit.cli._state, "debug", False)
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epochs: 0}\n")
    result = runner.invoke(app, ["--debug", "config", "show", "--config", str(path)])
    assert isinstance(result.exception, ConfigError)  # re-raised, so python prints the traceback


# ---------------------------------------------------------------------------------------------
# Data


def _missing_root(tmp: Path) -> tuple[Path, list[str]]:
    return tmp / "nowhere", [str(tmp / "nowhere"), "does not exist", "--data-root"]


def _neither_layout(tmp: Path) -> tuple[Path, list[str]]:
    (tmp / "stuff" / "photos").mkdir(parents=True)
    return tmp / "stuff", [str(tmp / "stuff"), "cifar-10-batches-py", "train/<class>"]


def _split_missing(tmp: Path) -> tuple[Path, list[str]]:
    root = make_image_folder(tmp / "d", 1, 1, classes=["a", "b"])
    shutil.rmtree(root / "test")
    return root, [str(root / "test"), "missing"]


def _class_missing(tmp: Path) -> tuple[Path, list[str]]:
    root = make_image_folder(tmp / "d", 1, 1, classes=["a", "b"])
    shutil.rmtree(root / "test" / "b")
    return root, [str(root / "test" / "b"), "missing", "exists in train/"]


def _empty_class(tmp: Path) -> tuple[Path, list[str]]:
    root = make_image_folder(tmp / "d", 1, 1, classes=["a", "b"])
    (root / "train" / "b" / "0000.png").unlink()
    return root, [str(root / "train" / "b"), "no images"]


def _corrupt_image(tmp: Path) -> tuple[Path, list[str]]:
    root = make_image_folder(tmp / "d", 2, 1, classes=["a", "b"])
    bad = root / "train" / "b" / "0001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    return root, [str(bad), "cannot decode"]


def _wrong_size(tmp: Path) -> tuple[Path, list[str]]:
    root = make_image_folder(tmp / "d", 2, 1, classes=["a", "b"])
    Image.new("RGB", (28, 28)).save(root / "test" / "a" / "0000.png")
    return root, [str(root / "test" / "a" / "0000.png"), "28×28 RGB, expected 32×32 RGB"]


def _wrong_mode(tmp: Path) -> tuple[Path, list[str]]:
    root = make_image_folder(tmp / "d", 2, 1, classes=["a", "b"])
    Image.new("L", (32, 32)).save(root / "train" / "a" / "0001.png")
    return root, [str(root / "train" / "a" / "0001.png"), "32×32 L, expected 32×32 RGB"]


def _truncated_batch(tmp: Path) -> tuple[Path, list[str]]:
    folder = make_batches_dir(tmp / "b", 2, 1)
    bad = folder / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:500])
    return tmp / "b", [str(bad.resolve()), "truncated"]


def _corrupt_batch(tmp: Path) -> tuple[Path, list[str]]:
    folder = make_batches_dir(tmp / "b", 2, 1)
    bad = folder / "test_batch"
    bad.write_bytes(bytes(range(256)) * 4)
    return tmp / "b", [str(bad.resolve()), "corrupt"]


DATA_CASES = {f.__name__.lstrip("_"): f for f in (
    _missing_root, _neither_layout, _split_missing, _class_missing, _empty_class, _corrupt_image, _wrong_size,
    _wrong_mode, _truncated_batch, _corrupt_batch)}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data(tmp_path: Path, case: str) -> None:
    root, fragments = DATA_CASES[case](tmp_path)
    assert_mentions(lib_error(DataError, load_cifar10, root, cache_dir=tmp_path / "cache"), *fragments)
    assert_mentions(cli_error(*train_args(tmp_path, root)), *fragments)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _jpeg(tmp: Path, trained: dict) -> Path:
    path = tmp / "photo.pt"
    Image.new("RGB", (8, 8), "red").save(path, format="JPEG")
    return path


def _truncated(tmp: Path, trained: dict) -> Path:
    blob = trained["best"].read_bytes()
    (tmp / "cut.pt").write_bytes(blob[: len(blob) // 2])
    return tmp / "cut.pt"


def _truncated_tiny(tmp: Path, trained: dict) -> Path:
    (tmp / "cut.pt").write_bytes(trained["best"].read_bytes()[:10])
    return tmp / "cut.pt"


def _empty(tmp: Path, trained: dict) -> Path:
    (tmp / "empty.pt").write_bytes(b"")
    return tmp / "empty.pt"


def _text(tmp: Path, trained: dict) -> Path:
    (tmp / "notes.pt").write_text("model: lenet\n")
    return tmp / "notes.pt"


def _newer_format(tmp: Path, trained: dict) -> Path:
    payload = load_checkpoint(trained["best"])
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp / "future.pt")
    return tmp / "future.pt"


def _plain_torch_file(tmp: Path, trained: dict) -> Path:
    torch.save({"weights": torch.zeros(3)}, tmp / "plain.pt")
    return tmp / "plain.pt"


def _bare_state_dict(tmp: Path, trained: dict) -> Path:
    torch.save(load_checkpoint(trained["best"])["model"], tmp / "state.pt")
    return tmp / "state.pt"


def _wrong_field_type(tmp: Path, trained: dict) -> Path:
    payload = load_checkpoint(trained["best"])
    payload["model"] = [1, 2, 3]
    torch.save(payload, tmp / "edited.pt")
    return tmp / "edited.pt"


def _self_referencing_config(tmp: Path, trained: dict) -> Path:
    payload = load_checkpoint(trained["best"])
    loop: list = [1]
    loop.append(loop)  # pickles as a list that contains itself
    payload["config"]["model"]["kwargs"] = {"x": loop}
    torch.save(payload, tmp / "loop.pt")
    return tmp / "loop.pt"


CHECKPOINT_CASES = {
    "missing": (lambda tmp, trained: tmp / "nope.pt", ["no such checkpoint"]),
    "directory": (lambda tmp, trained: trained["run"], ["is a folder", "best.pt"]),
    "empty": (_empty, ["empty"]),
    "truncated": (_truncated, ["truncated"]),
    "truncated_to_10_bytes": (_truncated_tiny, ["truncated"]),
    "jpeg_renamed": (_jpeg, ["not a torch checkpoint", "JPEG"]),
    "text_file": (_text, ["not a torch checkpoint", "text"]),
    "plain_torch_file": (_plain_torch_file, ["not a cnnkit checkpoint"]),
    "bare_state_dict": (_bare_state_dict, ["not a cnnkit checkpoint"]),
    "wrong_field_type": (_wrong_field_type, ["entry 'model'", "got a list"]),
    "self_referencing_config": (_self_referencing_config, ["model.kwargs.x.1 contains itself"]),
    "newer_format": (_newer_format, ["newer cnnkit", f"format {FORMAT_VERSION + 1}", "upgrade"]),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoint(tmp_path: Path, trained: dict, case: str) -> None:
    make, fragments = CHECKPOINT_CASES[case]
    path = make(tmp_path, trained)
    assert_mentions(lib_error(CheckpointError, load_checkpoint, path), str(path), *fragments)
    assert_mentions(cli_error("eval", "--checkpoint", path), str(path), *fragments)
    assert_mentions(cli_error("train", "--resume", path), str(path), *fragments)


def test_checkpoint_of_another_model(tmp_path: Path, trained: dict) -> None:
    payload = load_checkpoint(trained["best"])
    payload["config"]["model"]["name"] = "bn_cnn"  # lenet weights, config now says bn_cnn
    path = tmp_path / "other_model.pt"
    save_checkpoint(path, payload)
    fragments = [str(path), "do not fit", "missing keys", "unexpected keys", "conv1.weight", "another model"]
    assert_mentions(lib_error(CheckpointError, evaluate_checkpoint, path), *fragments)
    assert_mentions(cli_error("eval", "--checkpoint", path), *fragments)


def test_checkpoint_of_another_class_count(tmp_path: Path, trained: dict) -> None:
    payload = load_checkpoint(trained["best"])
    head = [k for k in payload["model"] if k.endswith(".weight")][-1]  # the classifier: (10, features)
    bias = head.removesuffix(".weight") + ".bias"
    features = payload["model"][head].shape[1]
    payload["model"][head] = payload["model"][head][:5]
    payload["model"][bias] = payload["model"][bias][:5]
    path = tmp_path / "five_classes.pt"
    save_checkpoint(path, payload)
    fragments = [str(path), "shape mismatch", f"{head} (5, {features}) vs model (10, {features})", "class count"]
    assert_mentions(lib_error(CheckpointError, evaluate_checkpoint, path), *fragments)
    assert_mentions(cli_error("eval", "--checkpoint", path), *fragments)
    assert_mentions(cli_error("train", "--resume", path), *fragments)


# ---------------------------------------------------------------------------------------------
# Safe loading: a pickle that would run code when loaded is refused and runs nothing


class _CreatesFile:
    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


class _RunsCommand:
    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _torch_zip(path: Path, obj) -> None:
    torch.save(obj, path)


def _torch_legacy(path: Path, obj) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _pickle_protocol(protocol: int):
    def write(path: Path, obj) -> None:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)

    write.__name__ = f"pickle_protocol_{protocol}"
    return write


@pytest.mark.parametrize("writer", [_torch_zip, _torch_legacy, _pickle_protocol(2), _pickle_protocol(4)],
                         ids=lambda w: w.__name__.lstrip("_"))
@pytest.mark.parametrize("payload", [_CreatesFile, _RunsCommand], ids=["open", "os.system"])
@pytest.mark.parametrize("where", ["whole_file", "inside_checkpoint"])
def test_malicious_checkpoint_runs_nothing(tmp_path: Path, writer, payload, where: str) -> None:
    target = tmp_path / "pwned"
    evil = payload(target)
    obj = evil if where == "whole_file" else {"format_version": 1, "model": {"w": torch.zeros(1)},
                                              "config": {"x": evil}}
    path = tmp_path / "evil.pt"
    writer(path, obj)
    message = lib_error(CheckpointError, load_checkpoint, path)
    assert_mentions(message, str(path), "refused", "nothing in the file was run")
    assert not target.exists()
    for command in (["eval", "--checkpoint", path], ["train", "--resume", path]):
        assert_mentions(cli_error(*command), "refused")
        assert not target.exists()


def test_cifar_batch_reader_is_restricted() -> None:
    # The batch reader's own malicious-pickle tests live in test_data.py; this pins that it keeps
    # a restricted unpickler whose allow-list holds only what the format needs.
    from cnnkit.data import batches as data

    assert issubclass(data._RestrictedUnpickler, pickle.Unpickler)
    assert "find_class" in vars(data._RestrictedUnpickler)
    allowed_modules = {module for module, _ in data._ALLOWED_GLOBALS}
    assert allowed_modules <= {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                               "numpy._core.numeric", "_codecs"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            yield owner, name, node


def test_package_only_loads_safely() -> None:
    """No yaml.load / pickle.load anywhere; every torch.load passes weights_only=True."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for owner, name, node in _calls(tree):
            where = f"{path.name}:{node.lineno}"
            if owner == "yaml" and name not in ("safe_load", "safe_dump", "YAMLError"):
                problems.append(f"{where}: yaml.{name}")
            if owner == "pickle" and name in ("load", "loads", "Unpickler"):
                problems.append(f"{where}: pickle.{name}")
            if owner == "torch" and name == "load":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    problems.append(f"{where}: torch.load without weights_only=True")
            if name == "unsafe_load" or name == "full_load":
                problems.append(f"{where}: {name}")
    assert not problems, problems


# ---------------------------------------------------------------------------------------------
# Output and device


def test_run_folder_under_a_file(tmp_path: Path, small_root: Path) -> None:
    # A path under a regular file cannot be created, even by root.
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    message = lib_error(RunError, fit, small_config(tmp_path, small_root, f"output.dir={blocker / 'runs'}"))
    assert_mentions(message, str(blocker / "runs"), "output.dir")
    assert_mentions(cli_error(*train_args(tmp_path, small_root, f"output.dir={blocker / 'runs'}")),
                    str(blocker / "runs"), "output.dir")


def test_run_folder_not_writable(tmp_path: Path, small_root: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        probe = locked / "probe"
        try:
            probe.write_text("")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod 0o500 does not block writes")
        config = small_config(tmp_path, small_root, f"output.dir={locked}")
        assert_mentions(lib_error(RunError, fit, config, run_name="r"), str(locked / "r"), "output.dir")
        assert_mentions(cli_error(*train_args(tmp_path, small_root, f"output.dir={locked}"), "--name", "r"),
                        str(locked / "r"), "output.dir")
    finally:
        locked.chmod(0o700)


def test_existing_run_needs_overwrite(trained: dict) -> None:
    base, root, run = trained["base"], trained["root"], trained["run"]
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    config = small_config(base, root, f"data.cache_dir={base / 'cache'}")
    message = lib_error(RunError, fit, config, run_name=run.name)
    fragments = [str(run), "--overwrite", "--name", f"--resume {run / 'last.pt'}"]
    assert_mentions(message, *fragments)
    assert_mentions(cli_error(*train_args(base, root), "--name", run.name), *fragments)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing was touched


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_only_machine(tmp_path: Path, small_root: Path, trained: dict) -> None:
    message = lib_error(DeviceError, fit, small_config(tmp_path, small_root, "train.device=cuda"))
    assert_mentions(message, "train.device=cuda", "CUDA is not available", "cpu")
    assert_mentions(cli_error(*train_args(tmp_path, small_root, "train.device=cuda")), "train.device=cuda")
    assert_mentions(cli_error("eval", "--checkpoint", trained["best"], "--device", "cuda:1"), "CUDA is not available")


# ---------------------------------------------------------------------------------------------
# Numerical faults


def _tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def test_absurd_lr_stops_with_epoch_step_and_advice(tmp_path: Path, small_root: Path) -> None:
    # Batches of 4: 7 steps an epoch, so the blow-up shows within epoch 1.
    config = small_config(tmp_path, small_root, "optim.name=sgd", "optim.lr=1e6", "train.batch_size=4", epochs=3)
    message = lib_error(TrainingError, fit, config, run_name="boom")
    assert_mentions(message, "epoch 1", "step ", "lower optim.lr", "1e+06", "train.grad_clip")
    run = tmp_path / "runs" / "boom"
    assert not (run / "last.pt").exists() and not (run / "metrics.jsonl").exists()
    assert _tmp_files(run) == []
    line = cli_error(*train_args(tmp_path, small_root, "optim.name=sgd", "optim.kwargs={}", "optim.lr=1e6",
                                 "train.batch_size=4"), "--name", "boom2")
    assert_mentions(line, "epoch 1", "lower optim.lr")


def test_optimiser_kwargs_for_another_optimiser_fail_before_the_data(tmp_path: Path) -> None:
    # lenet.yaml sets Adam's betas; switching it to SGD alone leaves them behind. The data root does
    # not exist: the kwargs line comes first, before any data is looked for (or downloaded).
    missing = tmp_path / "no-data-here"
    line = cli_error(*train_args(tmp_path, missing, "optim.name=sgd"))
    assert_mentions(line, "optim.kwargs: betas not accepted by sgd", "momentum", "--set optim.kwargs={}")
    assert not (tmp_path / "runs").exists() and not missing.exists()
    # The same in one group of a config with groups: the hint names that group's key.
    line = cli_error("train", "--config", "configs/fast.yaml", "--set", f"data.root={missing}",
                     "--set", "optim.groups.1.name=adam")
    assert_mentions(line, "optim.groups.1.kwargs: momentum, nesterov not accepted by adam",
                    "--set optim.groups.1.kwargs={}")


def test_blow_up_in_a_later_epoch_keeps_the_last_good_checkpoint(tmp_path: Path, small_root: Path,
                                                                 monkeypatch) -> None:
    import cnnkit.training.fit as train_mod

    real = train_mod.train_one_epoch

    def explode_in_epoch_2(model, optimizer, *args, epoch, **kwargs):
        if epoch == 1:  # 0-based: the second epoch
            for group in optimizer.param_groups:
                group["lr"] = 1e12
        return real(model, optimizer, *args, epoch=epoch, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", explode_in_epoch_2)
    # Batches of 8: 3 steps an epoch, so the blow-up shows within epoch 2.
    config = small_config(tmp_path, small_root, "optim.name=sgd", "optim.lr=0.01", "train.batch_size=8", epochs=3)
    run = tmp_path / "runs" / "late"
    message = lib_error(TrainingError, fit, config, run_name="late")
    assert_mentions(message, "epoch 2", "step ", "last good checkpoint (epoch 1) is kept", "lower optim.lr")
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert _tmp_files(run) == []
    # And it resumes from that checkpoint (the patch is gone for the resumed run).
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    config, payload = resume_config(run / "last.pt")
    assert [r["epoch"] for r in fit(config, resume=run / "last.pt", resume_payload=payload).history] == [1, 2, 3]


def test_blow_up_in_the_last_step_of_an_epoch_is_not_saved(tmp_path: Path, small_root: Path, monkeypatch) -> None:
    # One step per epoch: the step that ruins the weights is the epoch's last, so no training loss
    # is ever NaN in that epoch; its validation loss is. That epoch must not become last.pt.
    import cnnkit.training.fit as train_mod

    real = train_mod.train_one_epoch

    def explode_in_epoch_2(model, optimizer, *args, epoch, **kwargs):
        if epoch == 1:
            for group in optimizer.param_groups:
                group["lr"] = 1e30
        return real(model, optimizer, *args, epoch=epoch, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", explode_in_epoch_2)
    config = small_config(tmp_path, small_root, "optim.name=sgd", "optim.lr=0.01", "train.batch_size=16", epochs=3)
    message = lib_error(TrainingError, fit, config, run_name="edge")
    assert_mentions(message, "epoch 2", "lower optim.lr")
    run = tmp_path / "runs" / "edge"
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert "NaN" not in (run / "metrics.jsonl").read_text()  # NaN is not JSON


def test_grad_clip_tames_the_absurd_lr(tmp_path: Path, small_root: Path) -> None:
    # Clipping the gradient norm to c bounds each SGD step to lr·c: the run that blew up completes,
    # and the weights barely move from their initial values.
    config = small_config(tmp_path, small_root, "optim.name=sgd", "optim.lr=1e6", "train.grad_clip=1e-9", epochs=2)
    result = fit(config, run_name="clipped")
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    from cnnkit.build import model_from_config

    torch.manual_seed(config.train.seed)
    initial = model_from_config(config, 10).state_dict()
    final = load_checkpoint(result.run_dir / "last.pt")["model"]
    steps = 2 * (30 // 16)  # 30 training images (40 − 10 held out), batches of 16, last one dropped
    for key, value in initial.items():
        # No step moves a weight by more than lr·c = 1e-3.
        assert (final[key] - value).abs().max().item() <= steps * 1e-3 + 1e-6, key
    line = runner.invoke(app, train_args(tmp_path, small_root, "train.grad_clip=1.0") + ["--name", "clip1"])
    assert line.exit_code == 0, line.stderr
