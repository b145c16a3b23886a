"""Measuring a model on a split: the result, the per-task accumulators, and reports from a confusion matrix.

A meter sums one batch at a time on the device and reduces over DDP ranks once at the end; which
meter a run uses is its task's choice (cnnkit.tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnkit.training import distributed


@dataclass
class EvalResult:
    n: int
    loss: float
    accuracy: float | None = None  # classification
    confusion: torch.Tensor | None = None  # (K, K): rows true class, columns predicted
    mse: float | None = None  # edge toy: mean squared error per output pixel
    seconds: float = 0.0

    @property
    def per_class(self) -> list[float]:
        counts = self.confusion.sum(dim=1).clamp(min=1)
        return (self.confusion.diag().double() / counts).tolist()


class AccuracyMeter:
    """Summed cross-entropy and the confusion matrix of a classifier."""

    def __init__(self, num_classes: int, device: torch.device):
        self.k = num_classes
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.confusion = torch.zeros(self.k * self.k, dtype=torch.int64, device=device)  # (K·K,)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> None:
        # outputs (B, K) float32 logits; targets = labels (B,)
        self.loss_sum += F.cross_entropy(outputs, targets, reduction="sum").double()
        cells = labels * self.k + outputs.argmax(dim=1)  # (B,) index of (true, predicted) in the flat matrix
        # scatter_add_ into the fixed K·K cells, not bincount: on CUDA bincount reads the indices' min
        # and max back to the host to size its output, two syncs a batch.
        self.confusion.scatter_add_(0, cells, torch.ones_like(cells))

    def result(self, n: int) -> EvalResult:
        loss_sum = distributed.all_reduce_sum(self.loss_sum)
        confusion = distributed.all_reduce_sum(self.confusion).reshape(self.k, self.k).cpu()  # (K, K)
        return EvalResult(n=n, loss=loss_sum.item() / n, accuracy=confusion.diag().sum().item() / n,
                          confusion=confusion)


class SquaredErrorMeter:
    """Summed squared error, per picture (the loss) and per output pixel (the MSE)."""

    def __init__(self, num_classes: int, device: torch.device):
        self.sq_err = torch.zeros((), dtype=torch.float64, device=device)
        self.pixels = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> None:
        err = (outputs - targets).pow(2)  # (B, 1, H, W−1)
        self.sq_err += err.sum().double()
        self.pixels += err.numel()

    def result(self, n: int) -> EvalResult:
        pixels = torch.tensor(float(self.pixels), dtype=torch.float64, device=self.sq_err.device)
        totals = distributed.all_reduce_sum(torch.stack([self.sq_err, pixels]))  # (2,)
        return EvalResult(n=n, loss=totals[0].item() / n, mse=totals[0].item() / max(1.0, totals[1].item()))


# ---------------------------------------------------------------------------------------- reports


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
