"""`cnnkit look`: what each layer of a trained model sees in a picture, its first filters, and where it looked.

For a classifier: activations.png (each conv / pool / norm layer's feature maps, captioned with the
shapes-table row and its arithmetic), filters.png (the first conv layer's filters) and gradcam.png
(Grad-CAM at the last conv layer, with the top-3 classes). For the edge toy: the input, the learned
kernel and its output beside the article's X ⋆ [[1, −1]] (edges.png), with the same activations and
filters. The feature maps come from one recorded forward pass (cnnkit.inspection.capture); every
layer's captured shape must equal what `cnnkit shapes` computes, or it is an error.

What differs per task is one entry of LOOKS (the task registry's names: classify, edge).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnkit.build import input_shape
from cnnkit.data import normalize
from cnnkit.data.datasets import stripes_image
from cnnkit.errors import CheckpointError, ConfigError, DataError, ShapeError
from cnnkit.evaluation.predict import _why_unreadable, classifier_from, load_image
from cnnkit.inspection import draw
from cnnkit.inspection.capture import Capture, capture
from cnnkit.inspection.gradcam import grad_cam, last_conv, map_layers
from cnnkit.reports import plots
from cnnkit.shapes import LayerRow, ShapeReport, trace_model
from cnnkit.training.checkpoint import LoadedModel, model_from_checkpoint

MAX_IMAGES = 12  # gradcam.png has a row per picture, and each picture its own activations.png
EDGE_MAX_SIDE = 64  # the edge toy reads a picture at its own size, at most this many pixels a side
TOP = 3
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LocalResponseNorm)


@dataclass
class PictureLook:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)  # (class, probability), most likely first
    explained: str | None = None  # the class Grad-CAM explains
    peak: tuple[int, int] | None = None  # Grad-CAM's peak (row, column) in the model's input pixels
    activations: Path | None = None
    edges: Path | None = None
    edge_error: float | None = None  # edge toy: max |output − X ⋆ [[1, −1]]| over the picture
    # For callers that want the numbers (tests); not in the JSON.
    cam: torch.Tensor | None = None  # (H, W) in [0, 1]
    output_map: torch.Tensor | None = None  # edge toy: (H, W−1)
    target_map: torch.Tensor | None = None  # edge toy: X ⋆ [[1, −1]], (H, W−1)

    def to_dict(self) -> dict:
        data: dict = {"path": self.path}
        if self.top:
            data["top"] = [{"class": c, "probability": p} for c, p in self.top]
        if self.explained is not None:
            data["gradcam"] = {"class": self.explained, "peak": list(self.peak)}
        if self.edge_error is not None:
            data["edge_max_error"] = self.edge_error
        data["pictures"] = [str(p) for p in (self.activations, self.edges) if p is not None]
        return data


@dataclass
class LookReport:
    checkpoint: Path
    model: str
    epoch: int
    task: str
    input: tuple[int, int, int]  # (C, H, W) the model saw
    layers: list[LayerRow]  # every row of `cnnkit shapes` for that input (the captured shapes equal them)
    pictures: list[PictureLook]
    written: list[Path]  # every PNG, in the order written
    cam_layer: str | None = None
    cam_size: tuple[int, int] | None = None
    kernel: list[list[float]] | None = None  # edge toy: the learned kernel
    notes: list[str] = field(default_factory=list)  # what was not drawn, and why (one line each)

    def to_dict(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint), "model": self.model, "epoch": self.epoch, "task": self.task,
            "input": list(self.input),
            "layers": [{"name": r.name, "type": r.type, "kind": r.kind, "input": list(r.input),
                        "output": list(r.output)} for r in self.layers],
            "gradcam_layer": None if self.cam_layer is None else {"name": self.cam_layer, "size": list(self.cam_size)},
            "kernel": self.kernel,
            "images": [p.to_dict() for p in self.pictures],
            "written": [str(p) for p in self.written],
            "notes": list(self.notes),
        }


def look(checkpoint: str | Path, images: Sequence[str | Path], *, out_dir: str | Path | None = None,
         class_name: str | None = None, layer: str | None = None, device: str = "auto") -> LookReport:
    """Draw what a checkpoint's model sees in `images` into `out_dir` (default: look/ beside the checkpoint)."""
    if len(images) > MAX_IMAGES:
        raise ConfigError(f"look: {len(images)} pictures given; pass at most {MAX_IMAGES} (each gets its own "
                          "activations picture and a row of gradcam.png)")
    loaded = model_from_checkpoint(checkpoint, device)
    if loaded.task.name not in LOOKS:
        raise CheckpointError(f"{loaded.path}: look does not know the {loaded.task.name!r} task of model "
                              f"{loaded.config.model.name!r}; it draws {', '.join(LOOKS)} checkpoints")
    out = Path(out_dir) if out_dir is not None else loaded.path.parent / "look"
    return LOOKS[loaded.task.name](loaded, [Path(p) for p in images], out, class_name, layer)


