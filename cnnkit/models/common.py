"""What the model families share: the spatial size after a chain of conv and pool layers."""

from __future__ import annotations

from collections.abc import Callable

from cnnkit.errors import ShapeError
from cnnkit.shapes import Pair


def spatial_size(model: str, input_size: Pair, steps: list[tuple[str, Callable[..., Pair], int]]) -> Pair:
    """(H, W) after a chain of (layer name, conv2d_hw or pool2d_hw, kernel) steps; the layer that cannot
    apply is named, so `lenet` on 8×8 says which layer runs out of pixels."""
    hw = tuple(input_size)
    for name, fn, kernel in steps:
        try:
            hw = fn(hw, kernel)
        except ShapeError as exc:
            size = "×".join(str(d) for d in input_size)
            raise ShapeError(f"{model} on {size} input: {name} gets {hw[0]}×{hw[1]}: {exc}") from None
    return hw  # type: ignore[return-value]
