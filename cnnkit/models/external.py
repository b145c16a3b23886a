"""Models from outside the registry: the user's own code, torchvision and timm.

`model.name` is a registry name (`lenet`), or `SOURCE:TARGET`:

    torchvision:resnet18         any classifier torchvision.models lists, built without weights
    timm:resnet18                any model timm lists (pip install 'cnnkit[timm]'), built without weights
    mypkg.nets:ResNet18          a class or function importable from the working directory or PYTHONPATH
    path/to/net.py:ResNet18      the same from a file that is not in a package (the entry-point syntax)

`model.kwargs` go to the constructor. The size arguments (`in_channels`, `num_classes`,
`input_size`) are passed to a user's constructor when it names them, as for registry models; one
that does not (a zoo's `ResNet18()` with 10 classes built in) is checked by a forward pass on the
meta device before any data loads (`check_output`). Every way this can go wrong is one
ConfigError line naming the model. A user's code is imported only once its import path is trusted
(cnnkit.models.trust): a checkpoint is data and never makes cnnkit import what the user did not choose.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.errors import ConfigError, one_line
from cnnkit.models import trust


@dataclass(frozen=True)
class Sizes:
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]


@dataclass(frozen=True)
class Source:
    """One place a `model.name` outside the registry comes from."""

    build: Callable[[str, str, Sizes, dict[str, Any]], nn.Module]  # (model.name, target, sizes, kwargs)
    summary: str
    needs_trust: bool = False  # imports code the user wrote (or was sent)
    adapts_stem: bool = False  # model.cifar_stem applies (an ImageNet architecture)
    listing: Callable[[str], list[str]] | None = None  # the names it offers, matching a shell pattern


# Module path and attribute: dotted Python names (`pkg.mod:Outer.Inner`); a file path ends in .py.
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

# Keyword arguments that would make a library fetch or unpickle weights: refused (see _refuse_weights).
WEIGHT_KWARGS = ("weights", "weights_backbone", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                 "checkpoint_path", "cache_dir")


def split_name(name: str) -> tuple[str, Source, str]:
    """'timm:resnet18' → ('timm', its Source, 'resnet18'); an import path → ('import', IMPORT, the whole name);
    a name without ':' → ('registry', REGISTRY, name)."""
    if ":" not in name:
        return "registry", REGISTRY, name
    prefix, _, target = name.partition(":")
    if prefix in SOURCES:
        return prefix, SOURCES[prefix], target
    return "import", IMPORT, name


def name_problem(name: str) -> str | None:
    """What is wrong with a `SOURCE:TARGET` name's spelling (None when it reads right). Nothing is imported."""
    kind, _, target = split_name(name)
    if kind == "registry":
        return None
    if kind != "import":
        return None if target.strip() else f"nothing after '{kind}:'; e.g. {kind}:resnet18"
    module, _, attr = name.rpartition(":")
    if not _DOTTED.fullmatch(attr):
        return f"{attr!r} after the last ':' is not a Python name; write module:Name, e.g. mynets:ResNet18"
    if not (module.endswith(".py") or _DOTTED.fullmatch(module)):
        return (f"{module!r} is neither a module (dotted names, e.g. mypkg.nets) nor a .py file; write "
                "mypkg.nets:ResNet18 or path/to/nets.py:ResNet18")
    return None


def is_file_path(name: str) -> bool:
    return split_name(name)[0] == "import" and name.rpartition(":")[0].endswith(".py")


def resolved_name(name: str) -> str:
    """The name as a run saves it: a file path made absolute, so `cnnkit eval` finds the file from any folder."""
    if not is_file_path(name):
        return name
    module, _, attr = name.rpartition(":")
    return f"{Path(module).expanduser().resolve()}:{attr}"


def needs_trust(name: str) -> bool:
    return split_name(name)[1].needs_trust


