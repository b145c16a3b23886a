"""The pictures of `cnnkit look` and `cnnkit eval --worst`: feature maps, filters, Grad-CAM, top losses.

Drawn as cnnkit.reports.plots draws (a bare Figure on the Agg canvas, written atomically). Every
picture says what it shows in its title; every panel is labelled at a size that reads at 100%.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnkit.reports.plots import figure, save_png

PANELS = 8  # channels shown per layer; wider layers show their most active ones


def _picture(image: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """uint8 (C, H, W) → what imshow takes: (H, W, 3) for RGB, (H, W) with a grey colour map otherwise."""
    array = image.cpu().numpy()
    if array.shape[0] == 3:
        return array.transpose(1, 2, 0), None
    return array[0], "gray"


def _show(ax, image: torch.Tensor) -> None:
    pixels, cmap = _picture(image)
    ax.imshow(pixels, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _wrap(text: str, width: float, fontsize: float = 11) -> list[str]:
    """A title's lines wrapped to a figure `width` inches wide (about 110 characters per 10 inches at 11 pt)."""
    per_line = max(30, int(width * 11 * 11 / fontsize))
    return [wrapped for line in text.split("\n") for wrapped in (textwrap.wrap(line, per_line) or [""])]


def _title(fig, text: str, width: float, fontsize: float = 11) -> None:
    fig.suptitle("\n".join(_wrap(text, width, fontsize)), fontsize=fontsize)


def _fmt(shape) -> str:
    return "×".join(str(d) for d in shape)


# ---------------------------------------------------------------------------------------- activations


@dataclass
class LayerMaps:
    """One row of activations.png: a layer's feature maps for one picture and its shapes-table row."""

    name: str
    type: str
    input: tuple[int, ...]
    output: tuple[int, ...]  # as `cnnkit shapes` computes it (equal to the maps' shape, checked)
    formula: str  # "H,W: ⌊(…)⌋ + 1 = 30", or "" when the layer keeps the size
    maps: torch.Tensor  # (C, h, w)


def most_active(maps: torch.Tensor, n: int = PANELS) -> list[int]:
    """The n channels with the highest mean positive response (what a ReLU/GELU after them passes on)."""
    strength = maps.clamp_min(0).flatten(1).mean(dim=1)  # (C,)
    order = torch.argsort(strength, descending=True, stable=True)
    return order[:n].tolist()


def _mosaic(maps: np.ndarray) -> tuple[np.ndarray, int]:
    """(n, h, w) maps side by side in one image with NaN (drawn white) gaps; returns it and the gap."""
    n, h, w = maps.shape
    gap = max(1, round(w * TILE_GAP))
    mosaic = np.full((h, n * w + (n - 1) * gap), np.nan)
    for i in range(n):
        mosaic[:, i * (w + gap): i * (w + gap) + w] = maps[i]
    return mosaic, gap


TILE = 0.95  # inches per feature map
TILE_GAP = 0.12  # of a tile
CAPTION = 3.9  # inches of caption column


