"""Measuring a model: batched `evaluate` (also with test-time augmentation) and `cnnkit eval`'s checkpoint report.

Beyond accuracy and the confusion matrix: a classification report (precision, recall, F1 per
class, from the confusion matrix), the most-confused class pairs, optional test-time augmentation
(TTA: the same batching loop, outputs averaged over a list of views), and the pictures
(`confusion.png`, or `edges.png` for the edge toy) beside the checkpoint. Nothing here trains.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.data import Split, channel_tensors, prepare_test, to_device
from cnnkit.device import Runtime
from cnnkit.errors import CheckpointError, ConfigError, RunError
from cnnkit.evaluation.metrics import EvalResult, classification_report, most_confused
from cnnkit.inspection.worst import WorstImage, worst_images, write_worst
from cnnkit.reports.plots import draw_figure
from cnnkit.tasks import Task
from cnnkit.training import distributed
from cnnkit.training.checkpoint import model_from_checkpoint

# classification_report and most_confused live in cnnkit.evaluation.metrics; eval's callers find them here too.
__all__ = ["CheckpointEval", "TTAResult", "classification_report", "evaluate", "evaluate_checkpoint",
           "most_confused", "TTA_MODES", "tta_views"]

View = Callable[[torch.Tensor], torch.Tensor]  # uint8 (B, C, H, W) → uint8 (B, C, H, W)


# ---------------------------------------------------------------------------------------- evaluate


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, *, task: Task, runtime: Runtime, batch_size: int,
             mean: list[float], std: list[float], num_classes: int | None = None,
             views: Sequence[View] | None = None, weights: Sequence[float] | None = None) -> EvalResult:
    """Loss and accuracy (or MSE) over a whole split; sharded over DDP ranks, summed across them.

    With `views` (the first one the original), each batch's outputs are averaged over the views
    before they are scored: test-time augmentation through the same loop.
    """
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    meter = task.meter(num_classes or 1, runtime.device)
    mean_t, std_t = channel_tensors(mean, std, runtime.device)  # (1, C, 1, 1) each, uploaded once, not per batch
    n = len(split)
    rank, world = distributed.rank(), distributed.world_size()
    for lo in range(rank * batch_size, n, batch_size * world):
        images = split.images[lo: lo + batch_size]  # (B, C, H, W) uint8
        labels = split.labels[lo: lo + batch_size]  # (B,)
        outputs, targets = _forward(model, images, labels, task, runtime, mean_t, std_t, views, weights)
        meter.update(outputs, targets, labels)  # summed on the device: no host read until meter.result
    model.train(was_training)
    result = meter.result(n)
    result.seconds = time.perf_counter() - start
    return result


def _forward(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, task: Task, runtime: Runtime,
             mean: torch.Tensor, std: torch.Tensor, views: Sequence[View] | None,
             weights: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs averaged over the views, targets of the original view) for one uint8 batch."""
    total = targets = None
    weights = weights or [1.0] * len(views or [None])
    for view, weight in zip(views or [None], weights, strict=True):
        shown = images if view is None else view(images)  # (B, C, H, W) uint8
        inputs = task.inputs(shown, mean, std, runtime.memory_format)  # (B, C, H, W)
        if targets is None:
            targets = task.targets(inputs, labels)
        with runtime.autocast():
            outputs = model(inputs).float()  # (B, K) logits, or (B, 1, H, W−1) for the edge toy
        outputs = outputs if weight == 1.0 else outputs * weight
        total = outputs if total is None else total + outputs
    return (total / sum(weights) if views and len(views) > 1 else total), targets


# ---------------------------------------------------------------------------------------- TTA


def _shift(images: torch.Tensor, dy: int, dx: int, pad_mode: str = "zeros") -> torch.Tensor:
    """Move the picture by (dy, dx) pixels, filling the uncovered edge as the training crop did:
    with black (pad_mode zeros) or with the mirrored picture (reflect)."""
    _, _, h, w = images.shape
    if pad_mode == "reflect":
        padded = F.pad(images.float(), (1, 1, 1, 1), mode="reflect").to(images.dtype)  # (B, C, H+2, W+2)
    else:
        padded = F.pad(images, (1, 1, 1, 1))  # (B, C, H+2, W+2)
    return padded[:, :, 1 - dy: 1 - dy + h, 1 - dx: 1 - dx + w]  # (B, C, H, W)