def trust_name(name: str, *, remember: bool = False) -> None:
    """The user chose this model name (their config, --set, their Python call): its code may be imported."""
    if needs_trust(name):
        trust.trust(resolved_name(name), remember=remember)


def untrusted_problem(name: str) -> str | None:
    """Why a model name may not be built now (it names code the user has not trusted), or None."""
    if not needs_trust(name) or trust.is_trusted(resolved_name(name)):
        return None
    what = "the Python file" if is_file_path(name) else "the Python module"
    return (f"its model.name {name} would import and run {what} it names, which you have not trusted on this "
            f"machine (nothing was imported); if you trust that code, add --trust-code, or train with it once "
            f"(`cnnkit train` records the import paths you train with in {trust.trust_file()})")


def build_external(name: str, sizes: Sizes, kwargs: dict[str, Any], cifar_stem: bool) -> nn.Module:
    """Build a `SOURCE:TARGET` model; every failure is one ConfigError line."""
    problem = name_problem(name)
    if problem is not None:
        raise ConfigError(f"model.name {name}: {problem}")
    kind, source, target = split_name(name)
    if cifar_stem and not source.adapts_stem:
        raise ConfigError(f"model.cifar_stem: applies to torchvision: and timm: models (ImageNet stems); "
                          f"{name} is built by its own code as it is — drop model.cifar_stem")
    untrusted = untrusted_problem(name)
    if untrusted is not None:
        raise ConfigError(f"model {name}: {untrusted}")
    model = source.build(name, target, sizes, kwargs)
    if cifar_stem:
        from cnnkit.models.stems import adapt_stem

        adapt_stem(model, name)
    return model


def check_output(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int, label: str) -> None:
    """One forward pass on the meta device (no memory, no time): the model takes the data's images and
    gives one score per class. A constructor that hard-codes 10 classes meets CIFAR-100 here, not after
    the data has loaded."""
    probe = model if _on_meta(model) else copy.deepcopy(model).to("meta")
    was_training = probe.training
    probe.eval()  # BatchNorm on a batch of 2 either way; eval changes no running statistics
    try:
        with torch.no_grad():
            out = probe(torch.empty(2, *input_shape, device="meta"))  # (2, C, H, W) → (2, K)
    except Exception as exc:  # whatever the user's forward raises
        shape = "×".join(map(str, input_shape))
        raise ConfigError(f"model {label}: its forward pass fails on {shape} images: {_short(exc)}; "
                          f"fix the model or give the input it takes (model.in_channels / model.input_size)") from None
    finally:
        probe.train(was_training)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != (2, num_classes):
        raise ConfigError(f"model {label}: its output for a batch of 2 images is {got}, but the data has "
                          f"{num_classes} classes, so it must be (2, {num_classes}); give its constructor a "
                          f"num_classes argument (cnnkit passes it when the constructor names it) or make its "
                          "last layer that size")


def _on_meta(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return bool(tensors) and all(t.is_meta for t in tensors)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {one_line(exc)}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------------ a user's own code


def _build_import_path(name: str, target: str, sizes: Sizes, kwargs: dict[str, Any]) -> nn.Module:
    module_part, _, attr = target.rpartition(":")
    module = _load_file(module_part, name) if module_part.endswith(".py") else _import_module(module_part, name)
    builder = _attribute(module, attr, name, Path(module_part).name if module_part.endswith(".py") else module_part)
    if not callable(builder):
        raise ConfigError(f"model.name {name}: {attr} is a {type(builder).__name__}, not a class or a function "
                          "that returns an nn.Module")
    return call_builder(builder, name, sizes, kwargs)


def call_builder(builder: Callable[..., Any], label: str, sizes: Sizes, kwargs: dict[str, Any]) -> nn.Module:
    """Call a user's class or function with model.kwargs and the size arguments it names."""
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # a builtin or C extension without a signature: pass what we have
        parameters = {}
    named = {k for k, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values()) or not parameters
    unknown = sorted(set(kwargs) - named) if not takes_any else []
    if unknown:
        raise ConfigError(f"model.kwargs: {', '.join(unknown)} not accepted by {label}; it takes: "
                          f"{', '.join(sorted(named)) or 'no arguments'}")
    size_values = {"in_channels": sizes.in_channels, "num_classes": sizes.num_classes,
                   "input_size": tuple(sizes.input_size)}
    arguments = {**{k: v for k, v in size_values.items() if k in named}, **kwargs}
    try:
        model = builder(**arguments)
    except Exception as exc:  # the user's constructor: any error it raises is theirs to read
        given = ", ".join(f"{k}={v!r}" for k, v in arguments.items()) or "no arguments"
        raise ConfigError(f"model {label}: building it raised {_short(exc)} (called with {given}); "
                          "check model.kwargs and the constructor") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {label}: calling it returned a {type(model).__name__}, not an nn.Module; "
                          "name a class, or a function that returns the model")
    return model


