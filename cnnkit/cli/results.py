"""Commands that look at what a model learned: eval, predict, runs, plot.

Registered on the same typer `app` (cnnkit.cli.app) as every command; the same rules hold: parse,
call one library function, render with rich, own the exit codes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cnnkit.cli.app import TrustCodeOpt, _guard, _print_json, _warn, app, console


# ---------------------------------------------------------------------------------------------- eval
@app.command("eval")
@_guard
def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint, e.g. runs/NAME/best.pt."),
    trust_code: bool = TrustCodeOpt,
    data_root: Optional[str] = typer.Option(None, "--data-root",
                                            help="CIFAR-10 folder (beats CNNKIT_DATA and data.root)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    tta: bool = typer.Option(False, "--tta",
                             help="Also report accuracy with test-time augmentation, as the run did (its "
                                  "train.tta; the image and its mirror when it had none)."),
    tta_shift: bool = typer.Option(False, "--tta-shift",
                                   help="TTA with ±1-pixel shifts too (10 views; implies --tta)."),
    tta_mode: Optional[str] = typer.Option(None, "--tta-mode",
                                           help="TTA by name: flip, flip_shift or flip_translate (airbench's 6 "
                                                "weighted views)."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Do not write confusion.png / edges.png / worst.png."),
    worst: Optional[int] = typer.Option(None, "--worst", min=1,
                                        help="Also list the K test images with the highest loss (and draw worst.png)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Evaluate a checkpoint on the test set: accuracy, per-class report, confusion matrix (also as confusion.png)."""
    from cnnkit.models.trust import trust_checkpoints

    trust_checkpoints(trust_code)
    from cnnkit.evaluation.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(checkpoint, data_root=data_root, device=device, tta=tta, tta_shift=tta_shift,
                                 tta_mode=tta_mode,
                                 plots_dir=None if no_plots else checkpoint.parent, worst=worst or 0)
    for warning in report.warnings:
        _warn(warning)
    if as_json:
        return _print_json(report.to_dict())
    r = report.result
    print(f"{report.checkpoint}: {report.model}, epoch {report.epoch}; {report.runtime}")
    if report.kernel is not None:
        print(f"learned kernel: {report.kernel}  (target [[1, -1]])")
    if r.confusion is not None:
        _render_classes(report)
    if report.tta is not None:
        t = report.tta
        print(f"TTA {t.mode}, logits averaged over {len(t.views)} views ({', '.join(t.views)}): accuracy "
              f"{t.accuracy:.4f} vs {t.plain_accuracy:.4f} without ({t.accuracy - t.plain_accuracy:+.4f}), "
              f"loss {t.loss:.4f}")
    if report.worst:
        _render_worst(report.worst)
    for path in report.plots:
        print(f"wrote {path}")
    # This line's format is relied on (tests, users' scripts): keep it, and keep it last.
    print(report.task.eval_line(r))


def _render_classes(report) -> None:
    """The per-class report, the confusion matrix and the most-confused pairs, as tables."""
    r, classes, cls_report = report.result, report.classes, report.report
    table = Table(title="per-class results")
    for col in ("class", "accuracy", "precision", "recall", "F1", "images"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for cls, acc in zip(classes, r.per_class, strict=True):
        row = cls_report["per_class"][cls]
        table.add_row(cls, f"{acc:.4f}", f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}",
                      f"{row['support']:,}")
    table.add_section()
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        avg = cls_report[key]
        table.add_row(label, "", f"{avg['precision']:.4f}", f"{avg['recall']:.4f}", f"{avg['f1']:.4f}",
                      f"{avg['support']:,}")
    console.print(table)
    confusion = Table(title="confusion matrix (rows: true class, columns: predicted)")
    confusion.add_column("")
    for cls in classes:
        confusion.add_column(cls[:5], justify="right")
    for cls, row in zip(classes, r.confusion.tolist(), strict=True):
        confusion.add_row(cls, *[str(v) for v in row])
    console.print(confusion)
    pairs = report.most_confused()
    if pairs:
        worst = Table(title="most confused (true → predicted)")
        for col in ("true", "predicted as", "images", "of its class"):
            worst.add_column(col, justify="left" if col in ("true", "predicted as") else "right")
        for p in pairs:
            worst.add_row(p["true"], p["predicted"], f"{p['count']:,}", f"{p['fraction']:.1%}")
        console.print(worst)


def _render_worst(worst) -> None:
    table = Table(title=f"the {len(worst)} test images with the highest loss (−log p(true class))")
    with_files = any(w.file for w in worst)  # an image folder's paths (under the data root) or batch rows
    columns = ["test image", "true", "p(true)", "predicted", "p(predicted)", "loss"]
    if with_files:
        columns.insert(1, "file")
    for col in columns:
        table.add_column(col, justify="left" if col in ("file", "true", "predicted") else "right")
    for w in worst:
        row = [f"#{w.index}", w.true, f"{w.p_true:.1%}", w.predicted, f"{w.p_predicted:.1%}", f"{w.loss:.3f}"]
        if with_files:
            row.insert(1, w.file or "")
        table.add_row(*row)
    console.print(table)


