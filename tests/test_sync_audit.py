"""The step loop never waits on the device: counted, op by op, on every run of the suite.

A few real training steps of configs/fast.yaml and configs/lenet.yaml (tiny data, the real `fit`)
run under `HostSyncAudit` (tests/host_syncs.py), which records every op that makes the host wait
for the device — `.item()`/`float()`/`bool()` on a tensor, `.tolist()`, boolean-mask indexing,
`nonzero`, `bincount`, tensors built from host data — by the phase of the loop it happens in. On
the CPU nothing really waits, but the same ops would on CUDA, so the count is the one a GPU
would see: zero inside every step, exactly one read at each sync point (`train.sync_every`), one
for the weights' finiteness at the end of an epoch, and zero per evaluation batch.
"""

from __future__ import annotations

import math

import pytest
import torch
from host_syncs import HostSyncAudit, audited_fit

from cnnkit.config import load_config

TINY = ["train.device=cpu", "train.threads=1", "train.batch_size=32", "train.eval_batch_size=64",
        "data.val_split=20", "train.epochs=1", "train.sync_every=2"]
STEPS = 180 // 32  # 200 tiny images, 20 held out, full batches only
WINDOWS = math.ceil(STEPS / 2)


def _fast(tmp_path, root, *extra):
    return load_config("configs/fast.yaml", [f"data.root={root}", f"output.dir={tmp_path}", *TINY,
                                             "model.kwargs={widths: [8, 16, 16]}", "train.data_init_images=100",
                                             "train.precision=bf16", *extra])  # bf16 on any CPU (auto may not)


def _lenet(tmp_path, root, *extra):
    return load_config("configs/lenet.yaml", [f"data.root={root}", f"output.dir={tmp_path}", *TINY, *extra])


def _edge(tmp_path, root, *extra):
    return load_config("configs/edge.yaml", ["train.device=cpu", "train.epochs=2", f"output.dir={tmp_path}", *extra])


def _import_path(tmp_path, root, *extra):
    # A model given by import path, written as the zoos write them: F.relu, F.max_pool2d, x.view in forward.
    (tmp_path / "audit_net.py").write_text(
        "import torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 8, 3, padding=1)\n"
        "        self.bn = nn.BatchNorm2d(8)\n"
        "        self.fc = nn.Linear(8 * 16 * 16, 10)\n\n"
        "    def forward(self, x):\n"
        "        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)\n"
        "        return self.fc(x.view(x.size(0), -1))\n")
    return _lenet(tmp_path, root, f"model.name={tmp_path / 'audit_net.py'}:Net", *extra)


def _lenet_micro(tmp_path, root, *extra):
    return _lenet(tmp_path, root, "train.micro_batch=12", *extra)  # chunks of 12, 12 and 8 in each batch of 32


def _fast_jitter(tmp_path, root, *extra):
    return _fast(tmp_path, root, "data.brightness=0.14", "data.contrast=0.14", *extra)


def _fast_epoch_prepared(tmp_path, root, *extra):
    # The whole split cropped, flipped, jittered and normalised once an epoch, in channels_last bf16.
    return _fast_jitter(tmp_path, root, "train.prepare=epoch", "train.epochs=2", *extra)


@pytest.mark.parametrize("make, epochs, windows",
                         [(_fast, 1, WINDOWS), (_fast_jitter, 1, WINDOWS), (_fast_epoch_prepared, 2, 2 * WINDOWS),
                          (_lenet, 1, WINDOWS), (_lenet_micro, 1, WINDOWS), (_import_path, 1, WINDOWS),
                          (_edge, 2, 2)],
                         ids=["fast", "fast+jitter", "fast+prepare=epoch", "lenet", "lenet+micro_batch", "file.py:Net",
                              "edge"])
def test_training_steps_and_evaluation_never_wait_on_the_device(tmp_path, tiny_image_root, monkeypatch, make,
                                                                epochs, windows):
    # fast: Muon + 3 SGD groups, bf16 autocast, reflect crops, alternating flips, TTA at the end;
    # lenet: AdamW (its step counters live on the host, as on CUDA), the weights' EMA, a test every epoch;
    # edge: targets made by a convolution with a fixed kernel, one step an epoch.
    audit = audited_fit(make(tmp_path, tiny_image_root), monkeypatch, "cpu")
    events = audit.summary()
    assert audit.count("step") == 0, events
    # An epoch's draws and preparation: the alternating flips' half, made once on the host, is the one upload.
    assert audit.count("epoch start") <= epochs, events
    assert audit.count("eval batch") == 0, events
    # Exactly one read per sync point (flags and the loss in one transfer), one per epoch for the weights.
    assert [what for phase, what in audit.events if phase == "window"] == ["Tensor.tolist"] * windows, events
    assert audit.count("weights") == epochs, events


def test_fp16_grad_scaler_decides_once_per_step_for_every_optimiser(tmp_path, tiny_image_root, monkeypatch):
    # The fast config's four optimisers through a GradScaler: one read per step (whether any gradient
    # overflowed), not one per optimiser as GradScaler.step(opt) makes.
    audit = audited_fit(_fast(tmp_path, tiny_image_root), monkeypatch, "cpu",
                        scaler=torch.amp.GradScaler("cpu"))
    assert [what for phase, what in audit.events if phase == "step"] == ["_local_scalar_dense.default"] * STEPS
    assert audit.count("window") == WINDOWS and audit.count("eval batch") == 0


def test_the_audit_sees_each_kind_of_host_read():
    # The audit must be able to fail: every way of reading a device value back counts, once.
    x = torch.randn(8)
    reads = {
        "item": lambda: x.sum().item(), "float": lambda: float(x[0]), "if": lambda: bool(x.sum() > 0),
        "tolist": lambda: x.tolist(), "mask": lambda: x[x > 0], "nonzero": lambda: x.nonzero(),
        "bincount": lambda: torch.bincount((x > 0).long()), "cpu": lambda: x.cpu(),
        "upload": lambda: torch.tensor([1.0, 2.0]), "equal": lambda: torch.equal(x, x),
    }
    for name, read in reads.items():
        with HostSyncAudit("cpu") as audit, audit.phase(name):
            read()
        assert audit.count(name) == 1, (name, audit.events)
    with HostSyncAudit("cpu") as audit, audit.phase("device work"):
        y = torch.where(torch.isfinite(x), x, 0.0) * 2  # stays on the device: nothing to count
        torch.zeros(10, dtype=torch.int64).scatter_add_(0, (y > 0).long(), torch.ones(8, dtype=torch.int64))
    assert audit.events == []
