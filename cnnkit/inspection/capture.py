"""One forward pass, recorded: every leaf module and every torch function between modules, in order.

Forward hooks see each leaf module's real input and output; a `TorchFunctionMode` sees the torch
functions a model's own `forward` calls between its modules (`x + self.block(x)`, `torch.cat`,
`x.view(...)`, `F.max_pool2d`). Calls inside a leaf (nn.Conv2d's own F.conv2d) are the leaf's
business and are not recorded. Each recorded tensor remembers which call made it, so a residual
add shows where both of its inputs came from.

`cnnkit shapes` (cnnkit.shapes.trace_model) builds its table from this record; `cnnkit look`
uses it to get every layer's feature maps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name

MODEL_INPUT = -1  # a source index: the tensor the model was called with


@dataclass
class Call:
    """One step of the forward pass: a leaf module, or a torch function called between modules."""

    name: str  # module path (e.g. "layer1.0"), or scope + function (e.g. "block.add()"); "#2" on a repeat
    kind: str  # "module" or "function"
    type: str  # module class (Conv2d), or the function (F.max_pool2d, torch.cat, Tensor.add)
    inputs: list[tuple[int, ...]]  # shapes, batch included, of the tensors it took from the data flow
    sources: list[int]  # per input: index of the call that made it, or MODEL_INPUT
    output: tuple[int, ...]  # shape, batch included, of its (first) output tensor
    module: nn.Module | None = None
    func: Callable | None = None
    args: tuple = ()  # a function's arguments (tensors included), for the shape rules
    kwargs: dict[str, Any] = field(default_factory=dict)
    params: int = 0  # parameters this call is the first to use
    value: torch.Tensor | None = None  # a detached copy of the output, with `keep=True`


@dataclass
class Capture:
    calls: list[Call]
    output: tuple[int, ...]  # the model's output shape, batch included
    output_source: int | None  # the call that made the model's output (MODEL_INPUT: the input itself)


class ForwardError(Exception):
    """The forward pass raised: where (the leaf it was in, or the last call before it) and on what."""

    def __init__(self, where: str, module: nn.Module | None, inputs: list[tuple[int, ...]], error: Exception):
        super().__init__(f"{where}: {error}")
        self.where, self.module, self.inputs, self.error = where, module, inputs, error


def is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in an argument, looking inside lists, tuples and dicts (torch.cat takes a list)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _short(func: Callable) -> tuple[str, str]:
    """(type, op) for a torch function: ("F.max_pool2d", "max_pool2d"), ("Tensor.add", "add")."""
    full = resolve_name(func) or getattr(func, "__name__", "function")
    for prefix, short in (("torch.nn.functional.", "F."), ("torch.Tensor.", "Tensor."), ("torch.", "torch.")):
        if full.startswith(prefix):
            full = short + full[len(prefix):]
            break
    full = full.removesuffix(".__get__")  # a property such as x.T
    op = full.rpartition(".")[2].strip("_") or "op"
    return full, op


class _Recorder(TorchFunctionMode):
    """Hooks plus a function mode, sharing one record of who made which tensor."""

    def __init__(self, model: nn.Module, keep: bool):
        super().__init__()
        self.keep = keep
        self.calls: list[Call] = []
        self.maker: dict[int, int] = {}  # id(tensor) → index of the call that made it
        self.alive: list[torch.Tensor] = []  # keeps recorded tensors alive so their ids stay unique
        self.leaf_depth = 0  # > 0 while a leaf runs: its own torch calls are not recorded
        self.scopes: list[str] = []  # the non-leaf modules whose forward is running, innermost last
        self.entered: list[tuple[str, nn.Module, list[tuple[int, ...]]]] = []  # leaves running now
        self.names = {m: n for n, m in model.named_modules()}
        self.counts: dict[str, int] = {}
        self.seen_params: set[int] = set()
        self.handles = []
        for module in model.modules():
            if is_leaf(module):
                self.handles.append(module.register_forward_pre_hook(self._enter_leaf))
                self.handles.append(module.register_forward_hook(self._leave_leaf))
            else:
                self.handles.append(module.register_forward_pre_hook(self._enter_scope))
                self.handles.append(module.register_forward_hook(self._leave_scope))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    # ----------------------------------------------------------------------------- bookkeeping
    def _unique(self, name: str) -> str:
        self.counts[name] = self.counts.get(name, 0) + 1
        return name if self.counts[name] == 1 else f"{name}#{self.counts[name]}"

    def _flow(self, tensors: list[torch.Tensor]) -> tuple[list[tuple[int, ...]], list[int]]:
        """Shapes and makers of the tensors that came out of the recorded forward pass."""
        shapes, sources = [], []
        for t in tensors:
            if id(t) in self.maker:
                shapes.append(tuple(t.shape))
                sources.append(self.maker[id(t)])
        return shapes, sources

    def _new_params(self, tensors: list[torch.Tensor]) -> int:
        count = 0
        for t in tensors:
            if isinstance(t, nn.Parameter) and id(t) not in self.seen_params:
                self.seen_params.add(id(t))
                count += t.numel()
        return count

    def _record(self, call: Call, outputs: list[torch.Tensor]) -> None:
        index = len(self.calls)
        if self.keep and outputs:
            call.value = outputs[0].detach().clone()  # an in-place op later (ReLU(inplace)) must not change it
        self.calls.append(call)
        for t in outputs:
            self.maker[id(t)] = index
            self.alive.append(t)

    def start(self, x: torch.Tensor) -> None:
        self.maker[id(x)] = MODEL_INPUT
        self.alive.append(x)

    # ----------------------------------------------------------------------------- module hooks
    def _enter_scope(self, module, args):
        self.scopes.append(self.names[module])

    def _leave_scope(self, module, args, output):
        self.scopes.pop()

    def _enter_leaf(self, module, args):
        self.leaf_depth += 1
        self.entered.append((self.names[module], module, [tuple(t.shape) for t in _tensors(args)]))

    def _leave_leaf(self, module, args, output):
        try:
            self._record_leaf(module, args, output)
        finally:
            # Only now: the torch calls made above (the copy of the output) are ours, not the model's.
            self.leaf_depth -= 1

    def _record_leaf(self, module, args, output):
        name, _, _ = self.entered.pop()
        outputs = list(_tensors(output))
        if not outputs:
            return
        shapes, sources = self._flow(list(_tensors(args)))
        params = sum(p.numel() for p in module.parameters() if id(p) not in self.seen_params)
        self.seen_params.update(id(p) for p in module.parameters())
        call = Call(self._unique(name or type(module).__name__), "module", type(module).__name__, shapes, sources,
                    tuple(outputs[0].shape), module=module, params=params)
        self._record(call, outputs)

    # ----------------------------------------------------------------------------- torch functions
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.leaf_depth:
            return out
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        shapes, sources = self._flow(inputs)
        outputs = list(_tensors(out))
        # Only steps of the data flow: an op on parameters alone (self.weight.t()) or one that returns
        # no tensor (x.shape, x.dim()) is not a layer.
        if not sources or not outputs:
            return out
        type_name, op = _short(func)
        scope = self.scopes[-1] if self.scopes else ""
        # "add()": the parentheses keep a function's row apart from a module of the same name (self.relu).
        call = Call(self._unique(f"{scope}.{op}()" if scope else f"{op}()"), "function", type_name, shapes, sources,
                    tuple(outputs[0].shape), func=func, args=args, kwargs=kwargs,
                    params=self._new_params(inputs))
        self._record(call, outputs)
        return out


def capture(model: nn.Module, x: torch.Tensor, *, keep: bool = False) -> Capture:
    """Run `model(x)` once and record every leaf module call and every torch function between them.

    With `keep`, each call's output is kept (detached, copied). The model runs as it is (train or
    eval mode, grad or no grad): the caller decides. A forward pass that raises becomes a
    `ForwardError` naming the leaf that raised (or the last call before the failing function).
    """
    recorder = _Recorder(model, keep)
    recorder.start(x)
    try:
        with recorder:
            y = model(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        if recorder.entered:
            where, module, inputs = recorder.entered[-1]
        else:
            last = recorder.calls[-1] if recorder.calls else None
            where = f"after {last.name}" if last else "before the first layer"
            if recorder.scopes and recorder.scopes[-1]:
                where = f"{recorder.scopes[-1]}, {where}"
            module, inputs = None, [last.output if last else tuple(x.shape)]
        raise ForwardError(where, module, inputs, exc) from exc
    finally:
        recorder.remove()
    outputs = list(_tensors(y))
    output = tuple(outputs[0].shape) if outputs else ()
    source = recorder.maker.get(id(outputs[0])) if outputs else None
    return Capture(recorder.calls, output, source)
