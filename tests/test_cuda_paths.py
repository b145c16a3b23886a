"""What a GPU user meets first, checked on the CPU: the device decisions with CUDA patched in, and
the CUDA-only failures turned into one clear line before anything reaches a GPU.

(tests/test_cuda.py runs the same paths on a real GPU; it skips here.)
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from cnnkit.cli import app
from cnnkit.config import load_config
from cnnkit.errors import ConfigError, DeviceError


def _fake_gpus(monkeypatch, capabilities: list[tuple[int, int]], names: list[str] | None = None) -> None:
    """Make this process believe it has these GPUs (compute capabilities, in device order)."""
    names = names or [f"GPU{i}" for i in range(len(capabilities))]
    index = lambda device: 0 if device is None else torch.device(device).index or 0  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capabilities[index(device)])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: names[index(device)])
    # torch 2.14 counts bf16 emulation: True on a T4 or V100 too, whichever device is current.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    # What setup_runtime sets on a CUDA device, restored after the test.
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)


# ---------------------------------------------------------------------------------------- bf16


def test_bf16_is_refused_on_the_chosen_gpu_without_native_bf16(monkeypatch):
    from cnnkit.device import setup_runtime

    _fake_gpus(monkeypatch, [(9, 0), (7, 5)], ["NVIDIA H100", "Tesla T4"])
    with pytest.raises(DeviceError) as info:
        setup_runtime("cuda:1", "bf16", threads=1)  # the T4, though the current device (0) has bf16
    message = str(info.value)
    assert "\n" not in message
    for fragment in ("train.precision=bf16", "cuda:1", "Tesla T4", "compute capability 7.5", "8.0",
                     "train.precision=fp16"):
        assert fragment in message, (fragment, message)
    assert setup_runtime("cuda:0", "bf16", threads=1).precision == "bf16"  # the H100 has it
    assert setup_runtime("cuda:1", "fp16", threads=1).precision == "fp16"  # and fp16 works on the T4


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch, native, expected):
    from cnnkit import device

    monkeypatch.setattr(device, "cpu_bf16_native", lambda: native)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    runtime = device.setup_runtime("cpu", "auto", threads=1)
    assert runtime.precision == expected and runtime.warnings == []
    assert f"precision {expected} (auto: this CPU has " in runtime.describe()


def test_auto_precision_on_gpus_follows_their_compute_capability(monkeypatch):
    from cnnkit.device import setup_runtime

    _fake_gpus(monkeypatch, [(9, 0), (7, 5)], ["NVIDIA H100", "Tesla T4"])
    assert setup_runtime("cuda:0", "auto", threads=1).precision == "bf16"
    assert setup_runtime("cuda:1", "auto", threads=1).precision == "fp32"  # not an error, as explicit bf16 is


def test_explicit_bf16_on_a_cpu_without_bf16_instructions_warns_once_and_trains(tmp_path, tiny_image_root,
                                                                                 monkeypatch):
    """Slow, not wrong: the run goes on in bf16, and its first lines say why it will be slow and what to
    set instead. With precision auto the same machine trains in fp32, and the saved config says so."""
    from cnnkit import device
    from cnnkit.cli import _state

    monkeypatch.setattr(device, "cpu_bf16_native", lambda: False)
    _state["debug"] = False
    base = ["--config", "configs/lenet.yaml", "--set", f"data.root={tiny_image_root}", "--set", "data.val_split=20",
            "--set", "train.epochs=1", "--set", "train.batch_size=32", "--set", "train.device=cpu",
            "--set", "train.threads=1", "--set", f"output.dir={tmp_path}", "--quiet"]
    result = CliRunner().invoke(app, ["train", *base, "--name", "bf16", "--set", "train.precision=bf16"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no AVX512-BF16/AMX" in warnings[0] and "train.precision=auto" in warnings[0]
    assert "precision: bf16" in (tmp_path / "bf16" / "config.yaml").read_text()

    result = CliRunner().invoke(app, ["train", *base, "--name", "auto", "--set", "train.precision=auto"])
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.output
    assert "precision fp32 (auto: this CPU has no bf16 instructions)" in result.output
    assert "precision: fp32" in (tmp_path / "auto" / "config.yaml").read_text()


# ---------------------------------------------------------------------------------------- --nproc


def _torchrun_env(monkeypatch, world: int, local_rank: int) -> list:
    """The environment torchrun gives rank `local_rank` of `world` on one machine; records what
    setup would start (so no process group, and no GPU, is touched)."""
    from cnnkit.training import distributed

    for key, value in {"WORLD_SIZE": world, "LOCAL_WORLD_SIZE": world, "RANK": local_rank,
                       "LOCAL_RANK": local_rank}.items():
        monkeypatch.setenv(key, str(value))
    calls: list = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    return calls


def test_nproc_beyond_the_gpus_is_one_clear_line_before_any_device_is_touched(monkeypatch):
    from cnnkit.training import distributed

    _fake_gpus(monkeypatch, [(8, 0)])
    calls = _torchrun_env(monkeypatch, world=2, local_rank=1)
    with pytest.raises(DeviceError) as info:
        distributed.setup("auto")  # rank 1 on a one-GPU machine: "invalid device ordinal" before
    message = str(info.value)
    assert "\n" not in message and calls == []
    for fragment in ("--nproc 2", "needs 2 GPUs", "has 1", "--nproc 1", "train.device=cpu"):
        assert fragment in message, (fragment, message)
    # train.device=cpu is the way out: gloo, no GPU asked for.
    assert distributed.setup("cpu").device_spec == "cpu" and calls == [("init", "gloo")]


def test_nproc_within_the_gpus_takes_one_gpu_per_process(monkeypatch):
    from cnnkit.training import distributed

    _fake_gpus(monkeypatch, [(8, 0), (8, 0)])
    calls = _torchrun_env(monkeypatch, world=2, local_rank=1)
    assert distributed.setup("auto").device_spec == "cuda:1"
    assert calls == [("set_device", 1), ("init", "nccl")]


# ---------------------------------------------------------------------------------------- reflect padding


@pytest.mark.parametrize("sets, fragments", [
    (["data.crop_padding=32"], ["--set data.crop_padding=32", "pad_mode=reflect", "32×32", "crop_padding=31"]),
    (["model.input_size=[8, 8]", "data.crop_padding=8"], ["--set data.crop_padding=8", "8×8", "crop_padding=7"]),
])
def test_reflect_padding_as_large_as_the_image_is_a_config_error(sets, fragments):
    # It used to index past the picture: an IndexError on the CPU, a device-side assert on CUDA
    # that takes the whole CUDA context down.
    with pytest.raises(ConfigError) as info:
        load_config("configs/fast.yaml", sets)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    # The largest mirror that fits, and any zero padding, are fine.
    assert load_config("configs/fast.yaml", ["data.crop_padding=31"]).data.crop_padding == 31
    assert load_config("configs/fast.yaml", ["data.crop_padding=40", "data.pad_mode=zeros"]).data.crop_padding == 40
    result = CliRunner().invoke(app, ["config", "show", "--config", "configs/fast.yaml", "--set", sets[-1],
                                      *[x for s in sets[:-1] for x in ("--set", s)]])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "pad_mode=reflect" in result.stderr


def test_augment_batch_refuses_a_mirror_larger_than_the_picture():
    from cnnkit.data import augment_batch

    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="reflect padding 4 needs images larger than 4×4"):
        augment_batch(images, crop_padding=4, hflip=False, generator=torch.Generator(), pad_mode="reflect")
    assert augment_batch(images, crop_padding=3, hflip=False, generator=torch.Generator(),
                         pad_mode="reflect").shape == images.shape


# ---------------------------------------------------------------------------------------- resume on the CPU


def test_an_fp16_run_resumes_on_a_cpu_with_another_precision(tmp_path, tiny_image_root):
    from cnnkit.training.checkpoint import load_checkpoint, save_checkpoint
    from cnnkit.training.fit import fit, resume_config

    config = load_config(None, [f"data.root={tiny_image_root}", "data.val_split=20", "train.epochs=1",
                                "train.batch_size=32", "train.device=cpu", "train.threads=1",
                                f"output.dir={tmp_path}"])
    run = fit(config, run_name="gpu-run").run_dir
    # Make it the checkpoint an fp16 run on a GPU leaves: its config says fp16 and it holds a scaler.
    payload = load_checkpoint(run / "last.pt")
    payload["config"]["train"]["precision"] = "fp16"
    payload["scaler"] = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                         "_growth_tracker": 7}
    save_checkpoint(run / "last.pt", payload)

    saved, as_saved = resume_config(run / "last.pt", ["train.epochs=2"])
    with pytest.raises(DeviceError, match=r"fp16 needs CUDA; on the CPU use --set train.precision=bf16 or fp32 "
                                          r"\(also when resuming"):
        fit(saved, resume=run / "last.pt", resume_payload=as_saved)
    resumed_config, again = resume_config(run / "last.pt", ["train.epochs=2", "train.precision=bf16"])
    assert resumed_config.train.precision == "bf16"
    result = fit(resumed_config, resume=run / "last.pt", resume_payload=again)
    assert [row["epoch"] for row in result.history] == [1, 2]
    last = load_checkpoint(run / "last.pt")
    assert last["config"]["train"]["precision"] == "bf16" and last["scaler"] is None


# ---------------------------------------------------------------------------------------- edge targets


def test_edge_targets_make_their_kernel_once_per_device_and_dtype():
    from torch.utils._python_dispatch import TorchDispatchMode

    from cnnkit.tasks import TASKS

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    task = TASKS["edge"]
    inputs = torch.rand(2, 3, 6, 8, dtype=torch.float64)  # (B, C, H, W); float64: the kernel must be converted
    task.targets(inputs, None)
    with Ops() as ops:
        targets = task.targets(inputs, None)  # (B, 1, H, W−1)
    # Only the convolution: no copy of the kernel from the host (on CUDA, an upload each step).
    assert all("convolution" in op for op in ops.seen), ops.seen
    expected = (inputs[..., :-1] - inputs[..., 1:]).sum(dim=1, keepdim=True)  # x ⋆ [[1, −1]] over channels
    torch.testing.assert_close(targets, expected)
