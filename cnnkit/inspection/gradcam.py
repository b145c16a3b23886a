"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", 2017): where in the picture a conv layer's evidence for one class lies.

For class c and a conv layer with maps A_k (k = channels): α_k = mean over the map of ∂y_c/∂A_k
(y_c: the class's logit, before the softmax), and the map is ReLU(Σ_k α_k A_k), upsampled to the
input's size. The last conv layer is the usual choice: its maps are the most class-specific that
still have a spatial layout.

Saliency maps can look convincing and explain nothing (Adebayo et al., "Sanity Checks for Saliency
Maps", 2018): a map that barely changes when the weights are re-initialised shows the input's
edges, not the model. `spearman` is the rank correlation that test uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.errors import ShapeError


@dataclass
class CamResult:
    layer: str
    layer_size: tuple[int, int]  # (h, w) of the layer's maps
    coarse: torch.Tensor  # (N, h, w) ReLU(Σ α_k A_k), the layer's own resolution
    maps: torch.Tensor  # (N, H, W) the same in [0, 1] at the input's size; all zero where no evidence was found
    logits: torch.Tensor  # (N, K)
    target: torch.Tensor  # (N,) the class each map explains
    start: tuple[float, float] | None = None  # map pixel i is centred on input pixel start + i·jump
    jump: tuple[int, int] | None = None

    @property
    def peaks(self) -> list[tuple[int, int]]:
        """(row, column) in input pixels of the centre of each map's strongest cell (its receptive
        field's centre when the layer's geometry is known)."""
        n, h, w = self.coarse.shape
        size = self.maps.shape[-2:]
        peaks = []
        for flat in self.coarse.reshape(n, -1).argmax(dim=1).tolist():
            cell = (flat // w, flat % w)
            if self.start is not None and self.jump is not None:
                centre = [self.start[i] + cell[i] * self.jump[i] for i in range(2)]
            else:  # stretched: cell i covers [i, i+1)·H/h
                centre = [(cell[i] + 0.5) * size[i] / (h, w)[i] - 0.5 for i in range(2)]
            peaks.append(tuple(min(size[i] - 1, max(0, int(centre[i] + 0.5))) for i in range(2)))
        return peaks


def grad_cam(model: nn.Module, inputs: torch.Tensor, layer: str, target: torch.Tensor | None = None,
             start: tuple[float, float] | None = None, jump: tuple[int, int] | None = None) -> CamResult:
    """Grad-CAM maps of `layer` for a batch of model inputs (N, C, H, W); `target` (N,) defaults to
    the predicted class. The model runs in whatever mode it is in (callers put it in eval mode).

    With the layer's `start` and `jump` (cnnkit.shapes: map pixel i is centred on input pixel
    start + i·jump) the map is laid on the picture where its receptive fields are; without them it
    is stretched over the picture, as most Grad-CAM code does (off by a few pixels for a layer after
    unpadded convs: lenet's conv2 map starts 3.5 pixels in, not 0.7)."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ShapeError(f"Grad-CAM layer {layer!r}: no such module in the model")
    store: dict[str, torch.Tensor] = {}

    def keep_maps(module, args, out):
        # A fresh leaf: gradients stop here (only ∂y/∂A is needed), and it works even when no
        # parameter upstream requires grad. The clone protects it from in-place ops downstream.
        maps = out.detach().requires_grad_(True)
        store["maps"] = maps
        return maps.clone()

    handle = modules[layer].register_forward_hook(keep_maps)
    try:
        with torch.enable_grad():
            logits = model(inputs).float()  # (N, K)
            if target is None:
                target = logits.argmax(dim=1)
            target = target.to(logits.device)
            score = logits.gather(1, target[:, None]).sum()  # each image's own class logit
            (grads,) = torch.autograd.grad(score, store["maps"])  # (N, C, h, w)
    finally:
        handle.remove()
    maps = store["maps"].detach()  # (N, C, h, w)
    if maps.dim() != 4:
        raise ShapeError(f"Grad-CAM layer {layer!r}: needs (N, C, H, W) maps, got {tuple(maps.shape)}")
    alpha = grads.float().mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    cam = F.relu((alpha * maps.float()).sum(dim=1))  # (N, h, w)
    size = tuple(inputs.shape[-2:])
    if start is None or jump is None:
        up = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]  # (N, H, W)
    else:
        up = place(cam, size, start, jump)  # (N, H, W)
    top = up.flatten(1).amax(dim=1).clamp_min(1e-12)  # (N,)
    return CamResult(layer, tuple(maps.shape[-2:]), cam.cpu(), (up / top[:, None, None]).cpu(),
                     logits.detach().cpu(), target.cpu(), start, jump)


def place(cam: torch.Tensor, size: tuple[int, int], start, jump) -> torch.Tensor:
    """(N, h, w) maps → (N, H, W) picture: bilinear between the receptive-field centres, the edge
    values held beyond the first and last centre."""
    n, h, w = cam.shape
    axes = []
    for i, (length, cells) in enumerate(zip(size, (h, w), strict=True)):
        where = (torch.arange(length, dtype=torch.float32) - start[i]) / jump[i]  # fractional map index
        axes.append(2 * where / (cells - 1) - 1 if cells > 1 else torch.zeros(length))  # grid_sample's [−1, 1]
    gy, gx = torch.meshgrid(axes[0], axes[1], indexing="ij")  # (H, W) each
    grid = torch.stack((gx, gy), dim=-1).expand(n, *size, 2).to(cam)  # (N, H, W, 2): x first
    return F.grid_sample(cam[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]


def last_conv(calls) -> str | None:
    """The name of the last conv module (in forward order) whose maps have more than one pixel."""
    for call in reversed(calls):
        # nn.Conv2d and its subclasses, and conv layers of their own kind (the edge toy's Corr2d).
        is_conv = call.kind == "module" and all(hasattr(call.module, a) for a in ("out_channels", "kernel_size"))
        if is_conv and len(call.output) == 4 and call.output[2] * call.output[3] > 1:
            return call.name
    return None


def map_layers(calls) -> list[str]:
    """The layers Grad-CAM can explain, in forward order: modules (a hook needs one) called once,
    whose output is (N, C, H, W) maps of more than one pixel."""
    repeated = {call.name.split("#")[0] for call in calls if "#" in call.name}
    return [call.name for call in calls if call.kind == "module" and call.name.split("#")[0] not in repeated
            and len(call.output) == 4 and call.output[2] * call.output[3] > 1]


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two maps (flattened); 0 when either is constant (no order to share)."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64).ravel()), _ranks(np.asarray(b, dtype=np.float64).ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0
