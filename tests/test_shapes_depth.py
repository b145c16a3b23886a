"""`--depth` folding and the torchinfo-style columns (kernel shape, receptive field, jump)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cnnkit.cli import app
from cnnkit.errors import ShapeError
from cnnkit.models import build_model
from cnnkit.shapes import trace_model

runner = CliRunner()


def test_depth_folds_blocks_and_keeps_totals():
    full = trace_model(build_model("bn_cnn"), (3, 32, 32))
    folded = full.at_depth(1)
    assert [r.name for r in folded.layers] == ["layer1", "pool1", "layer2", "pool2", "flatten", "fc"]
    layer1 = folded.layers[0]
    assert layer1.type == "ConvBNReLU" and layer1.layers == 3
    assert layer1.input == (3, 32, 32) and layer1.output == (25, 30, 30)
    assert folded.params == full.params and folded.macs == full.macs
    assert folded.activation_bytes == full.activation_bytes
    assert folded.layers[-1].output == (10,) and folded.layers[-1].params == sum(
        r.params for r in full.layers if r.name.startswith("fc."))
    # Depth deeper than the model changes nothing.
    assert [r.name for r in full.at_depth(5).layers] == [r.name for r in full.layers]
    with pytest.raises(ShapeError):
        full.at_depth(0)


def test_kernel_shapes_and_receptive_field_columns():
    rows = {r.name: r for r in trace_model(build_model("lenet"), (3, 32, 32)).layers}
    assert rows["conv1"].kernel_shape == (6, 3, 3, 3)
    assert rows["pool1"].kernel_shape == (2, 2)
    assert rows["fc1"].kernel_shape == (120, 576)
    assert rows["conv2"].receptive_field == (8, 8) and rows["pool2"].jump == (4, 4)


def test_cli_depth_json():
    result = runner.invoke(app, ["shapes", "--model", "bn_cnn", "--depth", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [layer["name"] for layer in data["layers"]][:2] == ["layer1", "pool1"]
    assert data["layers"][1]["kernel_shape"] == [2, 2]
