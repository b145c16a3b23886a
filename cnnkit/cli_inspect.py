"""Commands that look at what a model learned: eval (and, as they land, predict, runs, plot).

Registered on the same typer `app` as cli.py; the same rules hold: parse, call one library
function, render with rich, own the exit codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cnnkit.cli import _guard, _print_json, app, console


# ---------------------------------------------------------------------------------------------- eval
@app.command("eval")
@_guard
def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint, e.g. runs/NAME/best.pt."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="CIFAR-10 folder (beats CNNKIT_DATA and data.root)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Evaluate a checkpoint on the test set: accuracy, loss, per-class accuracy, confusion matrix."""
    from cnnkit.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(checkpoint, data_root=data_root, device=device)
    if as_json:
        return _print_json(report.to_dict())
    r = report.result
    print(f"{report.checkpoint}: {report.model}, epoch {report.epoch}; {report.runtime}")
    if r.accuracy is None:
        print(f"learned kernel: {report.kernel}  (target [[1, -1]])")
        print(f"MSE: {r.mse:.4g} over {r.n} image(s)")
        return
    per_class = Table(title="per-class accuracy")
    per_class.add_column("class")
    per_class.add_column("accuracy", justify="right")
    per_class.add_column("images", justify="right")
    counts = r.confusion.sum(dim=1).tolist()
    for cls, acc, count in zip(report.classes, r.per_class, counts):
        per_class.add_row(cls, f"{acc:.4f}", f"{count:,}")
    console.print(per_class)
    confusion = Table(title="confusion matrix (rows: true class, columns: predicted)")
    confusion.add_column("")
    for cls in report.classes:
        confusion.add_column(cls[:5], justify="right")
    for cls, row in zip(report.classes, r.confusion.tolist()):
        confusion.add_row(cls, *[str(v) for v in row])
    console.print(confusion)
    print(f"test accuracy {r.accuracy:.4f}, loss {r.loss:.4f} on {r.n:,} images ({r.seconds:.2f} s) — Acc: {r.accuracy:.2f}")
