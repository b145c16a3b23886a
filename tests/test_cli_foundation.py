"""The foundation commands through typer's CliRunner: shapes (model and single-layer forms), models,
config show; every bad input exits 2 with one `error:` line on stderr and no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnkit import cli
from cnnkit.cli import app

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    # `--debug` / CNNKIT_DEBUG turn errors into tracebacks; these tests check the user-facing form.
    monkeypatch.delenv("CNNKIT_DEBUG", raising=False)
    monkeypatch.setitem(cli._state, "debug", False)


# Tiny tensors: a torch thread pool only adds contention (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def ok(*args: str):
    result = run(*args)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def ok_json(*args: str):
    return json.loads(ok(*args, "--json").stdout)


def fails(*args: str) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr starting with 'error:'; returns that line."""
    result = run(*args)
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got {result.stderr!r}"
    assert lines[0].startswith("error: ")
    return lines[0]


# ------------------------------------------------------------------------------------------- help


def test_help_lists_the_foundation_commands():
    out = ok("--help").stdout
    for command in ("shapes", "models", "config"):
        assert command in out
    assert "show" in ok("config", "--help").stdout
    shapes_help = ok("shapes", "--help").stdout
    assert "conv" in shapes_help and "pool" in shapes_help


def test_version():
    assert ok("--version").stdout.startswith("cnnkit ")


# -------------------------------------------------------------------------------- shapes conv/pool


def test_shapes_conv_seed_example_json():
    data = ok_json("shapes", "conv", "--input", "1x28x28", "--out-channels", "3", "--kernel", "3",
                   "--stride", "2", "--padding", "1")
    assert data["input"] == [1, 28, 28]
    assert data["output"] == [3, 14, 14]
    assert len(data["layers"]) == 1
    layer = data["layers"][0]
    assert layer["type"] == "Conv2d" and layer["output"] == [3, 14, 14]
    assert layer["formulas"] == ["⌊(28 + 2·1 − 1·(3−1) − 1) / 2⌋ + 1 = 14"] * 2
    assert layer["params"] == 3 * 9 + 3


@pytest.mark.parametrize(
    ("args", "output"),
    [
        (["--kernel", "3"], [3, 26, 26]),
        (["--kernel", "3", "--padding", "1"], [3, 28, 28]),
        (["--kernel", "3", "--dilation", "2"], [3, 24, 24]),
        (["--kernel", "3,5", "--stride", "1,2", "--padding", "0,1"], [3, 26, 13]),
    ],
)
def test_shapes_conv_variants(args, output):
    assert ok_json("shapes", "conv", "--input", "1x28x28", "--out-channels", "3", *args)["output"] == output


def test_shapes_conv_table_shows_the_formula():
    out = ok("shapes", "conv", "--input", "3x32x32", "--out-channels", "6", "--kernel", "3").stdout
    assert "⌊(32 + 2·0 − 1·(3−1) − 1) / 1⌋ + 1 = 30" in out
    assert "3×32×32 → 6×30×30" in out


def test_shapes_pool_seed_example_json():
    data = ok_json("shapes", "pool", "--kind", "max", "--input", "1x4x4", "--kernel", "2,3", "--stride", "2,3",
                   "--padding", "1,1")
    assert data["input"] == [1, 4, 4]
    assert data["output"] == [1, 3, 2]
    assert [layer["type"] for layer in data["layers"]] == ["MaxPool2d"]


@pytest.mark.parametrize(
    ("args", "output"),
    [
        (["--input", "1x4x4", "--kernel", "3"], [1, 1, 1]),  # stride defaults to the kernel
        (["--input", "1x4x4", "--kernel", "3", "--padding", "1", "--stride", "2"], [1, 2, 2]),
        (["--input", "3x14x14", "--kernel", "2"], [3, 7, 7]),
        (["--input", "3x15x15", "--kernel", "2"], [3, 7, 7]),
        (["--input", "3x15x15", "--kernel", "2", "--ceil-mode"], [3, 8, 8]),
        (["--input", "1x5x5", "--kernel", "3", "--stride", "2", "--kind", "avg", "--padding", "1"], [1, 3, 3]),
        (["--input", "1x9x9", "--kernel", "2", "--dilation", "2"], [1, 4, 4]),
    ],
)
def test_shapes_pool_variants(args, output):
    data = ok_json("shapes", "pool", *args)
    assert data["output"] == output
    if "--stride" not in args:
        assert data["layers"][0]["stride"] == data["layers"][0]["kernel"]


