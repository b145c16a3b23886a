"""The shape module: output-size arithmetic held equal to real torch layers, formulas, receptive
fields, and `trace_model`'s check against a real forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnkit.errors import ShapeError
from cnnkit.models import MODELS, build_model
from cnnkit.shapes import (
    conv2d_hw,
    conv_formula,
    conv_output_size,
    conv_row,
    parse_input_shape,
    parse_pair,
    pool2d_hw,
    pool_formula,
    pool_output_size,
    pool_row,
    to_pair,
    trace_model,
)

PROPERTY = settings(max_examples=200, deadline=None)
TORCH_REFUSES = (RuntimeError, ValueError)


# Tiny tensors: a torch thread pool only adds contention (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _torch_hw(layer: nn.Module, h: int, w: int, channels: int = 1):
    """(H, W) the real layer produces, or None if torch refuses the input."""
    try:
        with torch.no_grad():
            out = layer(torch.zeros(1, channels, h, w))
    except TORCH_REFUSES:
        return None
    return tuple(out.shape[-2:])


def _ours(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ShapeError:
        return None


# ------------------------------------------------------------------------------------- properties

size = st.integers(1, 20)
kernel = st.integers(1, 7)
stride = st.integers(1, 5)
padding = st.integers(0, 5)
dilation = st.integers(1, 4)


@PROPERTY
@given(size=size, k=kernel, s=stride, p=padding, d=dilation)
def test_conv_output_size_matches_nn_conv2d(size, k, s, p, d):
    ours = _ours(conv_output_size, size, k, s, p, d)
    # A 1-wide kernel on W keeps torch's W check out of the way; H is the dimension under test.
    layer = nn.Conv2d(1, 1, (k, 1), stride=(s, 1), padding=(p, 0), dilation=(d, 1))
    real = _torch_hw(layer, size, 1)
    assert ours == (None if real is None else real[0])


@PROPERTY
@given(h=size, w=size, k=st.tuples(kernel, kernel), s=st.tuples(stride, stride), p=st.tuples(padding, padding),
       d=st.tuples(dilation, dilation))
def test_conv2d_hw_rectangular_matches_nn_conv2d(h, w, k, s, p, d):
    ours = _ours(conv2d_hw, (h, w), k, s, p, d)
    real = _torch_hw(nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d), h, w)
    assert ours == real


@PROPERTY
@given(size=size, k=kernel, s=st.none() | stride, p=st.integers(0, 4), d=st.integers(1, 3), ceil=st.booleans())
def test_pool_output_size_matches_nn_maxpool2d(size, k, s, p, d, ceil):
    ours = _ours(pool_output_size, size, k, s, p, d, ceil)
    # A 1-wide kernel on W keeps torch's W check out of the way.
    layer = nn.MaxPool2d((k, 1), stride=None if s is None else (s, 1), padding=(p, 0), dilation=(d, 1),
                         ceil_mode=ceil)
    real = _torch_hw(layer, size, 1)
    assert ours == (None if real is None else real[0])


@PROPERTY
@given(size=size, k=kernel, s=st.none() | stride, p=st.integers(0, 4), ceil=st.booleans())
def test_pool_output_size_matches_nn_avgpool2d(size, k, s, p, ceil):
    ours = _ours(pool_output_size, size, k, s, p, 1, ceil)
    layer = nn.AvgPool2d((k, 1), stride=None if s is None else (s, 1), padding=(p, 0), ceil_mode=ceil)
    real = _torch_hw(layer, size, 1)
    assert ours == (None if real is None else real[0])


pool_pair = st.tuples(st.integers(1, 6), st.integers(1, 6))


@PROPERTY
@given(h=size, w=size, k=pool_pair, s=st.none() | st.tuples(stride, stride),
       p=st.tuples(st.integers(0, 3), st.integers(0, 3)), d=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       ceil=st.booleans())
def test_pool2d_hw_rectangular_matches_nn_maxpool2d(h, w, k, s, p, d, ceil):
    ours = _ours(pool2d_hw, (h, w), k, s, p, d, ceil)
    real = _torch_hw(nn.MaxPool2d(k, stride=s, padding=p, dilation=d, ceil_mode=ceil), h, w)
    assert ours == real


@PROPERTY
@given(h=size, w=size, k=pool_pair, s=st.none() | st.tuples(stride, stride),
       p=st.tuples(st.integers(0, 3), st.integers(0, 3)), ceil=st.booleans())
def test_pool2d_hw_rectangular_matches_nn_avgpool2d(h, w, k, s, p, ceil):
    ours = _ours(pool2d_hw, (h, w), k, s, p, 1, ceil)
    real = _torch_hw(nn.AvgPool2d(k, stride=s, padding=p, ceil_mode=ceil), h, w)
    assert ours == real


# ----------------------------------------------------------------------------- the seeds' examples


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"kernel": 3}, (3, 26, 26)),
        ({"kernel": 3, "padding": 1}, (3, 28, 28)),
        ({"kernel": 3, "stride": 2, "padding": 1}, (3, 14, 14)),
    ],
)
def test_seed_conv_examples_on_1x28x28(kwargs, expected):
    row = conv_row("conv", (1, 28, 28), 3, **kwargs)
    assert row.output == expected
    real = nn.Conv2d(1, 3, kwargs["kernel"], stride=kwargs.get("stride", 1), padding=kwargs.get("padding", 0))
    assert tuple(real(torch.zeros(1, 1, 28, 28)).shape[1:]) == expected


def test_seed_maxpool_2_on_3x14x14():
    assert pool_row("pool", (3, 14, 14), "max", 2, 2).output == (3, 7, 7)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"kernel": 3}, (1, 1)),
        ({"kernel": 3, "padding": 1, "stride": 2}, (2, 2)),
        ({"kernel": (2, 3), "padding": (1, 1), "stride": (2, 3)}, (3, 2)),
    ],
)
def test_seed_maxpool_examples_on_1x4x4(kwargs, expected):
    assert pool2d_hw((4, 4), **kwargs) == expected
    assert pool_row("pool", (1, 4, 4), "max", **kwargs).output == (1, *expected)
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    assert tuple(nn.MaxPool2d(**{("kernel_size" if k == "kernel" else k): v for k, v in kwargs.items()})(x)
                 .shape[-2:]) == expected


def test_seed_5x5_k3_s2_p1_gives_3x3():
    assert conv2d_hw((5, 5), 3, 2, 1) == (3, 3)
    assert conv_output_size(5, 3, 2, 1) == 3


def test_pool_stride_defaults_to_kernel():
    assert pool_output_size(8, 2) == 4
    assert pool2d_hw((9, 9), (3, 2)) == (3, 4)
    assert pool_row("p", (1, 9, 9), "max", (3, 2)).stride == (3, 2)


# ----------------------------------------------------------------------------------- formulas


def test_conv_formula_shows_the_numbers():
    assert conv_formula(32, 3, 1, 0, 1, 30) == "⌊(32 + 2·0 − 1·(3−1) − 1) / 1⌋ + 1 = 30"
    row = conv_row("conv1", (3, 32, 32), 6, 3)
    assert row.formulas == ["⌊(32 + 2·0 − 1·(3−1) − 1) / 1⌋ + 1 = 30"] * 2


def test_conv_row_formulas_per_dimension():
    row = conv_row("c", (1, 28, 20), 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    assert row.output == (4, 14, 16)
    assert row.formulas == [
        "⌊(28 + 2·1 − 1·(3−1) − 1) / 2⌋ + 1 = 14",
        "⌊(20 + 2·2 − 2·(5−1) − 1) / 1⌋ + 1 = 16",
    ]


def test_pool_formula_floor_ceil_and_ceil_correction():
    assert pool_formula(15, 2, 2, 0, 1, False, 7) == "⌊(15 + 2·0 − 1·(2−1) − 1) / 2⌋ + 1 = 7"
    assert pool_formula(15, 2, 2, 0, 1, True, 8) == "⌈(15 + 2·0 − 1·(2−1) − 1) / 2⌉ + 1 = 8"
    # Size 2, kernel 1, stride 2, ceil: ⌈1/2⌉ + 1 = 2, but the second window would start past the input.
    out = pool_output_size(2, 1, 2, 0, 1, True)
    assert out == 1 == nn.MaxPool2d(1, 2, ceil_mode=True)(torch.zeros(1, 1, 2, 2)).shape[-1]
    formula = pool_formula(2, 1, 2, 0, 1, True, out)
    assert formula.startswith("⌈(2 + 2·0 − 1·(1−1) − 1) / 2⌉ + 1 − 1")
    assert formula.endswith("= 1")


def test_row_params_and_macs():
    row = conv_row("c", (3, 32, 32), 6, 3)
    assert row.params == 6 * 3 * 9 + 6
    assert row.macs == 6 * 30 * 30 * 3 * 9
    assert conv_row("c", (3, 32, 32), 6, 3, bias=False).params == 6 * 3 * 9


# -------------------------------------------------------------------------------- errors, parsing


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: conv_output_size(4, 5), ["conv H", "5", "4"]),
        (lambda: conv_output_size(4, 3, dilation=2, dim="W"), ["conv W", "5"]),
        (lambda: conv_output_size(4, 0), ["kernel", "0"]),
        (lambda: conv_output_size(4, 3, stride=0), ["stride", "0"]),
        (lambda: conv_output_size(4, 3, padding=-1), ["padding", "-1"]),
        (lambda: conv_output_size(0, 1), ["input", "0"]),
        (lambda: pool_output_size(4, 2, padding=2), ["pool H", "padding 2", "half"]),
        (lambda: pool_output_size(2, 3), ["pool H", "3", "2"]),
        (lambda: pool_output_size(4, 2, stride=-1), ["stride", "-1"]),
        (lambda: conv2d_hw((28, 3), (3, 5)), ["conv W", "5", "3"]),
        (lambda: pool2d_hw((4, 4), (2, 3), padding=(1, 2)), ["pool W", "padding 2"]),
    ],
)
def test_impossible_layers_raise_one_line_shape_error(call, words):
    with pytest.raises(ShapeError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_parse_input_shape_and_pairs():
    assert parse_input_shape("3x32x32") == (3, 32, 32)
    assert parse_input_shape("1×28×28") == (1, 28, 28)
    assert parse_pair("3", "kernel") == (3, 3)
    assert parse_pair("2,3", "kernel") == (2, 3)
    assert to_pair([4]) == (4, 4)
    for bad in ("3x32", "3x32x32x1", "0x4x4", "ax4x4", "", "3x-4x4"):
        with pytest.raises(ShapeError, match="--input"):
            parse_input_shape(bad)
    for bad in ("a", "1,2,3", ""):
        with pytest.raises(ShapeError, match="--kernel"):
            parse_pair(bad, "kernel")


# ----------------------------------------------------------------------------------- trace_model


def _real_leaf_shapes(model: nn.Module, input_shape):
    """(name, input shape, output shape) of every leaf in execution order, from a plain forward."""
    seen, hooks = [], []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            hooks.append(module.register_forward_hook(
                lambda m, a, o, name=name: seen.append((name, tuple(a[0].shape[1:]), tuple(o.shape[1:])))))
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return seen, tuple(out.shape[1:])


def _model_inputs():
    for name, entry in MODELS.items():
        if entry.task == "edge":
            yield name, {"in_channels": 1}, (1, 6, 8)
            yield name, {"in_channels": 2, "backend": "scratch"}, (2, 5, 9)
        else:
            yield name, {}, (3, 32, 32)
            yield name, {"in_channels": 1, "input_size": (28, 28)}, (1, 28, 28)
            yield name, {"in_channels": 2, "input_size": (20, 27), "num_classes": 5}, (2, 20, 27)


@pytest.mark.parametrize(("name", "kwargs", "shape"), list(_model_inputs()))
def test_trace_model_equals_real_shapes(name, kwargs, shape):
    model = build_model(name, **kwargs)
    report = trace_model(model, shape)
    real, real_out = _real_leaf_shapes(model, shape)
    # Module rows against the real leaves; a residual add is a torch-function row (layer1.0.add()), no leaf.
    assert [(r.name, r.input, r.output) for r in report.layers if r.kind == "module"] == real
    assert report.input == shape
    assert report.output == real_out
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.to_dict()["totals"]["params"] == report.params


def test_trace_model_leaves_training_mode_alone():
    model = build_model("bn_cnn")
    model.train()
    trace_model(model, (3, 32, 32))
    assert model.training
    model.eval()
    trace_model(model, (3, 32, 32))
    assert not model.training


def test_bn_cnn_flatten_sizes():
    def flatten(report):
        return next(r for r in report.layers if r.type == "Flatten").output

    assert flatten(trace_model(build_model("bn_cnn"), (3, 32, 32))) == (1800,)
    small = build_model("bn_cnn", in_channels=1, input_size=(28, 28))
    assert flatten(trace_model(small, (1, 28, 28))) == (1250,)


def test_lenet_receptive_field_and_jump():
    rows = {r.name: r for r in trace_model(build_model("lenet"), (3, 32, 32)).layers}
    assert (rows["conv1"].receptive_field, rows["conv1"].jump) == ((3, 3), (1, 1))
    assert (rows["relu1"].receptive_field, rows["relu1"].jump) == ((3, 3), (1, 1))
    assert (rows["pool1"].receptive_field, rows["pool1"].jump) == ((4, 4), (2, 2))
    assert (rows["conv2"].receptive_field, rows["conv2"].jump) == ((8, 8), (2, 2))
    assert (rows["pool2"].receptive_field, rows["pool2"].jump) == ((10, 10), (4, 4))
    assert rows["fc3"].output == (10,)


def test_lenet_totals():
    report = trace_model(build_model("lenet"), (3, 32, 32))
    assert report.params == 81_302
    assert report.output == (10,)
    assert [r.output for r in report.layers if r.type == "Flatten"] == [(576,)]
    assert report.macs == sum(r.macs for r in report.layers) > 0
    assert report.activation_bytes == 4 * sum(torch.Size(r.output).numel() for r in report.layers)


def test_trace_model_too_small_input_names_the_layer():
    with pytest.raises(ShapeError) as info:
        trace_model(build_model("lenet"), (3, 6, 6))  # conv1 → 4×4, pool1 → 2×2, conv2 (k3) cannot apply
    message = str(info.value)
    assert message.startswith("conv2: conv H: kernel spans 3") and "\n" not in message
    with pytest.raises(ShapeError, match="conv"):
        trace_model(build_model("edge", in_channels=1), (1, 6, 1))


def test_trace_model_wrong_channel_count_is_shape_error():
    with pytest.raises(ShapeError):
        trace_model(build_model("lenet"), (1, 32, 32))


# Models whose data flow is not a plain chain of layers: every module row still equals torch, and what
# happens between modules (adds, concatenations, views, functional pooling) gets rows of its own.


class ResidualAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.conv1(x) + x)


class ResidualAtEnd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x) + x


class FlattenFunctionally(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(self.conv(x).view(x.shape[0], -1))


class ReshapeKeepingLastDim(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # (4, 6, 6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.conv(x).reshape(x.shape[0], 24, 6))


class ReshapeAfterLastLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.flatten(self.conv(x), 1)


class FunctionalPoolBetween(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.conv2(F.max_pool2d(self.conv1(x), 2))


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 2, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 3, padding=1)
        self.merge = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.merge(torch.cat([self.a(x), self.b(x)], dim=1))


class SameShapeBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.a(x) * self.b(x)


# The rows between modules each model must show: (name, type, sources, output), on a 3×8×8 input.
BETWEEN = {
    ResidualAdd: [("add()", "Tensor.add", ["conv1", "input"], (3, 8, 8))],
    ResidualAtEnd: [("add()", "Tensor.add", ["conv", "input"], (3, 8, 8))],
    FlattenFunctionally: [("view()", "Tensor.view", ["conv"], (144,))],
    ReshapeKeepingLastDim: [("reshape()", "Tensor.reshape", ["conv"], (24, 6))],
    ReshapeAfterLastLayer: [("flatten()", "torch.flatten", ["conv"], (144,))],
    FunctionalPoolBetween: [("max_pool2d()", "F.max_pool2d", ["conv1"], (4, 3, 3))],
    TwoBranches: [("cat()", "torch.cat", ["a", "b"], (4, 8, 8))],
    SameShapeBranches: [("mul()", "Tensor.mul", ["a", "b"], (3, 8, 8))],
}


@pytest.mark.parametrize("model_cls", list(BETWEEN), ids=lambda c: c.__name__)
def test_trace_model_shows_what_happens_between_modules(model_cls):
    model = model_cls()
    report = trace_model(model, (3, 8, 8))
    real, real_out = _real_leaf_shapes(model, (3, 8, 8))
    modules = [(r.name, r.input, r.output) for r in report.layers if r.kind == "module"]
    assert modules == real
    between = [(r.name, r.type, r.sources, r.output) for r in report.layers if r.kind == "function"]
    assert between == BETWEEN[model_cls]
    assert report.output == real_out
    # Only the pooling function has a formula; the others show torch's shape, marked as such.
    for row in report.layers:
        assert row.computed == (row.kind == "module" or row.type == "F.max_pool2d"), row
    assert report.params == sum(p.numel() for p in model.parameters())


def test_functional_pool_gets_its_formula_and_receptive_field():
    rows = {r.name: r for r in trace_model(FunctionalPoolBetween(), (3, 8, 8)).layers}
    pool = rows["max_pool2d()"]
    assert pool.formulas == ["⌊(6 + 2·0 − 1·(2−1) − 1) / 2⌋ + 1 = 3"] * 2
    assert (pool.kernel, pool.stride) == ((2, 2), (2, 2))
    assert (pool.receptive_field, pool.jump) == ((4, 4), (2, 2))  # conv1's 3 grown by the 2-wide window
    assert rows["conv2"].sources == ["max_pool2d()"]


def test_trace_model_accepts_a_plain_sequential_chain():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                          nn.AvgPool2d(2, ceil_mode=True), nn.Dropout(), nn.Identity(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3))
    report = trace_model(model, (3, 9, 9))
    assert [r.output for r in report.layers] == [(4, 9, 9), (4, 9, 9), (4, 9, 9), (4, 5, 5), (4, 5, 5),
                                                 (4, 5, 5), (100,), (3,)]
    assert report.params == sum(p.numel() for p in model.parameters())


def test_trace_model_leaf_without_a_rule_shows_torchs_shape():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.PixelShuffle(2))  # no shape rule for PixelShuffle
    rows = trace_model(model, (3, 8, 8)).layers
    assert [(r.name, r.type, r.output, r.computed) for r in rows] == [
        ("0", "Conv2d", (4, 6, 6), True), ("1", "PixelShuffle", (1, 12, 12), False)]


def test_trace_model_catches_a_wrong_shape_rule(monkeypatch):
    """Every computed row is checked against torch: a rule that is wrong is an error, never printed."""
    from cnnkit import shapes

    def off_by_one(name, m, shape, rf, jump):
        row = shapes._maxpool_rule(name, m, shape, rf, jump)
        row.output = (row.output[0], row.output[1] + 1, row.output[2])
        return row

    monkeypatch.setitem(shapes.SHAPE_RULES, nn.MaxPool2d, off_by_one)
    with pytest.raises(ShapeError, match=r"pool1 \(MaxPool2d\): the shape rule gives 6×30×30→6×16×15 but torch"):
        trace_model(build_model("lenet"), (3, 32, 32))
