"""One picture file → the uint8 pixels a model sees: the rule an image folder is decoded by and
`cnnkit predict` / `cnnkit look` read the user's pictures by, so both give the same tensor for a file.

The rule, in order:
  1. the EXIF orientation tag is applied (phone photos are often stored sideways plus a rotation tag);
  2. the picture becomes 8-bit RGB: grayscale is copied into the three channels, a palette is looked
     up, transparency (RGBA, LA, a palette's transparent colour) is laid over white, 16-bit and float
     pictures are scaled to 0–255;
  3. it is resized to exactly the model's H×W with Pillow's bilinear filter, which widens its support
     when shrinking (antialiased); the aspect ratio is not kept: a 64×48 picture is stretched to
     32×32, not cropped (crop your pictures first where that matters);
  4. for a one-channel model, the ITU-R 601 luma (Pillow's convert("L"), which
     cnnkit.data.to_grayscale reproduces exactly).
"""

from __future__ import annotations

import numpy as np


def to_rgb(im):
    """Any Pillow mode → 8-bit RGB: transparency over white, 16-bit and float scaled to 0–255."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":
        values = np.asarray(im).astype(np.float64)  # (H, W)
        if im.mode.startswith("I;16") or (im.mode == "I" and values.max(initial=0) > 255):
            values = values / 257  # 0–65535 → 0–255
        elif im.mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255  # a float picture in [0, 1]
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def fit_picture(im, height: int, width: int, channels: int = 3) -> np.ndarray:
    """An open Pillow image → uint8 (H, W, C) by the rule above (C is 3, or 1 for a grayscale model)."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    im = to_rgb(im)
    if im.size != (width, height):
        # Pillow's bilinear filter widens its support when shrinking, so this is antialiased.
        im = im.resize((width, height), Image.Resampling.BILINEAR)
    if channels == 1:
        return np.asarray(im.convert("L"), dtype=np.uint8)[:, :, None]  # (H, W, 1)
    return np.asarray(im, dtype=np.uint8)  # (H, W, 3)
