"""The CUDA paths on a real GPU; every test here skips without one (the CPU suite checks the same
decisions with the device patched in: tests/test_cuda_paths.py, test_amp.py, test_sync_audit.py).

Each test asserts what the path is for, so that dropping the thing it checks fails it: autocast
seen inside the real training loop, fp16 steps that only a GradScaler skips and counts, one
overflow skipping the step for every optimiser, configs/fast.yaml (Muon, per-group schedules,
the whitening bias frozen after 3 epochs, reflect crops, TTA) in bf16 and fp16, a bit-for-bit
resume, torch.compile, no host sync in the step loop, and a 2-process NCCL run when two GPUs exist.
Sized to take well under 3 minutes on one H100/H200.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from host_syncs import audited_fit

from cnnkit.config import load_config
from cnnkit.device import bf16_supported, setup_runtime
from cnnkit.errors import DeviceError, Interrupted
from cnnkit.evaluation.evaluate import evaluate_checkpoint
from cnnkit.training.checkpoint import load_checkpoint
from cnnkit.training.fit import fit, resume_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU tests skipped")]

REPO = Path(__file__).resolve().parents[1]
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
STEPS = 180 // 32  # steps per epoch at batch 32: 200 tiny images, 20 held out for validation


@pytest.fixture(autouse=True)
def _global_flags():
    """What a run sets for the whole process (train.deterministic, cuDNN autotuning, threads), put
    back after each test, so that one test's setting is not the next one's."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.get_num_threads())
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.benchmark = flags[2]
    torch.set_num_threads(flags[3])


def _skip_without_bf16(precision: str) -> None:
    if precision == "bf16" and not bf16_supported(torch.device("cuda")):
        major, minor = torch.cuda.get_device_capability()
        pytest.skip(f"this GPU (compute capability {major}.{minor}) has no native bf16")


def _lenet(tmp_path, root, precision: str, *extra: str, epochs: int = 3):
    """configs/lenet.yaml (AdamW, one-cycle, EMA, alternate flips, channels_last) on the tiny data."""
    return load_config("configs/lenet.yaml", [
        f"data.root={root}", "data.val_split=20", f"train.epochs={epochs}", "train.batch_size=32",
        "train.device=cuda", f"train.precision={precision}", f"output.dir={tmp_path}", *extra])


def _fast(tmp_path, root, precision: str, *extra: str, epochs: int = 2):
    """configs/fast.yaml as shipped (widths, Muon, groups, reflect crops, TTA) on the tiny data."""
    return load_config("configs/fast.yaml", [
        f"data.root={root}", "data.val_split=20", f"train.epochs={epochs}", "train.batch_size=40",
        "train.eval_batch_size=100", "train.data_init_images=100", "train.device=cuda",
        f"train.precision={precision}", f"output.dir={tmp_path}", *extra])


def _skipped_steps(scaler_state: dict) -> int:
    """Steps the GradScaler skipped, from its saved scale: each overflow halves it, and nothing grows
    it back within 2000 good steps, so 65536 / scale = 2 ** skipped. No scaler, no state: fails."""
    skipped = round(math.log2(65536.0 / scaler_state["scale"]))
    assert scaler_state["scale"] * 2**skipped == 65536.0, scaler_state
    return skipped


# ---------------------------------------------------------------------------------------- device decisions


def test_bf16_is_allowed_exactly_on_compute_capability_8_and_up():
    for index in range(torch.cuda.device_count()):
        device = torch.device(f"cuda:{index}")
        native = torch.cuda.get_device_capability(device) >= (8, 0)
        assert bf16_supported(device) == native
        if native:
            assert setup_runtime(str(device), "bf16", threads=1).precision == "bf16"
        else:
            with pytest.raises(DeviceError, match="has no native bf16"):
                setup_runtime(str(device), "bf16", threads=1)


