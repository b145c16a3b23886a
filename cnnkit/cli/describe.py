"""Commands that describe without training: config show, models, shapes."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Optional

import typer
from rich.columns import Columns
from rich.table import Table

from cnnkit.cli.app import ConfigOpt, SetOpt, _guard, _print_json, app, console

config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")


# ---------------------------------------------------------------------------------------------- config
@config_app.command("show")
@_guard
def config_show(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt):
    """Print the resolved config (defaults < YAML < --set) as YAML."""
    from cnnkit.config import load_config

    print(load_config(config, set_ or []).to_yaml(), end="")


# ---------------------------------------------------------------------------------------------- models
@app.command("models")
@_guard
def models_cmd(
    source: Optional[str] = typer.Argument(None, help="torchvision or timm: list the models that source offers."),
    pattern: str = typer.Argument("*", help="Only names matching this shell pattern, e.g. 'resnet*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """List cnnkit's own models (parameters at CIFAR-10 sizes, model.kwargs), or with `torchvision` / `timm`
    the names `model.name: torchvision:NAME` / `timm:NAME` reaches (`cnnkit models timm 'resnet*'`)."""
    if source is not None:
        return _list_source(source, pattern, as_json)
    from cnnkit.models import MODELS, build_model, count_params, describe_settings

    rows = []
    for name, entry in MODELS.items():
        if not fnmatch.fnmatch(name, pattern):
            continue
        with torch_meta():  # shapes only: the big classics cost nothing to count
            params = count_params(build_model(name, in_channels=entry.channels))
        rows.append({"name": name, "task": entry.task, "params": params,
                     "summary": entry.summary, "kwargs": describe_settings(name)})
    if as_json:
        return _print_json(rows)
    table = Table(title="cnnkit models", caption="any other model: model.name module:Name, path/to/file.py:Name, "
                  "torchvision:NAME or timm:NAME (cnnkit models torchvision / cnnkit models timm 'PATTERN')")
    for col, justify in (("name", "left"), ("task", "left"), ("params", "right"), ("summary", "left"),
                         ("model.kwargs (default: what it takes)", "left")):
        table.add_column(col, justify=justify)
    for row in rows:
        kwargs = "\n".join(f"{k}={v['default']}: {v['takes']}" for k, v in row["kwargs"].items())
        table.add_row(row["name"], row["task"], f"{row['params']:,}", row["summary"], kwargs)
    console.print(table)


def torch_meta():
    import torch

    return torch.device("meta")


def _list_source(source: str, pattern: str, as_json: bool) -> None:
    from cnnkit.models.external import list_source

    names = list_source(source, pattern)
    if as_json:
        return _print_json([f"{source}:{n}" for n in names])
    console.print(Columns([f"{source}:{n}" for n in names], equal=True, column_first=True))
    print(f"{len(names)} {source} model(s) matching {pattern!r}; train one with --set model.name={source}:NAME "
          "(and model.cifar_stem=true for 32×32 images; docs/stems.md)")


# ---------------------------------------------------------------------------------------------- shapes
shapes_app = typer.Typer(
    help="Show how every conv and pool layer changes a tensor, with the arithmetic.",
    invoke_without_command=True,
)
app.add_typer(shapes_app, name="shapes")


def _render_shapes(report, title: str) -> None:
    from cnnkit.reports.shapes_table import shapes_table

    table, totals = shapes_table(report, title)
    console.print(table)
    console.print(totals)


@shapes_app.callback()
@_guard
def shapes_model(
    ctx: typer.Context,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A registered model name (see `cnnkit models`)."),
    input_: Optional[str] = typer.Option(None, "--input", "-i", help="Input shape CxHxW, e.g. 3x32x32."),
    depth: Optional[int] = typer.Option(None, "--depth", help="Fold blocks nested deeper than this into one row."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Trace a model layer by layer: `cnnkit shapes --model bn_cnn --input 1x28x28`."""
    if ctx.invoked_subcommand is not None:
        return
    from cnnkit.build import input_shape, model_from_config
    from cnnkit.config import config_from_dict, load_config
    from cnnkit.errors import ConfigError
    from cnnkit.shapes import parse_input_shape, trace_model

    # --model replaces model.name (before model.kwargs are checked: they are the new model's), and
    # --input model.in_channels / model.input_size.
    by_model = [f"model.name={model}"] if model is not None else []
    try:
        cfg = load_config(config, [*(set_ or []), *by_model])
    except ConfigError as exc:
        if not by_model:
            raise
        raise ConfigError(str(exc).replace(f"--set {by_model[0]}:", f"--model {model}:")) from None  # as typed
    if input_ is not None:
        chosen = cfg.to_dict()
        c, h, w = parse_input_shape(input_)
        chosen["model"]["in_channels"], chosen["model"]["input_size"] = c, [h, w]
        cfg = config_from_dict(chosen, "--input")
    shape = input_shape(cfg)
    report = trace_model(model_from_config(cfg), shape).at_depth(depth)
    if as_json:
        return _print_json(report.to_dict())
    _render_shapes(report, f"{cfg.model.name} on {'×'.join(map(str, shape))}")