def write_activations(image: torch.Tensor, layers: Sequence[LayerMaps], out_path: str | Path, title: str) -> Path:
    """One row per layer: its caption (name, shapes, the arithmetic), up to PANELS channel maps, a colour bar.

    Laid out by hand (each row's maps drawn as one image): a figure of 100+ small axes spends
    seconds in matplotlib's layout engine."""
    import matplotlib

    panels = max([1] + [min(PANELS, layer.maps.shape[0]) for layer in layers])
    strip = panels * TILE * (1 + TILE_GAP)  # inches for the maps of the widest row
    width = max(8.0, 0.1 + CAPTION + strip + 0.9)
    row_h = TILE + 0.3  # the maps and their channel labels
    head = 0.15 + 0.22 * len(_wrap(title, width))  # the title's lines
    height = head + row_h * (len(layers) + 1) + 0.15
    fig = figure(width, height)
    fig.set_layout_engine("none")

    def box(x: float, y: float, w: float, h: float):  # inches from the top-left corner → an axes
        return fig.add_axes((x / width, 1 - (y + h) / height, w / width, h / height))

    def caption(y: float, text: str, size: float) -> None:
        ax = box(0.1, y, CAPTION - 0.1, TILE)
        ax.axis("off")
        ax.text(0, 0.5, text, fontsize=size, va="center")

    c, h, w = image.shape
    caption(head + 0.3, f"input\n{_fmt((c, h, w))}\n(the picture as the model sees it)", 10)
    _show(box(CAPTION, head + 0.3, TILE, TILE), image)
    for r, layer in enumerate(layers, start=1):
        y = head + r * row_h
        channels = layer.maps.shape[0]
        chosen = most_active(layer.maps)
        shown = (("1 channel" if channels == 1 else f"all {channels} channels") if len(chosen) == channels
                 else f"{len(chosen)} most active of {channels} channels")
        text = f"{layer.name} · {layer.type}\n{_fmt(layer.input)} → {_fmt(layer.output)}\n"
        caption(y + 0.3, text + (layer.formula + "\n" if layer.formula else "") + shown, 9)
        values = layer.maps[chosen].float().numpy()  # (n, h, w)
        # One colour scale per layer so its channels compare; signed maps centred on white. The 99th
        # percentile, not the maximum: one hot pixel would leave every other map pale.
        top = float(np.quantile(np.abs(values), 0.99)) or float(np.abs(values).max()) or 1.0
        signed = bool(values.min() < 0)
        cmap = matplotlib.colormaps["RdBu_r" if signed else "magma"].with_extremes(bad="white")
        mosaic, gap = _mosaic(values)
        n = len(chosen)
        ax = box(CAPTION, y + 0.3, n * TILE + (n - 1) * TILE * TILE_GAP, TILE)
        im = ax.imshow(mosaic, cmap=cmap, vmin=-top if signed else 0.0, vmax=top, interpolation="nearest",
                       aspect="auto")
        ax.axis("off")
        map_w = values.shape[2]
        for i, channel in enumerate(chosen):
            ax.text(i * (map_w + gap) + map_w / 2 - 0.5, -0.5, f"ch {channel}", ha="center", va="bottom",
                    fontsize=8)
        bar = fig.colorbar(im, cax=box(CAPTION + strip + 0.1, y + 0.3, 0.13, TILE),
                           extend="both" if signed else "max")
        bar.ax.tick_params(labelsize=7)
    _title(fig, title, width)
    return save_png(fig, out_path)


# ---------------------------------------------------------------------------------------- filters


