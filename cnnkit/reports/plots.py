"""Pictures of what a model learned: the confusion matrix, the edge toy's maps (curves: cnnkit.reports.curves).

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
from cnnkit.tasks import Figure

DPI = 100


def figure(width: float, height: float):
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


def save_png(fig, out_path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return atomic_write(out_path, lambda f: f.write(buffer.getbuffer()))


# ---------------------------------------------------------------------------------------- confusion


def write_confusion(confusion, classes: Sequence[str], out_path: str | Path, title: str = "") -> Path:
    """Two labelled heatmaps side by side: raw counts, and each row as a fraction of its true class."""
    counts = np.asarray(confusion, dtype=np.int64)  # (K, K): rows true class, columns predicted
    k = counts.shape[0]
    row_sums = counts.sum(axis=1, keepdims=True)  # (K, 1)
    fractions = counts / np.maximum(row_sums, 1)  # (K, K), rows sum to 1
    side = max(5.0, 0.55 * k + 2.5)
    fig = figure(2 * side + 1.0, side)
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
    return save_png(fig, out_path)


# ---------------------------------------------------------------------------------------- edge toy


def write_edges(image, target, output, kernel, out_path: str | Path, title: str = "") -> Path:
    """The edge toy in four panels: input, true edge map, the learned kernel's map, the kernel.

    `image` is (H, W) in [0, 1]; `target` and `output` are (H, W−1); `kernel` is (kh, kw).
    """
    image, target, output = (np.asarray(a, dtype=np.float64) for a in (image, target, output))
    kernel = np.asarray(kernel, dtype=np.float64)  # (kh, kw)
    fig = figure(17, 4.2)
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
    return save_png(fig, out_path)


# ---------------------------------------------------------------------------------------- a task's picture

# Figure.kind → how to draw it (cnnkit.tasks describes each task's picture as a Figure).
FIGURES = {
    "confusion": lambda fig, path: write_confusion(fig.data["confusion"], fig.data["classes"], path, fig.title),
    "edges": lambda fig, path: write_edges(fig.data["image"], fig.data["target"], fig.data["output"],
                                           fig.data["kernel"], path, fig.title),
}


def draw_figure(figure: Figure, folder: str | Path) -> Path:
    """Draw a task's `Figure` into `folder` (as figure.filename); the path written."""
    return FIGURES[figure.kind](figure, Path(folder) / figure.filename)