@shapes_app.command("conv")
@_guard
def shapes_conv(
    input_: str = typer.Option(..., "--input", "-i", help="Input shape CxHxW, e.g. 1x28x28."),
    out_channels: int = typer.Option(1, "--out-channels", help="Number of filters."),
    kernel: str = typer.Option(..., "--kernel", "-k", help="Kernel size: K or H,W."),
    stride: str = typer.Option("1", "--stride", help="Stride: S or H,W."),
    padding: str = typer.Option("0", "--padding", help="Zero padding: P or H,W."),
    dilation: str = typer.Option("1", "--dilation", help="Dilation: D or H,W."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """One Conv2d: `cnnkit shapes conv --input 1x28x28 --out-channels 3 --kernel 3 --stride 2 --padding 1`."""
    from cnnkit.shapes import ShapeReport, conv_row, parse_input_shape, parse_pair

    if out_channels < 1:
        from cnnkit.errors import ShapeError

        raise ShapeError(f"--out-channels must be ≥ 1, got {out_channels}")
    shape = parse_input_shape(input_)
    row = conv_row("conv", shape, out_channels, parse_pair(kernel, "kernel"), parse_pair(stride, "stride"),
                   parse_pair(padding, "padding"), parse_pair(dilation, "dilation"))
    _single_layer(ShapeReport(shape, row.output, [row]), as_json)


@shapes_app.command("pool")
@_guard
def shapes_pool(
    input_: str = typer.Option(..., "--input", "-i", help="Input shape CxHxW, e.g. 1x4x4."),
    kind: str = typer.Option("max", "--kind", help="max or avg."),
    kernel: str = typer.Option(..., "--kernel", "-k", help="Window size: K or H,W."),
    stride: Optional[str] = typer.Option(None, "--stride", help="Stride: S or H,W (default: the kernel, as in torch)."),
    padding: str = typer.Option("0", "--padding", help="Padding: P or H,W (at most half the kernel)."),
    dilation: str = typer.Option("1", "--dilation", help="Dilation (max pooling only): D or H,W."),
    ceil_mode: bool = typer.Option(False, "--ceil-mode", help="Round the output size up instead of down."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """One MaxPool2d/AvgPool2d: `cnnkit shapes pool --kind max --input 1x4x4 --kernel 2,3 --stride 2,3`."""
    from cnnkit.errors import ShapeError
    from cnnkit.shapes import ShapeReport, parse_input_shape, parse_pair, pool_row

    if kind not in ("max", "avg"):
        raise ShapeError(f"--kind {kind!r}: choose max or avg")
    dil = parse_pair(dilation, "dilation")
    if kind == "avg" and dil != (1, 1):
        raise ShapeError("--dilation: average pooling has no dilation in torch; drop it or use --kind max")
    shape = parse_input_shape(input_)
    row = pool_row("pool", shape, kind, parse_pair(kernel, "kernel"),
                   None if stride is None else parse_pair(stride, "stride"), parse_pair(padding, "padding"), dil,
                   ceil_mode)
    _single_layer(ShapeReport(shape, row.output, [row]), as_json)


def _single_layer(report, as_json: bool) -> None:
    if as_json:
        return _print_json(report.to_dict())
    row = report.layers[0]
    _render_shapes(report, f"{row.type}")