# ---------------------------------------------------------------------------------------- autocast, GradScaler


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_reaches_the_model_inside_the_training_loop(tmp_path, tiny_image_root, precision):
    # A forward hook on every conv while lenet.yaml trains: in training the outputs are in the
    # autocast dtype (so dropping autocast from the loop fails this); the final test runs in fp32.
    _skip_without_bf16(precision)
    seen = []

    def record(module, args, output):
        if isinstance(module, torch.nn.Conv2d):
            seen.append((module.training, output.dtype, output.device.type))

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        fit(_lenet(tmp_path, tiny_image_root, precision, epochs=1), run_name=precision)
    finally:
        handle.remove()
    training = {(dtype, where) for is_training, dtype, where in seen if is_training}
    assert training == {(AUTOCAST[precision], "cuda")}, training
    assert sum(is_training for is_training, _, _ in seen) == 2 * STEPS  # lenet's two convs, every step
    assert (False, torch.float32, "cuda") in seen  # the final test: fp32, as `cnnkit eval` measures


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_run_learns_and_evaluates_on_cpu(tmp_path, tiny_image_root, precision):
    _skip_without_bf16(precision)
    result = fit(_lenet(tmp_path, tiny_image_root, precision), run_name=precision)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0], losses  # it learned
    assert result.test.n == 100 and result.test.accuracy > 0.3  # 10 colour-coded classes; chance is 0.1
    payload = load_checkpoint(result.run_dir / "last.pt")
    # The CUDA generators go into the checkpoint, one state per device, for an exact resume.
    assert len(payload["rng"]["cuda"]) == torch.cuda.device_count()
    taken = max(int(s["step"]) for s in payload["optimizer"]["state"].values())  # AdamW counts its steps
    if precision == "fp16":
        # Only a GradScaler skips steps and records it: AdamW took exactly the steps it did not skip.
        skipped = _skipped_steps(payload["scaler"])
        assert taken == 3 * STEPS - skipped, (taken, skipped)
        assert payload["scaler"]["_growth_tracker"] > 0  # the good steps since the last skip
    else:
        assert payload["scaler"] is None and taken == 3 * STEPS
    # A checkpoint saved on CUDA evaluates on a CPU-only path.
    report = evaluate_checkpoint(result.run_dir / "best.pt", device="cpu")
    assert report.result.accuracy == pytest.approx(result.test.accuracy, abs=0.02)