# ---------------------------------------------------------------------------------------- shared steps


def read_pictures(paths: Sequence[Path], shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 (N, C, H, W): each picture as `cnnkit predict` reads it; one unreadable file is an error."""
    pictures = []
    for path in paths:
        try:
            image, _, _ = load_image(path, shape)
        except Exception as exc:  # Pillow signals bad files with many types (OSError, ValueError, ...)
            raise DataError(f"{path}: {_why_unreadable(exc)}; pass picture files (.png, .jpg, …)") from None
        pictures.append(image)
    return torch.stack(pictures)


def traced(model: nn.Module, inputs: torch.Tensor, shape: tuple[int, int, int]) -> tuple[ShapeReport, Capture]:
    """The `cnnkit shapes` table for `shape` and a recorded forward pass over `inputs` (outputs kept);
    a layer whose captured maps differ from the table is an error (one source of truth for shapes)."""
    table = trace_model(model, shape)
    with torch.no_grad():
        record = capture(model, inputs, keep=True)
    for i in range(max(len(table.layers), len(record.calls))):
        row = table.layers[i] if i < len(table.layers) else None
        call = record.calls[i] if i < len(record.calls) else None
        if row is None or call is None or row.name != call.name or row.output != call.output[1:]:
            said = "nothing" if row is None else f"{row.name} {_fmt(row.output)}"
            seen = "nothing" if call is None else f"{call.name} {_fmt(call.output[1:])}"
            raise ShapeError(f"layer {i + 1}: `cnnkit shapes` computes {said} but the forward pass on the pictures "
                             f"produced {seen}; the model's layers depend on more than the input's shape")
    return table, record


def _fmt(shape) -> str:
    return "×".join(str(d) for d in shape) or "()"


def _formula(row: LayerRow) -> str:
    if not row.formulas:
        return ""
    return f"H,W: {row.formulas[0]}" if row.formulas[0] == row.formulas[1] else \
        f"H: {row.formulas[0]}\nW: {row.formulas[1]}"


def _shown(row: LayerRow, module: nn.Module | None, shape: tuple[int, ...]) -> bool:
    """Conv, pool (modules or functions: they have a kernel) and norm layers with 2-D maps."""
    return len(shape) == 4 and (row.kernel is not None or isinstance(module, NORMS))


def layer_maps(table: ShapeReport, record: Capture, index: int) -> list[draw.LayerMaps]:
    """activations.png's rows for picture `index` of the batch."""
    return [draw.LayerMaps(row.name, row.type, row.input, row.output, _formula(row), call.value[index].float().cpu())
            for row, call in zip(table.layers, record.calls, strict=True) if _shown(row, call.module, call.output)]


def first_conv(record: Capture) -> tuple[str, torch.Tensor] | None:
    for call in record.calls:
        weight = getattr(call.module, "weight", None)
        if call.kind == "module" and hasattr(call.module, "out_channels") and isinstance(weight, torch.Tensor) \
                and weight.dim() == 4:
            return call.name, weight
    return None


def picture_names(paths: Sequence[str | Path]) -> list[str]:
    """Each picture's name in titles: its file name, or, where pictures share one, the shortest tail of
    its path that tells it apart, as `eval --worst` names test images: test/cat/0001.jpg and
    test/ship/0001.jpg are cat/0001.jpg and ship/0001.jpg. A file given twice keeps its file name."""
    parts = [Path(p).parts for p in paths]
    names = []
    for i, mine in enumerate(parts):
        others = [other for j, other in enumerate(parts) if j != i and other != mine]
        k = 1
        while k < len(mine) and any(other[-k:] == mine[-k:] for other in others):
            k += 1
        names.append(Path(*mine[-k:]).as_posix() if mine else str(paths[i]))
    return names


def _file_name(kind: str, index: int, count: int, name: str) -> str:
    """activations.png for one picture; activations-02-cat.png for the second of several (a picture
    named by its folder too, cat/0001.jpg, gives activations-02-cat_0001.png)."""
    if count == 1:
        return f"{kind}.png"
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(Path(name).with_suffix("")))[-40:]
    return f"{kind}-{index + 1:02d}-{stem}.png"


