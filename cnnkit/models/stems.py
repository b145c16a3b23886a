"""32×32 stems for torchvision and timm ImageNet classifiers (`model.cifar_stem: true`).

An ImageNet classifier downsamples its input 32×: its stem (a 7×7 stride-2 conv and a 3×3
stride-2 max-pool in a ResNet, a 3×3 stride-2 conv in the mobile nets) is built for 224×224 and
throws away most of a 32×32 image before the first block sees it. torchvision's resnet18 does ~37M
MACs on a 32×32 image and its last stage runs on 1×1 maps; with the CIFAR stem (3×3 stride-1 conv,
no max-pool, as in kuangliu/pytorch-cifar) it does ~556M and ends on 4×4 maps. Neither library
adapts it: timm's maintainer says timm has no CIFAR-specific models and the stem is the user's to
change (huggingface/pytorch-image-models#1314), and an unadapted ImageNet ResNet loses ~15 points
of CIFAR accuracy (weiaicunzai/pytorch-cifar100#29). So every user writes the same two lines;
`adapt_stem` writes them once, per family:

* ResNet-style stems (conv + max-pool): each strided stem conv becomes a 3×3 stride-1 conv
  (padding 1, same channels and bias; a 3×3 conv keeps its weights and only loses its stride),
  and the max-pool becomes nn.Identity. Total downsampling 32 → 8: 4×4 maps at the head.
* mobile nets (MobileNetV2/V3, EfficientNet, MNASNet): the stem conv's stride 2 → 1 and the first
  stride-2 block's stride 2 → 1 (kuangliu's CIFAR MobileNetV2). Also 32 → 8.
* RegNet: the stem conv's stride 2 → 1 (32 → 16; 2×2 maps at the head).
* VGG needs nothing: five max-pools take 32×32 to 1×1, and AdaptiveAvgPool2d(7) repeats that
  pixel 49 times for the classifier. Its rule is a no-op, listed so the choice is on record.

A conv whose stride changes gets the padding that keeps its output the size of its input
(dilation·(k−1)/2), except a conv that pads itself at run time from its stride (timm's
Conv2dSame, in the tf_* ports). Only the stride and padding change; block structure does not
(a block whose stride becomes 1 does not gain a residual connection it was built without).

The rules are found by class, through the model's MRO, in `STEM_RULES` (fully qualified class
name → rule), so this module imports neither torchvision nor timm. `STEM_FAMILIES` is the table
the docs (docs/stems.md, scripts/stem_macs.py) and the error lines are made from.

`set_in_channels` gives a torchvision model (which has no `in_chans` argument, unlike timm) a
first conv that takes another number of channels, e.g. 1 for grayscale data.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

from cnnkit.errors import ConfigError

__all__ = ["STEM_FAMILIES", "STEM_RULES", "StemFamily", "adapt_stem", "family_of", "qualified_name",
           "set_in_channels"]


# --------------------------------------------------------------------------------------------------
# The edits: small functions on modules, shared by the families.

# Convs that compute their padding in forward() from their stride ('same' padding, TensorFlow style):
# their stride changes, their static padding (0) stays.
PADS_ITSELF = frozenset({
    "timm.layers.conv2d_same.Conv2dSame",
    "timm.layers.std_conv.StdConv2dSame",
    "timm.layers.std_conv.ScaledStdConv2dSame",
})


def qualified_name(cls: type) -> str:
    """'torchvision.models.resnet.ResNet': the key STEM_RULES and PADS_ITSELF use."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _pads_itself(conv: nn.Conv2d) -> bool:
    return qualified_name(type(conv)) in PADS_ITSELF or bool(getattr(conv, "same_pad", False))


def _strided_convs(module: nn.Module) -> Iterator[tuple[str, nn.Conv2d]]:
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d) and max(sub.stride) > 1:
            yield name, sub


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where `root.get_submodule(name)` is ('features.0.0' included)."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _unstride(conv: nn.Conv2d) -> None:
    """Stride 1, and the padding that keeps the output the input's size (odd kernels)."""
    conv.stride = (1, 1)
    if _pads_itself(conv):
        return
    conv.padding = tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation, strict=True))
    # Read by forward() when padding_mode is not 'zeros'; torch sets it from padding in __init__.
    conv._reversed_padding_repeated_twice = [p for p in reversed(conv.padding) for _ in range(2)]


