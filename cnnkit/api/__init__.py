"""cnnkit from Python, for notebooks: the same functions the commands call, returning data.

    from cnnkit.api import train, evaluate, shapes, print_shapes

    result = train("configs/lenet.yaml", model=MyNet(), overrides=["train.epochs=3"])
    result.run_dir, result.test.accuracy          # the run folder, the final report
    evaluate(result.run_dir / "best.pt", model=MyNet()).result.accuracy
    print_shapes(MyNet(), (3, 32, 32))            # `cnnkit shapes` for an object

`train` is `cnnkit train`: the same config gives the same numbers (it calls the same `fit`). A model
*object* trains in place of `model.name`; no import path rebuilds an object defined in a notebook, so
its checkpoint records `model.name: object:__main__.MyNet` and is loaded by passing an object again
(`evaluate(path, model=MyNet())`). Name the model by import path (`model="mynets:MyNet"`, or in the
YAML) for checkpoints that `cnnkit eval`, `predict`, `look` and `export` load by themselves.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from cnnkit.config import Config, apply_overrides, load_config
from cnnkit.evaluation.evaluate import CheckpointEval, evaluate_checkpoint
from cnnkit.models.external import trust_name
from cnnkit.models.trust import trust_all_in_this_process
from cnnkit.shapes import ShapeReport, trace_model
from cnnkit.training.fit import FitResult, fit, resume_config

__all__ = ["evaluate", "print_shapes", "shapes", "train"]


def train(config: str | Path | Config | dict[str, Any] | None = None, *, model: nn.Module | str | None = None,
          overrides: Sequence[str] = (), data_root: str | None = None, run_name: str | None = None,
          overwrite: bool = False, resume: str | Path | None = None) -> FitResult:
    """Train a config (a YAML path, a Config, or a dict of sections) and return the run: `run_dir`,
    `history` (one dict an epoch), `best_epoch`, `test` (best.pt on the test set) and `tta`.

    `model` is a model object to train (in place), or a `model.name` (a registry name, module:Name,
    torchvision:NAME, ...). `overrides` are `--set` strings. `resume` continues a run from its
    last.pt (pass the same object again for a run that trained one)."""
    if resume is not None:
        cfg, payload = resume_config(resume, list(overrides))
        return fit(cfg, data_root=data_root, resume=resume, resume_payload=payload,
                   model=model if isinstance(model, nn.Module) else None)
    named = [f"model.name={model}"] if isinstance(model, str) else []
    cfg = _config(config, [*overrides, *named])
    return fit(cfg, data_root=data_root, run_name=run_name, overwrite=overwrite,
               model=model if isinstance(model, nn.Module) else None)


def evaluate(checkpoint: str | Path, *, model: nn.Module | None = None, data_root: str | None = None,
             tta: bool = False, device: str = "auto", trust_code: bool = False) -> CheckpointEval:
    """`cnnkit eval`: the checkpoint on its test set (`.result.accuracy`, `.report`, `.tta`). A run that
    trained a model object needs that object again (`model=MyNet()`: it takes the saved weights)."""
    if trust_code:
        trust_all_in_this_process()
    return evaluate_checkpoint(checkpoint, data_root=data_root, device=device, tta=tta, model=model)


def shapes(model: nn.Module | str, input_shape: tuple[int, int, int] = (3, 32, 32), **kwargs: Any) -> ShapeReport:
    """`cnnkit shapes`: each layer's output shape, receptive field, params and MACs, as data. `model` is
    an object, or a model.name built with `kwargs` (its model.kwargs)."""
    if isinstance(model, str):
        from cnnkit.models import build_model

        trust_name(model)  # named by the user in their own code
        channels, height, width = input_shape
        model = build_model(model, in_channels=channels, input_size=(height, width), **kwargs)
    return trace_model(model, tuple(input_shape))


def print_shapes(model: nn.Module | str, input_shape: tuple[int, int, int] = (3, 32, 32), **kwargs: Any) -> None:
    """Print `shapes(...)` as `cnnkit shapes` does."""
    from rich.console import Console

    from cnnkit.reports.shapes_table import shapes_table

    label = model if isinstance(model, str) else type(model).__name__
    table, totals = shapes_table(shapes(model, input_shape, **kwargs), f"{label} on {'×'.join(map(str, input_shape))}")
    console = Console()
    if not console.is_terminal and not console.is_jupyter:
        console = Console(width=160)  # piped or logged: one line per layer, as the CLI prints it
    console.print(table)
    console.print(totals)


def _config(config: str | Path | Config | dict[str, Any] | None, overrides: list[str]) -> Config:
    if isinstance(config, Config):
        config = config.to_dict()
    if isinstance(config, dict):
        resolved = apply_overrides(copy.deepcopy(config), overrides, "the config given to cnnkit.api.train")
        trust_name(resolved.model.name)  # the user's own code named it
        return resolved
    return load_config(config, overrides)