def test_shapes_pool_ceil_mode_is_reported():
    data = ok_json("shapes", "pool", "--input", "1x15x15", "--kernel", "2", "--ceil-mode")
    layer = data["layers"][0]
    assert layer["ceil_mode"] is True
    assert layer["formulas"][0].startswith("⌈")


# ----------------------------------------------------------------------------------- shapes model


def test_shapes_model_bn_cnn_flatten_1800():
    data = ok_json("shapes", "--model", "bn_cnn")
    assert data["input"] == [3, 32, 32]
    assert data["output"] == [10]
    flatten = [layer for layer in data["layers"] if layer["type"] == "Flatten"]
    assert [layer["output"] for layer in flatten] == [[1800]]
    assert data["totals"]["params"] == sum(layer["params"] for layer in data["layers"]) > 0


def test_shapes_model_bn_cnn_on_1x28x28_flatten_1250():
    data = ok_json("shapes", "--model", "bn_cnn", "--input", "1x28x28")
    assert data["input"] == [1, 28, 28]
    assert [layer["output"] for layer in data["layers"] if layer["type"] == "Flatten"] == [[1250]]


def test_shapes_model_table():
    out = ok("shapes", "--model", "lenet").stdout
    for text in ("conv1", "pool2", "fc3", "3×32×32 → 6×30×30", "⌊(32 + 2·0 − 1·(3−1) − 1) / 1⌋ + 1 = 30",
                 "81,302"):
        assert text in out


def test_shapes_with_config():
    data = ok_json("shapes", "--config", str(CONFIGS / "edge.yaml"))
    assert data["input"] == [1, 6, 8]
    assert data["output"] == [1, 6, 7]
    assert [layer["type"] for layer in data["layers"]] == ["Conv2d"]
    scratch = ok_json("shapes", "--config", str(CONFIGS / "edge.yaml"), "--set", "model.kwargs.backend=scratch")
    assert [layer["type"] for layer in scratch["layers"]] == ["Corr2d"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shapes_every_shipped_config(path):
    data = ok_json("shapes", "--config", str(path))
    assert data["layers"]


# ---------------------------------------------------------------------------------- shape errors


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["conv", "--input", "1x4x4", "--kernel", "5"], ["conv H", "5", "4"]),
        (["conv", "--input", "1x28x4", "--kernel", "3,5"], ["conv W", "5", "4"]),
        (["conv", "--input", "1x4x4", "--kernel", "3", "--dilation", "2"], ["conv H", "dilation"]),
        (["conv", "--input", "1x4x4", "--kernel", "0"], ["kernel", "0"]),
        (["conv", "--input", "1x4x4", "--kernel=-1"], ["kernel", "-1"]),
        (["conv", "--input", "1x4x4", "--kernel", "3", "--stride", "0"], ["stride", "0"]),
        (["conv", "--input", "1x4x4", "--kernel", "3", "--padding=-1"], ["padding", "-1"]),
        (["conv", "--input", "1x4x4", "--kernel", "3", "--out-channels", "0"], ["out-channels", "0"]),
        (["conv", "--input", "1x4", "--kernel", "3"], ["--input", "1x4"]),
        (["conv", "--input", "0x4x4", "--kernel", "3"], ["--input"]),
        (["conv", "--input", "ax4x4", "--kernel", "3"], ["--input"]),
        (["conv", "--input", "1x4x4", "--kernel", "a,b"], ["--kernel"]),
        (["conv", "--input", "1x4x4", "--kernel", "1,2,3"], ["--kernel"]),
        (["pool", "--input", "1x4x4", "--kernel", "2", "--padding", "2"], ["pool H", "padding 2", "half"]),
        (["pool", "--input", "1x4x4", "--kernel", "2,4", "--padding", "1,3"], ["pool W", "padding 3"]),
        (["pool", "--input", "1x2x2", "--kernel", "3"], ["pool H", "3", "2"]),
        (["pool", "--input", "1x4x4", "--kernel", "2", "--stride", "0"], ["stride", "0"]),
        (["pool", "--input", "1x4x4", "--kernel", "2", "--kind", "min"], ["--kind", "min"]),
        (["pool", "--input", "1x4x4", "--kernel", "2", "--kind", "avg", "--dilation", "2"], ["dilation"]),
        (["--model", "lenet", "--input", "3x8x8"], ["lenet", "8×8", "pool2", "pool H"]),
        (["--model", "bn_cnn", "--input", "1x28x7"], ["bn_cnn", "layer2.0", "conv W"]),
        (["--model", "lenet", "--input", "3x32"], ["--input"]),
        (["--model", "edge", "--input", "1x6x1"], ["conv W"]),
    ],
)
def test_impossible_layers_exit_2_with_one_line(args, words):
    line = fails("shapes", *args)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"