def write_filters(weight: torch.Tensor, layer: str, out_path: str | Path, title: str) -> Path:
    """A conv layer's filters (O, I, kh, kw) as small pictures: RGB when I is 3, one tile per input
    channel otherwise. One colour scale for all, unless the filters' sizes differ more than 5×
    (the fast model's whitening filters: each divided by √eigenvalue), then one scale per filter."""
    w = weight.detach().float().cpu().numpy()  # (O, I, kh, kw)
    out_channels, in_channels, kh, kw = w.shape
    rgb = in_channels == 3
    shown = min(out_channels, 32)
    sizes = np.abs(w[:shown]).reshape(shown, -1).max(axis=1)  # (O,) max |w| per filter
    own_scale = sizes.min() * 5 < sizes.max()
    scales = np.where(sizes > 0, sizes, 1.0) if own_scale else np.full(shown, sizes.max() or 1.0)
    per_filter = 1 if rgb else min(in_channels, 8)
    grid_cols = min(8, shown) if rgb else per_filter
    grid_rows = -(-shown // grid_cols) if rgb else shown
    tile = 1.1 if max(kh, kw) <= 5 else 1.4
    width = max(7.5, grid_cols * tile + 0.6)
    more = f", the first {shown} of {out_channels}" if shown < out_channels else ""
    how = ("each filter's R, G, B weights as a colour: grey = 0, brighter = positive" if rgb
           else "red = positive, blue = negative, white = 0")
    scale = (f"each filter on its own scale (their max |w| range {sizes.min():.3g}–{sizes.max():.3g})" if own_scale
             else f"one scale for all (max |w| = {sizes.max():.3g})")
    caption = (f"{layer}: {out_channels} filter{'s' if out_channels > 1 else ''} of {in_channels}×{kh}×{kw}{more}; "
               f"{scale}; {how}")
    lines = [title, *textwrap.wrap(caption, int(width * 12))]  # ~12 characters an inch at 10 pt
    fig = figure(width, 0.5 + 0.2 * len(lines) + grid_rows * (tile + 0.25))
    axes = np.atleast_2d(fig.subplots(grid_rows, grid_cols, squeeze=False))
    for ax in axes.flat:
        ax.axis("off")
    numbers = kh * kw <= 9 and not rgb
    for o in range(shown):
        top = scales[o]
        for i in range(per_filter):
            ax = axes[o // grid_cols, o % grid_cols] if rgb else axes[o, i]
            if rgb:
                ax.imshow(np.clip(0.5 + w[o].transpose(1, 2, 0) / (2 * top), 0, 1), interpolation="nearest")
                ax.set_title(f"filter {o}", fontsize=8, pad=2)
            else:
                ax.imshow(w[o, i], cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
                ax.set_title(f"filter {o}" + (f", input ch {i}" if in_channels > 1 else ""), fontsize=8, pad=2)
                if numbers:
                    for (y, x), v in np.ndenumerate(w[o, i]):
                        ax.text(x, y, f"{v:+.3f}", ha="center", va="center", fontsize=9,
                                color="white" if abs(v) > top / 2 else "black")
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("\n".join(lines), fontsize=10)
    return save_png(fig, out_path)


# ---------------------------------------------------------------------------------------- Grad-CAM


@dataclass
class CamPanel:
    label: str  # the file name
    image: torch.Tensor  # uint8 (C, H, W), the model's input size
    cam: torch.Tensor  # (H, W) in [0, 1]
    peak: tuple[int, int]
    explained: str  # the class the map is for
    top: list[tuple[str, float]]  # (class, probability), most likely first


def write_gradcam(panels: Sequence[CamPanel], out_path: str | Path, title: str) -> Path:
    """Per picture: the picture, its Grad-CAM over it with the peak marked, and the top classes."""
    fig = figure(11.0, 0.9 + 3.0 * len(panels))
    axes = np.atleast_2d(fig.subplots(len(panels), 3, squeeze=False, gridspec_kw={"width_ratios": [1, 1.25, 1.3]}))
    for (ax_image, ax_cam, ax_top), panel in zip(axes, panels, strict=True):
        _show(ax_image, panel.image)
        ax_image.set_title("\n".join(textwrap.wrap(panel.label, 30)[:2]), fontsize=9)
        pixels, cmap = _picture(panel.image)
        ax_cam.imshow(pixels, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
        im = ax_cam.imshow(panel.cam.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
        ax_cam.plot(panel.peak[1], panel.peak[0], marker="x", color="white", markersize=10, mew=2.5)
        ax_cam.plot(panel.peak[1], panel.peak[0], marker="x", color="black", markersize=10, mew=1.0)
        ax_cam.set_title(f"Grad-CAM for '{panel.explained}'\npeak (row {panel.peak[0]}, col {panel.peak[1]})",
                         fontsize=9)
        ax_cam.set_xticks([])
        ax_cam.set_yticks([])
        bar = fig.colorbar(im, ax=ax_cam, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=7)
        names = [c for c, _ in panel.top][::-1]
        probs = [p for _, p in panel.top][::-1]
        bars = ax_top.barh(range(len(names)), probs, color=["#4c72b0"] * (len(names) - 1) + ["#dd8452"])
        ax_top.set_yticks(range(len(names)), labels=names, fontsize=9)
        ax_top.set_xlim(0, 1)
        ax_top.set_xlabel("probability", fontsize=9)
        ax_top.tick_params(axis="x", labelsize=8)
        ax_top.set_title(f"top {len(names)} classes", fontsize=9)
        for rect, p in zip(bars, probs, strict=True):
            ax_top.text(min(p + 0.02, 0.8), rect.get_y() + rect.get_height() / 2, f"{p:.1%}", va="center",
                        fontsize=9)
    _title(fig, title, 11.0)
    return save_png(fig, out_path)


# ---------------------------------------------------------------------------------------- worst


@dataclass
class WorstPanel:
    image: torch.Tensor  # uint8 (C, H, W)
    label: str  # which image: its file (cat/0398.jpg) or "#index" in the test split
    true: str
    predicted: str
    p_true: float
    p_predicted: float
    loss: float


def write_worst(panels: Sequence[WorstPanel], out_path: str | Path, title: str) -> Path:
    """fastai's top losses: each image with its true and predicted class and the probability of each."""
    cols = min(6, len(panels))
    rows = -(-len(panels) // cols)
    width = max(6.0, 2.05 * cols)
    fig = figure(width, 0.8 + 2.55 * rows)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels, strict=False):
        _show(ax, panel.image)
        ax.axis("on")
        ax.set_title(f"{panel.label}  loss {panel.loss:.2f}\ntrue {panel.true} {panel.p_true:.1%}\n"
                     f"pred {panel.predicted} {panel.p_predicted:.1%}", fontsize=9, loc="left")
    _title(fig, title, width)
    return save_png(fig, out_path)