def _title(loaded: LoadedModel) -> str:
    return f"{loaded.config.model.name}, {loaded.path.name} (epoch {loaded.epoch})"


def _activations(loaded, table, record, pictures, looks, out) -> list[Path]:
    written = []
    names = picture_names([entry.path for entry in looks])
    for i, (picture, entry, name) in enumerate(zip(pictures, looks, names, strict=True)):
        path = out / _file_name("activations", i, len(looks), name)
        title = (f"What each conv / pool / norm layer of {_title(loaded)} sees in {name}\n"
                 "each row: the layer's output maps, its shapes from `cnnkit shapes` with the arithmetic; "
                 "one colour scale per row")
        entry.activations = draw.write_activations(picture.cpu(), layer_maps(table, record, i), path, title)
        written.append(entry.activations)
    return written


def _filters(loaded, record, out) -> list[Path]:
    found = first_conv(record)
    if found is None:
        return []
    name, weight = found
    title = f"The first conv layer's filters: {_title(loaded)}"
    return [draw.write_filters(weight, name, out / "filters.png", title)]


# ---------------------------------------------------------------------------------------- per task


def _cam_layer(calls, asked: str | None, model_name: str) -> str | None:
    """The layer Grad-CAM explains: the one asked for (checked before anything is drawn), else the
    last conv layer with maps (the usual choice: its maps are the most class-specific)."""
    if asked is None:
        return last_conv(calls)
    candidates = map_layers(calls)
    if asked in candidates:
        return asked
    by_name = {call.name: call for call in calls}
    base = asked.split("#")[0]
    if base not in by_name:
        close = difflib.get_close_matches(asked, list(by_name), n=1)
        why = "no such layer in the model" + (f" (did you mean {close[0]!r}?)" if close else "")
    elif f"{base}#2" in by_name:
        why = "its module runs more than once in the forward pass, so its maps are not one tensor"
    elif by_name[base].kind != "module":
        why = "it is a torch function between modules, which Grad-CAM cannot hook"
    else:
        why = f"its output is {_fmt(by_name[base].output[1:])}, not maps of more than one pixel"
    choices = ", ".join(candidates) if candidates else "none: the model has no layer with maps"
    raise ConfigError(f"--layer {asked!r}: {why}; Grad-CAM can explain: {choices} "
                      f"(`cnnkit shapes --model {model_name}` lists every layer)")


def _look_classifier(loaded: LoadedModel, paths: list[Path], out: Path, class_name: str | None,
                     layer_name: str | None) -> LookReport:
    classifier = classifier_from(loaded)
    classes, runtime = classifier.classes, classifier.runtime
    target = None
    if class_name is not None:
        if class_name not in classes:
            close = difflib.get_close_matches(class_name, classes, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"--class {class_name!r}: not one of this checkpoint's classes{hint}; "
                              f"choose one of: {', '.join(classes)}")
        target = torch.full((len(paths),), classes.index(class_name), dtype=torch.int64)
    if not paths:
        raise ConfigError("look: pass at least one picture, e.g. cnnkit look --checkpoint runs/X/best.pt cat.jpg")
    pictures = read_pictures(paths, classifier.input)  # (N, C, H, W) uint8
    inputs = normalize(pictures.to(runtime.device), classifier.mean, classifier.std,
                       memory_format=runtime.memory_format)  # (N, C, H, W)
    model = classifier.model
    table, record = traced(model, inputs, classifier.input)
    layer = _cam_layer(record.calls, layer_name, classifier.name)
    looks = [PictureLook(str(p)) for p in paths]
    report = LookReport(loaded.path, classifier.name, classifier.epoch, "classify", classifier.input, table.layers,
                        looks, [])
    report.written += _activations(loaded, table, record, pictures, looks, out)
    report.written += _filters(loaded, record, out)
    if first_conv(record) is None:
        report.notes.append(f"filters.png: not drawn: {classifier.name} has no conv layer, so no filters to show")
    if layer is None:  # a model with no conv layer has no maps to explain: its top classes, and why no Grad-CAM
        with torch.no_grad():
            probs = model(inputs).float().softmax(dim=1)  # (N, K)
        values, indices = probs.topk(min(TOP, len(classes)), dim=1)
        for i, entry in enumerate(looks):
            entry.top = [(classes[j], v) for j, v in zip(indices[i].tolist(), values[i].tolist(), strict=True)]
        report.notes.append(f"gradcam.png: not drawn: {classifier.name} has no layer whose output is maps "
                            "(C×H×W), so there is nothing for Grad-CAM to place on the picture")
        return report
    row = next(r for r in table.layers if r.name == layer)
    # A module run twice has rows "name" and "name#2"; the module itself is "name".
    cam = grad_cam(model, inputs, layer.split("#")[0], target, row.start, row.jump)
    probs = cam.logits.softmax(dim=1)  # (N, K)
    values, indices = probs.topk(min(TOP, len(classes)), dim=1)
    panels = []
    for i, (entry, name) in enumerate(zip(looks, picture_names([entry.path for entry in looks]), strict=True)):
        entry.top = [(classes[j], v) for j, v in zip(indices[i].tolist(), values[i].tolist(), strict=True)]
        entry.explained, entry.peak, entry.cam = classes[int(cam.target[i])], cam.peaks[i], cam.maps[i]
        panels.append(draw.CamPanel(name, pictures[i], cam.maps[i], entry.peak, entry.explained, entry.top))
    report.cam_layer, report.cam_size = layer, cam.layer_size
    which = f"class '{class_name}'" if class_name else "the predicted class"
    title = (f"Grad-CAM at {layer} ({_fmt(cam.layer_size)} maps placed by their receptive fields) for {which}: "
             f"{_title(loaded)}\nred: the regions whose features raised the class's score most")
    report.written.append(draw.write_gradcam(panels, out / "gradcam.png", title))
    return report