def tta_views(mode: str, pad_mode: str = "zeros") -> dict[str, tuple[View, float]]:
    """Name → (uint8 batch transform, weight) for a TTA mode of TTA_MODES; shifted views fill the
    uncovered edge as the model's training crops did (`data.pad_mode`)."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; choose one of: {', '.join(TTA_MODES)}")
    views = {"original": (lambda x: x, 1.0), "flip": (lambda x: x.flip(-1), 1.0)}
    for dy, dx, weight in TTA_MODES[mode]:
        name = "".join(f"{d:+d}{axis}" for d, axis in ((dy, "y"), (dx, "x")) if d)  # e.g. +1x, -1y, +1y+1x
        views[f"shift {name}"] = (lambda x, dy=dy, dx=dx: _shift(x, dy, dx, pad_mode), weight)
        # The mirror of the shifted image (as airbench); over flip_shift's symmetric set of shifts this is
        # the same set of views as shifting the mirror.
        views[f"flip+shift {name}"] = (lambda x, dy=dy, dx=dx: _shift(x, dy, dx, pad_mode).flip(-1), weight)
    return views


# The views each mode adds to the image and its mirror: (dy, dx, weight) shifts, each also mirrored.
TTA_MODES: dict[str, list[tuple[int, int, float]]] = {
    "flip": [],
    # 10 views, equal weights: ±1 pixel along each axis.
    "flip_shift": [(0, 1, 1.0), (0, -1, 1.0), (1, 0, 1.0), (-1, 0, 1.0)],
    # airbench's: half the weight on the image and its mirror, a quarter on each diagonal 1-pixel
    # move (6 views). On the fast model it scored 90.17% where flip_shift scored 89.95% (one model).
    "flip_translate": [(1, 1, 0.5), (-1, -1, 0.5)],
}


# ---------------------------------------------------------------------------------------- eval


def _few(names: list[str], shown: int = 5) -> str:
    listed = ", ".join(names[:shown])
    return listed + (f", … ({len(names)} in all)" if len(names) > shown else "")


def check_classes(path: str | Path, trained: list[str], found: list[str], source: str) -> None:
    """A checkpoint scores the classes it was trained on, in their order; test data with other classes
    (or the same ones under other labels) would be scored against the wrong names: one line saying how
    they differ. A checkpoint without class names (an old one) is taken as it is."""
    if not trained or trained == found:
        return
    only_data = [c for c in found if c not in trained]
    only_checkpoint = [c for c in trained if c not in found]
    if not only_data and not only_checkpoint and len(trained) == len(found):
        first = next(i for i, (a, b) in enumerate(zip(trained, found, strict=True)) if a != b)
        how = (f"the same classes in another order (label {first} is {trained[first]!r} to the checkpoint "
               f"and {found[first]!r} in the data)")
    else:
        parts = []
        if only_data:
            parts.append(f"the data has {_few(only_data)}, which the checkpoint was not trained on")
        if only_checkpoint:
            parts.append(f"the checkpoint knows {_few(only_checkpoint)}, which the data lacks")
        how = "; ".join(parts)
    raise CheckpointError(f"{path} was trained on {len(trained)} classes but the test data ({source}) has "
                          f"{len(found)}: {how}; evaluate it on the data it was trained on (--data-root DIR)")


@dataclass
class TTAResult:
    views: list[str]  # e.g. ["original", "flip", "shift +1x", ...]
    accuracy: float  # argmax of the logits averaged over the views
    loss: float  # cross-entropy of the averaged logits
    plain_accuracy: float  # the original view alone (equals the eval accuracy)
    mode: str = "flip"  # the TTA_MODES name


@dataclass
class CheckpointEval:
    checkpoint: Path
    model: str
    epoch: int
    classes: list[str]
    result: EvalResult
    kernel: list[list[float]] | None
    runtime: str
    task: Task
    tta: TTAResult | None = None
    plots: list[Path] = field(default_factory=list)  # pictures written beside the checkpoint
    worst: list[WorstImage] = field(default_factory=list)  # with --worst K: the K highest-loss test images
    warnings: list[str] = field(default_factory=list)  # e.g. a picture that could not be written

    @property
    def report(self) -> dict | None:
        r = self.result
        return classification_report(r.confusion, self.classes) if r.confusion is not None else None

    def most_confused(self, top: int = 5) -> list[dict]:
        return most_confused(self.result.confusion, self.classes, top) if self.result.confusion is not None else []

    @property
    def title(self) -> str:
        return f"{self.model}, {self.checkpoint.name} (epoch {self.epoch})"

    def to_dict(self) -> dict:
        data = self.task.eval_fields(self.result, self.classes, self.kernel)
        if self.tta is not None:
            data.update(tta_accuracy=self.tta.accuracy, tta_loss=self.tta.loss, tta_views=self.tta.views,
                        tta_mode=self.tta.mode)
        if self.worst:
            data["worst"] = [w.to_dict() for w in self.worst]
        if self.plots:
            data["plots"] = [str(p) for p in self.plots]
        return data


def evaluate_checkpoint(path: str | Path, *, data_root: str | None = None, device: str = "auto",
                        batch_size: int | None = None, tta: bool = False, tta_shift: bool = False,
                        tta_mode: str | None = None, plots_dir: str | Path | None = None,
                        worst: int = 0, model: nn.Module | None = None) -> CheckpointEval:
    """Evaluate a checkpoint on its test set; with `plots_dir`, also draw confusion.png / edges.png there.

    `tta` alone uses the run's own TTA mode (its train.tta, or flip when it had none), so that eval
    reproduces the TTA figure the run printed; `tta_shift` is mode flip_shift and `tta_mode` names
    any mode of TTA_MODES (either implies `tta`). A picture that cannot be written is a warning, not
    a failure: the numbers are what the user asked for. `worst` > 0 also finds that many
    highest-loss test images (and draws worst.png in `plots_dir`). `model`, a model object
    (cnnkit.api.evaluate), takes the checkpoint's weights instead of a model rebuilt from its config.
    """
    tta_mode = tta_mode or ("flip_shift" if tta_shift else None)
    if tta_mode is not None and tta_mode not in TTA_MODES:
        raise ConfigError(f"--tta-mode {tta_mode}: unknown; choose one of: {', '.join(TTA_MODES)}")
    refuse = (("tta",) if tta_mode or tta else ()) + (("worst",) if worst else ())
    loaded = model_from_checkpoint(path, device, refuse=refuse, model=model)
    config, task, runtime = loaded.config, loaded.task, loaded.runtime
    if tta and tta_mode is None:
        tta_mode = config.train.tta if config.train.tta != "none" else "flip"
    # The test split alone, with the mean/std the run resolved (saved in its config): no training images read.
    prepared = prepare_test(config, data_root)
    check_classes(loaded.path, loaded.classes, list(prepared.classes), prepared.source)
    classes = loaded.classes or list(prepared.classes)
    test = to_device(prepared.test, runtime.device)

    def measure(views: dict[str, tuple[View, float]] | None = None) -> EvalResult:
        return evaluate(loaded.model, test, task=task, runtime=runtime,
                        batch_size=batch_size or config.train.eval_batch_size, mean=prepared.mean,
                        std=prepared.std, num_classes=len(classes),
                        views=[v for v, _ in views.values()] if views else None,
                        weights=[w for _, w in views.values()] if views else None)

    result = measure()
    report = CheckpointEval(loaded.path, config.model.name, loaded.epoch, classes, result,
                            task.learned_kernel(loaded.model), runtime.describe(), task)
    if tta_mode:
        views = tta_views(tta_mode, config.data.pad_mode)
        averaged = measure(views)
        report.tta = TTAResult(list(views), averaged.accuracy, averaged.loss, result.accuracy, tta_mode)
    if worst:
        report.worst = worst_images(loaded.model, test, runtime=runtime, classes=classes, k=worst,
                                    batch_size=batch_size or config.train.eval_batch_size,
                                    inputs=lambda x: task.inputs(x, prepared.mean, prepared.std,
                                                                 runtime.memory_format))
    if plots_dir is not None:
        try:
            figure = task.figure(result, classes, report.kernel, report.title, loaded.model, test, prepared.mean,
                                 prepared.std)
            report.plots.append(draw_figure(figure, Path(plots_dir)))
            if report.worst:
                first = report.worst[0].file or ""
                named = ("each named by its file under test/" if first.startswith("test/") else
                         "each named by its row of test_batch" if first else "#: index in the test split")
                title = (f"{report.title}: the {len(report.worst)} test images with the highest loss, worst first; "
                         f"{named}; p: the probability given to each class")
                report.plots.append(write_worst(test, report.worst, Path(plots_dir) / "worst.png", title))
        except RunError as exc:
            report.warnings.append(f"{exc}; the numbers above are unaffected")
    return report
