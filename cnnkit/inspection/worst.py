"""`cnnkit eval --worst K`: the test images the model gets most wrong (fastai's top losses).

The loss is each image's own cross-entropy, −log p(true class), without label smoothing: the
images whose true class got the least probability. The index is the image's position in the test
split as cnnkit reads it (image folder: classes in name order, files in name order; with
data.subset, in the subset); `file` says where the image came from, when the source says
(an image folder: its path under the data root; the batches layout: the row of test_batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnkit.data import Split
from cnnkit.device import Runtime
from cnnkit.inspection import draw


@dataclass
class WorstImage:
    index: int  # in the test split
    true: str
    predicted: str
    p_true: float
    p_predicted: float
    loss: float  # −log p(true)
    file: str | None = None  # e.g. test/cat/0042.jpg under the data root; None where the source has no names

    def to_dict(self) -> dict:
        return {"index": self.index, "file": self.file, "true": self.true, "predicted": self.predicted,
                "p_true": self.p_true, "p_predicted": self.p_predicted, "loss": self.loss}


@torch.inference_mode()
def worst_images(model: nn.Module, split: Split, *, inputs, runtime: Runtime, classes: list[str], k: int,
                 batch_size: int) -> list[WorstImage]:
    """The k images of `split` with the highest loss, worst first (ties: lower index first).

    `inputs` turns a uint8 batch into the model's input (the task's own, with the run's mean/std)."""
    model.eval()
    losses, chosen_p, predicted, predicted_p = [], [], [], []
    for lo in range(0, len(split), batch_size):
        images = split.images[lo: lo + batch_size]  # (B, C, H, W) uint8
        labels = split.labels[lo: lo + batch_size]  # (B,)
        with runtime.autocast():
            logits = model(inputs(images)).float()  # (B, K)
        log_probs = logits.log_softmax(dim=1)  # (B, K)
        true_log_p = log_probs.gather(1, labels[:, None])[:, 0]  # (B,)
        best_log_p, best = log_probs.max(dim=1)  # (B,), (B,)
        losses.append(-true_log_p)
        chosen_p.append(true_log_p.exp())
        predicted.append(best)
        predicted_p.append(best_log_p.exp())
    loss = torch.cat(losses).cpu()  # (N,)
    # Stable sort on the negated loss: equal losses keep the split's order.
    order = torch.sort(-loss, stable=True).indices[: min(k, len(loss))].tolist()
    p_true, pred, p_pred = (torch.cat(t).cpu() for t in (chosen_p, predicted, predicted_p))
    labels = split.labels.cpu()
    return [WorstImage(i, classes[int(labels[i])], classes[int(pred[i])], float(p_true[i]), float(p_pred[i]),
                       float(loss[i]), split.names[i] if split.names is not None else None) for i in order]


def write_worst(split: Split, worst: list[WorstImage], out_path: str | Path, title: str) -> Path:
    panels = [draw.WorstPanel(split.images[w.index].cpu(), _label(w), w.true, w.predicted, w.p_true, w.p_predicted,
                              w.loss) for w in worst]
    return draw.write_worst(panels, out_path, title)


def _label(w: WorstImage, width: int = 24) -> str:
    """A caption's name for the image: its file without the test/ every test image shares (the
    end of it, where a long path would run into the next panel), or "#index" where there are no files."""
    if not w.file:
        return f"#{w.index}"
    name = w.file.removeprefix("test/")
    return name if len(name) <= width else "…" + name[-(width - 1):]
