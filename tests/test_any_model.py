"""Any model, not just cnnkit's: a model file in a folder outside the checkout, written the way the
CIFAR zoos write theirs (functional calls in forward, a residual add, a module used twice, dropout,
a builder function without size arguments), named as `path/to/file.py:Name` or `module:Name`,
through every command; torchvision and timm by name; and the refusals, each one line.

The security half: a checkpoint is data. One that names an import path this user has not trusted
is refused before anything is imported or called, whatever the path (os:system, builtins:exec, a
module that writes a file when imported) and whatever its kwargs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from typer.testing import CliRunner

from cnnkit.cli import app
from cnnkit.config import load_config
from cnnkit.errors import ConfigError, Interrupted
from cnnkit.models import build_model
from cnnkit.models import trust as trust_list
from cnnkit.models.external import trust_name
from cnnkit.training.checkpoint import load_checkpoint, save_checkpoint
from cnnkit.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

ZOO = '''\
"""A CIFAR zoo's model file (kuangliu/pytorch-cifar style)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class ZooNet(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.block = Block(width)
        self.conv = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.block(x)
        x = F.max_pool2d(x, 2)
        x = self.block(x)
        x = F.relu(self.conv(x))
        x = F.avg_pool2d(x, 2)
        x = torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], 1)
        x = x.view(x.size(0), -1)
        return self.fc(self.drop(x))


def ZooNet10():
    return ZooNet(width=8)


class FlatNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(x.view(x.size(0), -1))


