"""cnnkit.models.stems: torchvision and timm ImageNet classifiers adapted to 32×32 input.

Each family's small member is built on the CPU without weights; after adapt_stem a 1×3×32×32
forward gives (1, 10), the map entering the head grows to the expected size (forward hooks), and
cnnkit.shapes.trace_model's MACs move from the ImageNet stem's figure to the CIFAR stem's
(the numbers docs/stems.md quotes, from scripts/stem_macs.py). Models too big to build quickly
are built on the meta device.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.models.stems import STEM_FAMILIES, STEM_RULES, adapt_stem, family_of, set_in_channels
from cnnkit.shapes import trace_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NUM_CLASSES = 10


def build(name: str, device: str = "cpu") -> nn.Module:
    """'torchvision:resnet18' / 'timm:resnet18', without weights, 10 classes."""
    source, _, model = name.partition(":")
    torch.manual_seed(0)
    with torch.device(device):
        if source == "timm":
            timm = pytest.importorskip("timm")
            return timm.create_model(model, pretrained=False, num_classes=NUM_CLASSES)
        return torchvision.models.get_model(model, weights=None, num_classes=NUM_CLASSES)


def head_hw(model: nn.Module, where: str, device: str = "cpu") -> tuple[int, int]:
    """(H, W) of the output of `where` (the last feature map before global pooling) on a 32×32 image."""
    seen = []
    handle = model.get_submodule(where).register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 3, 32, 32, device=device))
    finally:
        handle.remove()
    assert tuple(out.shape) == (1, NUM_CLASSES)
    return tuple(seen[-1][-2:])


# model.name, the module whose output enters the head, its H=W after the CIFAR stem, MACs (millions)
# on one 32×32 image before and after. Before the stem change every head sees 1×1.
CASES = [
    ("torchvision:resnet18", "layer4", 4, 37.0, 555.4),
    ("torchvision:regnet_x_400mf", "trunk_output", 2, 8.4, 33.8),
    ("torchvision:mobilenet_v2", "features", 4, 6.1, 88.0),
    ("torchvision:mobilenet_v3_small", "features", 4, 2.2, 17.5),
    ("torchvision:efficientnet_b0", "features", 4, 8.5, 116.2),
    ("torchvision:densenet121", "features", 4, 57.8, 888.4),
    ("torchvision:shufflenet_v2_x0_5", "conv5", 4, 0.82, 10.9),
    ("torchvision:mnasnet0_5", "layers", 4, 2.1, 31.0),
    ("timm:resnet18", "layer4", 4, 37.0, 555.4),
    ("timm:resnet26d", "layer4", 4, 52.7, 754.8),
    ("timm:efficientnet_b0", "bn2", 4, 8.5, 116.2),
    ("timm:mobilenetv3_small_100", "blocks", 4, 2.2, 17.5),
    ("timm:regnetx_002", "s4", 2, 4.1, 16.2),
    ("timm:convnext_atto", "stages", 4, 11.2, 177.8),
]


@pytest.mark.parametrize("name,where,hw,macs_before,macs_after", CASES, ids=[c[0] for c in CASES])
def test_adapt_stem_grows_the_head_map_and_the_macs(name, where, hw, macs_before, macs_after):
    model = build(name)
    assert head_hw(model, where) == (1, 1)
    assert trace_model(model, (3, 32, 32)).macs / 1e6 == pytest.approx(macs_before, rel=0.05)
    assert adapt_stem(model, name) is model
    assert head_hw(model, where) == (hw, hw)
    assert trace_model(model, (3, 32, 32)).macs / 1e6 == pytest.approx(macs_after, rel=0.05)


def test_torchvision_resnet_stem_is_the_cifar_stem():
    model = adapt_stem(build("torchvision:resnet18", "meta"), "torchvision:resnet18")
    conv = model.conv1
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == \
        (3, 64, (3, 3), (1, 1), (1, 1))
    assert conv.bias is None and isinstance(model.maxpool, nn.Identity)


def test_timm_deep_stem_loses_only_its_first_stride():
    model = adapt_stem(build("timm:resnet26d", "meta"), "timm:resnet26d")
    convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.padding) for c in convs] == [((3, 3), (1, 1), (1, 1))] * 3
    assert isinstance(model.maxpool, nn.Identity)


def test_mobile_nets_lose_the_stem_stride_and_the_first_strided_block_only():
    """32 → 8: of the five stride-2 convs, the stem's and the first block's go, three stay."""
    for name in ("torchvision:mobilenet_v2", "torchvision:mobilenet_v3_large", "timm:efficientnet_b0"):
        model = build(name, "meta")
        strided = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
        adapt_stem(model, name)
        left = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
        assert len(strided) == 5 and left == strided[2:], name


def test_tf_same_padding_convs_keep_padding_themselves():
    """timm's tf_* ports pad in forward() from the stride (Conv2dSame): only the stride changes.
    (trace_model cannot count their MACs yet: its conv rule takes their static padding of 0.)"""
    model = build("timm:tf_efficientnet_b0")
    adapt_stem(model, "timm:tf_efficientnet_b0")
    assert model.conv_stem.padding == (0, 0) and model.conv_stem.stride == (1, 1)
    assert head_hw(model, "bn2") == (4, 4)


def test_big_models_on_meta():
    """torchvision ConvNeXt (4×4/4 patchify → 3×3/1) and VGG (no change), shapes only."""
    convnext = adapt_stem(build("torchvision:convnext_tiny", "meta"), "torchvision:convnext_tiny")
    stem = convnext.features[0][0]
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    assert head_hw(convnext, "features", "meta") == (4, 4)
    vgg = build("torchvision:vgg11_bn", "meta")
    before = [(n, type(m), getattr(m, "stride", None)) for n, m in vgg.named_modules()]
    adapt_stem(vgg, "torchvision:vgg11_bn")
    assert [(n, type(m), getattr(m, "stride", None)) for n, m in vgg.named_modules()] == before
    assert head_hw(vgg, "features", "meta") == (1, 1)


def test_a_subclass_finds_its_family_through_the_mro():
    class MyResNet(torchvision.models.ResNet):
        pass

    with torch.device("meta"):
        model = MyResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=NUM_CLASSES)
    assert family_of(model).name == "torchvision ResNet"
    assert isinstance(adapt_stem(model, "mine").maxpool, nn.Identity)


def test_unsupported_class_is_one_config_error_line():
    model = build("torchvision:vit_b_16", "meta")
    with pytest.raises(ConfigError) as error:
        adapt_stem(model, "torchvision:vit_b_16")
    text = str(error.value)
    assert "\n" not in text
    assert text.startswith("model.cifar_stem: no 32×32 stem rule for torchvision:vit_b_16 "
                           "(a torchvision.models.vision_transformer.VisionTransformer); cnnkit adapts: ")
    assert all(family.name in text for family in STEM_FAMILIES)
    assert text.endswith("; set model.cifar_stem=false, or name a model of those families")


def test_the_registry_is_the_table():
    assert set(STEM_RULES) == {cls for family in STEM_FAMILIES for cls in family.classes}
    assert len(STEM_RULES) == sum(len(family.classes) for family in STEM_FAMILIES)  # no class twice
    assert all(family.change and family.models and family.examples for family in STEM_FAMILIES)


def test_set_in_channels_gives_the_first_conv_one_channel():
    model = build("torchvision:resnet18")
    original = copy.deepcopy(model).eval()
    shapes = {name: p.shape for name, p in model.named_parameters()}
    assert set_in_channels(model, 1, "torchvision:resnet18") is model
    assert model.conv1.weight.shape == (64, 1, 7, 7) and model.conv1.in_channels == 1
    assert {name: p.shape for name, p in model.named_parameters() if name != "conv1.weight"} == \
        {name: s for name, s in shapes.items() if name != "conv1.weight"}
    gray = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        out = model.eval()(gray)
        # The 1-channel weight is the sum of the RGB ones: gray in equals gray repeated in R, G and B.
        torch.testing.assert_close(out, original(gray.expand(1, 3, 32, 32)), rtol=1e-4, atol=1e-4)
    assert out.shape == (1, NUM_CLASSES)
    # adapt_stem after it keeps the one channel
    assert adapt_stem(model, "torchvision:resnet18").conv1.weight.shape == (64, 1, 3, 3)


def test_set_in_channels_replaces_a_nested_conv():
    model = set_in_channels(build("torchvision:mobilenet_v2", "meta"), 1, "torchvision:mobilenet_v2")
    conv = model.features[0][0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (1, 32, (3, 3), (2, 2))
    model = set_in_channels(build("torchvision:resnet18", "meta"), 4, "torchvision:resnet18")
    assert model.conv1.weight.shape == (64, 4, 7, 7)


def test_set_in_channels_without_a_conv_is_one_config_error_line():
    with pytest.raises(ConfigError, match=r"^model\.in_channels: mlp \(a torch\.nn\.modules\.container\."
                                          r"Sequential\) has no nn\.Conv2d to give 1 input channels; [^\n]*$"):
        set_in_channels(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), 1, "mlp")


def test_adapting_twice_changes_nothing_more():
    """A mobile net's second call must not take the next stride-2 block's stride too."""
    model = adapt_stem(build("torchvision:mobilenet_v2", "meta"), "torchvision:mobilenet_v2")
    strides = [m.stride for m in model.modules() if isinstance(m, nn.Conv2d)]
    adapt_stem(model, "torchvision:mobilenet_v2")
    assert [m.stride for m in model.modules() if isinstance(m, nn.Conv2d)] == strides
