"""Warm-up before the clock: compile and autotune on a few real steps, then put everything back.

torch.compile traces and compiles on its first steps (tens of seconds on a CPU), and cuDNN times its
algorithms on the first batches of each shape; counting that as training would time the compiler,
not the recipe. airbench runs its warm-up and resets the model before its timer starts; cnnkit does
the same with the run's own state: a few steps on the first training images, then the weights, the
average, the optimiser and schedule states, the grad scaler and the random state are restored, so
the run that follows is the run without a warm-up, bit for bit (tests/test_train.py checks it).
"""

from __future__ import annotations

import copy
import time

import torch

from cnnkit.config import Config
from cnnkit.data import Split
from cnnkit.device import Runtime
from cnnkit.tasks import Task
from cnnkit.training.inputs import TrainInputs
from cnnkit.training.loop import train_one_epoch
from cnnkit.training.state import TrainState


def warmup_steps(config: Config, runtime: Runtime) -> int:
    """train.warmup_steps, or by default 3 where there is something to warm (compile, or a GPU's autotuning)."""
    if config.train.warmup_steps is not None:
        return config.train.warmup_steps
    return 3 if config.train.compile or runtime.device.type == "cuda" else 0


def warm_up(state: TrainState, inputs: TrainInputs, steps: int, *, config: Config, task: Task,
            runtime: Runtime) -> float:
    """Run `steps` training steps on the first images and restore the state; the seconds it took."""
    snapshot = _snapshot(state)
    start = time.perf_counter()
    # The run's own kind of pipeline over the first images only: an epoch pipeline then prepares
    # those few, not the whole split.
    train, n = inputs.split, steps * config.train.batch_size
    first = train if len(train) <= n else Split(train.images[:n], train.labels[:n])
    first_inputs = type(inputs)(first, task, runtime, inputs.mean, inputs.std)
    train_one_epoch(state.train_model, state.optimizer, state.scheduler, first_inputs, task=task, runtime=runtime,
                    config=config, epoch=0, scaler=state.scaler, ema=state.ema)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)
    seconds = time.perf_counter() - start
    _restore(state, snapshot)
    return seconds


def _snapshot(state: TrainState) -> dict:
    return {
        "model": {k: v.detach().clone() for k, v in state.model.state_dict().items()},
        "ema": ({k: v.clone() for k, v in state.ema.module.state_dict().items()}, state.ema.updates)
        if state.ema is not None else None,
        "optimizer": copy.deepcopy(state.optimizer.state_dict()),
        "scheduler": copy.deepcopy(state.scheduler.state_dict()),
        "scaler": copy.deepcopy(state.scaler.state_dict()) if state.scaler is not None else None,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None,
    }


def _restore(state: TrainState, snapshot: dict) -> None:
    # load_state_dict copies into the same tensors, so a compiled model's graphs stay valid.
    state.model.load_state_dict(snapshot["model"])
    if snapshot["ema"] is not None:
        averaged, updates = snapshot["ema"]
        state.ema.module.load_state_dict(averaged)
        state.ema.updates = updates
    state.optimizer.load_state_dict(snapshot["optimizer"])
    state.scheduler.load_state_dict(snapshot["scheduler"])
    if snapshot["scaler"] is not None:
        state.scaler.load_state_dict(snapshot["scaler"])
    torch.set_rng_state(snapshot["rng"])
    if snapshot["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(snapshot["cuda_rng"])
