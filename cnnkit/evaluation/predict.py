"""`cnnkit predict`: classify the user's own pictures with a trained checkpoint.

Each picture goes through the same steps as the training data did: decoded by Pillow to 8-bit RGB,
resized to the model's input (bilinear, antialiased when shrinking), then, for a grayscale model,
the same luma as `cnnkit.data.to_grayscale`, and finally `cnnkit.data.normalize` with the mean/std
saved in the checkpoint's config. A 32×32 RGB picture from the CIFAR-10 test folder therefore
becomes exactly the tensor `cnnkit eval` feeds the model for it.

One unreadable file is one error entry, never the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnkit.build import input_shape
from cnnkit.data import normalize
from cnnkit.data.pictures import fit_picture, to_rgb
from cnnkit.device import Runtime
from cnnkit.errors import CheckpointError, one_line
from cnnkit.training.checkpoint import LoadedModel, model_from_checkpoint

BATCH = 256


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None = None  # (class, probability), most likely first
    size: tuple[int, int] | None = None  # the file's own (width, height)
    mode: str | None = None  # the file's own Pillow mode, e.g. RGB, L, RGBA, P
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "size": list(self.size), "mode": self.mode,
                "top": [{"class": c, "probability": p} for c, p in self.top]}


@dataclass
class PredictReport:
    checkpoint: Path
    model: str
    epoch: int
    input: tuple[int, int, int]  # (C, H, W) the model sees
    predictions: list[Prediction]
    skipped: list[str] = field(default_factory=list)  # files in a folder argument that are not images

    @property
    def n_predicted(self) -> int:
        return sum(p.error is None for p in self.predictions)

    def to_dict(self) -> dict:
        return {"checkpoint": str(self.checkpoint), "model": self.model, "epoch": self.epoch,
                "input": list(self.input), "predicted": self.n_predicted,
                "errors": len(self.predictions) - self.n_predicted,
                "predictions": [p.to_dict() for p in self.predictions], "skipped": self.skipped}


@dataclass
class Classifier:
    """A checkpoint's model with everything needed to turn a picture into its input."""

    checkpoint: Path
    model: nn.Module
    name: str
    epoch: int
    classes: list[str]
    input: tuple[int, int, int]  # (C, H, W)
    mean: list[float]
    std: list[float]
    runtime: Runtime

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) → class probabilities (N, K)."""
        out = []
        for lo in range(0, images.shape[0], BATCH):
            batch = images[lo: lo + BATCH].to(self.runtime.device)  # (B, C, H, W) uint8
            # The same input layout `cnnkit eval` feeds this model (channels_last when it trained so).
            inputs = normalize(batch, self.mean, self.std, memory_format=self.runtime.memory_format)
            logits = self.model(inputs).float()  # (B, K)
            out.append(logits.softmax(dim=1).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))


def load_classifier(path: str | Path, device: str = "auto") -> Classifier:
    return classifier_from(model_from_checkpoint(path, device, refuse=("predict",)))


def classifier_from(loaded: LoadedModel) -> Classifier:
    """A loaded classifier checkpoint with the class names and mean/std its pictures need."""
    config, path = loaded.config, loaded.path
    if not loaded.classes:
        raise CheckpointError(f"{path}: the checkpoint has no class names; retrain it with `cnnkit train`")
    mean, std = config.data.mean, config.data.std
    channels, height, width = input_shape(config)
    if mean is None or std is None or len(mean) != channels or len(std) != channels:
        raise CheckpointError(f"{path}: its config lacks the {channels}-channel data.mean/data.std the model was "
                              "trained with; retrain it with `cnnkit train` (which saves them)")
    return Classifier(path, loaded.model, config.model.name, loaded.epoch, loaded.classes,
                      (channels, height, width), list(mean), list(std), loaded.runtime)


# ---------------------------------------------------------------------------------------- pictures


def readable_extensions() -> set[str]:
    """File name endings of the formats this Pillow can open (not the write-only ones)."""
    from PIL import Image

    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def expand_inputs(paths: list[str | Path]) -> tuple[list[tuple[Path, str | None]], list[str]]:
    """Files to predict, in order, each with an error or None; a folder becomes its images, sorted.

    Returns (entries, skipped): files inside folders whose names are not images are skipped (and
    listed), not errors; a file named explicitly is always tried, whatever its name.
    """
    extensions = readable_extensions()
    entries: list[tuple[Path, str | None]] = []
    skipped: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            try:
                files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            except OSError as exc:
                entries.append((path, f"cannot list this folder ({exc.strerror or exc})"))
                continue
            images = [p for p in files if p.suffix.lower() in extensions]
            skipped += [str(p) for p in files if p.suffix.lower() not in extensions]
            if not images:
                entries.append((path, "no images in this folder (files Pillow reads: .png, .jpg, .webp, …)"))
            entries += [(p, None) for p in images]
        elif not path.exists():
            entries.append((path, "no such file"))
        else:
            entries.append((path, None))
    return entries, skipped


def load_image(path: str | Path, shape: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int], str]:
    """A picture as the model's uint8 input (C, H, W), with the file's own size and mode.

    The rule is an image folder's (cnnkit.data.pictures): a picture that is also a training file
    becomes exactly the tensor the run trained on. Raises whatever Pillow raises for an unreadable
    file; `predict_images` turns it into one line.
    """
    from PIL import Image

    channels, height, width = shape
    if channels not in (1, 3):
        raise ValueError(f"the model expects {channels} input channels; only 1 (L) or 3 (RGB) come from a picture")
    with Image.open(path) as im:
        size, mode = im.size, im.mode
        pixels = fit_picture(im, height, width, channels)  # (H, W, C)
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()  # (C, H, W) uint8
    return image, size, mode


# The conversion to RGB lives with the image-folder decoder now; the old name stays for callers.
_to_rgb = to_rgb


def _why_unreadable(exc: BaseException) -> str:
    """Why Pillow could not read a picture, as a short phrase."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a folder"
    if isinstance(exc, Image.DecompressionBombError):
        return "too many pixels to decode safely (Pillow's decompression-bomb limit)"
    return f"cannot decode it ({one_line(exc)[:160]})"


# ---------------------------------------------------------------------------------------- predict


def predict_images(checkpoint: str | Path, paths: list[str | Path], *, top_k: int = 3,
                   device: str = "auto") -> PredictReport:
    """Top-k classes with probabilities for every picture (folders expanded), in argument order."""
    classifier = load_classifier(checkpoint, device)
    entries, skipped = expand_inputs(paths)
    predictions: list[Prediction] = []
    images: list[torch.Tensor] = []
    slots: list[int] = []  # predictions[slots[i]] belongs to images[i]
    for path, error in entries:
        if error is None:
            try:
                image, size, mode = load_image(path, classifier.input)
            except Exception as exc:  # Pillow signals bad files with many types (OSError, ValueError, ...)
                error = _why_unreadable(exc)
            else:
                slots.append(len(predictions))
                images.append(image)
                predictions.append(Prediction(str(path), size=size, mode=mode))
                continue
        predictions.append(Prediction(str(path), error=error))
    if images:
        probs = classifier.probabilities(torch.stack(images))  # (N, K)
        k = max(1, min(top_k, len(classifier.classes)))
        values, indices = probs.topk(k, dim=1)  # (N, k), (N, k)
        for slot, vals, idxs in zip(slots, values.tolist(), indices.tolist(), strict=True):
            predictions[slot].top = [(classifier.classes[i], v) for i, v in zip(idxs, vals, strict=True)]
    return PredictReport(classifier.checkpoint, classifier.name, classifier.epoch, classifier.input,
                         predictions, skipped)
