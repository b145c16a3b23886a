"""Training curves of one or more runs, from their metrics.jsonl, overlaid in one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cnnkit.reports.plots import figure, save_png
from cnnkit.reports.runs import run_metrics, run_task
from cnnkit.tasks import TASKS, Panel


def write_curves(run_dirs: Sequence[str | Path], out_path: str | Path) -> Path:
    """Per-epoch curves of one or more runs, overlaid (one colour per run), saved as a PNG.

    Each run gets its task's panels (cnnkit.tasks: loss and accuracies for classification, loss
    and MSE on log axes for the edge toy). Raises RunError for a folder without metrics.
    """
    runs = [run_metrics(d) for d in run_dirs]  # [(folder, rows)]
    names = _run_labels([folder for folder, _ in runs])
    tasks = [run_task(folder, rows) for folder, rows in runs]
    # Each task's panels, in registry order, with the runs of that task that have data for them.
    panels = []
    for task in TASKS.values():
        for panel in task.panels:
            wanted = [(folder, rows, name) for (folder, rows), name, t in zip(runs, names, tasks, strict=True)
                      if t == task.name and any(key in r for r in rows for key, _, _ in panel.series)]
            if wanted:
                panels.append((panel, wanted))

    # At most three panels a row: a classification run fills one row, a mix with the edge toy two.
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig = figure(5.2 * cols, 4.2 * rows_n + 0.3)
    axes = list(fig.subplots(rows_n, cols, squeeze=False).flat)
    for spare in axes[len(panels):]:
        spare.set_visible(False)
    colour_of = {str(folder): f"C{i % 10}" for i, (folder, _) in enumerate(runs)}
    for ax, (panel, wanted) in zip(axes[:len(panels)], panels, strict=True):
        _draw_panel(ax, panel, wanted, colour_of, several=len(runs) > 1)
    what = names[0] if len(runs) == 1 else f"{len(runs)} runs"
    fig.suptitle(f"cnnkit training curves: {what}", fontsize=12)
    return save_png(fig, out_path)


def _draw_panel(ax, panel: Panel, wanted: list[tuple[Path, list[dict], str]], colour_of: dict[str, str],
                several: bool) -> None:
    from matplotlib.ticker import MaxNLocator

    for folder, rows, name in wanted:
        for key, label, style in panel.series:
            points = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if not points:
                continue
            x, y = zip(*points, strict=True)
            # Markers keep a one- or two-epoch run visible; they would clutter a long one.
            marker = "o" if len(points) <= 30 else None
            if not several:
                legend = label
            else:
                legend = f"{name} ({label})" if len(panel.series) > 1 else name
            ax.plot(x, y, linestyle=style, marker=marker, markersize=3.5, color=colour_of[str(folder)], label=legend)
        if panel.mark_best:
            _mark_best(ax, rows, colour_of[str(folder)])
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if panel.scale == "log":
        ax.set_yscale("log")
    elif panel.scale == "percent":
        ax.yaxis.set_major_formatter(_percent_formatter())
    ax.legend(fontsize=8, loc="best")


def _mark_best(ax, rows: list[dict], colour: str) -> None:
    """A star on the epoch best.pt keeps: highest val_acc (first of ties), else the last epoch."""
    key = "val_acc" if any("val_acc" in r for r in rows) else "test_acc"
    scored = [r for r in rows if isinstance(r.get(key), (int, float))]
    if not scored:
        return
    best = max(scored, key=lambda r: (r[key], -r["epoch"])) if key == "val_acc" else scored[-1]
    ax.plot([best["epoch"]], [best[key]], marker="*", markersize=12, color=colour, linestyle="none")
    # Left of the star: the best epoch is often the last one, at the panel's right edge.
    ax.annotate(f"{best[key]:.1%}", (best["epoch"], best[key]), textcoords="offset points", xytext=(-6, 6),
                ha="right", fontsize=8, color=colour)


def _run_labels(folders: list[Path]) -> list[str]:
    # Folder names, made unique with the parent when two runs share a name (runs/a/x vs runs/b/x).
    names = [f.name for f in folders]
    return [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in folders]


def _percent_formatter():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0)