def _stem_conv(root: nn.Module, name: str, conv: nn.Conv2d) -> None:
    """A strided stem conv → 3×3 stride 1 padding 1: a 3×3 conv loses its stride (and keeps its
    weights); any other kernel (7×7, a 4×4 patchify) is replaced by a fresh 3×3 conv of the same
    channels, groups, bias, padding mode, device and dtype."""
    if conv.kernel_size == (3, 3) and conv.dilation == (1, 1):
        _unstride(conv)
        return
    _replace(root, name, nn.Conv2d(
        conv.in_channels, conv.out_channels, 3, stride=1, padding=1, groups=conv.groups,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype))


def _stem(model: nn.Module, path: str) -> None:
    """Every strided conv at `path` (a conv, or a stem block such as timm's deep stem) → stride 1."""
    stem = model.get_submodule(path)
    for name, conv in list(_strided_convs(stem)):
        _stem_conv(model, f"{path}.{name}" if name else path, conv)


def _drop(model: nn.Module, path: str) -> None:
    """The stem's pooling (a max-pool, or timm's anti-aliased / conv replacement) → nn.Identity."""
    model.get_submodule(path)  # an AttributeError here names the missing module
    _replace(model, path, nn.Identity())


def _first_strided_block(container: nn.Module) -> nn.Module | None:
    """The first block under `container` with a strided conv; stages (Sequential/ModuleList) are
    looked into, so it is a block (an InvertedResidual, an MBConv...), not the stage holding it."""
    for child in container.children():
        if next(_strided_convs(child), None) is None:
            continue
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            return _first_strided_block(child) or child
        return child
    return None


def _unstride_first_block(model: nn.Module, path: str) -> None:
    """The first stride-2 block under `path` (after the stem lost its stride) → stride 1."""
    block = _first_strided_block(model.get_submodule(path))
    for _, conv in list(_strided_convs(block)) if block is not None else ():
        _unstride(conv)


# --------------------------------------------------------------------------------------------------
# The rules: one per family layout.


def resnet_stem(conv: str, pool: str) -> Callable[[nn.Module], None]:
    """Conv(s) + max-pool stems: strided convs at `conv` → 3×3 stride 1; `pool` → Identity."""
    def rule(model: nn.Module) -> None:
        _stem(model, conv)
        _drop(model, pool)
    return rule


def mobile_stem(stem: str, blocks: str) -> Callable[[nn.Module], None]:
    """Stem conv stride 2 → 1, then the first stride-2 block under `blocks` → 1 (32 → 8)."""
    def rule(model: nn.Module) -> None:
        _stem(model, stem)
        _unstride_first_block(model, blocks)
    return rule


def conv_stem(stem: str) -> Callable[[nn.Module], None]:
    """Strided convs of the stem only → stride 1."""
    def rule(model: nn.Module) -> None:
        _stem(model, stem)
    return rule


def no_change(model: nn.Module) -> None:
    """VGG: five max-pools take 32×32 to 1×1 and AdaptiveAvgPool2d(7) repeats that pixel; the stem is fine."""


# --------------------------------------------------------------------------------------------------
# The table: one row per family. STEM_RULES, the docs and the error line are made from it.


@dataclass(frozen=True)
class StemFamily:
    name: str  # "torchvision ResNet"
    classes: tuple[str, ...]  # fully qualified class names it applies to
    models: str  # which model names build those classes
    change: str  # what the rule changes, in words
    rule: Callable[[nn.Module], None]
    examples: tuple[str, ...]  # model.name values scripts/stem_macs.py measures