class MLP(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc1 = nn.Linear(3 * 32 * 32, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def Listed():
    return [ZooNet()]


def Broken(width=8):
    raise RuntimeError("the zoo's constructor broke")


NOT_CALLABLE = 3
'''

TINY = ["data.val_split=10", "train.batch_size=16", "train.eval_batch_size=64", "train.threads=1",
        "train.device=cpu"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model file in a folder of its own (not the checkout, not on sys.path) and tiny data."""
    base = tmp_path_factory.mktemp("any-model")
    models = base / "elsewhere"
    models.mkdir()
    (models / "zoo_nets.py").write_text(ZOO)
    data = make_image_folder(base / "data", n_train_per_class=6, n_test_per_class=3)
    return {"base": base, "file": models / "zoo_nets.py", "folder": models, "data": data}


def _train_args(zoo: dict, name: str, run: str, *extra: str) -> list[str]:
    sets = [f"model.name={name}", f"data.root={zoo['data']}", f"output.dir={zoo['base'] / 'runs'}", *TINY, *extra]
    return ["train", "--config", str(ROOT / "configs" / "lenet.yaml"), "--name", run, "--quiet",
            *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def zoo_run(zoo: dict) -> Path:
    """A 2-epoch run of the builder without size arguments, by file path, with EMA, channels_last and
    flip_translate TTA: the checkpoint the eval/predict/look/export/shapes tests read."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNKIT_CONFIG_DIR", str(zoo["base"] / "config"))  # the module's own user, trusting nothing yet
    try:
        result = runner.invoke(app, _train_args(zoo, f"{zoo['file']}:ZooNet10", "zoo", "train.epochs=2",
                                                "train.ema_decay=0.9", "train.channels_last=true",
                                                "train.tta=flip_translate"))
    finally:
        mp.undo()
    assert result.exit_code == 0, result.output
    return zoo["base"] / "runs" / "zoo"


def _env(zoo: dict, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CNNKIT_DATA"}
    return {**env, "CNNKIT_CONFIG_DIR": str(zoo["base"] / "config"), **extra}


def test_a_model_file_trains_and_a_new_shell_evaluates_it_with_no_flag(zoo, zoo_run):
    saved = load_checkpoint(zoo_run / "best.pt")
    assert saved["config"]["model"]["name"] == f"{zoo['file']}:ZooNet10"  # absolute: loads from any folder
    assert saved["task"] == "classify" and saved["classes"][0] == "airplane"
    final = json.loads((zoo_run / "metrics.jsonl").read_text().splitlines()[-1])["final"]
    # Another process, another working directory, the module nowhere on its path: no flag needed,
    # since this user trained with it (train recorded it in the trust list).
    assert f"{zoo['file']}:ZooNet10" in (zoo["base"] / "config" / trust_list.TRUST_FILE).read_text()
    proc = subprocess.run([sys.executable, "-m", "cnnkit", "eval", "--checkpoint", str(zoo_run / "best.pt"),
                           "--tta", "--worst", "2", "--json", "--no-plots"], cwd=zoo["base"], env=_env(zoo),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["accuracy"] == pytest.approx(final["test_acc"], abs=1e-12)
    assert report["tta_accuracy"] == pytest.approx(final["tta_acc"], abs=1e-12)
    assert report["tta_mode"] == "flip_translate" and len(report["worst"]) == 2
    assert report["worst"][0]["file"].startswith("test/")


def test_predict_look_shapes_runs_plot_on_the_model_file(zoo, zoo_run, monkeypatch):
    monkeypatch.setenv("CNNKIT_CONFIG_DIR", str(zoo["base"] / "config"))
    picture = zoo["data"] / "test" / "cat" / "0000.png"
    predicted = runner.invoke(app, ["predict", "--checkpoint", str(zoo_run / "best.pt"), str(picture), "--json"])
    assert predicted.exit_code == 0, predicted.output
    top = json.loads(predicted.stdout)["predictions"][0]["top"]
    assert len(top) == 3 and top[0]["class"] in load_checkpoint(zoo_run / "best.pt")["classes"]
    looked = runner.invoke(app, ["look", "--checkpoint", str(zoo_run / "best.pt"), str(picture),
                                 "--out", str(zoo["base"] / "look"), "--json"])
    assert looked.exit_code == 0, looked.output
    look = json.loads(looked.stdout)
    names = [layer["name"] for layer in look["layers"]]
    assert {"stem", "block.conv1", "block.conv1#2", "block.add()#2", "conv", "cat()", "view()"} <= set(names)
    assert look["gradcam_layer"] == {"name": "conv", "size": [16, 16]}  # the last maps of a module run once
    assert {p.name for p in (zoo["base"] / "look").iterdir()} >= {"activations.png", "filters.png", "gradcam.png"}
    # A layer that runs twice cannot be Grad-CAM's: one line says so.
    twice = runner.invoke(app, ["look", "--checkpoint", str(zoo_run / "best.pt"), str(picture),
                                "--layer", "block.conv1",
                                "--out", str(zoo["base"] / "look2")])
    assert twice.exit_code == 2 and "runs more than once" in twice.output, twice.output
    assert not (zoo["base"] / "look2").exists()
    shaped = runner.invoke(app, ["shapes", "--config", str(zoo_run / "config.yaml"), "--json"])
    assert shaped.exit_code == 0, shaped.output
    table = json.loads(shaped.stdout)
    assert table["output"] == [10] and "block.add()" in [r["name"] for r in table["layers"]]
    by_name = runner.invoke(app, ["shapes", "--model", f"{zoo['file']}:ZooNet", "--input", "3x32x32", "--json"])
    assert by_name.exit_code == 0 and json.loads(by_name.stdout)["totals"] == table["totals"]
    listed = runner.invoke(app, ["runs", str(zoo["base"] / "runs"), "--json"])
    assert listed.exit_code == 0 and f"{zoo['file']}:ZooNet10" in listed.output
    drawn = runner.invoke(app, ["plot", str(zoo_run), "--out", str(zoo["base"] / "curves.png")])
    assert drawn.exit_code == 0 and (zoo["base"] / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_export_checks_the_model_file_against_pytorch(zoo, zoo_run, monkeypatch, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    monkeypatch.setenv("CNNKIT_CONFIG_DIR", str(zoo["base"] / "config"))
    out = zoo["base"] / f"zoo.{fmt}"
    result = runner.invoke(app, ["export", "--checkpoint", str(zoo_run / "best.pt"), "--format", fmt,
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["max_abs_diff"] <= report["tolerance"] and report["top1_agree"] == report["n_checked"] > 0


def test_stopped_and_resumed_by_the_cli_equals_the_unbroken_run(zoo, monkeypatch):
    # The module path form, importable from the working directory; dropout draws from the saved RNG.
    monkeypatch.chdir(zoo["folder"])
    sets = ["model.name=zoo_nets:ZooNet", "model.kwargs={width: 4}", f"data.root={zoo['data']}",
            f"output.dir={zoo['base'] / 'resume'}", *TINY, "train.epochs=2", "data.augment=true"]
    full = fit(load_config(ROOT / "configs" / "lenet.yaml", sets), run_name="full")

    def stop_after_epoch_1(event):
        if event["kind"] == "epoch" and event["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        fit(load_config(ROOT / "configs" / "lenet.yaml", sets), run_name="cut", report=stop_after_epoch_1)
    trust_list.forget_session()  # a new shell: only the trust file speaks
    cut = zoo["base"] / "resume" / "cut"
    resumed = runner.invoke(app, ["train", "--resume", str(cut / "last.pt"), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    a, b = load_checkpoint(full.run_dir / "last.pt")["model"], load_checkpoint(cut / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # --init-from: a new run from those weights.
    tuned = runner.invoke(app, _train_args(zoo, "zoo_nets:ZooNet", "tuned", "model.kwargs={width: 4}",
                                           "train.epochs=1", f"train.init_from={cut / 'best.pt'}"))
    assert tuned.exit_code == 0 and "new run from the weights of" in tuned.output, tuned.output


def test_precision_channels_last_and_ema_apply(zoo, monkeypatch):
    # (train.compile wraps whatever model was built, the same line for every model: tests/test_train.py's
    # test_compile_trains runs it, ~20 s on this CPU, so it is not repeated here.)
    monkeypatch.chdir(zoo["folder"])
    result = runner.invoke(app, _train_args(zoo, "zoo_nets:ZooNet10", "all-on", "train.epochs=1",
                                            "train.precision=bf16", "train.channels_last=true",
                                            "train.ema_decay=0.5"))
    assert result.exit_code == 0, result.output
    saved = load_checkpoint(zoo["base"] / "runs" / "all-on" / "last.pt")
    assert saved["config"]["train"]["precision"] == "bf16" and saved["ema_updates"] > 0
    assert "train_model" in saved  # the raw weights beside the average
    assert saved["config"]["train"]["channels_last"] is True


def test_a_forward_that_views_nchw_maps_trains_without_channels_last_and_says_so(zoo, monkeypatch):
    # x.view(x.size(0), -1) on 16×16 maps fails on a channels_last tensor; the run falls back to NCHW.
    monkeypatch.chdir(zoo["folder"])
    result = runner.invoke(app, _train_args(zoo, "zoo_nets:FlatNet", "flat", "train.epochs=1",
                                            "train.channels_last=true"))
    assert result.exit_code == 0, result.output
    assert "warning: train.channels_last is off for zoo_nets:FlatNet: its forward calls .view()" in result.output
    saved = load_checkpoint(zoo["base"] / "runs" / "flat" / "last.pt")
    assert saved["config"]["train"]["channels_last"] is False  # what ran


@pytest.mark.slow
def test_sweep_tune_and_two_processes_on_a_module_path(zoo, monkeypatch):
    monkeypatch.chdir(zoo["folder"])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(zoo["folder"]), os.environ.get("PYTHONPATH")])))
    config = zoo["base"] / "zoo.yaml"
    config.write_text(textwrap.dedent(f"""\
        model: {{name: zoo_nets:ZooNet, kwargs: {{width: 4}}}}
        data: {{root: {zoo['data']}, val_split: 10}}
        optim: {{name: adam, lr: 0.003}}
        train: {{epochs: 1, batch_size: 16, eval_batch_size: 64, threads: 1}}
        output: {{dir: {zoo['base'] / 'experiments'}}}
        """))
    swept = runner.invoke(app, ["sweep", "--config", str(config), "--seeds", "1", "--workers", "1", "--name", "sw"])
    assert swept.exit_code == 0, swept.output
    summary = json.loads((zoo["base"] / "experiments" / "sw" / "summary.json").read_text())
    assert [c["state"] for c in summary["cells"]] == ["complete"]
    space = zoo["base"] / "space.yaml"
    space.write_text("optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n")
    tuned = runner.invoke(app, ["tune", "--config", str(config), "--space", str(space), "--trials", "1",
                                "--pruner", "none", "--workers", "1", "--study", "tz"])
    assert tuned.exit_code == 0, tuned.output
    two = subprocess.run([sys.executable, "-m", "cnnkit", "train", "--nproc", "2", "--config", str(config),
                          "--name", "ddp", "--quiet"], cwd=zoo["folder"],
                         env=_env(zoo, PYTHONPATH=os.environ["PYTHONPATH"]), capture_output=True, text=True,
                         timeout=240)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 processes" in two.stdout


def test_torchvision_resnet18_with_the_cifar_stem_trains(zoo, tmp_path):
    result = runner.invoke(app, _train_args(zoo, "torchvision:resnet18", "tv", "train.epochs=1", "data.subset=20",
                                            "data.val_split=4", "model.cifar_stem=true", "train.eval_batch_size=20"))
    assert result.exit_code == 0, result.output
    assert "torchvision:resnet18 (11,173,962 params)" in result.output  # 10 classes; the 3×3 stem (7×7: 11,181,642)
    model = build_model("torchvision:resnet18", cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_torchvision_and_timm_take_the_data_s_channels_and_classes():
    gray = build_model("torchvision:resnet18", in_channels=1, num_classes=7)
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    timm = pytest.importorskip("timm")
    model = build_model("timm:resnet18", in_channels=1, num_classes=5)
    assert isinstance(model, timm.models.ResNet) and model(torch.randn(2, 1, 32, 32)).shape == (2, 5)


# --------------------------------------------------------------------------------------------- refusals


def _refused(args: list[str], *needles: str, runs: Path | None = None) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in line, line
    for needle in needles:
        assert needle in line, line
    if runs is not None:
        assert not runs.exists(), f"{runs} was written"
    return line


@pytest.mark.parametrize(("name", "kwargs", "needles"), [
    ("no_such_zoo:Net", "", ["no module named 'no_such_zoo'", "PYTHONPATH"]),
    ("{file}:ZooNett", "", ["zoo_nets.py has no 'ZooNett'", "did you mean 'ZooNet'", "ZooNet10"]),
    ("{file}:NOT_CALLABLE", "", ["NOT_CALLABLE is a int, not a class or a function"]),
    ("{file}:Listed", "", ["returned a list, not an nn.Module"]),
    ("{file}:Broken", "", ["raised RuntimeError: the zoo's constructor broke", "called with no arguments"]),
    ("{file}:ZooNet", "{depth: 3}", ["depth not accepted by", "it takes: num_classes, width"]),
    ("{file}:ZooNet10", "", ["output for a batch of 2 images is (2, 10)", "100 classes", "num_classes"]),
    ("{missing}:Net", "", ["no file", "missing.py"]),
    ("torchvision:resnet19", "", ["no such model 'resnet19'", "resnet18", "cnnkit models torchvision"]),
    ("torchvision:resnet18", "{weights: IMAGENET1K_V1}", ["model.kwargs.weights", "without pretrained weights"]),
    ("timm:resnet18", "{pretrained: true}", ["model.kwargs.pretrained", "without pretrained weights"]),
    ("torchvision:resnet18", "{no_such_arg: 1}", ["raised TypeError", "no_such_arg"]),
    ("lenet", "", []),  # the control: the same command with a registry model is not refused (see below)
    ("my-nets:Net", "", ["'my-nets' is neither a module", "path/to/nets.py:ResNet18"]),
    ("{file}:Zoo Net", "", ["'Zoo Net' after the last ':' is not a Python name"]),
])
def test_a_bad_model_is_one_line_before_anything_is_written(zoo, tmp_path, name, kwargs, needles):
    name = name.format(file=zoo["file"], missing=tmp_path / "missing.py")
    classes = "model.num_classes=100" if "ZooNet10" in name else "train.epochs=1"
    args = _train_args(zoo, name, "refused", classes, *([f"model.kwargs={kwargs}"] if kwargs else []))
    args[args.index(f"output.dir={zoo['base'] / 'runs'}")] = f"output.dir={tmp_path / 'runs'}"
    if name == "lenet":
        assert runner.invoke(app, [*args, "--set", "train.epochs=1"]).exit_code == 0
        return
    _refused(args, *needles, runs=tmp_path / "runs")


def test_timm_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(ConfigError, match=r"needs timm, which is not installed; pip install 'cnnkit\[timm\]'"):
        build_model("timm:resnet18")


def test_cifar_stem_on_a_model_that_has_its_own_is_refused(zoo):
    trust_name(f"{zoo['file']}:ZooNet")
    with pytest.raises(ConfigError, match="model.cifar_stem: applies to torchvision: and timm: models"):
        build_model(f"{zoo['file']}:ZooNet", cifar_stem=True)
    with pytest.raises(ConfigError, match="model.cifar_stem: lenet is cnnkit's own model"):
        build_model("lenet", cifar_stem=True)


# ---------------------------------------------------------------------------------- a checkpoint is data


def _planted(tmp_path: Path, zoo_run: Path, name: str, kwargs: dict) -> Path:
    """zoo_run's best.pt, edited as someone else might send it: its model.name and kwargs replaced."""
    payload = load_checkpoint(zoo_run / "best.pt")
    payload["config"]["model"].update(name=name, kwargs=kwargs)
    for key in ("format_version", "cnnkit_version", "torch_version"):
        payload.pop(key)
    return save_checkpoint(tmp_path / f"{name.replace(':', '_').replace('/', '_')}.pt", payload)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("os:system", {"command": "touch {marker}"}),
    ("subprocess:run", {"args": ["touch", "{marker}"]}),
    ("builtins:exec", {"source": "open('{marker}', 'w')"}),
    ("torch.hub:load", {"repo_or_dir": "{marker}", "model": "x"}),
    ("sentinel_mod:Net", {}),
    ("{sentinel_file}:Net", {}),
])
@pytest.mark.parametrize("command", ["eval", "predict", "look", "export", "resume"])
def test_a_checkpoint_naming_untrusted_code_is_refused_before_any_import(zoo, zoo_run, tmp_path, monkeypatch,
                                                                         name, kwargs, command):
    marker = tmp_path / "ran"
    # A module that leaves a mark when it is imported, importable from the working directory.
    (tmp_path / "sentinel_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\nNet = None\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNKIT_CONFIG_DIR", str(tmp_path / "config"))  # a user who trained none of these
    name = name.format(sentinel_file=tmp_path / "sentinel_mod.py")
    kwargs = json.loads(json.dumps(kwargs).replace("{marker}", str(marker)))
    planted = _planted(tmp_path, zoo_run, name, kwargs)
    picture = str(zoo["data"] / "test" / "cat" / "0000.png")
    args = {"eval": ["eval", "--checkpoint", str(planted)],
            "predict": ["predict", "--checkpoint", str(planted), picture],
            "look": ["look", "--checkpoint", str(planted), picture], "export": ["export", "--checkpoint", str(planted)],
            "resume": ["train", "--resume", str(planted)]}[command]
    modules = set(sys.modules)
    line = _refused(args, f"its model.name {name} would import and run", "--trust-code", "nothing was imported")
    assert line.startswith(f"error: {planted}: "), line  # the line names the file that asked
    assert not marker.exists()
    assert not {m for m in set(sys.modules) - modules if "sentinel" in m}
    assert not (tmp_path / "config" / trust_list.TRUST_FILE).exists()  # refusing trusts nothing


def test_trust_code_is_what_lets_a_checkpoint_import(zoo, zoo_run, tmp_path, monkeypatch):
    # The control for the refusals above: the same planted checkpoint with --trust-code does import
    # the module (and then fails on it as a model), so the refusal is the trust check, nothing else.
    marker = tmp_path / "ran"
    (tmp_path / "sentinel_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\nNet = None\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNKIT_CONFIG_DIR", str(tmp_path / "config"))
    planted = _planted(tmp_path, zoo_run, "sentinel_mod:Net", {})
    _refused(["eval", "--checkpoint", str(planted), "--trust-code"], "Net is a NoneType, not a class")
    assert marker.exists()
    trust_list.forget_session()


@pytest.mark.parametrize("name", ["lenet", "resnet20", "torchvision:resnet18", "timm:resnet18"])
def test_registry_torchvision_and_timm_names_need_no_trust(zoo, zoo_run, tmp_path, monkeypatch, name):
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    monkeypatch.setenv("CNNKIT_CONFIG_DIR", str(tmp_path / "config"))  # a user who trusted nothing
    trust_list.forget_session()
    planted = _planted(tmp_path, zoo_run, name, {})
    # Built (no trust asked), then refused only because the weights are another model's.
    _refused(["eval", "--checkpoint", str(planted)], "weights do not fit this model")
    assert not (tmp_path / "config").exists()  # and nothing joined the trust list


# ------------------------------------------------------------------------------------- from Python


class NotebookNet(torch.nn.Module):
    """Defined where no import path reaches it (as in a notebook's __main__)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))  # (B, 4, 32, 32)
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 4)
        return self.fc(x)  # (B, 10)


def test_the_python_api_gives_the_cli_s_numbers(zoo, monkeypatch):
    from cnnkit import api

    monkeypatch.chdir(zoo["folder"])
    sets = ["model.name=zoo_nets:ZooNet", "model.kwargs={width: 4}", f"data.root={zoo['data']}", *TINY,
            f"output.dir={zoo['base'] / 'api'}", "train.epochs=1"]
    by_api = api.train(ROOT / "configs" / "lenet.yaml", overrides=sets, run_name="api")
    cli = runner.invoke(app, ["train", "--config", str(ROOT / "configs" / "lenet.yaml"), "--name", "cli",
                              *[a for s in sets for a in ("--set", s)]])
    assert cli.exit_code == 0, cli.output
    final = json.loads((zoo["base"] / "api" / "cli" / "metrics.jsonl").read_text().splitlines()[-1])
    assert by_api.test.accuracy == final["final"]["test_acc"]
    assert by_api.history[-1]["train_loss"] == final["train_loss"]
    assert api.evaluate(by_api.run_dir / "best.pt").result.accuracy == by_api.test.accuracy
    table = api.shapes("zoo_nets:ZooNet", width=4)
    assert table.output == (10,)
    assert table.params == sum(p.numel() for p in build_model("zoo_nets:ZooNet", width=4).parameters())


def test_a_model_object_trains_and_its_checkpoint_says_how_to_load_it(zoo, tmp_path):
    from cnnkit import api

    net = NotebookNet()
    result = api.train(ROOT / "configs" / "lenet.yaml", model=net, run_name="obj",
                       overrides=[f"data.root={zoo['data']}", *TINY, f"output.dir={tmp_path}", "train.epochs=1"])
    saved = load_checkpoint(result.run_dir / "best.pt")
    assert saved["config"]["model"]["name"] == "object:test_any_model.NotebookNet"
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in saved["model"].items())  # trained in place
    line = _refused(["eval", "--checkpoint", str(result.run_dir / "best.pt")],
                    "cnnkit.api.evaluate(CHECKPOINT, model=NotebookNet(...))")
    assert "Python object" in line
    again = api.evaluate(result.run_dir / "best.pt", model=NotebookNet())
    assert again.result.accuracy == result.test.accuracy


def test_size_arguments_go_to_a_constructor_that_names_them(zoo):
    # ZooNet names num_classes (and not in_channels): it gets the data's class count.
    trust_name(f"{zoo['file']}:ZooNet")  # named here, in the user's own code
    model = build_model(f"{zoo['file']}:ZooNet", num_classes=7, width=4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    # A constructor without in_channels meets grayscale data in the meta-device check, one line.
    from cnnkit.build import check_model_fits

    config = load_config(None, [f"model.name={zoo['file']}:ZooNet", "data.grayscale=true"])
    with torch.device("meta"):
        gray = build_model(f"{zoo['file']}:ZooNet", in_channels=1)
    with pytest.raises(ConfigError, match=r"its forward pass fails on 1×32×32 images: RuntimeError"):
        check_model_fits(config, gray)


def test_a_relative_file_path_is_saved_absolute(zoo, monkeypatch, tmp_path):
    monkeypatch.chdir(zoo["base"])
    relative = "elsewhere/zoo_nets.py:ZooNet10"
    result = fit(load_config(ROOT / "configs" / "lenet.yaml", [
        f"model.name={relative}", f"data.root={zoo['data']}", *TINY, f"output.dir={tmp_path}", "train.epochs=1"]),
        run_name="rel")
    saved = load_checkpoint(result.run_dir / "best.pt")["config"]["model"]["name"]
    assert saved == f"{zoo['file']}:ZooNet10" and Path(saved.rpartition(":")[0]).is_absolute()


def test_look_on_a_model_without_maps_says_what_it_cannot_draw(zoo, monkeypatch):
    monkeypatch.chdir(zoo["folder"])
    trained = runner.invoke(app, _train_args(zoo, "zoo_nets:MLP", "mlp", "train.epochs=1"))
    assert trained.exit_code == 0, trained.output
    picture = zoo["data"] / "test" / "cat" / "0000.png"
    looked = runner.invoke(app, ["look", "--checkpoint", str(zoo["base"] / "runs" / "mlp" / "best.pt"), str(picture),
                                 "--out", str(zoo["base"] / "look-mlp")])
    assert looked.exit_code == 0, looked.output
    lines = looked.output.splitlines()
    assert lines[1].startswith(f"{picture}: ") and "%" in lines[1]  # its top classes all the same
    assert "note: gradcam.png: not drawn: zoo_nets:MLP has no layer whose output is maps" in looked.output
    assert "note: filters.png: not drawn: zoo_nets:MLP has no conv layer" in looked.output
    assert sorted(p.name for p in (zoo["base"] / "look-mlp").iterdir()) == ["activations.png"]
