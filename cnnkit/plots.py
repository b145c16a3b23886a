"""Pictures of what a run learned: training curves, the confusion matrix, the edge toy's maps.

matplotlib is imported only inside the functions that draw (it costs about a second, and most
cnnkit commands never plot). We draw on a bare `matplotlib.figure.Figure` with the Agg canvas
rather than through pyplot: no display is ever needed, no global figure list grows, and a user's
own pyplot backend (say, in a notebook) is left alone. PNGs are rendered into memory and then
written with `atomic_write`, so a kill never leaves half a picture.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnnkit.fileio import atomic_write
from cnnkit.runs import run_metrics

DPI = 100


def _figure(width: float, height: float):
    import sys

    import matplotlib

    # Headless: Agg for any later pyplot import in this process. If pyplot is already loaded (a
    # notebook), its backend is the user's choice and drawing below does not need it anyway.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return atomic_write(out_path, lambda f: f.write(buffer.getbuffer()))


# ---------------------------------------------------------------------------------------- curves

# (metrics key, label, line style): one panel per entry of _PANELS that any run has data for.
_PANELS: list[tuple[str, list[tuple[str, str, str]], bool]] = [
    ("loss", [("train_loss", "train", "-"), ("val_loss", "val", "--"), ("test_loss", "test", ":")], False),
    ("train accuracy", [("train_acc", "train", "-")], False),
    ("validation / test accuracy", [("val_acc", "val", "-"), ("test_acc", "test", "--")], False),
    # Edge toy: the loss is the summed squared error per picture, the MSE is per output pixel;
    # both fall by orders of magnitude, hence log axes.
    ("edge toy: train loss (squared error per picture)", [("train_loss", "train", "-")], True),
    ("edge toy: MSE per pixel", [("val_mse", "val", "-"), ("test_mse", "test", "--")], True),
]


def write_curves(run_dirs: Sequence[str | Path], out_path: str | Path) -> Path:
    """Per-epoch curves of one or more runs, overlaid (one colour per run), saved as a PNG.

    Classification runs get loss, train accuracy and validation/test accuracy panels; edge-toy
    runs get their loss and MSE on log axes. Raises RunError for a folder without metrics.
    """
    runs = [run_metrics(d) for d in run_dirs]  # [(folder, rows)]
    names = _run_labels([folder for folder, _ in runs])
    edge = [not any("train_acc" in r for r in rows) for _, rows in runs]

    panels = []
    for title, series, log in _PANELS:
        is_edge_panel = title.startswith("edge")
        wanted = [(folder, rows, name) for (folder, rows), name, e in zip(runs, names, edge, strict=True)
                  if e == is_edge_panel and any(key in r for r in rows for key, _, _ in series)]
        if wanted:
            panels.append((title, series, log, wanted))

    # At most three panels a row: a classification run fills one row, a mix with the edge toy two.
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig = _figure(5.2 * cols, 4.2 * rows_n + 0.3)
    grid = fig.subplots(rows_n, cols, squeeze=False)
    axes = list(grid.flat)
    for spare in axes[len(panels):]:
        spare.set_visible(False)
    from matplotlib.ticker import MaxNLocator

    colours = [f"C{i % 10}" for i in range(len(runs))]
    colour_of = {str(folder): colours[i] for i, (folder, _) in enumerate(runs)}
    for ax, (title, series, log, wanted) in zip(axes[:len(panels)], panels, strict=True):
        for folder, rows, name in wanted:
            for key, label, style in series:
                points = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
                if not points:
                    continue
                x, y = zip(*points, strict=True)
                # Markers keep a one- or two-epoch run visible; they would clutter a long one.
                marker = "o" if len(points) <= 30 else None
                if len(runs) == 1:
                    legend = label
                else:
                    legend = f"{name} ({label})" if len(series) > 1 else name
                ax.plot(x, y, linestyle=style, marker=marker, markersize=3.5, color=colour_of[str(folder)],
                        label=legend)
            if title.startswith("validation"):
                _mark_best(ax, rows, colour_of[str(folder)])
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if log:
            ax.set_yscale("log")
        elif "accuracy" in title:
            ax.yaxis.set_major_formatter(_percent_formatter())
        ax.legend(fontsize=8, loc="best")
    what = names[0] if len(runs) == 1 else f"{len(runs)} runs"
    fig.suptitle(f"cnnkit training curves: {what}", fontsize=12)
    return _save(fig, out_path)


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


# ---------------------------------------------------------------------------------------- confusion


def write_confusion(confusion, classes: Sequence[str], out_path: str | Path, title: str = "") -> Path:
    """Two labelled heatmaps side by side: raw counts, and each row as a fraction of its true class."""
    counts = np.asarray(confusion, dtype=np.int64)  # (K, K): rows true class, columns predicted
    k = counts.shape[0]
    row_sums = counts.sum(axis=1, keepdims=True)  # (K, 1)
    fractions = counts / np.maximum(row_sums, 1)  # (K, K), rows sum to 1
    side = max(5.0, 0.55 * k + 2.5)
    fig = _figure(2 * side + 1.0, side)
    axes = fig.subplots(1, 2)
    # Fractions on a fixed 0–1 scale, so two runs' pictures compare by colour.
    panels = [(axes[0], counts, "counts", "Blues", lambda v: f"{v:d}"),
              (axes[1], fractions, "row-normalised (recall on the diagonal)", "Blues",
               lambda v: f"{v:.2f}".lstrip("0") if v < 1 else "1")]
    for ax, values, name, cmap, fmt in panels:
        top = 1.0 if values is fractions else max(int(values.max()), 1)
        image = ax.imshow(values, cmap=cmap, vmin=0, vmax=top)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right", fontsize=9)
        ax.set_yticks(range(k), labels=list(classes), fontsize=9)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(name, fontsize=11)
        if k <= 20:  # numbers in cells stay legible up to about 20 classes
            threshold = top / 2
            for i in range(k):
                for j in range(k):
                    v = values[i, j]
                    ax.text(j, i, fmt(v.item()), ha="center", va="center", fontsize=7 if k > 12 else 8,
                            color="white" if v > threshold else "black")
    fig.suptitle(title or "confusion matrix", fontsize=12)
    return _save(fig, out_path)


# ---------------------------------------------------------------------------------------- edge toy


def write_edges(image, target, output, kernel, out_path: str | Path, title: str = "") -> Path:
    """The edge toy in four panels: input, true edge map, the learned kernel's map, the kernel.

    `image` is (H, W) in [0, 1]; `target` and `output` are (H, W−1); `kernel` is (kh, kw).
    """
    image, target, output = (np.asarray(a, dtype=np.float64) for a in (image, target, output))
    kernel = np.asarray(kernel, dtype=np.float64)  # (kh, kw)
    fig = _figure(17, 4.2)
    axes = fig.subplots(1, 4)
    # One symmetric colour scale for both edge maps so equal values look equal.
    limit = max(float(np.abs(target).max()), float(np.abs(output).max()), 1e-6)
    shown = [
        (axes[0], image, "input image", "gray", 0.0, 1.0),
        (axes[1], target, "true edge map  X ⋆ [[1, −1]]", "RdBu_r", -limit, limit),
        (axes[2], output, "learned kernel's edge map", "RdBu_r", -limit, limit),
    ]
    for ax, values, name, cmap, lo, hi in shown:
        im = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        ax.set_title(name, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    # Scaled so the target's ±1 is full colour: a kernel still far from it looks pale.
    klimit = max(float(np.abs(kernel).max()), 1.0)
    ax = axes[3]
    ax.imshow(kernel, cmap="RdBu_r", vmin=-klimit, vmax=klimit, interpolation="nearest")
    for (i, j), v in np.ndenumerate(kernel):
        ax.text(j, i, f"{v:+.4f}", ha="center", va="center", fontsize=13,
                color="white" if abs(v) > klimit / 2 else "black")
    ax.set_title("learned kernel (target [[1, −1]])", fontsize=11)
    ax.set_xticks(range(kernel.shape[1]))
    ax.set_yticks(range(kernel.shape[0]))
    fig.suptitle(title or "edge detector", fontsize=12)
    return _save(fig, out_path)
