"""`train.tensorboard: true`: a run's per-epoch scalars and, at its end, its hparams with the final metrics.

The events go into the run folder itself, so `tensorboard --logdir runs` shows single runs and the
cells of sweeps (runs/NAME/CELL) side by side. The writer is a wrapper around fit's `report`: it
sees the same epoch rows metrics.jsonl gets, and writes each one at step = its epoch. TensorBoard is
an optional extra (`pip install 'cnnkit[tensorboard]'`).
"""

from __future__ import annotations

from pathlib import Path

from cnnkit.config import Config
from cnnkit.errors import ConfigError

# metrics.jsonl key → TensorBoard tag (grouped the way TensorBoard lays out its panels)
SCALARS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test",
    "train_acc": "accuracy/train", "val_acc": "accuracy/val", "test_acc": "accuracy/test",
    "val_mse": "mse/val", "test_mse": "mse/test",
    "images_per_s": "speed/images_per_s", "epoch_s": "time/epoch_s",
}


def require_tensorboard() -> None:
    """One line, before anything starts, when the package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard: true needs the tensorboard package: pip install "
                          "'cnnkit[tensorboard]' (or pip install tensorboard), or set train.tensorboard: false"
                          ) from None


def group_labels(config: Config, n_groups: int) -> list[str]:
    """A name per optimiser parameter group: optim.groups' in order, then `optim` for the rest."""
    if not config.optim.groups and n_groups == 1:
        return [config.optim.name]
    named = [f"{i}_{g.name}" for i, g in enumerate(config.optim.groups)]
    if n_groups == len(named) + 1:
        named.append(f"rest_{config.optim.name}")
    return named if len(named) == n_groups else [str(i) for i in range(n_groups)]


def flat_hparams(data: dict, prefix: str = "") -> dict:
    """The config as flat `section.key` → scalar (lists and None as text), as TensorBoard's hparams take them."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class TensorBoardReport:
    """Wraps fit's `report`: epoch rows become scalars, the end event the hparams; then passes each on."""

    def __init__(self, run_dir: Path, config: Config, optimizer, report):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir))
        self.config, self.optimizer, self.report = config, optimizer, report
        self.best_val: float | None = None
        self.last_epoch = 0

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "epoch":
            self._epoch(event)
        elif kind == "end":
            self._end(event["result"])
        self.report(event)  # after writing: a report that raises (a pruned trial) must not lose the epoch

    def _epoch(self, row: dict) -> None:
        step = row["epoch"]
        for key, tag in SCALARS.items():
            if isinstance(row.get(key), (int, float)):
                self.writer.add_scalar(tag, row[key], step)
        groups = self.optimizer.param_groups
        for label, group in zip(group_labels(self.config, len(groups)), groups, strict=True):
            self.writer.add_scalar(f"lr/{label}", group["lr"], step)
        if isinstance(row.get("val_acc"), float):
            self.best_val = max(self.best_val or 0.0, row["val_acc"])
        self.last_epoch = step
        self.writer.flush()  # a killed run keeps every finished epoch

    def _end(self, result) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = {}
        if result.test is not None and result.test.accuracy is not None:
            metrics["hparam/test_acc"] = result.test.accuracy
        if result.tta is not None and result.tta.accuracy is not None:
            metrics["hparam/tta_acc"] = result.tta.accuracy
        if self.best_val is not None:
            metrics["hparam/best_val_acc"] = self.best_val
        if metrics:
            # Written into this run's own event file (SummaryWriter.add_hparams would open a sub-folder).
            for summary in hparams(flat_hparams(self.config.to_dict()), metrics):
                self.writer.file_writer.add_summary(summary)
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, value, self.last_epoch)
        self.writer.close()
