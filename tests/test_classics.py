"""The classic CIFAR architectures: the published parameter counts and MACs, and the details that make
each one the paper's net (option A shortcuts, pre-activation order, Page's scaled head, WRN widths).

Counts and MACs are on the meta device (shapes only): building wrn28_10 there costs no memory."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cnnkit.errors import ConfigError, ShapeError
from cnnkit.models import MODELS, build_model, count_params
from cnnkit.models.resnet_cifar import ShortcutA
from cnnkit.shapes import trace_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# name: (exact count of the reference implementation, the published figure in millions, its rounding).
# resnet20..110: He et al. 2015 table 6 (0.27M ... 1.7M), akamaster/pytorch_resnet_cifar10 prints the exact
# counts; resnet18/preact/vgg: kuangliu/pytorch-cifar; resnet9: Page's cifar10-fast; wrn: the WRN paper
# (36.5M for WRN-28-10, 11.0M for WRN-16-8).
PARAMS = {
    "resnet20": (269_722, 0.27, 2), "resnet32": (464_154, 0.46, 2), "resnet44": (658_586, 0.66, 2),
    "resnet56": (853_018, 0.85, 2), "resnet110": (1_727_962, 1.7, 1),
    "resnet18": (11_173_962, 11.17, 2), "preact_resnet18": (11_171_146, 11.17, 2),
    "resnet9": (6_573_120, 6.57, 2), "vgg11_bn": (9_231_114, 9.23, 2), "vgg16_bn": (14_728_266, 14.73, 2),
    "wrn16_8": (10_961_370, 11.0, 1), "wrn28_10": (36_479_194, 36.5, 1),
}


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, **kwargs)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_is_the_published_one(name):
    exact, millions, digits = PARAMS[name]
    count = count_params(_meta(name))
    assert count == exact
    assert round(count / 1e6, digits) == millions


def _resnet_cifar_macs(n: int) -> int:
    """He et al.'s CIFAR net by hand: stem, then per stage 2n 3×3 convs (the first strided), then fc."""
    stem = 16 * 32 * 32 * 3 * 9
    stage1 = 2 * n * 16 * 32 * 32 * 16 * 9
    stage2 = 32 * 16 * 16 * 9 * (16 + (2 * n - 1) * 32)
    stage3 = 64 * 8 * 8 * 9 * (32 + (2 * n - 1) * 64)
    return stem + stage1 + stage2 + stage3 + 64 * 10


@pytest.mark.parametrize(("name", "n"), [("resnet20", 3), ("resnet32", 5), ("resnet44", 7), ("resnet56", 9),
                                         ("resnet110", 18)])
def test_cifar_resnet_macs_follow_the_6n_plus_2_layout(name, n):
    assert trace_model(_meta(name), (3, 32, 32)).macs == _resnet_cifar_macs(n)


# MACs per 3×32×32 image (multiply-adds of the convs and linears), and the figure usually quoted
# (the CIFAR ResNets' 40.55M / 125.49M / 252.89M "FLOPs" of the pruning literature are these MACs).
MACS = {
    "resnet20": (40_551_040, 40.55e6), "resnet56": (125_485_696, 125.49e6), "resnet110": (252_887_680, 252.89e6),
    "resnet18": (555_422_720, 556e6), "preact_resnet18": (555_422_720, 556e6),  # kuangliu's 0.56 G
    "resnet9": (379_261_952, 379e6),  # 1.8M for prep, then five convs of 75.5M each
    "vgg11_bn": (152_769_536, 153e6), "vgg16_bn": (313_201_664, 313e6),
    "wrn16_8": (1_548_145_664, 1.55e9), "wrn28_10": (5_243_328_768, 5.24e9),  # the WRN paper's 5.2 G
}


@pytest.mark.parametrize("name", sorted(MACS))
def test_macs_per_image(name):
    exact, quoted = MACS[name]
    macs = trace_model(_meta(name), (3, 32, 32)).macs
    assert macs == exact
    assert abs(macs - quoted) / quoted < 0.005


# ------------------------------------------------------------------------------------------- CIFAR ResNets


