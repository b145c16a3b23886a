"""`cnnkit export`: a checkpoint's model, with its input normalisation folded in, as a file other programs load.

Formats: `pt2` (torch.export; load with `torch.export.load(path).module()`) and `onnx` (torch.onnx's
dynamo exporter; run with onnxruntime; needs the `onnx` extra). TorchScript is in maintenance mode
upstream, so it is not offered.

The exported model takes what an image decoder gives, scaled: float32 (N, C, H, W) in [0, 1], RGB
(or the one gray channel for a data.grayscale model), N any batch size; it returns the model's raw
outputs (logits for a classifier; the edge map for the edge toy). The per-channel (x − mean)/std the
run trained with is inside it, and so are a classifier's class names, in the order of its outputs: a
.pt2 file carries `classes.json` (torch.export.load(path, extra_files={"classes.json": ""})), an
.onnx file the metadata entry `classes` (onnxruntime's get_modelmeta().custom_metadata_map), both a
JSON list. After writing, the file is loaded back and run on a batch of test
images next to the PyTorch model fed through cnnkit's own evaluation path; a difference beyond the
tolerance is an ExportError.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnkit.data import prepare_test
from cnnkit.errors import DataError, ExportError, one_line
from cnnkit.fileio import atomic_save, atomic_write
from cnnkit.training.checkpoint import model_from_checkpoint

FORMATS = ("pt2", "onnx")
# Max |exported − PyTorch| allowed on the check batch: float32 round-off is ~1e-6 on these models;
# onnxruntime fuses and reorders more, so it gets more room.
TOLERANCE = {"pt2": 1e-4, "onnx": 1e-3}
CHECK_IMAGES = 256


class Deployable(nn.Module):
    """The model behind its input transform: x in [0, 1] → model(x · scale + offset), i.e. (x − mean)/std."""

    def __init__(self, model: nn.Module, scale: torch.Tensor, offset: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", scale)  # (1, C, 1, 1)
        self.register_buffer("offset", offset)  # (1, C, 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images * self.scale + self.offset)  # (N, C, H, W) in [0, 1] → (N, K) or (N, 1, H, W−1)


@dataclass
class ExportResult:
    path: Path
    format: str
    input_spec: str
    output_spec: str
    checked_on: str  # which images the check ran on
    n_checked: int
    max_abs_diff: float
    tolerance: float
    top1_agree: int | None  # classifiers: images whose argmax matches the PyTorch model's
    size_bytes: int
    classes: list[str] = field(default_factory=list)  # a classifier's, in the order of its outputs


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path | None = None, *,
                      data_root: str | None = None) -> ExportResult:
    """Export `checkpoint` to `fmt` ("pt2" | "onnx") at `out` (default: beside it, .pt2 / .onnx) and check it."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()
    loaded = model_from_checkpoint(checkpoint, "cpu")
    path = Path(out) if out is not None else loaded.path.with_suffix(f".{fmt}")
    if path.resolve() == loaded.path.resolve():
        raise ExportError(f"--out {path} is the checkpoint itself; choose another file name")
    model = loaded.model.to(memory_format=torch.contiguous_format).eval()
    images, checked_on = _check_images(loaded, data_root)  # (B, C, H, W) uint8
    task, config = loaded.task, loaded.config
    mean, std = list(config.data.mean or [0.0]), list(config.data.std or [1.0])

    with torch.inference_mode():
        # The task's own input transform, read off at 0 and 255: any per-channel affine map folds in.
        channels = images.shape[1]
        ends = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1).expand(2, channels, 1, 1)  # (2, C, 1, 1)
        low, high = task.inputs(ends.contiguous(), mean, std).float().chunk(2)  # (1, C, 1, 1) each
        reference = model(task.inputs(images, mean, std)).float()  # (B, K) or (B, 1, H, W−1)
    wrapper = Deployable(model, (high - low).clone(), low.clone()).eval()
    scaled = images.float() / 255  # (B, C, H, W) in [0, 1]

    # A batch of 2 keeps N symbolic (torch.export specialises sizes 0 and 1); the edge toy has one picture.
    example = scaled[torch.arange(2) % len(scaled)]  # (2, C, H, W)
    dynamic = {"images": {0: torch.export.Dim.DYNAMIC}}
    classes = list(loaded.classes) if task.name == "classify" else []
    if fmt == "pt2":
        outputs = _export_pt2(wrapper, example, dynamic, path, scaled, classes)
    else:
        outputs = _export_onnx(wrapper, example, dynamic, path, scaled, classes)

    diff = float((outputs - reference).abs().max())
    agree = int((outputs.argmax(1) == reference.argmax(1)).sum()) if task.name == "classify" else None
    c, h, w = images.shape[1:]
    kind = "RGB" if c == 3 else "grayscale" if c == 1 else f"{c}-channel"
    out_shape = ", ".join(["N", *map(str, reference.shape[1:])])
    what = "logits" if task.name == "classify" else "edge map"
    named = f" over the classes {_listed(classes)} (saved in the file as {CLASSES_ENTRY[fmt]})" if classes else ""
    result = ExportResult(path, fmt, f"images: float32 [N, {c}, {h}, {w}], {kind} in [0, 1] (N: any batch size; "
                          f"the mean/std normalisation is inside)", f"{what}: float32 [{out_shape}]{named}",
                          checked_on, len(images), diff, TOLERANCE[fmt], agree, path.stat().st_size, classes)
    if not diff <= TOLERANCE[fmt]:  # also catches NaN
        path.unlink(missing_ok=True)  # a file that does not match its model is not an export
        raise ExportError(f"{path}: the exported model's outputs differ from the PyTorch model's by up to {diff:.3g} "
                          f"(tolerance {TOLERANCE[fmt]:g}) on {checked_on}; the file was removed — "
                          "please report this with the checkpoint")
    return result


