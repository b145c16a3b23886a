"""A sweep at a glance: each metric against the swept value(s), mean with its 95% interval, and every seed.

One PNG, one panel per metric of the summary. With one numeric axis the x axis is that value (log
scale when it spans a decade or more); otherwise each setting is a labelled position.
"""

from __future__ import annotations

from pathlib import Path

from cnnkit.experiments.aggregate import SweepSummary
from cnnkit.experiments.grid import parse_value, setting_label
from cnnkit.reports.plots import figure, save_png


def _positions(summary: SweepSummary) -> tuple[list[float], list[str], str, bool]:
    """x of each setting, tick labels, the axis title, and whether to use a log scale."""
    labels = [setting_label(s.setting) or s.label for s in summary.settings]
    if len(summary.axes) == 1:
        values = [parse_value(s.setting[summary.axes[0]]) for s in summary.settings]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and len(set(values)) == len(values):
            positive = all(v > 0 for v in values)
            log = positive and max(values) / min(values) >= 10
            return [float(v) for v in values], [], summary.axes[0], log
        return list(range(len(values))), [str(v) for v in values], summary.axes[0], False
    return list(range(len(labels))), labels, "setting", False


def write_sweep_plot(summary: SweepSummary, out_path: str | Path) -> Path:
    xs, ticks, title, log = _positions(summary)
    metrics = list(summary.metrics.items())
    cols = min(3, len(metrics)) or 1
    rows = -(-len(metrics) // cols) or 1
    fig = figure(5.0 * cols, 4.0 * rows + 0.4)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for spare in axes[len(metrics):]:
        spare.set_visible(False)
    span = (max(xs) - min(xs)) if len(xs) > 1 else 1.0
    for ax, (key, (label, fraction)) in zip(axes, metrics, strict=False):
        scale = 100.0 if fraction else 1.0
        for i, (x, s) in enumerate(zip(xs, summary.settings, strict=True)):
            stat = s.stats.get(key)
            if stat is None:
                continue
            colour = "C3" if s.label == summary.best else "C0"
            # Every seed, spread a little sideways so equal values stay visible.
            n = len(stat.values)
            offsets = [((j - (n - 1) / 2) * 0.015 * (x if log else span)) for j in range(n)] if n > 1 else [0.0]
            ax.scatter([x + o for o in offsets], [v * scale for v in stat.values], s=12, color=colour, alpha=0.45,
                       zorder=2)
            err = None if stat.ci95 is None else stat.ci95 * scale
            ax.errorbar([x], [stat.mean * scale], yerr=None if err is None else [[err], [err]], fmt="o",
                        color=colour, capsize=5, markersize=6, zorder=3,
                        label="mean ± 95% CI" if i == 0 else None)
        if log:
            ax.set_xscale("log")
        if ticks:
            ax.set_xticks(xs)
            ax.set_xticklabels(ticks, rotation=20 if max(len(t) for t in ticks) > 8 else 0, ha="right"
                               if max(len(t) for t in ticks) > 8 else "center", fontsize=8)
        ax.set_xlabel(title)
        ax.set_ylabel(f"{label} (%)" if fraction else label)
        ax.grid(alpha=0.3)
        if ax is axes[0]:
            ax.legend(fontsize=8, loc="best")
    best = f"; best on val in red: {summary.best}" if summary.best else ""
    fig.suptitle(f"sweep {summary.name}: mean ± 95% CI over seeds, dots = seeds{best}", fontsize=11)
    return save_png(fig, out_path)
