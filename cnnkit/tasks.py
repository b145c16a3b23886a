"""What a model learns and how it is judged, in a name → Task registry.

Everything that differs between classification and the seed's edge toy lives here and nowhere else:
how a uint8 batch becomes inputs and targets, the loss, the metrics an epoch reports, the number
best.pt is selected on, the lines `train` and `eval` end with, `eval`'s JSON fields and picture, and
which of a run's numbers `runs` and `plot` show. A model names its task in its registry entry
(cnnkit.models), and a checkpoint stores that name under "task".

A Task describes; it renders nothing of the rooms above it. Its picture is a `Figure` (what to
draw, from which numbers) that cnnkit.reports.plots draws, and its `runs` cells name fields of a run
summary that cnnkit.reports.runs formats; so this module imports nothing from evaluation.evaluate,
reports or the CLI, not even for annotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.data.splits import Split
from cnnkit.data.transforms import normalize
from cnnkit.errors import CheckpointError
from cnnkit.evaluation.metrics import (
    AccuracyMeter,
    EvalResult,
    SquaredErrorMeter,
    classification_report,
    most_confused,
)
from cnnkit.models import model_task

if TYPE_CHECKING:  # annotations only (cnnkit.config imports no task)
    from cnnkit.config import Config


@dataclass(frozen=True)
class Panel:
    """One panel of `cnnkit plot`."""

    title: str
    series: list[tuple[str, str, str]]  # (metrics key, legend label, line style)
    scale: str = "linear"  # of the y axis: linear, log or percent
    mark_best: bool = False  # star the epoch best.pt keeps


@dataclass(frozen=True)
class Figure:
    """`cnnkit eval`'s picture, described: cnnkit.reports.plots.FIGURES[kind] draws it into `filename`."""

    kind: str  # "confusion" or "edges"
    filename: str  # written beside the checkpoint
    title: str
    data: dict[str, Any]  # what that kind of picture is drawn from (plain lists, numbers, CPU tensors)


# A `runs` cell: (the field of cnnkit.reports.runs.RunSummary it shows, how: "percent" or "mse").
Cell = tuple[str, str]


# The edge toy learns this kernel: a horizontal difference, +1 then −1 (seed 000).
EDGE_KERNEL = torch.tensor([[1.0, -1.0]])
_EDGE_TAPS = tuple(EDGE_KERNEL[0].tolist())  # the same as Python numbers, to fill a kernel on any device