def _check_images(loaded, data_root: str | None) -> tuple[torch.Tensor, str]:
    """The first CHECK_IMAGES test images; random ones (said so) when the data cannot be found."""
    try:
        prepared = prepare_test(loaded.config, data_root)
        test = prepared.test.images[:CHECK_IMAGES]  # (B, C, H, W) uint8
        return test.contiguous(), f"{len(test)} test images ({prepared.source})"
    except DataError as exc:
        # The comparison is about the arithmetic, which random pixels exercise as well; say which ran.
        from cnnkit.build import input_shape

        c, h, w = input_shape(loaded.config)
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (CHECK_IMAGES, c, h, w), dtype=torch.uint8, generator=generator)
        return images, f"{CHECK_IMAGES} random images (no test images: {one_line(exc)[:80]}…)"


# Where a file keeps the class names, per format.
CLASSES_ENTRY = {"pt2": "classes.json", "onnx": "metadata 'classes'"}


def _listed(classes: list[str], shown: int = 10) -> str:
    names = ", ".join(classes[:shown])
    return names + (f", … ({len(classes)} in all)" if len(classes) > shown else "")


def _export_pt2(wrapper: nn.Module, example: torch.Tensor, dynamic: dict, path: Path,
                scaled: torch.Tensor, classes: list[str]) -> torch.Tensor:
    try:
        program = torch.export.export(wrapper, (example,), dynamic_shapes=dynamic)
    except Exception as exc:  # torch.export's failures are many types, all "this model cannot be traced"
        raise ExportError(f"torch.export could not trace the model ({one_line(exc)[:200]})") from exc
    extra = {"classes.json": json.dumps(classes)} if classes else None
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files=extra))
    with torch.inference_mode():
        return torch.export.load(path).module()(scaled).float()  # what a user of the file gets


def _require_onnx() -> None:
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise ExportError(f"ONNX export needs the onnx extra ({module} is not installed): "
                              "pip install 'cnnkit[onnx]'") from None


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, dynamic: dict, path: Path,
                 scaled: torch.Tensor, classes: list[str]) -> torch.Tensor:
    import onnxruntime

    try:
        # The dynamo exporter reports its steps on stdout and warns freely; a library prints nothing.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=["images"],
                                        output_names=["outputs"], dynamic_shapes=dynamic, verbose=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx could not export the model ({one_line(exc)[:200]})") from exc
    if classes:
        program.model.metadata_props["classes"] = json.dumps(classes)
    # ONNXProgram writes by path: a temporary name with the usual file mode, then renamed into place.
    atomic_save(path, lambda tmp: program.save(str(tmp)))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (outputs,) = session.run(None, {"images": scaled.numpy()})  # (B, K) float32
    return torch.from_numpy(outputs).float()
