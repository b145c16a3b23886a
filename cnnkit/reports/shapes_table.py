"""`cnnkit shapes`' table as rich renderables: the CLI prints them, and so does cnnkit.api.print_shapes."""

from __future__ import annotations

from rich.table import Table

from cnnkit.device import format_bytes
from cnnkit.shapes import ShapeReport


def _fmt_shape(shape) -> str:
    return "×".join(str(d) for d in shape)


def _fmt_pair(pair) -> str:
    if pair is None:
        return ""
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]},{pair[1]}"


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


def shapes_table(report: ShapeReport, title: str) -> tuple[Table, str]:
    """The layer table and the totals line under it."""
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
    totals = (f"input {_fmt_shape(report.input)} → output {_fmt_shape(report.output)}   "
              f"params {report.params:,}   MACs {report.macs:,}   "
              f"activations {format_bytes(report.activation_bytes)} per image (float32)")
    return table, totals