class Task:
    """The interface; `Classification` and `EdgeMap` below are the two tasks."""

    name: str
    augments: bool  # whether the label-preserving crop/flip augmentation applies to its training batches
    panels: list[Panel]  # `cnnkit plot`: the panels its runs draw
    # `cnnkit runs`: column title → the cell its runs show there; a column it lacks stays empty.
    run_cells: dict[str, Cell]
    # What the task cannot do, by feature, as the error's text ({path}, {model}, {task} are filled in).
    refusals: dict[str, str] = {}

    def inputs(self, images: torch.Tensor, mean: list[float], std: list[float],
               memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """uint8 images -> the model's float input, made straight in `memory_format`."""
        raise NotImplementedError

    def targets(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
        raise NotImplementedError

    def hits(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A 0-d count the training loop sums over an epoch (correct predictions, or 0)."""
        raise NotImplementedError

    def train_fields(self, hit_rate: float) -> dict[str, float]:
        """The epoch row's training metrics beyond train_loss, from the summed hits / images."""
        raise NotImplementedError

    def meter(self, num_classes: int, device: torch.device):
        """A fresh accumulator for `evaluate` (cnnkit.evaluation.metrics)."""
        raise NotImplementedError

    def fields(self, prefix: str, result: EvalResult) -> dict[str, float]:
        """The epoch row's entries for a val/test result, e.g. val_loss and val_acc."""
        raise NotImplementedError

    def selection_score(self, row: dict) -> float:
        """Higher is better: the number best.pt is chosen on, from an epoch row with validation."""
        raise NotImplementedError

    def reports(self, row: dict) -> bool:
        """Whether a metrics row looks like this task's (for a run folder whose config is unreadable)."""
        raise NotImplementedError

    def fit_line(self, result: EvalResult, test_is_train: bool = False) -> str:
        """`cnnkit train`'s closing line on the test set, after 'best.pt (epoch N): '.

        `test_is_train`: the "test" set is the training data itself, and the line must say so.
        """
        raise NotImplementedError

    def eval_line(self, result: EvalResult) -> str:
        """`cnnkit eval`'s last line."""
        raise NotImplementedError

    def eval_fields(self, result: EvalResult, classes: list[str], kernel: list[list[float]] | None) -> dict[str, Any]:
        """`cnnkit eval --json`'s task fields (the TTA and plots entries are added by the caller)."""
        raise NotImplementedError

    def figure(self, result: EvalResult, classes: list[str], kernel: list[list[float]] | None, title: str,
               model: nn.Module, test: Split, mean: list[float], std: list[float]) -> Figure:
        """`cnnkit eval`'s picture of the result, described (title: which checkpoint it is)."""
        raise NotImplementedError

    def learned_kernel(self, model: nn.Module) -> list[list[float]] | None:
        """A kernel worth printing after training, when the task has one."""
        return None

    def refuse(self, feature: str, path: str | Path, model: str) -> None:
        """Raise CheckpointError when this task cannot do `feature` (e.g. "predict", "tta")."""
        if feature in self.refusals:
            raise CheckpointError(self.refusals[feature].format(path=path, model=model, task=self.name))


def accuracy_line(result: EvalResult, *, timed: bool = False) -> str:
    """The line users' scripts read (`— Acc:` last): train's end report and eval's last line."""
    took = f" ({result.seconds:.2f} s)" if timed else ""
    return (f"test accuracy {result.accuracy:.4f}, loss {result.loss:.4f} on {result.n:,} images{took} "
            f"— Acc: {result.accuracy:.2f}")


class Classification(Task):
    name = "classify"
    augments = True
    panels = [
        Panel("loss", [("train_loss", "train", "-"), ("val_loss", "val", "--"), ("test_loss", "test", ":")]),
        Panel("train accuracy", [("train_acc", "train", "-")], "percent"),
        Panel("validation / test accuracy", [("val_acc", "val", "-"), ("test_acc", "test", "--")], "percent",
              mark_best=True),
    ]
    run_cells = {"best val": ("best_val", "percent"), "test": ("test_at_best", "percent"),
                 "TTA": ("tta_test", "percent"), "best test": ("best_test", "percent")}

    def inputs(self, images, mean, std, memory_format=torch.contiguous_format):
        return normalize(images, mean, std, memory_format=memory_format)  # (B, C, H, W) float32

    def targets(self, inputs, labels):
        return labels  # (B,)

    def loss(self, outputs, targets, smoothing):
        return F.cross_entropy(outputs, targets, label_smoothing=smoothing)

    def hits(self, outputs, labels):
        return (outputs.argmax(dim=1) == labels).sum()

    def train_fields(self, hit_rate):
        return {"train_acc": hit_rate}

    def meter(self, num_classes, device):
        return AccuracyMeter(num_classes, device)

    def fields(self, prefix, result):
        return {f"{prefix}_loss": result.loss, f"{prefix}_acc": result.accuracy}

    def selection_score(self, row):
        return row["val_acc"]

    def reports(self, row):
        return "train_acc" in row

    def fit_line(self, result, test_is_train=False):
        return accuracy_line(result)

    def eval_line(self, result):
        return accuracy_line(result, timed=True)

    def eval_fields(self, result, classes, kernel):
        return {
            "accuracy": result.accuracy, "loss": result.loss, "n": result.n,
            "per_class": dict(zip(classes, result.per_class, strict=True)),
            "confusion": result.confusion.tolist(),
            # Added in issue 6; the keys above keep their meaning.
            "report": classification_report(result.confusion, classes),
            "most_confused": most_confused(result.confusion, classes, 5),
        }

    def figure(self, result, classes, kernel, title, model, test, mean, std):
        return Figure("confusion", "confusion.png",
                      f"{title}: test accuracy {result.accuracy:.2%} on {result.n:,} images",
                      {"confusion": result.confusion, "classes": list(classes)})


class EdgeMap(Task):
    """Seed 000's toy: regress the picture's horizontal edge map X ⋆ [[1, −1]]."""

    name = "edge"
    # One fixed picture whose targets come from its own pixels: nothing to augment.
    augments = False
    # The loss is the summed squared error per picture, the MSE is per output pixel; both fall by
    # orders of magnitude, hence log axes.
    panels = [
        Panel("edge toy: train loss (squared error per picture)", [("train_loss", "train", "-")], "log"),
        Panel("edge toy: MSE per pixel", [("val_mse", "val", "-"), ("test_mse", "test", "--")], "log"),
    ]
    # No accuracy: the val and test columns show the MSE instead.
    run_cells = {"best val": ("best_val_mse", "mse"), "test": ("final_test_mse", "mse")}
    refusals = {
        "predict": "{path}: a {model} checkpoint ({task} task) does not classify; predict needs a classifier such "
                   "as lenet — use `cnnkit eval` for this one",
        "tta": "{path}: an edge-detector checkpoint has no classes to average; --tta applies to classifiers, "
               "drop it for this one",
        "worst": "{path}: --worst ranks classified test images by their loss; a {model} checkpoint ({task} task) "
                 "has no classes — drop --worst for this one",
    }

    def inputs(self, images, mean, std, memory_format=torch.contiguous_format):
        return images.to(torch.float32, memory_format=memory_format).div_(255)  # (B, C, H, W) in [0, 1]

    def __init__(self):
        self._kernels: dict[tuple, torch.Tensor] = {}  # (device, dtype, C) → (1, C, 1, 2)

    def targets(self, inputs, labels):
        key = (inputs.device, inputs.dtype, inputs.shape[1])
        if key not in self._kernels:
            # Made once per device and filled there, not copied from the host at every step: on CUDA a
            # host→device copy waits for every queued kernel to finish first.
            kernel = inputs.new_empty(1, 1, *EDGE_KERNEL.shape)  # (1, 1, 1, 2)
            for j, value in enumerate(_EDGE_TAPS):
                kernel[..., j].fill_(value)
            self._kernels[key] = kernel.expand(1, inputs.shape[1], 1, 2)  # (1, C, 1, 2)
        return F.conv2d(inputs, self._kernels[key])  # (B, 1, H, W−1)

    def loss(self, outputs, targets, smoothing):
        # The seed's loss: squared error summed over the picture (here averaged over the batch).
        return (outputs - targets).pow(2).sum() / outputs.shape[0]

    def hits(self, outputs, labels):
        return torch.zeros((), dtype=torch.int64, device=outputs.device)

    def train_fields(self, hit_rate):
        return {}

    def meter(self, num_classes, device):
        return SquaredErrorMeter(num_classes, device)

    def fields(self, prefix, result):
        return {f"{prefix}_mse": result.mse}

    def selection_score(self, row):
        return -row["val_mse"]

    def reports(self, row):
        return "train_acc" not in row

    def fit_line(self, result, test_is_train=False):
        if test_is_train:  # the stripes toy: one picture, trained on and measured on
            return f"fit MSE {result.mse:.3g} on the training picture (no held-out test set)"
        return f"test MSE {result.mse:.3g} on {result.n:,} images"

    def eval_line(self, result):
        return f"MSE: {result.mse:.4g} over {result.n} image(s)"

    def eval_fields(self, result, classes, kernel):
        return {"kernel": kernel, "mse": result.mse, "n": result.n}

    def figure(self, result, classes, kernel, title, model, test, mean, std):
        image, target, output = self.example(model, test, mean, std)
        return Figure("edges", "edges.png", f"{title}: MSE {result.mse:.3g}",  # stripes: its training picture
                      {"image": image, "target": target, "output": output, "kernel": kernel})

    @torch.inference_mode()
    def example(self, model: nn.Module, test: Split, mean: list[float], std: list[float]):
        """The first test picture, its true edge map and the model's, as CPU tensors for plotting."""
        model.eval()
        images = test.images[:1]  # (1, C, H, W) uint8
        inputs = self.inputs(images, mean, std)  # (1, C, H, W) in [0, 1]
        target = self.targets(inputs, test.labels[:1])  # (1, 1, H, W−1)
        output = model(inputs).float()  # (1, 1, H, W−1)
        return inputs[0].mean(dim=0).cpu(), target[0, 0].cpu(), output[0, 0].cpu()  # (H, W), (H, W−1), (H, W−1)

    def learned_kernel(self, model):
        kernel = getattr(model, "kernel", None)
        return kernel.cpu().tolist() if isinstance(kernel, torch.Tensor) else None


TASKS: dict[str, Task] = {"classify": Classification(), "edge": EdgeMap()}


def task_for(config: Config) -> Task:
    return TASKS[model_task(config.model.name)]
