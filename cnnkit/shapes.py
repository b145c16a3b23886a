"""Shape arithmetic for conv and pool layers: pure functions, one source of truth.

The models compute their flatten sizes with these functions, and `cnnkit shapes` shows them with
their numbers. Tests hold them equal to real `nn.Conv2d` / `nn.MaxPool2d` / `nn.AvgPool2d`.

    out = ⌊(in + 2·padding − dilation·(kernel − 1) − 1) / stride⌋ + 1

Pooling with ceil_mode rounds up instead, but (as in PyTorch) never lets the last window start
inside the right padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from cnnkit.errors import ShapeError

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
    # torchinfo's "Kernel Shape": conv weight (C_out, C_in/groups, kH, kW), pool window (kH, kW),
    # linear weight (out, in).
    kernel_shape: tuple[int, ...] | None = None
    layers: int = 1  # leaf layers this row stands for (more than 1 when --depth folds a block)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "type": self.type, "input": list(self.input), "output": list(self.output),
            "kernel": _opt_list(self.kernel), "stride": _opt_list(self.stride),
            "padding": _opt_list(self.padding), "dilation": _opt_list(self.dilation),
            "ceil_mode": self.ceil_mode, "formulas": self.formulas, "params": self.params,
            "macs": self.macs, "receptive_field": list(self.receptive_field), "jump": list(self.jump),
            "kernel_shape": _opt_list(self.kernel_shape), "layers": self.layers,
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
        rows: list[LayerRow] = []
        for row in self.layers:
            parts = row.name.split(".")
            if len(parts) <= depth:
                rows.append(row)
                continue
            group = ".".join(parts[:depth])
            if rows and rows[-1].name == group:
                last = rows[-1]
                last.output, last.params, last.macs = row.output, last.params + row.params, last.macs + row.macs
                last.receptive_field, last.jump, last.layers = row.receptive_field, row.jump, last.layers + 1
                last.formulas = []
            else:
                rows.append(LayerRow(group, self.module_types.get(group, "block"), row.input, row.output,
                                     params=row.params, macs=row.macs, receptive_field=row.receptive_field,
                                     jump=row.jump, formulas=list(row.formulas), kernel=row.kernel,
                                     stride=row.stride, padding=row.padding, dilation=row.dilation,
                                     kernel_shape=row.kernel_shape))
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
# Walking a real model: each leaf module type has a rule that computes its row from its input shape.

Rule = Callable[[str, nn.Module, tuple, Pair, Pair], LayerRow]


def _conv_rule(name, m, shape, rf, jump):
    return conv_row(name, shape, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
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
        raise ShapeError(f"{name}: only Flatten(start_dim=1) is supported by the shape tracer")
    return LayerRow(name, "Flatten", tuple(shape), (_numel(shape),), receptive_field=rf, jump=jump)


def _linear_rule(name, m, shape, rf, jump):
    if shape[-1] != m.in_features:
        raise ShapeError(f"{name}: Linear expects {m.in_features} features but receives {shape[-1]} ({shape})")
    params = m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
    return LayerRow(name, "Linear", tuple(shape), (*shape[:-1], m.out_features), params=params,
                    macs=_numel(shape[:-1]) * m.in_features * m.out_features, receptive_field=rf, jump=jump,
                    kernel_shape=(m.out_features, m.in_features))


# Models may register their own leaf types here (the edge model's from-scratch Corr2d does).
SHAPE_RULES: dict[type, Rule] = {
    nn.Conv2d: _conv_rule,
    nn.MaxPool2d: _maxpool_rule,
    nn.AvgPool2d: _avgpool_rule,
    nn.BatchNorm2d: _same_shape_rule,
    nn.ReLU: _same_shape_rule,
    nn.GELU: _same_shape_rule,
    nn.Dropout: _same_shape_rule,
    nn.Identity: _same_shape_rule,
    nn.Flatten: _flatten_rule,
    nn.Linear: _linear_rule,
}


def _rule_for(module: nn.Module) -> Rule | None:
    for cls in type(module).__mro__:
        if cls in SHAPE_RULES:
            return SHAPE_RULES[cls]
    return None


def trace_model(model: nn.Module, input_shape: tuple[int, int, int]) -> ShapeReport:
    """Shape of every leaf layer, computed analytically and checked against one real forward pass.

    The real pass (batch of 1, eval mode, no grad) gives the order in which leaves run; the rows
    are then computed from the rules alone, each from the previous row's analytic output. The
    report is only true for a plain chain, so the real pass must also show one: each leaf takes
    exactly the tensor the previous leaf returned (the first takes the input, the model returns
    the last leaf's output). A residual add, a branch or a functional op between layers, or a
    disagreement with what a real layer produced, is an error, never silent.
    """
    executed: list[tuple[str, tuple, tuple]] = []
    flow: list[tuple[str, object, object]] = []  # (leaf, tensor it took, tensor it returned)
    names = {m: n for n, m in model.named_modules()}
    hooks = []
    for module in model.modules():
        if next(module.children(), None) is None:  # a leaf
            def hook(mod, args, out):
                x = args[0] if len(args) == 1 else None
                flow.append((names[mod], x, out))
                if isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor):
                    executed.append((names[mod], tuple(x.shape[1:]), tuple(out.shape[1:])))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        # Shape errors surface analytically below; check the input is plausible before the real pass.
        with torch.no_grad():
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            x = torch.zeros((1, *input_shape), device=device)
            y = model(x)
    except RuntimeError as exc:
        # The analytic walk over the leaves in registration order names the failing layer.
        leaves = [(n, (), ()) for n, m in model.named_modules() if next(m.children(), None) is None]
        _analytic_rows(model, leaves, input_shape, strict=False)
        raise ShapeError(f"the model cannot take input {'x'.join(map(str, input_shape))}: "
                         f"{str(exc).splitlines()[0]}") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    _check_chain(flow, x, y)
    rows = _analytic_rows(model, executed, input_shape, strict=True)
    output = rows[-1].output if rows else tuple(input_shape)
    types = {name: type(module).__name__ for name, module in model.named_modules() if name}
    return ShapeReport(tuple(input_shape), output, rows, types)


_NOT_A_CHAIN = ("the shape tracer needs a plain chain of nn modules (no residual adds, branches, or functional "
                "ops such as x.view, torch.flatten or F.relu between layers; use nn.Flatten, nn.ReLU...)")


def _check_chain(flow: list[tuple[str, object, object]], x: torch.Tensor, y: object) -> None:
    previous, previous_name = x, "the model input"
    for name, taken, returned in flow:
        if not isinstance(taken, torch.Tensor) or not isinstance(returned, torch.Tensor):
            raise ShapeError(f"{name}: takes or returns something other than one tensor; {_NOT_A_CHAIN}")
        if taken is not previous:
            raise ShapeError(f"{name}: its input is not the output of {previous_name}; {_NOT_A_CHAIN}")
        previous, previous_name = returned, name
    if y is not previous:
        raise ShapeError(f"the model's output is not the output of {previous_name}; {_NOT_A_CHAIN}")


def _analytic_rows(model, executed, input_shape, strict: bool) -> list[LayerRow]:
    modules = dict(model.named_modules())
    rows: list[LayerRow] = []
    shape: tuple = tuple(input_shape)
    rf: Pair = (1, 1)
    jump: Pair = (1, 1)
    for name, real_in, real_out in executed:
        module = modules[name]
        rule = _rule_for(module)
        if rule is None:
            raise ShapeError(f"{name}: no shape rule for {type(module).__name__}; add one to cnnkit.shapes.SHAPE_RULES")
        try:
            row = rule(name, module, shape, rf, jump)
        except ShapeError as exc:
            message = str(exc)
            raise ShapeError(message if message.startswith(name) else f"{name}: {message}") from None
        if strict and (row.input != real_in or row.output != real_out):
            raise ShapeError(
                f"{name} ({row.type}): analytic shape {row.input}→{row.output} differs from the real forward "
                f"{real_in}→{real_out}; the model's data flow is not a plain chain of layers"
            )
        rows.append(row)
        shape, rf, jump = row.output, row.receptive_field, row.jump
    return rows
