"""Shape arithmetic for conv and pool layers: pure functions, one source of truth.

The models compute their flatten sizes with these functions, and `cnnkit shapes` shows them with
their numbers. Tests hold them equal to real `nn.Conv2d` / `nn.MaxPool2d` / `nn.AvgPool2d`.

    out = ⌊(in + 2·padding − dilation·(kernel − 1) − 1) / stride⌋ + 1

Pooling with ceil_mode rounds up instead, but (as in PyTorch) never lets the last window start
inside the right padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from cnnkit.errors import ShapeError
from cnnkit.inspection.capture import MODEL_INPUT, Call, ForwardError, capture

Pair = tuple[int, int]
DIMS = ("H", "W")


def to_pair(value: int | Sequence[int], name: str = "value") -> Pair:
    """3 → (3, 3); (2, 3) → (2, 3). Torch layers accept both forms, so we do too."""
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) != 2:
        raise ShapeError(f"{name} must be one integer or two (H,W), got {value!r}")
    return values  # type: ignore[return-value]


def parse_pair(text: str, name: str) -> Pair:
    """Command-line form: '3' or '2,3' (H,W)."""
    try:
        return to_pair([int(p) for p in text.replace("x", ",").split(",")], name)
    except (ValueError, ShapeError):
        raise ShapeError(f"--{name} {text!r}: expected an integer or H,W such as 2,3") from None


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """'3x32x32' → (3, 32, 32)."""
    try:
        dims = tuple(int(p) for p in text.lower().replace("×", "x").split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise ShapeError(f"--input {text!r}: expected CxHxW with positive integers, e.g. 3x32x32")
    return dims  # type: ignore[return-value]


def _check_positive(kind: str, dim: str, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ShapeError(f"{kind} {dim}: {name} must be ≥ 1, got {value}")


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                     *, dim: str = "H") -> int:
    """One spatial dimension of nn.Conv2d's output; raises ShapeError if the layer cannot apply."""
    _check_positive("conv", dim, input=size, kernel=kernel, stride=stride, dilation=dilation)
    if padding < 0:
        raise ShapeError(f"conv {dim}: padding must be ≥ 0, got {padding}")
    span = dilation * (kernel - 1) + 1
    if span > size + 2 * padding:
        raise ShapeError(
            f"conv {dim}: kernel spans {span} (dilation {dilation}·(kernel {kernel}−1)+1) but the padded "
            f"input is only {size + 2 * padding} ({size} + 2·{padding}); use a smaller kernel or more padding"
        )
    return (size + 2 * padding - span) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int | None = None, padding: int = 0, dilation: int = 1,
                     ceil_mode: bool = False, *, dim: str = "H") -> int:
    """One spatial dimension of nn.MaxPool2d / nn.AvgPool2d's output (stride defaults to kernel)."""
    stride = kernel if stride is None else stride
    _check_positive("pool", dim, input=size, kernel=kernel, stride=stride, dilation=dilation)
    if padding < 0:
        raise ShapeError(f"pool {dim}: padding must be ≥ 0, got {padding}")
    # PyTorch refuses padding over half the kernel: a window would then see only padding.
    if padding > kernel // 2:
        raise ShapeError(
            f"pool {dim}: padding {padding} is more than half the kernel {kernel}; use padding ≤ {kernel // 2}"
        )
    span = dilation * (kernel - 1) + 1
    numerator = size + 2 * padding - span
    if ceil_mode:
        # Rounding up can leave one window hanging past the padded input, even when the window is
        # wider than the padded input (torch: MaxPool2d(2, ceil_mode=True) on size 1 gives 1).
        out = -(-numerator // stride) + 1
        # The last window must start inside the input or the left padding, never in the right padding.
        if out > 1 and (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = numerator // stride + 1
    if out < 1:
        raise ShapeError(
            f"pool {dim}: window spans {span} but the padded input is only {size + 2 * padding} "
            f"({size} + 2·{padding}); use a smaller kernel or a larger input"
        )
    return out


def conv_formula(size: int, kernel: int, stride: int, padding: int, dilation: int, out: int) -> str:
    return f"⌊({size} + 2·{padding} − {dilation}·({kernel}−1) − 1) / {stride}⌋ + 1 = {out}"


def pool_formula(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool,
                 out: int) -> str:
    if not ceil_mode:
        return conv_formula(size, kernel, stride, padding, dilation, out)
    text = f"⌈({size} + 2·{padding} − {dilation}·({kernel}−1) − 1) / {stride}⌉ + 1"
    raw = -(-(size + 2 * padding - dilation * (kernel - 1) - 1) // stride) + 1
    if raw != out:
        text += " − 1 (last window would start in the padding)"
    return f"{text} = {out}"


def conv2d_hw(hw: Pair, kernel, stride=1, padding=0, dilation=1) -> Pair:
    """(H, W) after a Conv2d; the models use this for their flatten sizes."""
    k, s, p, d = (to_pair(v) for v in (kernel, stride, padding, dilation))
    return tuple(conv_output_size(hw[i], k[i], s[i], p[i], d[i], dim=DIMS[i]) for i in range(2))  # type: ignore


def pool2d_hw(hw: Pair, kernel, stride=None, padding=0, dilation=1, ceil_mode=False) -> Pair:
    """(H, W) after a MaxPool2d / AvgPool2d."""
    k = to_pair(kernel)
    s = k if stride is None else to_pair(stride)
    p, d = to_pair(padding), to_pair(dilation)
    return tuple(pool_output_size(hw[i], k[i], s[i], p[i], d[i], ceil_mode, dim=DIMS[i]) for i in range(2))  # type: ignore


# --------------------------------------------------------------------------------------------------
# One row per layer: what the `shapes` command prints.


@dataclass
class LayerRow:
    name: str
    type: str
    input: tuple[int, ...]
    output: tuple[int, ...]
    kernel: Pair | None = None
    stride: Pair | None = None
    padding: Pair | None = None
    dilation: Pair | None = None
    ceil_mode: bool | None = None
    formulas: list[str] = field(default_factory=list)  # one per spatial dim, H then W
    params: int = 0
    macs: int = 0
    receptive_field: Pair = (1, 1)  # input pixels one output pixel sees
    jump: Pair = (1, 1)  # input pixels between neighbouring output pixels (effective stride)
    # Where the first output pixel's receptive field is centred, in input pixel indices (H, W): output
    # pixel i sits at start + i·jump. Grad-CAM places a layer's map on the picture with it.
    start: tuple[float, float] = (0.0, 0.0)
    # torchinfo's "Kernel Shape": conv weight (C_out, C_in/groups, kH, kW), pool window (kH, kW),
    # linear weight (out, in).
    kernel_shape: tuple[int, ...] | None = None
    layers: int = 1  # leaf layers this row stands for (more than 1 when --depth folds a block)
    kind: str = "module"  # or "function": a torch function between modules (a residual add, torch.cat, x.view)
    sources: list[str] = field(default_factory=list)  # the rows whose outputs it takes; "input": the model's
    inputs: list[tuple[int, ...]] = field(default_factory=list)  # every input's shape, when it takes several
    computed: bool = True  # the output comes from a shape rule (and equals torch's); False: torch's shape as is

    def to_dict(self) -> dict:
        return {
            "name": self.name, "type": self.type, "input": list(self.input), "output": list(self.output),
            "kernel": _opt_list(self.kernel), "stride": _opt_list(self.stride),
            "padding": _opt_list(self.padding), "dilation": _opt_list(self.dilation),
            "ceil_mode": self.ceil_mode, "formulas": self.formulas, "params": self.params,
            "macs": self.macs, "receptive_field": list(self.receptive_field), "jump": list(self.jump),
            "start": list(self.start),
            "kernel_shape": _opt_list(self.kernel_shape), "layers": self.layers,
            "kind": self.kind, "sources": list(self.sources), "inputs": [list(i) for i in self.inputs],
            "computed": self.computed,
        }


def _opt_list(pair):
    return list(pair) if pair is not None else None


@dataclass
class ShapeReport:
    input: tuple[int, ...]
    output: tuple[int, ...]
    layers: list[LayerRow]
    # Class name of every named submodule, so folded blocks can say what they are.
    module_types: dict[str, str] = field(default_factory=dict)
    # Set when rows were folded: the total still counts every leaf's output.
    leaf_activation_bytes: int | None = None

    def at_depth(self, depth: int | None) -> ShapeReport:
        """Fold every block nested deeper than `depth` into one row (torchinfo's `depth`)."""
        if depth is None:
            return self
        if depth < 1:
            raise ShapeError(f"--depth must be ≥ 1, got {depth}")

        def fold(name: str) -> str:
            return ".".join(name.split(".")[:depth])

        rows: list[LayerRow] = []
        for row in self.layers:
            group = fold(row.name)
            # A folded block takes what flows in from outside it; its own rows no longer show.
            outside = [fold(src) for src in row.sources if fold(src) != group]
            if group == row.name:
                rows.append(replace(row, sources=outside))
                continue
            if rows and rows[-1].name == group:
                last = rows[-1]
                last.output, last.params, last.macs = row.output, last.params + row.params, last.macs + row.macs
                last.receptive_field, last.jump, last.layers = row.receptive_field, row.jump, last.layers + 1
                last.start = row.start
                last.formulas, last.computed = [], last.computed and row.computed
                last.sources += [src for src in outside if src not in last.sources]
            else:
                rows.append(LayerRow(group, self.module_types.get(group, "block"), row.input, row.output,
                                     params=row.params, macs=row.macs, receptive_field=row.receptive_field,
                                     jump=row.jump, start=row.start, formulas=list(row.formulas),
                                     kernel=row.kernel,
                                     stride=row.stride, padding=row.padding, dilation=row.dilation,
                                     kernel_shape=row.kernel_shape, sources=outside, computed=row.computed))
        for row in rows:
            if row.layers > 1:  # a folded block has no single kernel or formula
                row.kernel = row.stride = row.padding = row.dilation = row.kernel_shape = None
        return ShapeReport(self.input, self.output, rows, self.module_types, self.activation_bytes)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.layers)

    @property
    def activation_bytes(self) -> int:
        """float32 bytes of every layer output for one image (what a forward pass keeps for backward)."""
        if self.leaf_activation_bytes is not None:
            return self.leaf_activation_bytes
        return sum(4 * _numel(r.output) for r in self.layers)

    def to_dict(self) -> dict:
        return {
            "input": list(self.input), "output": list(self.output),
            "layers": [r.to_dict() for r in self.layers],
            "totals": {"params": self.params, "macs": self.macs, "activation_bytes": self.activation_bytes},
        }


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _grow_rf(rf: Pair, jump: Pair, kernel: Pair, stride: Pair, dilation: Pair) -> tuple[Pair, Pair]:
    # Each output pixel sees `span` input positions, spaced `jump` apart in the original image.
    new_rf = tuple(rf[i] + (dilation[i] * (kernel[i] - 1)) * jump[i] for i in range(2))
    new_jump = tuple(jump[i] * stride[i] for i in range(2))
    return new_rf, new_jump  # type: ignore[return-value]


def conv_row(name: str, in_shape, out_channels: int, kernel, stride=1, padding=0, dilation=1, groups=1,
             bias=True, rf: Pair = (1, 1), jump: Pair = (1, 1), type_name: str = "Conv2d") -> LayerRow:
    c, h, w = in_shape
    k, s, p, d = (to_pair(v) for v in (kernel, stride, padding, dilation))
    if c % groups or out_channels % groups:
        raise ShapeError(f"{name}: {c} input and {out_channels} output channels must both divide by groups {groups}")
    out_hw = conv2d_hw((h, w), k, s, p, d)
    formulas = [conv_formula((h, w)[i], k[i], s[i], p[i], d[i], out_hw[i]) for i in range(2)]
    params = out_channels * (c // groups) * k[0] * k[1] + (out_channels if bias else 0)
    macs = out_channels * out_hw[0] * out_hw[1] * (c // groups) * k[0] * k[1]
    new_rf, new_jump = _grow_rf(rf, jump, k, s, d)
    return LayerRow(name, type_name, (c, h, w), (out_channels, *out_hw), k, s, p, d, None, formulas, params,
                    macs, new_rf, new_jump, kernel_shape=(out_channels, c // groups, *k))


def pool_row(name: str, in_shape, kind: str, kernel, stride=None, padding=0, dilation=1, ceil_mode=False,
             rf: Pair = (1, 1), jump: Pair = (1, 1)) -> LayerRow:
    c, h, w = in_shape
    k = to_pair(kernel)
    s = k if stride is None else to_pair(stride)
    p, d = to_pair(padding), to_pair(dilation)
    out_hw = pool2d_hw((h, w), k, s, p, d, ceil_mode)
    formulas = [pool_formula((h, w)[i], k[i], s[i], p[i], d[i], ceil_mode, out_hw[i]) for i in range(2)]
    new_rf, new_jump = _grow_rf(rf, jump, k, s, d)
    type_name = {"max": "MaxPool2d", "avg": "AvgPool2d"}[kind]
    return LayerRow(name, type_name, (c, h, w), (c, *out_hw), k, s, p, d, ceil_mode, formulas, 0, 0,
                    new_rf, new_jump, kernel_shape=k)


# --------------------------------------------------------------------------------------------------
# Walking a real model: each leaf module type has a rule that computes its row from its input shape;
# a rule may return None when it cannot (the row then shows the shape torch produced).

Rule = Callable[[str, nn.Module, tuple, Pair, Pair], "LayerRow | None"]


def _padding(module_padding, kernel, dilation):
    """nn.Conv2d's padding as (pH, pW); 'valid' is 0, 'same' is half the span when the span is even."""
    if not isinstance(module_padding, str):
        return module_padding
    if module_padding == "valid":
        return 0
    spans = [d * (k - 1) for k, d in zip(to_pair(kernel), to_pair(dilation), strict=True)]
    return None if any(span % 2 for span in spans) else tuple(span // 2 for span in spans)  # odd: uneven padding


def _conv_rule(name, m, shape, rf, jump):
    if shape[0] != m.in_channels:
        raise ShapeError(f"{name}: {type(m).__name__} expects {m.in_channels} input channels but receives "
                         f"{shape[0]} ({'×'.join(map(str, shape))}); check the input's channels (model.in_channels)")
    padding = _padding(m.padding, m.kernel_size, m.dilation)
    if padding is None:
        return None
    return conv_row(name, shape, m.out_channels, m.kernel_size, m.stride, padding, m.dilation,
                    getattr(m, "groups", 1), m.bias is not None, rf, jump, type(m).__name__)


def _maxpool_rule(name, m, shape, rf, jump):
    return pool_row(name, shape, "max", m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, rf, jump)


def _avgpool_rule(name, m, shape, rf, jump):
    return pool_row(name, shape, "avg", m.kernel_size, m.stride, m.padding, 1, m.ceil_mode, rf, jump)


def _same_shape_rule(name, m, shape, rf, jump):
    params = sum(p.numel() for p in m.parameters(recurse=False))
    weight = getattr(m, "weight", None)
    return LayerRow(name, type(m).__name__, tuple(shape), tuple(shape), params=params,
                    receptive_field=rf, jump=jump,
                    kernel_shape=tuple(weight.shape) if isinstance(weight, torch.Tensor) else None)


def _flatten_rule(name, m, shape, rf, jump):
    if m.start_dim not in (1, -len(shape) - 1 + 1) or m.end_dim != -1:
        return None  # other dims: torch's shape, not a formula
    return LayerRow(name, "Flatten", tuple(shape), (_numel(shape),), receptive_field=rf, jump=jump)


def _linear_rule(name, m, shape, rf, jump):
    if shape[-1] != m.in_features:
        raise ShapeError(f"{name}: Linear expects {m.in_features} features but receives {shape[-1]} ({shape})")
    params = m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
    return LayerRow(name, "Linear", tuple(shape), (*shape[:-1], m.out_features), params=params,
                    macs=_numel(shape[:-1]) * m.in_features * m.out_features, receptive_field=rf, jump=jump,
                    kernel_shape=(m.out_features, m.in_features))


def adaptive_pool_row(name: str, in_shape, output_size, type_name: str, rf: Pair = (1, 1),
                      jump: Pair = (1, 1)) -> LayerRow:
    """AdaptiveAvgPool2d / AdaptiveMaxPool2d: the output size is asked for, not computed (None keeps a dim).

    Each window spans about ⌈in/out⌉ inputs every ⌊in/out⌋, which is what the receptive field grows by."""
    c, h, w = in_shape
    wanted = (output_size, output_size) if isinstance(output_size, int) or output_size is None else output_size
    out = tuple((h, w)[i] if wanted[i] is None else int(wanted[i]) for i in range(2))
    if min(out) < 1:
        raise ShapeError(f"{name}: adaptive pooling needs an output size ≥ 1, got {output_size!r}")
    kernel = tuple(-(-(h, w)[i] // out[i]) for i in range(2))
    stride = tuple(max(1, (h, w)[i] // out[i]) for i in range(2))
    new_rf, new_jump = _grow_rf(rf, jump, kernel, stride, (1, 1))
    formulas = [f"adaptive: {(h, w)[i]} → {out[i]} (asked for)" for i in range(2)]
    return LayerRow(name, type_name, (c, h, w), (c, *out), kernel, stride, (0, 0), (1, 1), formulas=formulas,
                    receptive_field=new_rf, jump=new_jump)


def _adaptive_rule(name, m, shape, rf, jump):
    return adaptive_pool_row(name, shape, m.output_size, type(m).__name__, rf, jump)


# Models may register their own leaf types here (the edge model's from-scratch Corr2d does).
SHAPE_RULES: dict[type, Rule] = {
    nn.Conv2d: _conv_rule,
    nn.MaxPool2d: _maxpool_rule,
    nn.AvgPool2d: _avgpool_rule,
    nn.AdaptiveAvgPool2d: _adaptive_rule,
    nn.AdaptiveMaxPool2d: _adaptive_rule,
    nn.Flatten: _flatten_rule,
    nn.Linear: _linear_rule,
    # Same shape out as in: normalisation, activations, dropout.
    **{kind: _same_shape_rule for kind in (
        nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LocalResponseNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU,
        nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.Dropout,
        nn.Dropout2d, nn.Identity)},
}


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int, int]:
    """TensorFlow's 'SAME' padding, worked out from the input at run time: the output is ⌈size / stride⌉
    and the input is padded by just enough for that, the odd pixel after. (total, before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total, total // 2, total - total // 2


def _same_padded_row(name: str, shape: tuple, kernel, stride, dilation, make_row) -> LayerRow:
    """A conv or pool row with TF 'SAME' padding: the row of the padded input with no padding of its
    own, shown as taking the unpadded input, with the padding before and the 'SAME' formula."""
    c, h, w = shape
    k, s, d = to_pair(kernel), to_pair(stride), to_pair(dilation)
    pads = [same_padding((h, w)[i], k[i], s[i], d[i]) for i in range(2)]
    row = make_row((c, h + pads[0][0], w + pads[1][0]))
    row.input, row.padding = (c, h, w), (pads[0][1], pads[1][1])
    row.formulas = [f"⌈{(h, w)[i]} / {s[i]}⌉ = {row.output[1 + i]} ('same': pad {pads[i][1]}+{pads[i][2]})"
                    for i in range(2)]
    return row


def _same_conv_rule(name, m, shape, rf, jump):
    if shape[0] != m.in_channels:
        return _conv_rule(name, m, shape, rf, jump)  # its one-line error
    return _same_padded_row(name, shape, m.kernel_size, m.stride, m.dilation, lambda padded: conv_row(
        name, padded, m.out_channels, m.kernel_size, m.stride, 0, m.dilation, m.groups, m.bias is not None, rf, jump,
        type(m).__name__))


def _same_pool_rule(kind: str):
    def rule(name, m, shape, rf, jump):
        if m.ceil_mode:
            return None  # 'SAME' is already a ceiling; with ceil_mode too, torch's shape as is
        dilation = getattr(m, "dilation", 1)  # AvgPool2d has none
        row = _same_padded_row(name, shape, m.kernel_size, m.stride, dilation, lambda padded: pool_row(
            name, padded, kind, m.kernel_size, m.stride, 0, dilation, False, rf, jump))
        row.type = type(m).__name__
        return row
    return rule


# Layers of other libraries, by their class's module and name, so that cnnkit imports none of them:
# timm's TensorFlow-ported models (tf_efficientnet_*, tf_mixnet_*, ...) pad 'SAME' at run time.
NAMED_SHAPE_RULES: dict[str, Rule] = {
    "timm.layers.conv2d_same.Conv2dSame": _same_conv_rule,
    "timm.layers.pool2d_same.MaxPool2dSame": _same_pool_rule("max"),
    "timm.layers.pool2d_same.AvgPool2dSame": _same_pool_rule("avg"),
}


def _rule_for(module: nn.Module) -> tuple[Rule | None, bool]:
    """The rule for this module's class, and whether it was written for that very class (False: for a
    base class, whose shape a subclass's own forward may change)."""
    for cls in type(module).__mro__:
        rule = SHAPE_RULES.get(cls) or NAMED_SHAPE_RULES.get(f"{cls.__module__}.{cls.__qualname__}")
        if rule is not None:
            return rule, cls is type(module)
    return None, False


# --------------------------------------------------------------------------------------------------
# Torch functions between modules: the conv and pool ones get their formula too; the rest (add,
# cat, view, F.relu, ...) show the shape torch produced.

FunctionRule = Callable[[str, Call, tuple, Pair, Pair], "LayerRow | None"]


def _arg(call: Call, index: int, key: str, default=None):
    """A function argument given by position or by keyword."""
    if len(call.args) > index:
        return call.args[index]
    return call.kwargs.get(key, default)


def _fn_conv(name, call, shape, rf, jump):
    weight, bias = _arg(call, 1, "weight"), _arg(call, 2, "bias")
    stride, padding, dilation = _arg(call, 3, "stride", 1), _arg(call, 4, "padding", 0), _arg(call, 5, "dilation", 1)
    groups = _arg(call, 6, "groups", 1)
    padding = _padding(padding, weight.shape[-2:], dilation)
    if padding is None:
        return None
    return conv_row(name, shape, weight.shape[0], tuple(weight.shape[-2:]), stride, padding, dilation, groups,
                    bias is not None, rf, jump, call.type)


def _fn_maxpool(name, call, shape, rf, jump):
    kernel, stride = _arg(call, 1, "kernel_size"), _arg(call, 2, "stride")
    row = pool_row(name, shape, "max", kernel, stride if stride not in (None, []) else None,
                   _arg(call, 3, "padding", 0), _arg(call, 4, "dilation", 1), bool(_arg(call, 5, "ceil_mode", False)),
                   rf, jump)
    row.type = call.type
    return row


def _fn_avgpool(name, call, shape, rf, jump):
    kernel, stride = _arg(call, 1, "kernel_size"), _arg(call, 2, "stride")
    row = pool_row(name, shape, "avg", kernel, stride if stride not in (None, []) else None,
                   _arg(call, 3, "padding", 0), 1, bool(_arg(call, 4, "ceil_mode", False)), rf, jump)
    row.type = call.type
    return row


def _fn_adaptive(name, call, shape, rf, jump):
    return adaptive_pool_row(name, shape, _arg(call, 1, "output_size"), call.type, rf, jump)


FUNCTION_RULES: dict[str, FunctionRule] = {
    "F.conv2d": _fn_conv, "torch.conv2d": _fn_conv,
    "F.max_pool2d": _fn_maxpool, "torch.max_pool2d": _fn_maxpool,
    "F.avg_pool2d": _fn_avgpool, "torch.avg_pool2d": _fn_avgpool,
    "F.adaptive_avg_pool2d": _fn_adaptive, "F.adaptive_max_pool2d": _fn_adaptive,
}


def _call_rule(call: Call) -> tuple[Callable[[str, tuple, Pair, Pair], LayerRow | None] | None, bool]:
    """The rule that computes this call's row, bound to its module or function call (None if none), and
    whether it is the call's own (False: a base class's rule for a subclass)."""
    if call.kind == "module":
        rule, own = _rule_for(call.module)
        if rule is None:
            return None, False
        return (lambda name, shape, rf, jump: rule(name, call.module, shape, rf, jump)), own
    rule = FUNCTION_RULES.get(call.type)
    spatial = len(call.inputs[0]) == 4  # (B, C, H, W): the formulas are for 2-D maps
    if rule is None or not spatial:
        return None, False
    return (lambda name, shape, rf, jump: rule(name, call, shape, rf, jump)), True


def _in_context(name: str, exc: ShapeError) -> ShapeError:
    message = str(exc)
    return ShapeError(message if message.startswith(name) else f"{name}: {message}")


def rows_from_capture(calls: list[Call]) -> list[LayerRow]:
    """One row per recorded call: the rule's row applied to the input torch really gave it, checked
    against the output torch really produced (a disagreement is an error, never shown; for a subclass
    that only inherits its rule, the row falls back to torch's shape). Calls with no rule show torch's
    shapes, marked `computed=False`. Receptive field and jump follow the data flow:
    a row takes them from the rows that made its inputs (the widest, where a branch joins)."""
    rows: list[LayerRow] = []
    for call in calls:
        shape = call.inputs[0][1:] if call.inputs else ()  # per image: the batch dimension dropped
        out = call.output[1:]
        feeding = [rows[s] for s in call.sources if s != MODEL_INPUT]
        rf = tuple(max([1] + [r.receptive_field[i] for r in feeding]) for i in range(2))
        jump = tuple(max([1] + [r.jump[i] for r in feeding]) for i in range(2))
        start = feeding[0].start if feeding else (0.0, 0.0)
        rule, own = _call_rule(call)
        try:
            row = rule(call.name, shape, rf, jump) if rule is not None else None
        except ShapeError as exc:
            raise _in_context(call.name, exc) from None
        if row is not None and not own and (row.output != out or row.input != shape):
            row = None  # a subclass whose forward changes the shape (padding of its own, say): torch's shape
        if row is None:
            row = LayerRow(call.name, call.type, shape, out, receptive_field=rf, jump=jump, computed=False)
        elif row.output != out or row.input != shape:
            raise ShapeError(
                f"{call.name} ({call.type}): the shape rule gives {_fmt(row.input)}→{_fmt(row.output)} but torch "
                f"computed {_fmt(shape)}→{_fmt(out)}; the rule for {call.type} in cnnkit.shapes is wrong")
        row.kind = call.kind
        row.start = _move_start(row, start, jump)
        row.params = call.params  # a module called twice counts its parameters once
        row.sources = ["input" if s == MODEL_INPUT else rows[s].name for s in call.sources]
        row.inputs = [i[1:] for i in call.inputs] if len(call.inputs) > 1 else []
        rows.append(row)
    return rows


def _move_start(row: LayerRow, start, jump) -> tuple[float, float]:
    """A window of span d·(k−1)+1 starting p pixels before the input is centred d·(k−1)/2 − p input
    pixels (each `jump` picture pixels apart) after the input's first pixel."""
    if row.kernel is None:
        return tuple(start)  # type: ignore[return-value]
    return tuple(start[i] + (row.dilation[i] * (row.kernel[i] - 1) / 2 - row.padding[i]) * jump[i]
                 for i in range(2))  # type: ignore[return-value]


def _fmt(shape) -> str:
    return "×".join(str(d) for d in shape) or "()"


def trace_model(model: nn.Module, input_shape: tuple[int, int, int]) -> ShapeReport:
    """Every layer of one real forward pass (batch of 1, eval mode, no grad), with its arithmetic.

    Forward hooks record each leaf module's actual input and output, and the torch functions the
    model calls between modules (residual adds, concatenations, views, functional pooling) are
    recorded as rows of their own (cnnkit.inspection.capture). Each conv, pool, linear... row is
    computed by its shape rule from the input torch gave it and must equal the output torch
    produced. A layer that cannot take its input raises a ShapeError naming it.
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        with torch.no_grad():
            record = capture(model, torch.zeros((1, *input_shape), device=device))
    except ForwardError as exc:
        raise _explain(exc, input_shape) from None
    finally:
        model.train(was_training)
    rows = rows_from_capture(record.calls)
    types = {name: type(module).__name__ for name, module in model.named_modules() if name}
    return ShapeReport(tuple(input_shape), record.output[1:], rows, types)


def _explain(exc: ForwardError, input_shape) -> ShapeError:
    """Why the forward pass failed, from the failing layer's rule when it has one, else torch's words."""
    shape = exc.inputs[0][1:] if exc.inputs else ()
    rule = _rule_for(exc.module)[0] if exc.module is not None else None
    if rule is not None:
        try:
            rule(exc.where, exc.module, shape, (1, 1), (1, 1))
        except ShapeError as error:
            return _in_context(exc.where, error)
    torch_says = str(exc.error).strip().splitlines()[0] if str(exc.error).strip() else type(exc.error).__name__
    return ShapeError(f"{exc.where}: the model cannot take input {'x'.join(map(str, input_shape))} "
                      f"(this layer gets {_fmt(shape)}): {torch_says}")