def test_fp16_overflow_skips_the_step_for_every_optimiser(tmp_path, tiny_image_root):
    # fast.yaml's four optimisers (Muon and three SGD groups) under one GradScaler: a step whose
    # gradients overflow changes no weight and no momentum in any of them; the scale halves.
    from cnnkit.data import prepare_data
    from cnnkit.tasks import task_for
    from cnnkit.training.loop import _step
    from cnnkit.training.state import build_state

    config = _fast(tmp_path, tiny_image_root, "fp16")
    runtime = setup_runtime("cuda", "fp16", threads=1, channels_last=True)
    prepared = prepare_data(config)
    task = task_for(config)
    state = build_state(config, runtime, 10, len(prepared.train))
    state.scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)  # no overflow in the first, good step
    images = prepared.train.images[:40].to(runtime.device)  # (40, 3, 32, 32) uint8
    inputs = task.inputs(images, prepared.mean, prepared.std, runtime.memory_format)
    labels = prepared.train.labels[:40].to(runtime.device)

    def step():
        with runtime.autocast():
            loss = task.loss(state.train_model(inputs).float(), labels, 0.2)
        _step(loss, state.model, state.optimizer, state.scheduler, state.scaler, None, None)

    def snapshot():
        weights = {n: p.detach().clone() for n, p in state.model.named_parameters()}
        buffers = [{k: v.clone() for k, v in s.items()} for opt in state.optimizer.optimizers
                   for s in opt.state.values()]
        return weights, buffers

    state.model.train()
    step()  # a good step at the first scale: every group moves and gets its momentum
    state.scaler.update(new_scale=2.0**120)  # so large that the fp16 backward overflows
    before_weights, before_buffers = snapshot()
    step()
    after_weights, after_buffers = snapshot()
    for name, value in before_weights.items():
        assert torch.equal(after_weights[name], value), name
    assert len(after_buffers) == len(before_buffers) >= 4
    for a, b in zip(after_buffers, before_buffers, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert state.scaler.get_scale() == 2.0**119 and state.scaler._get_growth_tracker() == 0
    state.scaler.update(new_scale=1024.0)
    step()  # and a good step moves every optimiser's weights again
    moved = {n for n, p in state.model.named_parameters() if not torch.equal(p.detach(), after_weights[n])}
    for group in state.optimizer.param_groups:  # every config group, merged optimisers or not
        names = {n for n, p in state.model.named_parameters() if any(p is q for q in group["params"])}
        assert names and names <= moved, names - moved


# ---------------------------------------------------------------------------------------- fast.yaml


@pytest.mark.parametrize("precision, epochs", [("bf16", 3), ("fp16", 4)])
def test_fast_yaml_trains_on_cuda(tmp_path, tiny_image_root, precision, epochs):
    # fp16 for 4 epochs: the whitening bias's 3-epoch schedule ends and its group is frozen, the
    # step that used to stop fp16 with "No inf checks were recorded for this optimizer".
    _skip_without_bf16(precision)
    weights = {}

    def keep_weights(event):
        if event["kind"] == "epoch":
            weights[event["epoch"]] = load_checkpoint(tmp_path / precision / "last.pt")["model"]

    result = fit(_fast(tmp_path, tiny_image_root, precision, epochs=epochs), run_name=precision, report=keep_weights)
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == epochs and losses[-1] < losses[0], losses
    assert result.test.accuracy > 0.5  # 10 colour-coded classes; chance is 0.1
    assert result.tta is not None and len(result.tta_views) == 6  # flip_translate, with reflect-filled shifts
    payload = load_checkpoint(result.run_dir / "last.pt")
    if precision == "fp16":
        assert torch.equal(weights[4]["whiten.bias"], weights[3]["whiten.bias"])  # frozen after epoch 3
        assert not torch.equal(weights[4]["head.weight"], weights[3]["head.weight"])
        assert _skipped_steps(payload["scaler"]) < epochs * (180 // 40)
    else:
        assert payload["scaler"] is None


def test_fast_yaml_fp16_on_real_cifar10(tmp_path, real_data_root):
    # fast.yaml in fp16 for 4 epochs on 10,000 real images (80 steps at batch 500). The same run in
    # bf16 on the CPU had 54.1% test accuracy after its first epoch (2026-11-26); chance is 10%.
    result = fit(load_config("configs/fast.yaml", [
        "data.subset=10000", "train.epochs=4", "train.batch_size=500", "train.device=cuda",
        "train.precision=fp16", f"output.dir={tmp_path}"]), data_root=str(real_data_root), run_name="real")
    assert result.test.accuracy > 0.45, result.test.accuracy
    payload = load_checkpoint(result.run_dir / "last.pt")
    assert _skipped_steps(payload["scaler"]) < 10


def test_reflect_crops_on_cuda_are_crops_of_the_mirrored_picture():
    # Every augmented image is one of the (2p+1)² crops (or its mirror) of the reflect-padded original.
    import torch.nn.functional as F

    from cnnkit.data import augment_batch

    p = 2
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, device="cuda")
    out = augment_batch(images, crop_padding=p, hflip=True, pad_mode="reflect",
                        generator=torch.Generator(device="cuda").manual_seed(0))
    padded = F.pad(images.float(), (p, p, p, p), mode="reflect")  # (16, 3, 12, 12)
    crops = torch.stack([padded[:, :, dy:dy + 8, dx:dx + 8] for dy in range(2 * p + 1) for dx in range(2 * p + 1)])
    crops = torch.cat([crops, crops.flip(-1)])  # (2·25, 16, 3, 8, 8)
    matches = (crops == out.float()).flatten(2).all(dim=2)  # (50, 16)
    assert matches.any(dim=0).all()


# ---------------------------------------------------------------------------------------- resume, compile


def test_fp16_resume_is_bit_identical_on_cuda(tmp_path, tiny_image_root):
    # lenet.yaml in fp16 with deterministic kernels: stopped after epoch 2 of 3 and resumed, it ends
    # exactly where an uninterrupted run does — weights, EMA, AdamW state and the GradScaler's state.
    sets = ("train.deterministic=true",)
    full = load_checkpoint(fit(_lenet(tmp_path, tiny_image_root, "fp16", *sets), run_name="full").run_dir / "last.pt")

    def interrupt_after_epoch_2(event):
        if event["kind"] == "epoch" and event["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        fit(_lenet(tmp_path, tiny_image_root, "fp16", *sets), run_name="cut", report=interrupt_after_epoch_2)
    last = tmp_path / "cut" / "last.pt"
    assert load_checkpoint(last)["scaler"]["_growth_tracker"] > 0
    config, payload = resume_config(last)
    resumed = load_checkpoint(fit(config, resume=last, resume_payload=payload).run_dir / "last.pt")
    assert resumed["scaler"] == full["scaler"]
    for part in ("model", "train_model"):
        for key, value in full[part].items():
            assert torch.equal(resumed[part][key], value), (part, key)
    assert [int(s["step"]) for s in resumed["optimizer"]["state"].values()] == \
           [int(s["step"]) for s in full["optimizer"]["state"].values()]


def test_compile_trains_on_cuda(tmp_path, tiny_image_root):
    precision = "bf16" if bf16_supported(torch.device("cuda")) else "fp16"
    result = fit(_lenet(tmp_path, tiny_image_root, precision, "train.compile=true", epochs=2), run_name="compiled")
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    payload = load_checkpoint(result.run_dir / "last.pt")
    assert not any(k.startswith("_orig_mod.") for k in payload["model"])  # saved as the plain model


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_epoch_prepared_inputs_train_the_same_weights_on_cuda(tmp_path, tiny_image_root, precision):
    # train.prepare=epoch (auto's choice on a GPU): the whole split cropped, flipped and normalised on
    # the device once an epoch, stored in the compute dtype, channels_last; the same weights as each
    # step making its own batch (deterministic kernels, so only the inputs could differ).
    _skip_without_bf16(precision)
    extra = ["train.deterministic=true", "data.pad_mode=reflect", "data.crop_padding=2", "data.brightness=0.1"]
    events = []
    epoch = fit(_lenet(tmp_path, tiny_image_root, precision, "train.prepare=auto", *extra, epochs=2),
                run_name="epoch", report=events.append)
    assert "inputs prepared once an epoch (auto: on a GPU)" in events[0]["runtime"]
    step = fit(_lenet(tmp_path, tiny_image_root, precision, "train.prepare=step", *extra, epochs=2), run_name="step")
    a, b = (load_checkpoint(r.run_dir / "last.pt")["model"] for r in (epoch, step))
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------- host syncs


@pytest.mark.parametrize("config", ["fast", "fast+prepare=step", "lenet", "edge"])
def test_the_step_loop_never_waits_for_the_gpu(tmp_path, tiny_image_root, monkeypatch, config):
    # The audit of tests/test_sync_audit.py on real CUDA tensors: reads and uploads of device memory.
    # fast and lenet prepare their inputs once an epoch (auto on a GPU); fast+prepare=step per step.
    if config == "edge":
        cfg = load_config("configs/edge.yaml", ["train.epochs=2", "train.device=cuda", f"output.dir={tmp_path}"])
        steps, windows = 2, 2  # one picture, one step an epoch
    else:
        precision = "bf16" if bf16_supported(torch.device("cuda")) else "fp32"
        make = _lenet if config == "lenet" else _fast
        prepare = "train.prepare=step" if config.endswith("step") else "train.prepare=auto"
        cfg = make(tmp_path, tiny_image_root, precision, "train.batch_size=32", "train.sync_every=2", prepare,
                   epochs=1)
        steps, windows = STEPS, math.ceil(STEPS / 2)
    audit = audited_fit(cfg, monkeypatch, "cuda")
    assert audit.count("step") == 0 and audit.count("eval batch") == 0, audit.summary()
    assert audit.count("epoch start") <= cfg.train.epochs, audit.summary()  # the alternating flips' one upload
    assert [what for phase, what in audit.events if phase == "window"] == ["Tensor.tolist"] * windows, audit.summary()
    assert audit.count("weights") == cfg.train.epochs, audit.summary()
    assert steps > 0


def test_fp16_steps_wait_once_each_for_all_optimisers(tmp_path, tiny_image_root, monkeypatch):
    cfg = _fast(tmp_path, tiny_image_root, "fp16", "train.batch_size=32", epochs=1)
    audit = audited_fit(cfg, monkeypatch, "cuda")
    assert [what for phase, what in audit.events if phase == "step"] == ["_local_scalar_dense.default"] * STEPS


# ---------------------------------------------------------------------------------------- DDP over NCCL


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs for a 2-process NCCL run")
def test_nproc_2_over_nccl_matches_one_gpu(tmp_path, tiny_image_root):
    sets = [f"data.root={tiny_image_root}", "data.val_split=20", "train.epochs=2", "train.batch_size=32",
            f"output.dir={tmp_path}", "train.device=cuda", "optim.name=sgd", "optim.lr=0.05",
            "optim.kwargs={momentum: 0.9}"]
    single = fit(load_config("configs/bn_cnn.yaml", sets), run_name="single")
    cmd = [sys.executable, "-m", "cnnkit", "train", "--nproc", "2", "--config", "configs/bn_cnn.yaml",
           "--name", "ddp", "--quiet", *[x for s in sets for x in ("--set", s)]]
    env = {**os.environ, "CNNKIT_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stdout and proc.stdout.count("cnnkit train:") == 1
    ddp = load_checkpoint(tmp_path / "ddp" / "last.pt")
    one = load_checkpoint(single.run_dir / "last.pt")
    assert ddp["model"].keys() == one["model"].keys()  # the all-reduce BatchNorm saves BatchNorm's keys
    # BatchNorm over the global batch: the same run up to summation order and TF32 convolutions.
    for key, value in one["model"].items():
        torch.testing.assert_close(ddp["model"][key].float(), value.float(), rtol=0, atol=5e-2, msg=key)
    assert evaluate_checkpoint(tmp_path / "ddp" / "best.pt", device="cuda").result.n == 100
