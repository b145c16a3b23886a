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

    best_labels = []  # (text, colour) of each run's star in this panel
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
        if panel.mark_best and (best := _mark_best(ax, rows, colour_of[str(folder)])) is not None:
            epoch, value = best
            best_labels.append((f"{name + ': ' if several else ''}★ {value:.1%} (epoch {epoch})",
                                colour_of[str(folder)]))
    _label_best(ax, best_labels)
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if panel.scale == "log":
        ax.set_yscale("log")
    elif panel.scale == "percent":
        ax.yaxis.set_major_formatter(_percent_formatter())
    ax.legend(fontsize=8, loc="best")


def _mark_best(ax, rows: list[dict], colour: str) -> tuple[int, float] | None:
    """A star on the epoch best.pt keeps: highest val_acc (first of ties), else the last epoch; its
    (epoch, value), or None when no row has the number."""
    key = "val_acc" if any("val_acc" in r for r in rows) else "test_acc"
    scored = [r for r in rows if isinstance(r.get(key), (int, float))]
    if not scored:
        return None
    best = max(scored, key=lambda r: (r[key], -r["epoch"])) if key == "val_acc" else scored[-1]
    ax.plot([best["epoch"]], [best[key]], marker="*", markersize=12, color=colour, linestyle="none")
    return best["epoch"], best[key]


def _label_best(ax, labels: list[tuple[str, str]]) -> None:
    """The stars' values as a stack of labels in the panel's lower right corner, one line a run.

    Beside the star they ran out of the panel (the best epoch is the last or the highest point, at an
    edge) and sat on top of each other when runs overlay; accuracy curves rise, so the lower right
    is the free corner, and the legend ('best' placement) keeps clear of text.
    """
    for i, (text, colour) in enumerate(labels):
        ax.annotate(text, xy=(0.98, 0.03), xycoords="axes fraction", xytext=(0, 12 * i), textcoords="offset points",
                    ha="right", va="bottom", fontsize=8, color=colour,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.0})


def _run_labels(folders: list[Path]) -> list[str]:
    # Folder names, made unique with the parent when two runs share a name (runs/a/x vs runs/b/x).
    names = [f.name for f in folders]
    return [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in folders]


def _percent_formatter():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0)
