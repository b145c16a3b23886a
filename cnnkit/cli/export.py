"""`cnnkit export`: a checkpoint as a torch.export (.pt2) or ONNX file, checked against the model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cnnkit.cli.app import TrustCodeOpt, _guard, _print_json, app


@app.command("export")
@_guard
def export_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint, e.g. runs/NAME/best.pt."),
    trust_code: bool = TrustCodeOpt,
    fmt: str = typer.Option("pt2", "--format", "-f", help="pt2 (torch.export) or onnx (needs cnnkit[onnx])."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write (default: beside the checkpoint, "
                                       "best.pt2 / best.onnx)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="CIFAR-10 folder for the check images "
                                            "(beats CNNKIT_DATA and data.root)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Export a model with its normalisation folded in; takes float32 N×C×H×W images in [0, 1]."""
    from cnnkit.models.trust import trust_checkpoints

    trust_checkpoints(trust_code)
    from cnnkit.evaluation.export import export_checkpoint

    r = export_checkpoint(checkpoint, fmt, out, data_root=data_root)
    if as_json:
        return _print_json({"path": str(r.path), "format": r.format, "input": r.input_spec, "output": r.output_spec,
                            "checked_on": r.checked_on, "classes": r.classes, "max_abs_diff": r.max_abs_diff,
                            "tolerance": r.tolerance, "top1_agree": r.top1_agree, "n_checked": r.n_checked,
                            "bytes": r.size_bytes})
    print(f"input  {r.input_spec}")
    print(f"output {r.output_spec}")
    agree = f"; top-1 agrees on {r.top1_agree}/{r.n_checked}" if r.top1_agree is not None else ""
    print(f"check: {r.checked_on}: max |exported − PyTorch| {r.max_abs_diff:.2e} (tolerance {r.tolerance:g}){agree}")
    how = "torch.export.load(path).module()" if r.format == "pt2" else "onnxruntime.InferenceSession(path)"
    print(f"wrote {r.path} ({r.size_bytes / 1024:,.0f} KiB); load it with {how}")