def _edge_size(path: Path) -> tuple[int, int]:
    """The picture's own (H, W), shrunk to EDGE_MAX_SIDE on its longer side."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception as exc:
        raise DataError(f"{path}: {_why_unreadable(exc)}; pass picture files (.png, .jpg, …)") from None
    scale = min(1.0, EDGE_MAX_SIDE / max(width, height))
    return max(2, round(height * scale)), max(2, round(width * scale))


def _look_edge(loaded: LoadedModel, paths: list[Path], out: Path, class_name: str | None,
               layer_name: str | None) -> LookReport:
    if class_name is not None:
        raise ConfigError(f"--class {class_name!r}: an edge-detector checkpoint has no classes; drop --class")
    if layer_name is not None:
        raise ConfigError(f"--layer {layer_name!r}: an edge-detector checkpoint has no classes for Grad-CAM "
                          "to explain; drop --layer")
    task, model, config = loaded.task, loaded.model, loaded.config
    channels = input_shape(config)[0]
    if paths:  # fully convolutional: every picture at the first one's own size (capped)
        shape = (channels, *_edge_size(paths[0]))
        pictures = read_pictures(paths, shape)  # (N, C, H, W) uint8
        names = [str(p) for p in paths]
    else:  # the article's X
        pictures = stripes_image().expand(1, channels, -1, -1).contiguous()  # (1, C, 6, 8)
        shape = tuple(pictures.shape[1:])
        names = ["the seed's 6×8 striped picture"]
    mean, std = config.data.mean or [0.0] * channels, config.data.std or [1.0] * channels
    inputs = task.inputs(pictures.to(loaded.runtime.device), mean, std)  # (N, C, H, W) in [0, 1]
    targets = task.targets(inputs, torch.zeros(len(inputs), dtype=torch.int64))  # (N, 1, H, W−1): X ⋆ [[1, −1]]
    table, record = traced(model, inputs, shape)
    with torch.no_grad():
        outputs = model(inputs).float()  # (N, 1, H, W−1)
    kernel = task.learned_kernel(model)
    looks = [PictureLook(name) for name in names]
    report = LookReport(loaded.path, config.model.name, loaded.epoch, task.name, shape, table.layers, looks, [],
                        kernel=kernel)
    report.written += _activations(loaded, table, record, pictures, looks, out)
    report.written += _filters(loaded, record, out)
    for i, (entry, name) in enumerate(zip(looks, picture_names(names) if paths else names, strict=True)):
        entry.output_map, entry.target_map = outputs[i, 0].cpu(), targets[i, 0].cpu()
        entry.edge_error = float((entry.output_map - entry.target_map).abs().max())
        title = (f"{_title(loaded)} on {name}: the learned kernel's output beside the article's "
                 f"X ⋆ [[1, −1]] (max difference {entry.edge_error:.3g})")
        entry.edges = plots.write_edges(inputs[i].mean(dim=0).cpu(), entry.target_map, entry.output_map,
                                        kernel if kernel is not None else [[0.0, 0.0]],
                                        out / _file_name("edges", i, len(looks), name), title)
        report.written.append(entry.edges)
    return report


LOOKS: dict[str, Callable[[LoadedModel, list[Path], Path, str | None], LookReport]] = {
    "classify": _look_classifier,
    "edge": _look_edge,
}
