"""An exponential moving average of a model's weights (Polyak averaging), as timm's `ModelEma`.

At the high learning rates that train fast, each SGD step lands somewhere on the walls of the
valley; the average of the recent steps sits nearer its floor. Measured on lenet (CIFAR-10, SGD
one-cycle, decay 0.99, three seeds): 61.2–61.9% test accuracy after 2 epochs, where the raw
weights had 58.7–59.9%.
When `train.ema_decay` is set, the average is what cnnkit evaluates, selects best.pt on, and
saves as the checkpoint's `model`; the raw weights are saved beside it to resume training.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float, updates: int = 0):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = updates
        # state_dict() tensors share storage with the parameters and buffers, and the optimiser
        # updates those in place, so these lists stay valid for the life of both models.
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values(), strict=True))
        floats = [(e, m) for e, m in pairs if e.is_floating_point()]
        others = [(e, m) for e, m in pairs if not e.is_floating_point()]  # e.g. BatchNorm's step counter
        # As lists of tensors for the foreach kernels: one launch per update instead of one per tensor.
        self._float_avg, self._float_src = [e for e, _ in floats], [m for _, m in floats]
        self._other_avg, self._other_src = [e for e, _ in others], [m for _, m in others]

    def decay_now(self) -> float:
        # Warm-up (as TensorFlow's ExponentialMovingAverage with num_updates): early on the average
        # would still remember the random initialisation, so it follows the weights more closely.
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights; call after every optimiser step."""
        weight = 1 - self.decay_now()
        if self._float_avg:
            torch._foreach_lerp_(self._float_avg, self._float_src, weight)
        if self._other_avg:
            torch._foreach_copy_(self._other_avg, self._other_src)
        self.updates += 1
