"""train.prepare: the step pipeline and the epoch pipeline show the model the same numbers.

The epoch pipeline (the whole split cropped, flipped, normalised and stored once an epoch, airbench's
way) is only worth having if it trains the same model as the step pipeline: these tests hold it to the
same weights, bit for bit in fp32, through `fit` with every augmentation setting, and check what it
stores (dtype, layout) and when it prepares.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnkit.config import load_config
from cnnkit.device import Runtime
from cnnkit.tasks import TASKS
from cnnkit.training import inputs as inputs_mod
from cnnkit.training.checkpoint import load_checkpoint
from cnnkit.training.fit import fit
from cnnkit.training.inputs import EpochInputs, StepInputs, choose_prepare, draw_epoch


def _config(tmp_path: Path, root: Path, *extra: str, model: str = "lenet"):
    return load_config(None, [
        f"model.name={model}", f"data.root={root}", "data.val_split=20", "train.epochs=2",
        "train.batch_size=32", "train.eval_batch_size=64", "optim.lr=0.003", f"output.dir={tmp_path / 'runs'}",
        "train.threads=1", "train.deterministic=true", "data.augment=true", *extra,
    ])


def _weights(result) -> dict[str, torch.Tensor]:
    return load_checkpoint(result.run_dir / "last.pt")["model"]


# Every augmentation path: zero and reflect padding, random and alternating flips, flips alone,
# colour jitter, channels_last (the epoch pipeline's (n, H, W, C) store), no augmentation at all.
SETTINGS = {
    "zeros-random": [],
    "reflect-alternate-jitter": ["data.pad_mode=reflect", "data.crop_padding=2", "data.flip_mode=alternate",
                                 "data.brightness=0.2", "data.contrast=0.2"],
    "flips-only-channels_last": ["data.crop_padding=0", "train.channels_last=true"],
    "crops-only-channels_last": ["data.hflip=false", "train.channels_last=true"],
    "no-augment": ["data.augment=false"],
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_epoch_pipeline_trains_the_same_weights_as_the_step_pipeline(tmp_path, tiny_image_root, setting):
    extra = SETTINGS[setting]
    step = fit(_config(tmp_path, tiny_image_root, "train.prepare=step", *extra), run_name="step")
    events = []
    epoch = fit(_config(tmp_path, tiny_image_root, "train.prepare=epoch", *extra), run_name="epoch",
                report=events.append)
    assert "inputs prepared once an epoch" in events[0]["runtime"]
    a, b = _weights(step), _weights(epoch)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["train_loss"] for r in step.history] == [r["train_loss"] for r in epoch.history]


def test_bf16_epoch_pipeline_stores_what_autocast_would_round_to(tmp_path, tiny_image_root):
    """In bf16 the split is stored in bf16; a model whose first layer is a convolution sees the numbers
    autocast gives it from fp32 inputs, so the weights still agree."""
    extra = ["train.precision=bf16", "data.pad_mode=reflect", "data.brightness=0.1"]
    step = fit(_config(tmp_path, tiny_image_root, "train.prepare=step", *extra), run_name="step")
    epoch = fit(_config(tmp_path, tiny_image_root, "train.prepare=epoch", *extra), run_name="epoch")
    a, b = _weights(step), _weights(epoch)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _split(n: int = 12, c: int = 3, h: int = 6, w: int = 5):
    from cnnkit.data import Split

    g = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g), torch.arange(n) % 3)


def _runtime(precision: str = "fp32", channels_last: bool = False, device: str = "cpu") -> Runtime:
    return Runtime(torch.device(device), precision, 1, channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_epoch_batches_come_in_the_compute_dtype_and_the_model_layout(channels_last, precision, monkeypatch):
    monkeypatch.setattr(inputs_mod, "_CHUNK_VALUES", 5 * 3 * 6 * 5)  # chunks of 5 images: each its own draws
    split, task = _split(), TASKS["classify"]
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    runtime = _runtime(precision, channels_last)
    step, epoch = StepInputs(split, task, runtime, mean, std), EpochInputs(split, task, runtime, mean, std)
    config = load_config(None, ["model.name=lenet", "data.augment=true", "data.crop_padding=1", "data.brightness=0.3"])
    draws = draw_epoch(config, task, 0, len(split), torch.device("cpu"))
    step.start_epoch(draws)
    epoch.start_epoch(draws)
    idx = torch.tensor([7, 2, 2, 11, 0])  # any order, repeats allowed
    x, labels = epoch.batch(idx)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert x.shape == (5, 3, 6, 5) and x.dtype == dtype
    if channels_last:
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    else:
        assert x.is_contiguous()
    expected, expected_labels = step.batch(idx)
    assert torch.equal(x, expected.to(dtype)) and torch.equal(labels, expected_labels)
    assert torch.equal(labels, split.labels[idx])


def test_epoch_pipeline_prepares_each_epoch_only_when_it_augments(monkeypatch):
    split, task = _split(n=20), TASKS["classify"]
    calls = []
    monkeypatch.setattr(inputs_mod, "_CHUNK_VALUES", 8 * 3 * 6 * 5)  # chunks of 8 images: 3 per pass
    real_inputs = task.inputs
    monkeypatch.setattr(task, "inputs",
                        lambda images, *a, **k: calls.append(len(images)) or real_inputs(images, *a, **k))
    epoch = EpochInputs(split, task, _runtime(), [0.5] * 3, [0.25] * 3)
    epoch.start_epoch(None)
    epoch.start_epoch(None)  # nothing drawn: the prepared split stands
    assert calls == [8, 8, 4]
    config = load_config(None, ["model.name=lenet", "data.augment=true"])
    first = epoch.batch(torch.arange(20))[0].clone()
    epoch.start_epoch(draw_epoch(config, task, 0, 20, torch.device("cpu")))
    after_0 = epoch.batch(torch.arange(20))[0].clone()
    epoch.start_epoch(draw_epoch(config, task, 1, 20, torch.device("cpu")))
    after_1 = epoch.batch(torch.arange(20))[0]
    assert calls == [8, 8, 4] * 3
    assert not torch.equal(first, after_0) and not torch.equal(after_0, after_1)  # each epoch its own crops


def test_auto_prepares_per_step_on_the_cpu_and_per_epoch_on_a_gpu_with_room(monkeypatch):
    split = _split(n=1000, h=32, w=32)  # 3,072,000 values: 6.1 MB in bf16, 12.3 MB in fp32
    assert choose_prepare("auto", _runtime(), split) == ("step", "")
    assert choose_prepare("epoch", _runtime(), split) == ("epoch", "")
    free = {"bytes": 100 * 2**20}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free["bytes"], 80 * 2**30))
    assert choose_prepare("auto", _runtime("bf16", device="cuda"), split) == ("epoch", "auto: on a GPU")
    free["bytes"] = 20 * 2**20  # a quarter is 5 MiB: bf16's 5.9 MiB no longer fits
    name, why = choose_prepare("auto", _runtime("bf16", device="cuda"), split)
    assert name == "step"
    assert why == "auto: the split prepared in bf16 would take 5.9 MiB, over a quarter of the GPU's 20.0 MiB free"
    assert choose_prepare("step", _runtime("bf16", device="cuda"), split) == ("step", "")


@pytest.mark.parametrize("pipeline", [StepInputs, EpochInputs])
def test_under_ddp_each_rank_makes_only_its_share_of_the_batch(pipeline, monkeypatch):
    """Draws are per image, so a rank crops and normalises its own share alone: rank 1 of 2 gets the
    second half of what one process gets, and makes nothing else."""
    from cnnkit.training import distributed

    split, task = _split(), TASKS["classify"]
    config = load_config(None, ["model.name=lenet", "data.augment=true", "data.crop_padding=2"])
    draws = draw_epoch(config, task, 0, len(split), torch.device("cpu"))
    whole = pipeline(split, task, _runtime(), [0.5] * 3, [0.25] * 3)
    whole.start_epoch(draws)
    idx = torch.tensor([9, 4, 0, 7, 3, 11, 1, 5])
    expected, expected_labels = whole.batch(idx)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    made = []
    real_inputs = task.inputs
    monkeypatch.setattr(task, "inputs",
                        lambda images, *a, **k: made.append(len(images)) or real_inputs(images, *a, **k))
    share = pipeline(split, task, _runtime(), [0.5] * 3, [0.25] * 3)
    share.start_epoch(draws)
    inputs, labels = share.batch(idx)
    assert torch.equal(inputs, expected[4:]) and torch.equal(labels, expected_labels[4:])
    assert made == ([4] if pipeline is StepInputs else [len(split)])  # the epoch pipeline prepares the split once
