"""Commands that describe without training: config show, models, shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
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
def models_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List the registered models with their parameter counts (CIFAR-10 input sizes)."""
    from cnnkit.models import MODELS, build_model, count_params, describe_settings

    rows = []
    for name, entry in MODELS.items():
        rows.append({"name": name, "task": entry.task,
                     "params": count_params(build_model(name, in_channels=entry.channels)),
                     "summary": entry.summary, "kwargs": describe_settings(name)})
    if as_json:
        return _print_json(rows)
    table = Table(title="cnnkit models")
    for col, justify in (("name", "left"), ("task", "left"), ("params", "right"), ("summary", "left"),
                         ("model.kwargs (default: what it takes)", "left")):
        table.add_column(col, justify=justify)
    for row in rows:
        kwargs = "\n".join(f"{k}={v['default']}: {v['takes']}" for k, v in row["kwargs"].items())
        table.add_row(row["name"], row["task"], f"{row['params']:,}", row["summary"], kwargs)
    console.print(table)


# ---------------------------------------------------------------------------------------------- shapes
shapes_app = typer.Typer(
    help="Show how every conv and pool layer changes a tensor, with the arithmetic.",
    invoke_without_command=True,
)
app.add_typer(shapes_app, name="shapes")


def _fmt_shape(shape) -> str:
    return "×".join(str(d) for d in shape)


def _fmt_pair(pair) -> str:
    if pair is None:
        return ""
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]},{pair[1]}"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _formula_cell(formulas: list[str]) -> str:
    if not formulas:
        return ""
    if formulas[0] == formulas[1]:
        return f"H,W: {formulas[0]}"
    return f"H: {formulas[0]}\nW: {formulas[1]}"


def _inputs_cell(row) -> str:
    if not row.inputs:
        return _fmt_shape(row.input)
    shapes = [_fmt_shape(i) for i in row.inputs]
    return f"{len(shapes)} × {shapes[0]}" if len(set(shapes)) == 1 else " + ".join(shapes)


def _flow_note(row, previous: str) -> str:
    """'← bn2 + stem' under a row whose input is not simply the row above's (names inside the row's own
    block are written relative to it)."""
    if not row.sources or row.sources == [previous]:
        return ""
    scope = row.name.rpartition(".")[0]
    names = [s.removeprefix(f"{scope}.") if scope and s.startswith(f"{scope}.") else s for s in row.sources]
    return f"\n[dim]← {' + '.join(names)}[/dim]"


def _render_shapes(report, title: str) -> None:
    caption = ("output size = ⌊(in + 2·p − d·(k−1) − 1) / s⌋ + 1 per dimension; "
               "RF: receptive field and jump: effective stride, in input pixels")
    previous = "input"
    notes = []
    for row in report.layers:
        notes.append(_flow_note(row, previous))
        previous = row.name
    if any(notes):
        caption += ("; ← the rows a layer takes its input from, when not the row above (input: the model's "
                    "input); name(): a torch function called between modules")
    if not all(row.computed for row in report.layers):
        caption += "; (torch): no shape rule for that layer, the shape torch produced"
    table = Table(title=title, caption=caption)
    table.add_column("layer", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("k s p d", justify="center", no_wrap=True)
    table.add_column("kernel shape", no_wrap=True)
    table.add_column("input → output", no_wrap=True)
    table.add_column("output size")
    table.add_column("RF", justify="right")
    table.add_column("jump", justify="right")
    table.add_column("params", justify="right")
    table.add_column("%", justify="right")
    table.add_column("MACs", justify="right")
    total = max(1, report.params)
    for row, note in zip(report.layers, notes, strict=True):
        ksp = " ".join(_fmt_pair(v) for v in (row.kernel, row.stride, row.padding, row.dilation)) if row.kernel else ""
        kind = row.type if row.layers == 1 else f"{row.type} ({row.layers} layers)"
        size = _formula_cell(row.formulas) if row.computed or row.layers > 1 else "[dim](torch)[/dim]"
        table.add_row(row.name + note, kind, ksp, _fmt_shape(row.kernel_shape) if row.kernel_shape else "",
                      f"{_inputs_cell(row)} → {_fmt_shape(row.output)}", size, _fmt_pair(row.receptive_field),
                      _fmt_pair(row.jump), f"{row.params:,}", f"{100 * row.params / total:.1f}" if row.params else "",
                      f"{row.macs:,}")
    console.print(table)
    console.print(
        f"input {_fmt_shape(report.input)} → output {_fmt_shape(report.output)}   "
        f"params {report.params:,}   MACs {report.macs:,}   "
        f"activations {_fmt_bytes(report.activation_bytes)} per image (float32)"
    )


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
    _render_shapes(report, f"{cfg.model.name} on {_fmt_shape(shape)}")


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


