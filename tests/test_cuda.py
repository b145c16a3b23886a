"""The CUDA fast path (uint8 data on the GPU, channels_last, autocast, GradScaler). Skips without a GPU.

Each test asserts what the path is for: that the run learned, that autocast really ran in the
asked-for dtype, that fp16 went through the GradScaler, and that the checkpoint carries the CUDA
generator states a resume needs.
"""

from __future__ import annotations

import pytest
import torch

from cnnkit.config import load_config
from cnnkit.device import setup_runtime
from cnnkit.evaluation.evaluate import evaluate_checkpoint
from cnnkit.training.checkpoint import load_checkpoint
from cnnkit.training.fit import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU fast-path tests skipped")


def _config(tmp_path, root, precision: str, epochs: int = 3):
    return load_config(None, [
        f"data.root={root}", "data.val_split=20", "data.augment=true", f"train.epochs={epochs}",
        "train.batch_size=32", "train.device=cuda", f"train.precision={precision}", "train.channels_last=true",
        "optim.lr=0.003", f"output.dir={tmp_path}"])


def _skip_without_bf16(precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_runs_in_the_asked_for_dtype(precision):
    _skip_without_bf16(precision)
    runtime = setup_runtime("cuda", precision)
    conv = torch.nn.Conv2d(3, 8, 3).cuda()
    with runtime.autocast():
        out = conv(torch.randn(2, 3, 16, 16, device="cuda"))
    assert out.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_run_learns_and_evaluates_on_cpu(tmp_path, tiny_image_root, precision):
    _skip_without_bf16(precision)
    result = fit(_config(tmp_path, tiny_image_root, precision), run_name=precision)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0], losses  # it learned
    assert result.test.n == 100 and result.test.accuracy > 0.3  # 10 colour-coded classes; chance is 0.1
    payload = load_checkpoint(result.run_dir / "last.pt")
    # The CUDA generators go into the checkpoint, one state per device, for an exact resume.
    assert len(payload["rng"]["cuda"]) == torch.cuda.device_count()
    if precision == "fp16":
        # The GradScaler stepped: its scale is saved, and Adam took (nearly) every step through it;
        # only the first steps may be skipped while the scale comes down from 65536.
        assert payload["scaler"] and payload["scaler"]["scale"] > 0
        steps = len(result.history) * (180 // 32)
        taken = max(int(s["step"]) for s in payload["optimizer"]["state"].values())
        assert steps - 10 <= taken <= steps, (taken, steps)
    else:
        assert payload["scaler"] is None
    # A checkpoint saved on CUDA evaluates on a CPU-only path.
    report = evaluate_checkpoint(result.run_dir / "best.pt", device="cpu")
    assert report.result.accuracy == pytest.approx(result.test.accuracy, abs=0.02)
