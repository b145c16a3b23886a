"""The model registry: every model builds for the sizes it accepts and trains (forward + backward)."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from cnnkit.errors import ConfigError, ShapeError
from cnnkit.models import MODELS, Corr2d, build_model, count_params
from cnnkit.ops import corr2d
from cnnkit.shapes import trace_model

# Tiny tensors: a torch thread pool only adds contention (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _expected_output(task: str, batch: int, channels: int, hw: tuple[int, int], num_classes: int):
    if task == "classify":
        return (batch, num_classes)
    if task == "edge":  # one 1×2 kernel: one column fewer
        return (batch, 1, hw[0], hw[1] - 1)
    raise AssertionError(f"no expected output shape for task {task!r}: extend this test")


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("channels", "hw", "num_classes"), [(3, (32, 32), 10), (1, (28, 28), 7), (2, (20, 27), 3)])
def test_every_model_builds_runs_forward_and_backward(name, channels, hw, num_classes):
    entry = MODELS[name]
    accepted = inspect.signature(entry.build).parameters
    assert "in_channels" in accepted, f"{name} must take in_channels"
    model = build_model(name, in_channels=channels, num_classes=num_classes, input_size=hw)
    model.train()
    torch.manual_seed(0)
    x = torch.randn(4, channels, *hw)
    out = model(x)
    assert tuple(out.shape) == _expected_output(entry.task, 4, channels, hw, num_classes)
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    for pname, p in model.named_parameters():
        if not p.requires_grad:  # frozen by design (e.g. fast's whitening filters): never stepped
            assert p.grad is None, f"{name}.{pname} is frozen but got a gradient"
            continue
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    # The shape tracer agrees with the real output for the same sizes.
    assert trace_model(model, (channels, *hw)).output == tuple(out.shape[1:])


def test_registry_entries_are_described():
    assert {"lenet", "bn_cnn", "edge", "fast"} <= set(MODELS)
    for entry in MODELS.values():
        assert entry.task in ("classify", "edge")
        assert entry.summary


def test_lenet_layout_and_param_count():
    model = build_model("lenet")
    assert count_params(model) == 81_302
    assert [m.in_features for m in model.modules() if isinstance(m, nn.Linear)] == [576, 120, 84]
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [6, 16]


def test_bn_cnn_flatten_size_is_computed():
    assert build_model("bn_cnn").fc[0].in_features == 50 * 6 * 6 == 1800
    assert build_model("bn_cnn", in_channels=1, input_size=(28, 28)).fc[0].in_features == 50 * 5 * 5 == 1250
    assert sum(isinstance(m, nn.BatchNorm2d) for m in build_model("bn_cnn").modules()) == 2


def test_edge_model_has_one_bias_free_1x2_kernel():
    for backend in ("torch", "scratch"):
        model = build_model("edge", in_channels=1, backend=backend)
        assert [tuple(p.shape) for p in model.parameters()] == [(1, 1, 1, 2)]
        assert model.kernel.shape == (1, 2)


def _stripes() -> torch.Tensor:
    x = torch.ones(6, 8)
    x[:, 2:6] = 0
    return x


def test_edge_backends_agree_when_weights_are_copied():
    torch.manual_seed(0)
    reference = build_model("edge", in_channels=3, backend="torch")
    scratch = build_model("edge", in_channels=3, backend="scratch")
    assert isinstance(scratch.conv, Corr2d)
    scratch.load_state_dict(reference.state_dict())
    x = torch.randn(5, 3, 7, 9)
    torch.testing.assert_close(scratch(x), reference(x))
    # Gradients agree as well, so training on either backend is the same.
    reference(x).pow(2).sum().backward()
    scratch(x).pow(2).sum().backward()
    torch.testing.assert_close(scratch.conv.weight.grad, reference.conv.weight.grad)


@pytest.mark.parametrize("backend", ["torch", "scratch"])
def test_edge_model_with_the_seed_kernel_finds_the_stripes_edges(backend):
    model = build_model("edge", in_channels=1, backend=backend)
    with torch.no_grad():
        model.conv.weight.copy_(torch.tensor([[[[1.0, -1.0]]]]))
    x = _stripes()
    y = model(x[None, None])[0, 0]
    assert torch.equal(y, corr2d(x, torch.tensor([[1.0, -1.0]])))
    assert y[:, 1].tolist() == [1.0] * 6 and y[:, 5].tolist() == [-1.0] * 6
    assert y.abs().sum() == 12


def test_edge_scratch_backend_traces_as_corr2d():
    report = trace_model(build_model("edge", in_channels=1, backend="scratch"), (1, 6, 8))
    assert [(r.type, r.output, r.params) for r in report.layers] == [("Corr2d", (1, 6, 7), 2)]


@pytest.mark.parametrize(
    ("name", "kwargs", "words"),
    [
        ("lenet", {"input_size": (4, 4)}, ["lenet", "4×4", "conv2", "conv H"]),
        ("lenet", {"input_size": (32, 5)}, ["lenet", "conv2", "conv W"]),
        ("lenet", {"input_size": (8, 8)}, ["lenet", "pool2", "pool H"]),
        ("bn_cnn", {"input_size": (8, 8)}, ["bn_cnn", "pool2"]),
        ("bn_cnn", {"in_channels": 1, "input_size": (7, 28)}, ["bn_cnn", "layer2.0", "conv H"]),
        ("bn_cnn", {"input_size": (2, 32)}, ["bn_cnn", "layer1.0", "conv H"]),
    ],
)
def test_input_too_small_is_shape_error_naming_the_layer(name, kwargs, words):
    with pytest.raises(ShapeError) as info:
        build_model(name, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_edge_input_too_small_is_shape_error():
    with pytest.raises(ShapeError, match="conv W"):
        trace_model(build_model("edge", in_channels=1), (1, 6, 1))


@pytest.mark.parametrize(
    ("name", "kwargs", "words"),
    [
        ("lenet", {"dropout": 0.5}, ["model.kwargs", "dropout", "lenet"]),
        ("bn_cnn", {"width": 2, "depth": 3}, ["depth", "width"]),
        ("edge", {"backend": "cuda-magic"}, ["backend", "cuda-magic", "torch", "scratch"]),
        ("edge", {"colour": True}, ["colour", "backend"]),
        ("resnet50", {}, ["model.name", "resnet50", "lenet", "bn_cnn", "edge"]),
    ],
)
def test_bad_model_arguments_are_config_errors(name, kwargs, words):
    with pytest.raises(ConfigError) as info:
        build_model(name, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_size_arguments_are_passed_only_where_accepted():
    # The edge model takes no num_classes / input_size; build_model must not pass them on.
    model = build_model("edge", in_channels=2, num_classes=99, input_size=(3, 3))
    assert model.conv.in_channels == 2


# ------------------------------------------------------------------------------------- model.kwargs checked

# The bad settings: wrong length, wrong type, text for a number. For a model that has the key
# it is a type error; for one that has not, an unknown key. Either way one line, exit 2.
BAD_SETTINGS = ["widths=[32,64]", "widths=abc", "bn_momentum=abc", "backend=3", "whiten_kernel=2.5",
                "widths=[true,64,64]"]


def _one_error_line(result) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("setting", BAD_SETTINGS)
@pytest.mark.parametrize("command", ["config", "shapes"])
def test_a_bad_model_setting_is_one_line_for_every_model(name, setting, command):
    from typer.testing import CliRunner

    from cnnkit.cli import _state, app
    from cnnkit.models import model_settings

    _state["debug"] = False
    key, _, raw = setting.partition("=")
    args = (["config", "show", "--set", f"model.name={name}"] if command == "config" else ["shapes", "--model", name])
    line = _one_error_line(CliRunner().invoke(app, [*args, "--set", f"model.kwargs.{setting}"]))
    assert f"--set model.kwargs.{setting}" in line  # names where the value came from
    if key in model_settings(name):
        assert f"model.kwargs.{key}:" in line and "takes" in line and "got" in line, line
    else:
        assert "not accepted" in line and key in line and name in line, line


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_setting_has_an_annotation_and_rejects_a_wrong_type(name):
    """Each kwarg of each registered model is checkable: annotated, and a value of no type it takes is refused."""
    from typing import Any

    from cnnkit.models import check_kwargs, model_settings

    for key, (annotation, default) in model_settings(name).items():
        assert annotation is not Any, f"{name}: model.kwargs.{key} has no annotation, so it cannot be checked"
        check_kwargs(name, {key: list(default) if isinstance(default, tuple) else default})  # the default fits
        with pytest.raises(ConfigError) as info:
            build_model(name, **{key: {"not": "a setting"}})
        message = str(info.value)
        assert "\n" not in message and f"model.kwargs.{key}" in message and "{'not': 'a setting'}" in message


@pytest.mark.parametrize(("setting", "words"), [
    ("widths=[0,64,64]", ["model.kwargs.widths", "positive", "[0, 64, 64]"]),
    ("bn_momentum=3", ["model.kwargs.bn_momentum", "[0, 1]", "got 3"]),
    ("whiten_kernel=0", ["model.kwargs.whiten_kernel", "got 0"]),
])
def test_a_setting_out_of_range_is_one_line(setting, words):
    """The constructor's own ValueError becomes a ConfigError naming the key (cnnkit shapes builds the model)."""
    from typer.testing import CliRunner

    from cnnkit.cli import _state, app

    _state["debug"] = False
    line = _one_error_line(CliRunner().invoke(app, ["shapes", "--model", "fast", "--set", f"model.kwargs.{setting}"]))
    for word in words:
        assert word in line, line