STEM_FAMILIES: tuple[StemFamily, ...] = (
    StemFamily("torchvision ResNet", ("torchvision.models.resnet.ResNet",),
               "resnet18…152, resnext50_32x4d…, wide_resnet50_2, wide_resnet101_2",
               "conv1 7×7/2 → 3×3/1 (same channels, no bias); maxpool → Identity",
               resnet_stem("conv1", "maxpool"), ("torchvision:resnet18", "torchvision:resnet50")),
    StemFamily("timm ResNet", ("timm.models.resnet.ResNet",),
               "resnet*, resnet*d (deep stem), resnext*, seresnet*, ecaresnet*, wide_resnet*...",
               "conv1 7×7/2 → 3×3/1, or in a deep stem (conv1 a Sequential) the stride-2 3×3 → 1; "
               "maxpool → Identity",
               resnet_stem("conv1", "maxpool"), ("timm:resnet18", "timm:resnet26d")),
    StemFamily("torchvision DenseNet", ("torchvision.models.densenet.DenseNet",),
               "densenet121, densenet161, densenet169, densenet201",
               "features.conv0 7×7/2 → 3×3/1; features.pool0 → Identity",
               resnet_stem("features.conv0", "features.pool0"), ("torchvision:densenet121",)),
    StemFamily("timm DenseNet", ("timm.models.densenet.DenseNet",),
               "densenet*, densenetblur121d",
               "features.conv0 7×7/2 → 3×3/1 (deep stem: 3×3/2 → /1); features.pool0 → Identity",
               resnet_stem("features.conv0", "features.pool0"), ("timm:densenet121",)),
    StemFamily("torchvision ShuffleNetV2", ("torchvision.models.shufflenetv2.ShuffleNetV2",),
               "shufflenet_v2_x0_5…x2_0",
               "conv1's 3×3/2 → /1; maxpool → Identity",
               resnet_stem("conv1", "maxpool"), ("torchvision:shufflenet_v2_x1_0",)),
    StemFamily("torchvision RegNet", ("torchvision.models.regnet.RegNet",),
               "regnet_x_*, regnet_y_*",
               "stem conv 3×3/2 → /1 (head sees 2×2)",
               conv_stem("stem"), ("torchvision:regnet_x_400mf",)),
    StemFamily("timm RegNet", ("timm.models.regnet.RegNet",),
               "regnetx_*, regnety_*, regnetv_*",
               "stem conv 3×3/2 → /1 (head sees 2×2)",
               conv_stem("stem"), ("timm:regnetx_002",)),
    StemFamily("torchvision MobileNetV2", ("torchvision.models.mobilenetv2.MobileNetV2",),
               "mobilenet_v2",
               "features.0 conv 3×3/2 → /1; first stride-2 block (features.2) → /1",
               mobile_stem("features.0", "features"), ("torchvision:mobilenet_v2",)),
    StemFamily("torchvision MobileNetV3", ("torchvision.models.mobilenetv3.MobileNetV3",),
               "mobilenet_v3_small, mobilenet_v3_large",
               "features.0 conv 3×3/2 → /1; first stride-2 block (small: features.1, large: features.2) → /1",
               mobile_stem("features.0", "features"),
               ("torchvision:mobilenet_v3_small", "torchvision:mobilenet_v3_large")),
    StemFamily("torchvision EfficientNet", ("torchvision.models.efficientnet.EfficientNet",),
               "efficientnet_b0…b7, efficientnet_v2_s/m/l",
               "features.0 conv 3×3/2 → /1; first stride-2 block (features.2.0) → /1",
               mobile_stem("features.0", "features"),
               ("torchvision:efficientnet_b0", "torchvision:efficientnet_v2_s")),
    StemFamily("torchvision MNASNet", ("torchvision.models.mnasnet.MNASNet",),
               "mnasnet0_5, mnasnet0_75, mnasnet1_0, mnasnet1_3",
               "layers.0 conv 3×3/2 → /1; first stride-2 block (layers.8.0) → /1",
               mobile_stem("layers.0", "layers"), ("torchvision:mnasnet0_5",)),
    StemFamily("timm EfficientNet", ("timm.models.efficientnet.EfficientNet",),
               "efficientnet_*, tf_efficientnet_*, mixnet_*, mnasnet_*, spnasnet_100, fbnet*...",
               "conv_stem 3×3/2 → /1; first stride-2 block (blocks.1.0) → /1",
               mobile_stem("conv_stem", "blocks"), ("timm:efficientnet_b0", "timm:mixnet_s")),
    StemFamily("timm MobileNetV3", ("timm.models.mobilenetv3.MobileNetV3",),
               "mobilenetv3_*, tf_mobilenetv3_*, mobilenetv4_*, lcnet_*",
               "conv_stem 3×3/2 → /1; first stride-2 block (small: blocks.0.0, large: blocks.1.0) → /1",
               mobile_stem("conv_stem", "blocks"),
               ("timm:mobilenetv3_small_100", "timm:mobilenetv4_conv_small")),
    StemFamily("torchvision ConvNeXt", ("torchvision.models.convnext.ConvNeXt",),
               "convnext_tiny, convnext_small, convnext_base, convnext_large",
               "features.0 patchify conv 4×4/4 → 3×3/1",
               conv_stem("features.0"), ("torchvision:convnext_tiny",)),
    StemFamily("timm ConvNeXt", ("timm.models.convnext.ConvNeXt",),
               "convnext_*, convnextv2_*",
               "stem patchify conv 4×4/4 → 3×3/1 (overlap stems: both 3×3/2 → /1)",
               conv_stem("stem"), ("timm:convnext_atto",)),
    StemFamily("torchvision VGG", ("torchvision.models.vgg.VGG",),
               "vgg11…19, vgg11_bn…19_bn",
               "none needed: 5 max-pools take 32→1 and AdaptiveAvgPool2d(7) repeats the 1×1 map",
               no_change, ("torchvision:vgg11_bn",)),
)

