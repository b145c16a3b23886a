"""DDP under torchrun on the CPU (gloo): two processes train like one with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cnnkit.checkpoint import load_checkpoint
from cnnkit.config import load_config
from cnnkit.evaluate import evaluate_checkpoint
from cnnkit.train import fit

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


def overrides(tmp_path, root):
    return [f"data.root={root}", "data.val_split=20", "train.epochs=2", "train.batch_size=32",
            f"output.dir={tmp_path / 'runs'}", "train.threads=1", "data.augment=true", "optim.lr=0.003"]


def test_two_process_gloo_matches_one_process(tmp_path, tiny_image_root):
    sets = overrides(tmp_path, tiny_image_root)
    single = fit(load_config("configs/lenet.yaml", sets), run_name="single")
    env = {**os.environ, "CNNKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cnnkit", "train", "--config", "configs/lenet.yaml", "--name", "ddp", "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Only rank 0 prints and writes: one header, one line per epoch, one run folder.
    assert proc.stdout.count("cnnkit train:") == 1
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "2 processes" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp", "single"]
    ddp_ckpt = load_checkpoint(tmp_path / "runs" / "ddp" / "last.pt")
    single_ckpt = load_checkpoint(single.run_dir / "last.pt")
    assert not any(k.startswith("module.") for k in ddp_ckpt["model"])
    for key, value in single_ckpt["model"].items():
        torch.testing.assert_close(ddp_ckpt["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # A DDP checkpoint evaluates in a plain single process.
    report = evaluate_checkpoint(tmp_path / "runs" / "ddp" / "best.pt")
    assert report.result.n == 100


def test_batch_must_divide_by_world_size(tmp_path, tiny_image_root):
    sets = overrides(tmp_path, tiny_image_root) + ["train.batch_size=33"]
    env = {**os.environ, "CNNKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cnnkit", "train", "--config", "configs/lenet.yaml", "--nproc", "2", "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2
    assert "train.batch_size=33" in proc.stderr and "Traceback" not in proc.stderr