def test_train_with_a_bad_model_setting_is_one_line_before_any_data(tmp_path):
    """The issue's command: fast.yaml with two widths. The config is refused before data is looked for
    (no data root exists here, and the download URL is a closed port)."""
    from pathlib import Path

    from typer.testing import CliRunner

    from cnnkit.cli import _state, app

    _state["debug"] = False
    config = Path(__file__).resolve().parents[1] / "configs" / "fast.yaml"
    line = _one_error_line(CliRunner().invoke(app, [
        "train", "--config", str(config), "--data-root", str(tmp_path / "nothing"),
        "--set", "model.kwargs.widths=[32,64]"]))
    assert line == ("error: --set model.kwargs.widths=[32,64]: model.kwargs.widths: got [32, 64]; model 'fast' "
                    "takes a list of 3 integers there (default [64, 256, 256])")


@pytest.mark.parametrize(("setting", "words"), [
    ("model.kwargs.widths=[0,64,64]", ["model.kwargs.widths: need three positive", "[0, 64, 64]"]),
    ("model.input_size=[4,4]", ["fast on 4×4 input: group2.pool gets 1×1"]),
])
def test_train_with_a_model_that_cannot_be_built_fails_before_any_data(tmp_path, setting, words):
    """Range errors are the constructor's (not the annotation check's): the model is built on the meta
    device before the data is looked for, so the error is about the model, not a missing data root."""
    from pathlib import Path

    from typer.testing import CliRunner

    from cnnkit.cli import _state, app

    _state["debug"] = False
    config = Path(__file__).resolve().parents[1] / "configs" / "fast.yaml"
    line = _one_error_line(CliRunner().invoke(app, [
        "train", "--config", str(config), "--data-root", str(tmp_path / "nothing"), "--set", setting]))
    for word in words:
        assert word in line, line
    assert not (tmp_path / "nothing").exists()


def test_cnnkit_models_lists_each_setting_with_its_default_and_type():
    import json

    from typer.testing import CliRunner

    from cnnkit.cli import app

    rows = {row["name"]: row for row in json.loads(CliRunner().invoke(app, ["models", "--json"]).stdout)}
    assert rows["fast"]["kwargs"]["widths"] == {"default": "[64, 256, 256]", "takes": "a list of 3 integers"}
    assert rows["edge"]["kwargs"]["backend"] == {"default": "'torch'", "takes": "one of 'torch', 'scratch'"}
    assert rows["lenet"]["kwargs"] == {}