# The registry: fully qualified class name → rule.
STEM_RULES: dict[str, Callable[[nn.Module], None]] = {
    cls: family.rule for family in STEM_FAMILIES for cls in family.classes}

_FAMILY_BY_CLASS: dict[str, StemFamily] = {cls: family for family in STEM_FAMILIES for cls in family.classes}


# Set on an adapted model (the family's name), so that adapting it again changes nothing.
ADAPTED = "_cnnkit_cifar_stem"


def family_of(model: nn.Module) -> StemFamily | None:
    """The family whose class is the model's class or its nearest base (through the MRO)."""
    for cls in type(model).__mro__:
        family = _FAMILY_BY_CLASS.get(qualified_name(cls))
        if family is not None:
            return family
    return None


def adapt_stem(model: nn.Module, label: str) -> nn.Module:
    """Change `model` in place so that its stem suits 32×32 input, and return it.

    `label` names the model in the error line (e.g. 'torchvision:vit_b_16'): a class no rule covers
    is a ConfigError listing the families that have one. A model adapted once is left as it is
    (its `_cnnkit_cifar_stem` attribute names the family), so a second call changes nothing.
    """
    if getattr(model, ADAPTED, None) is not None:  # a second call would take a mobile net's next stride
        return model
    family = family_of(model)
    if family is None:
        raise ConfigError(
            f"model.cifar_stem: no 32×32 stem rule for {label} (a {qualified_name(type(model))}); "
            f"cnnkit adapts: {', '.join(f.name for f in STEM_FAMILIES)}; "
            "set model.cifar_stem=false, or name a model of those families")
    family.rule(model)
    setattr(model, ADAPTED, family.name)
    return model


def set_in_channels(model: nn.Module, in_channels: int, label: str) -> nn.Module:
    """Give the model's first nn.Conv2d (in named_modules order) `in_channels` input channels.

    For torchvision models, which have no in_chans argument (timm's create_model has one). The new
    conv is a copy of the old one (same class, kernel, stride, padding, bias...) but for its weight,
    which is made from the old one as timm's adapt_input_conv does: for 1 channel the sum over the
    RGB channels (so a gray image gives what the original model gives on that image repeated in R,
    G and B), else the RGB weights repeated and scaled by 3/in_channels. In place; returns the model.
    """
    found = next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise ConfigError(f"model.in_channels: {label} (a {qualified_name(type(model))}) has no nn.Conv2d "
                          f"to give {in_channels} input channels; use data of the channels it takes")
    name, conv = found
    if conv.in_channels == in_channels:
        return model
    if in_channels < 1 or conv.groups != 1:
        raise ConfigError(f"model.in_channels: cannot give {label}'s first conv {name} (groups={conv.groups}, "
                          f"{conv.in_channels} channels) {in_channels} input channels; "
                          "use data of the channels it takes")
    weight = conv.weight.detach()
    if in_channels == 1:
        new_weight = weight.sum(dim=1, keepdim=True)
    else:
        repeats = -(-in_channels // conv.in_channels)
        new_weight = weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (conv.in_channels / in_channels)
    new = copy.deepcopy(conv)
    new.in_channels = in_channels
    new.weight = nn.Parameter(new_weight.contiguous(), requires_grad=conv.weight.requires_grad)
    _replace(model, name, new)
    return model
