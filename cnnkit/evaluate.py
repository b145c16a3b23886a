"""`cnnkit eval`: rebuild a model from its checkpoint's own config and measure it on the test set.

Beyond accuracy and the confusion matrix: a classification report (precision, recall, F1 per
class, from the confusion matrix), the most-confused class pairs, optional test-time augmentation
(TTA), and the pictures (`confusion.png`, or `edges.png` for the edge toy) beside the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.build import model_from_config
from cnnkit.checkpoint import load_checkpoint, load_model_state
from cnnkit.config import config_from_dict
from cnnkit.data import Split
from cnnkit.device import Runtime, setup_runtime
from cnnkit.errors import CheckpointError, RunError
from cnnkit.train import EvalResult, Task, edge_kernel, evaluate, prepare_data, task_for, to_device


@dataclass
class TTAResult:
    views: list[str]  # e.g. ["original", "flip", "shift +1x", ...]
    accuracy: float  # argmax of the logits averaged over the views
    loss: float  # cross-entropy of the averaged logits
    plain_accuracy: float  # the original view alone (equals the eval accuracy)


@dataclass
class CheckpointEval:
    checkpoint: Path
    model: str
    epoch: int
    classes: list[str]
    result: EvalResult
    kernel: list[list[float]] | None
    runtime: str
    tta: TTAResult | None = None
    plots: list[Path] = field(default_factory=list)  # pictures written beside the checkpoint
    warnings: list[str] = field(default_factory=list)  # e.g. a picture that could not be written

    @property
    def report(self) -> dict | None:
        r = self.result
        return classification_report(r.confusion, self.classes) if r.confusion is not None else None

    def most_confused(self, top: int = 5) -> list[dict]:
        return most_confused(self.result.confusion, self.classes, top) if self.result.confusion is not None else []

    def to_dict(self) -> dict:
        r = self.result
        if r.accuracy is None:
            data = {"kernel": self.kernel, "mse": r.mse, "n": r.n}
        else:
            data = {
                "accuracy": r.accuracy, "loss": r.loss, "n": r.n,
                "per_class": dict(zip(self.classes, r.per_class, strict=True)),
                "confusion": r.confusion.tolist(),
                # Added in issue 6; the keys above keep their meaning.
                "report": self.report,
                "most_confused": self.most_confused(),
            }
            if self.tta is not None:
                data["tta_accuracy"] = self.tta.accuracy
                data["tta_loss"] = self.tta.loss
                data["tta_views"] = self.tta.views
        if self.plots:
            data["plots"] = [str(p) for p in self.plots]
        return data


# ---------------------------------------------------------------------------------------- metrics


def classification_report(confusion: torch.Tensor, classes: list[str]) -> dict:
    """Precision, recall, F1 and support per class, plus macro and weighted averages.

    From the confusion matrix (rows true class, columns predicted). A class never predicted has
    precision 0 (sklearn's zero_division=0); the averages cover the classes that occur in the
    test set or in the predictions, as sklearn's do.
    """
    c = confusion.to(torch.float64)  # (K, K)
    tp = c.diag()  # (K,)
    support = c.sum(dim=1)  # (K,) true images per class
    predicted = c.sum(dim=0)  # (K,) images predicted as each class
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    present = (support > 0) | (predicted > 0)  # (K,)
    weights = support / support.sum().clamp(min=1)

    def average(values: torch.Tensor, weighted: bool) -> float:
        if weighted:
            return (values * weights).sum().item()
        return values[present].mean().item() if present.any() else 0.0

    per_class = {
        name: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
               "support": int(support[i].item())}
        for i, name in enumerate(classes)
    }
    n = int(support.sum().item())
    return {
        "per_class": per_class,
        "macro_avg": {"precision": average(precision, False), "recall": average(recall, False),
                      "f1": average(f1, False), "support": n},
        "weighted_avg": {"precision": average(precision, True), "recall": average(recall, True),
                         "f1": average(f1, True), "support": n},
        "accuracy": tp.sum().item() / max(n, 1),
    }


def most_confused(confusion: torch.Tensor, classes: list[str], top: int = 5) -> list[dict]:
    """The `top` largest off-diagonal cells: (true, predicted, count, share of the true class)."""
    c = confusion.clone().to(torch.int64)  # (K, K)
    c.fill_diagonal_(0)
    support = confusion.sum(dim=1)  # (K,)
    counts, flat = c.flatten().sort(descending=True, stable=True)
    k = c.shape[1]
    pairs = []
    for count, index in zip(counts.tolist(), flat.tolist(), strict=True):
        if count == 0 or len(pairs) >= top:
            break
        i, j = divmod(index, k)
        pairs.append({"true": classes[i], "predicted": classes[j], "count": count,
                      "fraction": count / max(int(support[i]), 1)})
    return pairs


# ---------------------------------------------------------------------------------------- TTA


def _shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the picture by (dy, dx) pixels, zero-filling the edge (as the training crop pads)."""
    _, _, h, w = images.shape
    padded = F.pad(images, (1, 1, 1, 1))  # (B, C, H+2, W+2)
    return padded[:, :, 1 - dy: 1 - dy + h, 1 - dx: 1 - dx + w]  # (B, C, H, W)


def tta_views(shift: bool) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Name → uint8 batch transform. Flip always; with `shift`, ±1-pixel moves of both."""
    views = {"original": lambda x: x, "flip": lambda x: x.flip(-1)}
    if shift:
        for dy, dx, name in ((0, 1, "+1x"), (0, -1, "-1x"), (1, 0, "+1y"), (-1, 0, "-1y")):
            views[f"shift {name}"] = lambda x, dy=dy, dx=dx: _shift(x, dy, dx)
            views[f"flip+shift {name}"] = lambda x, dy=dy, dx=dx: _shift(x.flip(-1), dy, dx)
    return views


@torch.inference_mode()
def tta_evaluate(model: nn.Module, split: Split, *, task: Task, runtime: Runtime, batch_size: int,
                 mean: list[float], std: list[float], shift: bool = False) -> TTAResult:
    """Accuracy from logits averaged over the views, and from the original view alone."""
    model.eval()
    views = tta_views(shift)
    n = len(split)
    correct_tta = correct_plain = 0
    loss_sum = 0.0
    for lo in range(0, n, batch_size):
        images = split.images[lo: lo + batch_size]  # (B, C, H, W) uint8
        labels = split.labels[lo: lo + batch_size]  # (B,)
        total = None
        for name, view in views.items():
            inputs = task.inputs(view(images), mean, std).contiguous(memory_format=runtime.memory_format)
            logits = model(inputs).float()  # (B, K)
            if name == "original":
                correct_plain += (logits.argmax(dim=1) == labels).sum().item()
            total = logits if total is None else total + logits
        mean_logits = total / len(views)  # (B, K)
        correct_tta += (mean_logits.argmax(dim=1) == labels).sum().item()
        loss_sum += F.cross_entropy(mean_logits, labels, reduction="sum").item()
    return TTAResult(list(views), correct_tta / n, loss_sum / n, correct_plain / n)


# ---------------------------------------------------------------------------------------- eval


def evaluate_checkpoint(path: str | Path, *, data_root: str | None = None, device: str = "auto",
                        batch_size: int | None = None, tta: bool = False, tta_shift: bool = False,
                        plots_dir: str | Path | None = None) -> CheckpointEval:
    """Evaluate a checkpoint on its test set; with `plots_dir`, also draw confusion.png / edges.png there.

    `tta_shift` implies `tta`. A picture that cannot be written is a warning, not a failure: the
    numbers are what the user asked for.
    """
    path = Path(path)
    payload = load_checkpoint(path)
    config = config_from_dict(payload["config"], f"{path} (its saved config)")
    runtime = setup_runtime(device, "fp32", config.train.threads, config.train.channels_last)
    task = task_for(config)
    if (tta or tta_shift) and not task.classifies:
        raise CheckpointError(f"{path}: an edge-detector checkpoint has no classes to average; "
                              "--tta applies to classifiers, drop it for this one")
    prepared = prepare_data(config, data_root)
    classes = list(payload.get("classes") or prepared.classes)
    model = model_from_config(config, len(classes) if task.classifies else None)
    load_model_state(model, payload["model"], str(path))
    model = model.to(runtime.device, memory_format=runtime.memory_format)
    test = to_device(prepared.test, runtime.device)
    batch = batch_size or config.train.eval_batch_size
    result = evaluate(model, test, task=task, runtime=runtime, batch_size=batch,
                      mean=prepared.mean, std=prepared.std, num_classes=len(classes) if task.classifies else None)
    report = CheckpointEval(path, config.model.name, int(payload.get("epoch", 0)), classes, result,
                            edge_kernel(model), runtime.describe())
    if tta or tta_shift:
        report.tta = tta_evaluate(model, test, task=task, runtime=runtime, batch_size=batch,
                                  mean=prepared.mean, std=prepared.std, shift=tta_shift)
    if plots_dir is not None:
        _draw(report, model, test, task, prepared.mean, prepared.std, Path(plots_dir))
    return report


def _draw(report: CheckpointEval, model: nn.Module, test: Split, task: Task, mean: list[float],
          std: list[float], folder: Path) -> None:
    from cnnkit import plots

    r = report.result
    title = f"{report.model}, {report.checkpoint.name} (epoch {report.epoch})"
    try:
        if r.confusion is not None:
            report.plots.append(plots.write_confusion(
                r.confusion, report.classes, folder / "confusion.png",
                title=f"{title}: test accuracy {r.accuracy:.2%} on {r.n:,} images"))
        else:
            image, target, output = edge_example(model, test, task, mean, std)
            report.plots.append(plots.write_edges(image, target, output, report.kernel, folder / "edges.png",
                                                  title=f"{title}: test MSE {r.mse:.3g}"))
    except RunError as exc:
        report.warnings.append(f"{exc}; the numbers above are unaffected")


@torch.inference_mode()
def edge_example(model: nn.Module, test: Split, task: Task, mean: list[float], std: list[float]):
    """The first test picture, its true edge map and the model's, as CPU tensors for plotting."""
    model.eval()
    images = test.images[:1]  # (1, C, H, W) uint8
    inputs = task.inputs(images, mean, std)  # (1, C, H, W) in [0, 1]
    target = task.targets(inputs, test.labels[:1])  # (1, 1, H, W−1)
    output = model(inputs).float()  # (1, 1, H, W−1)
    return inputs[0].mean(dim=0).cpu(), target[0, 0].cpu(), output[0, 0].cpu()  # (H, W), (H, W−1), (H, W−1)