def test_shapes_unknown_model():
    line = fails("shapes", "--model", "resnet")
    assert "resnet" in line and "lenet" in line and "bn_cnn" in line


# ----------------------------------------------------------------------------------------- models


def test_models_json_lists_every_model_with_param_counts():
    rows = {row["name"]: row for row in ok_json("models")}
    assert {"lenet", "bn_cnn", "edge"} <= set(rows)
    assert rows["lenet"]["params"] == 81_302
    assert rows["edge"]["params"] == 2
    assert rows["bn_cnn"]["params"] > rows["lenet"]["params"]
    assert rows["edge"]["task"] == "edge" and rows["lenet"]["task"] == "classify"


def test_models_table():
    out = ok("models").stdout
    assert "lenet" in out and "81,302" in out and "bn_cnn" in out and "edge" in out


# ----------------------------------------------------------------------------------------- config


def test_config_show_with_set():
    out = ok("config", "show", "--config", str(CONFIGS / "edge.yaml"), "--set", "train.epochs=3").stdout
    assert "epochs: 3" in out
    assert "name: edge" in out
    assert "backend: torch" in out


def test_config_show_repeated_set_and_defaults():
    out = ok("config", "show", "--set", "train.epochs=4", "-s", "optim.lr=0.5").stdout
    assert "epochs: 4" in out and "lr: 0.5" in out and "name: lenet" in out


def test_config_show_output_reloads(tmp_path):
    out = ok("config", "show", "--config", str(CONFIGS / "edge.yaml")).stdout
    path = tmp_path / "edge.yaml"
    path.write_text(out, encoding="utf-8")
    assert ok("config", "show", "--config", str(path)).stdout == out


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("train:\n  epoch: 3\n", ["train.epoch", "did you mean 'epochs'"]),
        ("train:\n  epochs: 0\n", ["train.epochs"]),
        ("train:\n  epochs: [3\n", ["malformed YAML", "line"]),
        ("- a\n- b\n", ["mapping"]),
        ("model:\n  name: lenett\n", ["model.name", "lenet", "bn_cnn", "edge"]),
    ],
)
def test_config_show_bad_config_exit_2(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    line = fails("config", "show", "--config", str(path))
    assert str(path) in line
    for word in words:
        assert word in line
    # The shapes command reports the same error the same way.
    assert fails("shapes", "--config", str(path)) == line


def test_config_show_missing_file(tmp_path):
    line = fails("config", "show", "--config", str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in line and "not found" in line


@pytest.mark.parametrize(
    ("set_", "words"),
    [
        ("train.epochs", ["--set", "train.epochs", "section.key=value"]),
        ("train.epoch=3", ["--set train.epoch=3", "did you mean 'epochs'"]),
        ("train.epochs=0", ["--set train.epochs=0"]),
        ("train.batch_size=lots", ["--set train.batch_size=lots"]),
    ],
)
def test_config_show_bad_set_exit_2(set_, words):
    line = fails("config", "show", "--config", str(CONFIGS / "edge.yaml"), "--set", set_)
    for word in words:
        assert word in line


# ------------------------------------------------------------------------------------------- --help

HELP_PAGES = [[], ["models"], ["train"], ["eval"], ["predict"], ["runs"], ["plot"], ["export"], ["data"],
              ["config", "show"], ["shapes"], ["shapes", "conv"], ["shapes", "pool"]]


@pytest.mark.parametrize("page", HELP_PAGES, ids=lambda p: " ".join(p) or "cnnkit")
def test_help_shows_no_value_after_a_flag(page):
    """`--json <bool>` reads as if the flag took a value: flags show none; options that take one keep it."""
    out = ok(*page, "--help").stdout
    assert "<bool>" not in out, out
    lines = [line for line in out.splitlines() if "--help" in line]
    assert lines and all("<" not in line for line in lines)
    if page == ["eval"]:
        assert "<path>" in next(line for line in out.splitlines() if "--checkpoint" in line)
        tta = next(line for line in out.splitlines() if "--tta " in line)
        assert "<" not in tta
