"""`cnnkit eval`: rebuild a model from its checkpoint's own config and measure it on the test set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnnkit.build import model_from_config
from cnnkit.checkpoint import load_checkpoint, load_model_state
from cnnkit.config import config_from_dict
from cnnkit.device import setup_runtime
from cnnkit.train import EvalResult, edge_kernel, evaluate, prepare_data, task_for, to_device


@dataclass
class CheckpointEval:
    checkpoint: Path
    model: str
    epoch: int
    classes: list[str]
    result: EvalResult
    kernel: list[list[float]] | None
    runtime: str

    def to_dict(self) -> dict:
        r = self.result
        if r.accuracy is None:
            return {"kernel": self.kernel, "mse": r.mse, "n": r.n}
        return {
            "accuracy": r.accuracy, "loss": r.loss, "n": r.n,
            "per_class": dict(zip(self.classes, r.per_class)),
            "confusion": r.confusion.tolist(),
        }


def evaluate_checkpoint(path: str | Path, *, data_root: str | None = None, device: str = "auto",
                        batch_size: int | None = None) -> CheckpointEval:
    path = Path(path)
    payload = load_checkpoint(path)
    config = config_from_dict(payload["config"], f"{path} (its saved config)")
    runtime = setup_runtime(device, "fp32", config.train.threads, config.train.channels_last)
    task = task_for(config)
    prepared = prepare_data(config, data_root)
    classes = list(payload.get("classes") or prepared.classes)
    model = model_from_config(config, len(classes) if task.classifies else None)
    load_model_state(model, payload["model"], str(path))
    model = model.to(runtime.device, memory_format=runtime.memory_format)
    test = to_device(prepared.test, runtime.device)
    result = evaluate(model, test, task=task, runtime=runtime, batch_size=batch_size or config.train.eval_batch_size,
                      mean=prepared.mean, std=prepared.std, num_classes=len(classes) if task.classifies else None)
    return CheckpointEval(path, config.model.name, int(payload.get("epoch", 0)), classes, result,
                          edge_kernel(model), runtime.describe())
