"""Cross-correlation and pooling from scratch, as the seed tutorials teach them — but vectorised.

The seeds loop over every output pixel in Python (`Y[i, j] = (X[i:i+h, j:j+w] * K).sum()`). Here the
same sums are taken over all windows at once with `unfold`, which turns every k_h×k_w window into a
column; the result equals `F.conv2d` / `F.max_pool2d` / `F.avg_pool2d` (tested), so the edge model
can run on either implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnkit.shapes import conv2d_hw, pool2d_hw, to_pair


def corr2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1) -> torch.Tensor:
    """Multi-channel, batched 2-D cross-correlation.

    x: (B, C_in, H, W) or a single (H, W) image as in the seed; weight: (C_out, C_in, kH, kW) or (kH, kW).
    """
    single = x.dim() == 2
    if single:
        x = x[None, None]  # (1, 1, H, W)
    if weight.dim() == 2:
        weight = weight[None, None]  # (1, 1, kH, kW)
    batch, _, h, w = x.shape
    c_out, c_in, kh, kw = weight.shape
    out_h, out_w = conv2d_hw((h, w), (kh, kw), stride, padding, dilation)
    # Every window becomes a column: (B, C_in·kH·kW, L) with L = out_h·out_w.
    cols = F.unfold(x, (kh, kw), dilation=to_pair(dilation), padding=to_pair(padding), stride=to_pair(stride))
    y = weight.reshape(c_out, c_in * kh * kw) @ cols  # (B, C_out, L)
    if bias is not None:
        y = y + bias.reshape(1, c_out, 1)
    y = y.reshape(batch, c_out, out_h, out_w)  # (B, C_out, H_out, W_out)
    return y[0, 0] if single else y


def pool2d(x: torch.Tensor, kernel, stride=None, padding=0, mode: str = "max", ceil_mode: bool = False
           ) -> torch.Tensor:
    """Max or average pooling over each channel separately, with padding and stride.

    Padding counts as -inf for max (it never wins) and as 0 for avg, which divides by the full
    window (count_include_pad=True, PyTorch's default).
    """
    if mode not in ("max", "avg"):
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    single = x.dim() == 2
    if single:
        x = x[None, None]  # (1, 1, H, W)
    k = to_pair(kernel)
    s = k if stride is None else to_pair(stride)
    p = to_pair(padding)
    batch, channels, h, w = x.shape
    out_h, out_w = pool2d_hw((h, w), k, s, p, 1, ceil_mode)
    fill = float("-inf") if mode == "max" else 0.0
    # Pad by hand (and extra on the bottom/right for ceil_mode) so unfold sees every window.
    extra_h = max(0, (out_h - 1) * s[0] + k[0] - (h + 2 * p[0]))
    extra_w = max(0, (out_w - 1) * s[1] + k[1] - (w + 2 * p[1]))
    padded = F.pad(x, (p[1], p[1] + extra_w, p[0], p[0] + extra_h), value=fill)  # (B, C, H', W')
    # Pool channels independently: fold them into the batch so unfold never mixes them. The padding
    # above makes unfold see exactly out_h × out_w windows (the ceil_mode correction never leaves a
    # spare one), which the reshape below relies on.
    cols = F.unfold(padded.reshape(batch * channels, 1, *padded.shape[-2:]), k, stride=s)  # (B·C, kH·kW, L)
    if mode == "max":
        y = cols.max(dim=1).values  # (B·C, L)
    else:
        y = _avg_windows(cols, h, w, k, s, p, out_h, out_w, extra_h, extra_w)
    y = y.reshape(batch, channels, out_h, out_w)  # (B, C, H_out, W_out)
    return y[0, 0] if single else y


def _avg_windows(cols, h, w, k, s, p, out_h, out_w, extra_h, extra_w):
    # With ceil_mode, windows hanging past the padded edge divide only by their part inside it,
    # as PyTorch does; ordinary windows divide by kH·kW (padding included).
    total = cols.sum(dim=1)  # (B·C, L)
    if extra_h == 0 and extra_w == 0:
        return total / (k[0] * k[1])
    rows = torch.arange(out_h) * s[0] - p[0]
    cols_ = torch.arange(out_w) * s[1] - p[1]
    size_h = (torch.clamp(rows + k[0], max=h + p[0]) - rows).clamp(min=1)
    size_w = (torch.clamp(cols_ + k[1], max=w + p[1]) - cols_).clamp(min=1)
    divisor = (size_h[:, None] * size_w[None, :]).reshape(-1).to(total)  # (L,)
    return total / divisor
