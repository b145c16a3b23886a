"""The models, in a name → entry registry (timm style); one file per family.

Every constructor takes `in_channels`, `num_classes` and `input_size` where they apply; flatten
sizes come from `cnnkit.shapes`, never hard-coded, so a model fits any input it can take. The next
model is one new file here plus one line in MODELS.

`model.kwargs` are checked against the constructor's annotations before anything is built (and,
through cnnkit.config, as soon as a config is read): a value of the wrong type is one ConfigError
line naming the key, what it got and what it takes. Ranges are the constructor's to check: it
raises ValueError("key: what it needs, got X"), which `build_model` turns into a ConfigError.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Literal, Union

from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.models.bn_cnn import BNCNN, ConvBNReLU
from cnnkit.models.edge import Corr2d, EdgeDetector
from cnnkit.models.external import Sizes, build_external, name_problem
from cnnkit.models.fast import FastNet
from cnnkit.models.lenet import LeNet
from cnnkit.models.registry import MODELS, ModelEntry
from cnnkit.shapes import Pair

__all__ = ["MODELS", "BNCNN", "ConvBNReLU", "Corr2d", "EdgeDetector", "FastNet", "LeNet", "ModelEntry", "build_model",
           "check_kwargs", "count_params", "describe_settings",
           "kwargs_problem", "model_settings", "model_task"]

# The input and output sizes: model.in_channels / num_classes / input_size, never model.kwargs.
SIZE_ARGUMENTS = ("in_channels", "num_classes", "input_size")


def build_model(name: str, *, in_channels: int = 3, num_classes: int = 10, input_size: Pair = (32, 32),
                cifar_stem: bool = False, **kwargs: Any) -> nn.Module:
    """Build a model by name, passing only the size arguments its constructor accepts: a registered
    one, or `SOURCE:TARGET` (torchvision:, timm:, module:Name, file.py:Name; cnnkit.models.external)."""
    if ":" in name:
        return build_external(name, Sizes(in_channels, num_classes, tuple(input_size)), kwargs, cifar_stem)
    if cifar_stem:
        raise ConfigError(f"model.cifar_stem: {name} is cnnkit's own model, built for small images already; the "
                          "switch applies to torchvision: and timm: models — drop it")
    check_kwargs(name, kwargs)
    build = MODELS[name].build
    accepted = inspect.signature(build).parameters
    sizes = {"in_channels": in_channels, "num_classes": num_classes, "input_size": tuple(input_size)}
    try:
        return build(**{k: v for k, v in sizes.items() if k in accepted}, **kwargs)
    except ValueError as exc:  # the constructor's own range check, e.g. "widths: need three positive ..."
        key = str(exc).partition(":")[0]
        where = f"model.kwargs.{key}" if key in kwargs else f"model {name!r}"
        detail = str(exc)[len(key) + 1:].strip() if key in kwargs else str(exc)
        raise ConfigError(" ".join(f"{where}: {detail}; see `cnnkit models` for what {name} takes".split())) from None


def check_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raise ConfigError for an unknown model, or a model.kwargs key its constructor does not take or a
    value that does not fit the constructor's annotation for it."""
    problem = kwargs_problem(name, kwargs)
    if problem is not None:
        raise ConfigError(problem[1])


def kwargs_problem(name: str, kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """(the dotted key at fault, one line saying what is wrong), or None when the settings fit the model.

    A model from outside the registry is not imported to read its signature here (a config can come
    from a checkpoint, which must not import code): its kwargs are checked when it is built."""
    if ":" in name:
        problem = name_problem(name)
        return None if problem is None else ("model.name", f"model.name: {problem}")
    if name not in MODELS:
        return "model.name", f"model.name: unknown model {name!r}; choose one of: {', '.join(MODELS)}"
    settings = model_settings(name)
    unknown = sorted(set(kwargs) - set(settings) - set(SIZE_ARGUMENTS))
    if unknown:
        return f"model.kwargs.{unknown[0]}", (f"model.kwargs: {', '.join(unknown)} not accepted by model {name!r}; "
                                              f"it takes: {', '.join(settings) or 'no extra arguments'}")
    for key, value in kwargs.items():
        if key in settings and not _fits(settings[key][0], value):
            annotation, default = settings[key]
            return f"model.kwargs.{key}", (f"model.kwargs.{key}: got {value!r}; model {name!r} takes "
                                           f"{_describe(annotation)} there (default {_plain(default)})")
    return None


def model_task(name: str) -> str:
    """The cnnkit.tasks name a model learns: its registry entry's; every other model is a classifier."""
    return MODELS[name].task if name in MODELS else "classify"


def model_settings(name: str) -> dict[str, tuple[Any, Any]]:
    """The model's own constructor arguments (sizes aside): name → (annotation, default)."""
    build = MODELS[name].build
    function = build.__init__ if isinstance(build, type) else build
    hints = typing.get_type_hints(function)
    return {key: (hints.get(key, Any), p.default) for key, p in inspect.signature(build).parameters.items()
            if key not in SIZE_ARGUMENTS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def describe_settings(name: str) -> dict[str, dict[str, Any]]:
    """`cnnkit models`: each model.kwargs key with its default and what it takes, in words."""
    return {key: {"default": _plain(default), "takes": _describe(annotation)}
            for key, (annotation, default) in model_settings(name).items()}


def _fits(annotation: Any, value: Any) -> bool:
    """Whether a YAML value (lists stand for tuples) fits a constructor annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(a, value) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(a, v) for a, v in zip(args, value, strict=True))
        return all(_fits(args[0] if args else Any, v) for v in value)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
          str: ("a string", "strings"), type(None): ("null", "nulls")}


def _describe(annotation: Any) -> str:
    """'a list of 3 integers', 'one of 'torch', 'scratch'': what an annotation takes, in words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        element = args[0] if args else Any
        plural = _NAMES.get(element, ("", "values"))[1]
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {plural}"
        return f"a list of {plural}"
    return _NAMES.get(annotation, (getattr(annotation, "__name__", str(annotation)),))[0]


def _plain(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
