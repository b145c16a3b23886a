"""The CUDA fast path (uint8 data on the GPU, channels_last, autocast, GradScaler). Skips without a GPU."""

from __future__ import annotations

import pytest
import torch

from cnnkit.config import load_config
from cnnkit.evaluate import evaluate_checkpoint
from cnnkit.train import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU fast-path tests skipped")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_run_evaluates_on_cpu(tmp_path, tiny_image_root, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    config = load_config(None, [
        f"data.root={tiny_image_root}", "data.val_split=20", "data.augment=true", "train.epochs=2",
        "train.batch_size=32", "train.device=cuda", f"train.precision={precision}", "train.channels_last=true",
        f"output.dir={tmp_path}"])
    result = fit(config, run_name=precision)
    assert result.test.n == 100
    # A checkpoint saved on CUDA evaluates on a CPU-only path.
    report = evaluate_checkpoint(result.run_dir / "best.pt", device="cpu")
    assert report.result.accuracy == pytest.approx(result.test.accuracy, abs=0.02)