def test_option_a_shortcuts_have_no_parameters_and_zero_pad_the_subsampled_input():
    model = build_model("resnet20")
    shortcuts = [m for m in model.modules() if isinstance(m, ShortcutA)]
    assert len(shortcuts) == 2  # the first block of stages 2 and 3; every other shortcut is the identity
    assert all(sum(p.numel() for p in m.parameters()) == 0 for m in shortcuts)
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())
    x = torch.randn(2, 16, 9, 8)
    y = shortcuts[0](x)
    assert y.shape == (2, 32, 5, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_cifar_resnet_layout_is_6n_plus_2_layers_of_16_32_64_channels():
    model = _meta("resnet56")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 56
    assert sorted({m.out_channels for m in convs}) == [16, 32, 64]
    assert all(m.kernel_size == (3, 3) for m in convs)
    assert [m.stride for m in convs if m.stride != (1, 1)] == [(2, 2), (2, 2)]
    rows = {r.name: r for r in trace_model(model, (3, 32, 32)).layers}
    assert rows["layer2.0.shortcut"].type == "ShortcutA" and rows["layer2.0.shortcut"].output == (32, 16, 16)
    assert rows["layer3.8.add()"].sources == ["layer3.8.bn2", "layer3.7.relu2"]  # the identity


def test_cifar_resnet_uses_he_init():
    """fan-out He init: std √(2 / (9·64)) ≈ 0.059 for a 64→64 3×3 conv (torch's default would be ≈ 0.024)."""
    torch.manual_seed(0)
    weight = build_model("resnet56").layer3[4].conv1.weight
    assert abs(weight.std().item() - (2 / (9 * 64)) ** 0.5) < 0.003


# -------------------------------------------------------------------------------- ResNet-18 and PreAct


def _rows(name: str):
    return {r.name: r for r in trace_model(_meta(name), (3, 32, 32)).layers}


def test_resnet18_option_b_shortcuts_are_a_strided_1x1_conv_and_bn():
    model = _meta("resnet18")
    shortcuts = [m.shortcut for m in model.modules() if getattr(m, "shortcut", None) is not None]
    assert len(shortcuts) == 3
    for s, channels in zip(shortcuts, (128, 256, 512), strict=True):
        conv, bn = s
        assert (conv.kernel_size, conv.stride, conv.out_channels) == ((1, 1), (2, 2), channels)
        assert isinstance(bn, nn.BatchNorm2d)
    rows = _rows("resnet18")
    # Post-activation: conv → BN → add → ReLU, and the CIFAR stem keeps 32×32 (no max-pool).
    assert rows["layer2.0.add()"].sources == ["layer2.0.bn2", "layer2.0.shortcut.1"]
    assert rows["layer2.0.relu2"].sources == ["layer2.0.add()"]
    assert rows["conv1"].output == (64, 32, 32) and rows["layer1.1.relu2"].output == (64, 32, 32)
    assert rows["layer4.1.relu2"].output == (512, 4, 4)
    assert not any(r.type == "MaxPool2d" for r in rows.values())


@pytest.mark.parametrize("name", ["preact_resnet18", "wrn16_8"])
def test_preactivation_order_is_bn_relu_then_conv(name):
    """Every conv in a block takes a ReLU of a BN; each block ends on a bare conv + shortcut, and the
    next block's BN takes that sum as it is (no ReLU on the identity path)."""
    rows = _rows(name)
    blocks = sorted({n.rsplit(".", 1)[0] for n in rows if n.startswith("layer") and n.count(".") == 2})
    assert len(blocks) == (8 if name == "preact_resnet18" else 6)
    for block in blocks:
        assert rows[f"{block}.relu1"].sources == [f"{block}.bn1"]
        assert rows[f"{block}.conv1"].sources == [f"{block}.relu1"]
        assert rows[f"{block}.relu2"].sources == [f"{block}.bn2"]
        assert rows[f"{block}.conv2"].sources == [f"{block}.relu2"]
        add = rows[f"{block}.add()"]
        assert add.sources[0] == f"{block}.conv2"
        if f"{block}.shortcut" in rows:  # a projection of the pre-activated input, not of x
            assert rows[f"{block}.shortcut"].sources == [f"{block}.relu1"]
            assert add.sources[1] == f"{block}.shortcut"
        else:
            assert rows[f"{block}.bn1"].sources == add.sources[1:]  # x itself
    if name == "preact_resnet18":  # kuangliu's: a bare conv stem, and no BN-ReLU before the pool
        assert rows["layer1.0.bn1"].sources == ["conv1"] and rows["pool"].sources == ["layer4.1.add()"]
    else:  # the WRN paper's final BN-ReLU
        assert rows["bn"].sources == ["layer3.1.add()"] and rows["pool"].sources == ["relu"]


# --------------------------------------------------------------------------------------------- ResNet-9


def test_resnet9_is_pages_layout_with_a_scaled_head():
    rows = _rows("resnet9")
    assert [(n, r.output) for n, r in rows.items() if r.type in ("Conv2d", "MaxPool2d", "AdaptiveMaxPool2d")] == [
        ("prep.0", (64, 32, 32)),
        ("layer1.conv.0", (128, 32, 32)), ("layer1.pool", (128, 16, 16)),
        ("layer1.residual.res1.0", (128, 16, 16)), ("layer1.residual.res2.0", (128, 16, 16)),
        ("layer2.conv.0", (256, 16, 16)), ("layer2.pool", (256, 8, 8)),
        ("layer3.conv.0", (512, 8, 8)), ("layer3.pool", (512, 4, 4)),
        ("layer3.residual.res1.0", (512, 4, 4)), ("layer3.residual.res2.0", (512, 4, 4)),
        ("pool", (512, 1, 1)),
    ]
    assert rows["layer1.residual.add()"].sources == ["layer1.pool", "layer1.residual.res2.2"]
    model = build_model("resnet9").eval()
    assert model.fc.bias is None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.layer3(model.layer2(model.layer1(model.prep(x))))
        # The adaptive pool is Page's MaxPool2d(4) at 32×32, and the logits are the head's × 0.125.
        torch.testing.assert_close(model.pool(features), nn.MaxPool2d(4)(features))
        torch.testing.assert_close(model(x), 0.125 * model.fc(features.amax(dim=(2, 3))))


def test_resnet9_too_small_input_names_the_layer():
    with pytest.raises(ShapeError, match="resnet9 on 4×4 input: layer3.pool gets 1×1"):
        build_model("resnet9", input_size=(4, 4))


# ------------------------------------------------------------------------------------------------- VGG


@pytest.mark.parametrize(("name", "convs"), [("vgg11_bn", 8), ("vgg16_bn", 13)])
def test_vgg_has_its_weight_layers_each_conv_with_bn_and_a_512_head(name, convs):
    model = _meta(name)
    layers = list(model.features)
    assert sum(isinstance(m, nn.Conv2d) for m in layers) == convs  # + the linear: 11 or 16 weight layers
    assert sum(isinstance(m, nn.MaxPool2d) for m in layers) == 5
    for i, m in enumerate(layers):
        if isinstance(m, nn.Conv2d):
            assert m.kernel_size == (3, 3) and isinstance(layers[i + 1], nn.BatchNorm2d)
    assert model.fc.in_features == 512


@pytest.mark.parametrize(("shape", "last"), [((3, 32, 32), (512, 1, 1)), ((1, 28, 28), (512, 1, 1)),
                                             ((2, 20, 27), (512, 1, 1)), ((3, 64, 64), (512, 2, 2))])
def test_vgg_pools_round_up_so_odd_sizes_reach_the_head(shape, last):
    rows = trace_model(_meta("vgg11_bn", in_channels=shape[0], input_size=shape[1:]), shape).layers
    assert next(r for r in rows if r.name == "pool").input == last
    assert rows[-1].output == (10,)


# ------------------------------------------------------------------------------------------- Wide ResNet


@pytest.mark.parametrize(("name", "depth", "k"), [("wrn16_8", 16, 8), ("wrn28_10", 28, 10)])
def test_wrn_widths_and_depth(name, depth, k):
    model = _meta(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 6 * (depth - 4) // 6  # the stem, then 3 groups of (d − 4)/6 blocks of two 3×3 convs
    assert sorted({m.out_channels for m in convs}) == [16, 16 * k, 32 * k, 64 * k]
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())  # dropout 0: no layer at all


def test_wrn_kwargs_change_the_net_and_are_checked():
    model = _meta("wrn16_8", depth=22, widen_factor=2, dropout=0.3)
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules()) == 9  # one per block
    assert model.fc.in_features == 128
    with pytest.raises(ConfigError, match=r"model.kwargs.depth: need 6n \+ 4 .* got 20"):
        build_model("wrn16_8", depth=20)
    with pytest.raises(ConfigError, match=r"model.kwargs.dropout: .* got 1"):
        build_model("wrn28_10", dropout=1)
    with pytest.raises(ConfigError, match="model.kwargs.widen_factor"):
        build_model("wrn16_8", widen_factor=2.5)


def test_cnnkit_models_lists_the_classics_with_their_kwargs():
    from typer.testing import CliRunner

    from cnnkit.cli import app

    rows = {row["name"]: row for row in json.loads(CliRunner().invoke(app, ["models", "--json"]).stdout)}
    assert set(PARAMS) <= set(rows) and set(PARAMS) <= set(MODELS)
    assert rows["wrn16_8"]["kwargs"] == {"depth": {"default": "16", "takes": "an integer"},
                                         "widen_factor": {"default": "8", "takes": "an integer"},
                                         "dropout": {"default": "0.0", "takes": "a number"}}
    assert rows["wrn28_10"]["kwargs"]["depth"]["default"] == "28"
    assert rows["resnet9"]["kwargs"] == {"scale": {"default": "0.125", "takes": "a number"}}
    assert rows["resnet20"]["kwargs"] == rows["resnet18"]["kwargs"] == rows["vgg16_bn"]["kwargs"] == {}
    for name, (exact, _, _) in PARAMS.items():
        assert rows[name]["params"] == exact