# ---------------------------------------------------------------------------------------------- predict
@app.command("predict")
@_guard
def predict_cmd(
    images: list[Path] = typer.Argument(..., help="Image files or folders (every image in a folder, sorted)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A classifier checkpoint, e.g. runs/NAME/best.pt."),
    trust_code: bool = TrustCodeOpt,
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="How many classes to show per image."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Classify your own pictures: `cnnkit predict --checkpoint runs/X/best.pt cat.jpg photos/`."""
    from cnnkit.models.trust import trust_checkpoints

    trust_checkpoints(trust_code)
    from cnnkit.evaluation.predict import predict_images

    report = predict_images(checkpoint, list(images), top_k=top_k, device=device)
    if as_json:
        _print_json(report.to_dict())
    else:
        c, h, w = report.input
        print(f"{report.checkpoint}: {report.model}, epoch {report.epoch}; input {c}×{h}×{w} "
              f"({'RGB' if c == 3 else 'grayscale'})")
        table = Table()
        table.add_column("image", overflow="fold")
        table.add_column("original", justify="right")
        for i in range(max((len(p.top) for p in report.predictions if p.top), default=top_k)):
            table.add_column(f"top {i + 1}" if i else "prediction")
        for p in report.predictions:
            if p.error is not None:
                table.add_row(p.path, "", f"[red]error: {p.error}[/red]")
                continue
            cells = [f"{cls} {prob:.1%}" if i else f"[bold]{cls}[/bold] {prob:.1%}"
                     for i, (cls, prob) in enumerate(p.top)]
            table.add_row(p.path, f"{p.size[0]}×{p.size[1]} {p.mode}", *cells)
        console.print(table)
        errors = len(report.predictions) - report.n_predicted
        summary = f"predicted {report.n_predicted} of {len(report.predictions)} image(s)"
        if errors:
            summary += f"; {errors} could not be read"
        if report.skipped:
            summary += f"; skipped {len(report.skipped)} non-image file(s) in folders"
        print(summary)
    if report.n_predicted == 0:
        print(f"error: none of the {len(report.predictions)} input(s) could be read as an image; "
              "pass image files (png, jpg, …) or folders of them", file=sys.stderr)
        raise typer.Exit(2)


# ---------------------------------------------------------------------------------------------- runs
def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@app.command("runs")
@_guard
def runs_cmd(
    folder: Path = typer.Argument(Path("runs"), help="The folder that holds run folders (output.dir)."),
    sort: str = typer.Option("date", "--sort", help="Column: name, model, epochs, best_val, test_at_best (test), "
                             "best_test, final_test, tta_test (tta), wall_s, images_per_s or date."),
    reverse: bool = typer.Option(False, "--reverse", "-r", help="Reverse the order."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Compare runs: one row per run folder (best numbers from metrics.jsonl), sortable."""
    from cnnkit.reports.runs import SCORE_COLUMNS, list_runs, score_cells

    runs = list_runs(folder, sort=sort, reverse=reverse)
    if as_json:
        return _print_json([r.to_dict() for r in runs])
    if not runs:
        print(f"no run folders in {folder} (a run folder holds config.yaml and metrics.jsonl)")
        return
    table = Table(title=f"runs in {folder}")
    columns = [("name", "left"), ("model", "left"), ("epochs", "right"),
               *[(column, "right") for column in SCORE_COLUMNS], ("wall", "right"), ("img/s", "right"),
               ("date", "left")]
    for col, justify in columns:
        table.add_column(col, justify=justify)
    for r in runs:
        epochs = str(r.epochs) if r.complete else f"{r.epochs}/{r.planned_epochs or '?'} (incomplete)"
        # The task decides what the val and test columns show (the edge toy: MSE, not accuracy).
        scores = score_cells(r)
        speed = f"{r.images_per_s:,.0f}" if r.images_per_s is not None else ""
        table.add_row(r.name, r.model or "?", epochs, *scores, _duration(r.wall_s), speed, r.date or "")
    console.print(table)


# ---------------------------------------------------------------------------------------------- plot
@app.command("plot")
@_guard
def plot_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders, e.g. runs/lenet runs/bn_cnn (overlaid)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: curves.png in the "
                                       "run folder; for several runs, compare-curves.png beside them)."),
):
    """Draw training curves (loss, train accuracy, val/test accuracy per epoch) of one or more runs.

    A sweep's folder (`cnnkit sweep`) gets its metrics against the swept values instead (sweep.png)."""
    from cnnkit.reports.curves import write_curves

    if len(runs) == 1 and (runs[0] / "experiment.yaml").is_file():
        from cnnkit.experiments.plot import write_sweep_plot
        from cnnkit.experiments.sweep import show

        print(f"wrote {write_sweep_plot(show(runs[0]), out or runs[0] / 'sweep.png')}")
        return
    if out is None:
        out = _default_plot_path(runs)
    path = write_curves(runs, out)
    print(f"wrote {path}")


def _default_plot_path(runs: list[Path]) -> Path:
    folders = [r.parent if r.is_file() else r for r in runs]
    if len(folders) == 1:
        return folders[0] / "curves.png"
    # Overlaying several runs must not replace one run's own curves.png: write beside them.
    import os

    try:
        common = Path(os.path.commonpath([f.resolve() for f in folders]))
    except ValueError:  # different drives (Windows)
        common = folders[0].resolve().parent
    if common in [f.resolve() for f in folders]:  # one run folder holds the others
        common = common.parent
    try:
        common = common.relative_to(Path.cwd())
    except ValueError:
        pass
    return common / "compare-curves.png"
