"""`cnnkit look`: what each layer of a trained model sees in your pictures (cnnkit.inspection.look)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cnnkit.cli.app import TrustCodeOpt, _guard, _print_json, app


@app.command("look")
@_guard
def look_cmd(
    images: Optional[list[Path]] = typer.Argument(None, help="Picture files (the edge toy: none means the "
                                                  "article's striped picture)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint, e.g. runs/NAME/best.pt."),
    trust_code: bool = TrustCodeOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the pictures (default: look/ "
                                       "beside the checkpoint)."),
    class_name: Optional[str] = typer.Option(None, "--class", help="Explain this class with Grad-CAM instead "
                                             "of the predicted one."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Grad-CAM at this layer (a name from `cnnkit "
                                        "shapes`, e.g. conv1) instead of the last conv layer."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: layers and shapes, top classes, Grad-CAM peaks."),
):
    """Look inside a trained model: each layer's feature maps, the first filters, and Grad-CAM
    (`cnnkit look --checkpoint runs/X/best.pt cat.jpg`)."""
    from cnnkit.models.trust import trust_checkpoints

    trust_checkpoints(trust_code)
    from cnnkit.inspection.look import look

    report = look(checkpoint, list(images or []), out_dir=out, class_name=class_name, layer=layer, device=device)
    if as_json:
        return _print_json(report.to_dict())
    c, h, w = report.input
    print(f"{report.checkpoint}: {report.model}, epoch {report.epoch}; input {c}×{h}×{w}; "
          f"{len(report.layers)} layers traced, each layer's maps the shape `cnnkit shapes` computes")
    for picture in report.pictures:
        line = f"{picture.path}:"
        if picture.top:
            line += " " + ", ".join(f"{cls} {p:.1%}" for cls, p in picture.top)
        if picture.peak is not None:
            line += f"; Grad-CAM ({picture.explained}) peaks at row {picture.peak[0]}, column {picture.peak[1]}"
        if picture.edge_error is not None:
            line += f" output vs X ⋆ [[1, -1]]: max difference {picture.edge_error:.3g}"
        print(line)
    if report.kernel is not None:
        print(f"learned kernel: {report.kernel}  (target [[1, -1]])")
    for path in report.written:
        print(f"wrote {path}")
    for note in report.notes:
        print(f"note: {note}")