def _import_module(module_name: str, label: str):
    # Importable from the working directory, as with `python -m`: the `cnnkit` script's own folder is
    # what Python puts first on sys.path, not the folder the user runs it from.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"model.name {label}: no module named {exc.name!r} in the working directory ({cwd}) "
                              "or on PYTHONPATH; run cnnkit from the folder that holds it, or add that folder to "
                              "PYTHONPATH (PYTHONPATH=/path/to/folder cnnkit ...)") from None
        raise ConfigError(f"model.name {label}: importing {module_name} failed: {_short(exc)}; install the "
                          "package it needs") from None
    except Exception as exc:
        raise ConfigError(f"model.name {label}: importing {module_name} raised {_short(exc)}") from None


def _load_file(file: str, label: str):
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"model.name {label}: no file {path}; the part before ':' is a .py file, relative to "
                          f"the working directory ({os.getcwd()}) or absolute")
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"_cnnkit_model_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses, typing and torch.compile look classes up by module
    sys.path.insert(0, str(path.parent))  # its own helpers (`from blocks import Block`), as when run as a script
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ConfigError(f"model.name {label}: running {path.name} raised {_short(exc)}") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def _attribute(module, attr: str, label: str, where: str):
    value = module
    for part in attr.split("."):
        if not hasattr(value, part):
            offered = [k for k, v in vars(module).items() if not k.startswith("_") and _builds_modules(v, module)]
            close = difflib.get_close_matches(part, offered, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listed = f"; it defines: {', '.join(offered[:12])}" if offered else ""
            raise ConfigError(f"model.name {label}: {where} has no {part!r}{hint}{listed}")
        value = getattr(value, part)
    return value


def _builds_modules(value: Any, module) -> bool:
    """A class that is an nn.Module, or a function, defined in `module` itself: what `model.name` can name."""
    if isinstance(value, type):
        return issubclass(value, nn.Module) and value.__module__ == module.__name__
    return inspect.isfunction(value) and value.__module__ == module.__name__


# ------------------------------------------------------------------------------------------ torchvision


def _refuse_weights(name: str, kwargs: dict[str, Any]) -> None:
    asked = [k for k in WEIGHT_KWARGS if kwargs.get(k) not in (None, False)]
    if asked:
        raise ConfigError(f"model.kwargs.{asked[0]}: cnnkit builds {name} without pretrained weights (it does not "
                          "download or load weight files it did not write, so a config or checkpoint cannot "
                          "make it fetch or unpickle one); drop it to train from scratch, or start from a cnnkit "
                          "checkpoint with --init-from")


def _closest(name: str, target: str, names: list[str], command: str) -> ConfigError:
    close = difflib.get_close_matches(target, names, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"model.name {name}: no such model {target!r}{hint}; `cnnkit models {command}` lists them")


def _torchvision_names(pattern: str = "*") -> list[str]:
    import torchvision.models

    # module=torchvision.models: the image classifiers only (not detection, segmentation, video)
    return [n for n in torchvision.models.list_models(module=torchvision.models) if fnmatch.fnmatch(n, pattern)]


def _build_torchvision(name: str, target: str, sizes: Sizes, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision.models

    if target not in _torchvision_names():
        raise _closest(name, target, _torchvision_names(), "torchvision")
    _refuse_weights(name, kwargs)
    build = lambda **kw: torchvision.models.get_model(target, weights=None, **kw)  # noqa: E731
    model = call_builder(build, name, Sizes(3, sizes.num_classes, sizes.input_size),
                         {"num_classes": sizes.num_classes, **kwargs})
    if sizes.in_channels != 3:  # torchvision has no in_chans argument: its first conv is replaced
        from cnnkit.models.stems import set_in_channels

        set_in_channels(model, sizes.in_channels, name)
    return model


# ------------------------------------------------------------------------------------------------ timm


def _import_timm(name: str):
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model.name {name}: needs timm, which is not installed; pip install 'cnnkit[timm]' "
                          "(or pip install timm)") from None
    return timm


def _timm_names(pattern: str = "*") -> list[str]:
    return list(_import_timm(f"timm:{pattern}").list_models(pattern))


def _build_timm(name: str, target: str, sizes: Sizes, kwargs: dict[str, Any]) -> nn.Module:
    timm = _import_timm(name)
    if not timm.is_model(target):
        raise _closest(name, target, timm.list_models(), "timm")
    _refuse_weights(name, kwargs)
    build = lambda **kw: timm.create_model(target, pretrained=False, **kw)  # noqa: E731
    return call_builder(build, name, sizes, {"num_classes": sizes.num_classes, "in_chans": sizes.in_channels,
                                             **kwargs})


# ---------------------------------------------------------------------------------- a Python object


def object_name(model: nn.Module) -> str:
    """What a run trained from a model object (cnnkit.api.train(model=...)) records as its model.name."""
    return f"object:{type(model).__module__}.{type(model).__qualname__}"


def _build_object(name: str, target: str, sizes: Sizes, kwargs: dict[str, Any]) -> nn.Module:
    qualname = target.rpartition(".")[2] or target
    raise ConfigError(f"model {name}: this run trained a Python object passed to cnnkit.api.train(model=...), "
                      f"which no import path rebuilds; load it in Python with the object again: "
                      f"cnnkit.api.evaluate(CHECKPOINT, model={qualname}(...)) — or train with model.name: "
                      "module:Name to get a checkpoint every command can load")


def _not_external(name: str, target: str, sizes: Sizes, kwargs: dict[str, Any]) -> nn.Module:
    raise ConfigError(f"model.name {name}: a registry name is built by cnnkit.models.build_model")


SOURCES: dict[str, Source] = {
    "torchvision": Source(_build_torchvision, "torchvision.models' classifiers, without weights",
                          adapts_stem=True, listing=_torchvision_names),
    "timm": Source(_build_timm, "timm's models, without weights (pip install 'cnnkit[timm]')",
                   adapts_stem=True, listing=_timm_names),
    "object": Source(_build_object, "a model object given to cnnkit.api.train: rebuilt only by passing it again"),
}
REGISTRY = Source(_not_external, "cnnkit's own models (cnnkit/models/registry.py)")
IMPORT = Source(_build_import_path, "module:Name or path/to/file.py:Name: a class or function of your own",
                needs_trust=True)


def list_source(source: str, pattern: str = "*") -> list[str]:
    """`cnnkit models torchvision 'resnet*'`: the names a source offers."""
    entry = SOURCES.get(source)
    if entry is None or entry.listing is None:
        listable = [k for k, v in SOURCES.items() if v.listing is not None]
        raise ConfigError(f"cnnkit models {source}: cannot list {source!r}; choose {' or '.join(listable)} "
                          "(or no argument for cnnkit's own models)")
    return entry.listing(pattern)
