"""DDP on the CPU (gloo), through `cnnkit train --nproc 2`: two processes train like one, stop together.

Kept tiny (180 images, one thread a process): each test here starts two or three Python processes
that import torch, which is most of their cost on this 2-core machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_long_run_config

from cnnkit.config import load_config
from cnnkit.evaluation.evaluate import evaluate_checkpoint
from cnnkit.training.checkpoint import load_checkpoint
from cnnkit.training.fit import fit

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")

REPO = Path(__file__).resolve().parents[1]


def overrides(tmp_path, root):
    # train.device=cpu: these tests mean DDP over gloo on the CPU, also on a machine with GPUs.
    return [f"data.root={root}", "data.val_split=20", "train.epochs=2", "train.batch_size=32",
            f"output.dir={tmp_path / 'runs'}", "train.threads=1", "data.augment=true", "optim.lr=0.003",
            "train.device=cpu"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "CNNKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CNNKIT_DATA", None)
    return env


def test_nproc_2_bn_cnn_matches_one_process(tmp_path, tiny_image_root):
    # bn_cnn: BatchNorm under DDP is normalised over the global batch (train.sync_bn, on by default),
    # so two processes with 16 images each compute what one computes with 32, running stats included.
    # lr 0.01: at 0.05 (momentum 0.9) ten steps amplify the 1e-7 rounding differences of summing in
    # another order to 5e-4–9e-4 (seeds 0–3, 2026-11-26), right at the tolerance, so whether the test
    # passed hung on the last bits of every sum (one thread more moved a single run by 5.5e-4). At
    # 0.01 the two runs stay 2.2e-5–2.7e-5 apart (seeds 0, 1), and 3.6e-2–8.2e-2 without sync BN.
    sets = overrides(tmp_path, tiny_image_root) + ["optim.name=sgd", "optim.lr=0.01",
                                                   "optim.kwargs={momentum: 0.9}"]
    single = fit(load_config("configs/bn_cnn.yaml", sets), run_name="single")
    cmd = [sys.executable, "-m", "cnnkit", "train", "--nproc", "2", "--config", "configs/bn_cnn.yaml",
           "--name", "ddp", "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=_env(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only rank 0 prints and writes: one header, one line per epoch, one run folder.
    assert proc.stdout.count("cnnkit train:") == 1
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "2 processes" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp", "single"]
    ddp_ckpt = load_checkpoint(tmp_path / "runs" / "ddp" / "last.pt")
    single_ckpt = load_checkpoint(single.run_dir / "last.pt")
    assert not any(k.startswith("module.") for k in ddp_ckpt["model"])
    assert ddp_ckpt["model"].keys() == single_ckpt["model"].keys()  # SyncBatchNorm saves BatchNorm's keys
    for key, value in single_ckpt["model"].items():
        # Float sums in another order: ≤ 2.7e-5 apart with sync BN; a BatchNorm over each rank's half
        # alone is ≥ 3.6e-2 off.
        torch.testing.assert_close(ddp_ckpt["model"][key], value, rtol=0, atol=2e-4, msg=key)
    # The same validation numbers each epoch (every rank evaluates the unwrapped model, summed).
    for a, b in zip(ddp_ckpt["metrics"], single_ckpt["metrics"], strict=True):
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=0.051)  # at most one of 20 images flips
    # A DDP checkpoint evaluates in a plain single process.
    report = evaluate_checkpoint(tmp_path / "runs" / "ddp" / "best.pt")
    assert report.result.n == 100


def test_these_tests_mean_gloo_even_on_a_machine_with_gpus(tmp_path, tiny_image_root, monkeypatch):
    # With train.device left at auto, a GPU user's `make test` ran them over NCCL (2 GPUs) or died
    # with "invalid device ordinal" (1 GPU).
    from cnnkit.training import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    for key, value in {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    config = load_config("configs/bn_cnn.yaml", overrides(tmp_path, tiny_image_root))
    assert distributed.setup(config.train.device).device_spec == "cpu"
    assert calls == [("init", "gloo")]


def test_sync_bn_without_ddp_changes_nothing(tmp_path, tiny_image_root):
    from cnnkit.device import setup_runtime
    from cnnkit.training.state import build_state, use_sync_bn

    config = load_config("configs/bn_cnn.yaml", overrides(tmp_path, tiny_image_root) + ["train.sync_bn=true"])
    state = build_state(config, setup_runtime("cpu", threads=1), 10, 180)
    assert not use_sync_bn(True, state.model)  # one process: plain BatchNorm, nothing to synchronise
    assert {type(m).__name__ for m in state.model.modules()} >= {"BatchNorm2d"}
    assert "AllReduceBatchNorm" not in {type(m).__name__ for m in state.model.modules()}


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (the test's own temporary folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
def test_sigint_stops_every_process_together(tmp_path):
    """Ctrl-C on `cnnkit train --nproc 2`: every process leaves within 20 s, the launcher with 130."""
    config = write_long_run_config(tmp_path)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as o, open(err, "w") as e:
        # Its own session, like a terminal's foreground job: the signal goes to the whole group.
        proc = subprocess.Popen([sys.executable, "-m", "cnnkit", "train", "--nproc", "2", "--config", str(config),
                                 "--name", "long", "--quiet"], cwd=REPO, env=_env(tmp_path), stdout=o, stderr=e,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    metrics = tmp_path / "runs" / "long" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 180
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            assert proc.poll() is None, f"exited early ({proc.returncode}): {err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no epoch within 180 s: {err.read_text()[-2000:]}"
            time.sleep(0.05)
        workers = [p for p in _processes_mentioning(str(config)) if p != proc.pid]
        assert len(workers) >= 2, workers  # the two ranks (torchrun's own process is proc)
        os.killpg(proc.pid, signal.SIGINT)
        stopped = time.monotonic()
        code = proc.wait(timeout=20)
        while _processes_mentioning(str(config)) and time.monotonic() - stopped < 20:
            time.sleep(0.05)
        left = _processes_mentioning(str(config))
        assert not left, f"still running 20 s after SIGINT: {left}"
        assert code == 130, err.read_text()[-2000:]
        stderr = err.read_text()
        assert "error: SIGINT during epoch" in stderr and "--resume" in stderr, stderr[-2000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        last = load_checkpoint(tmp_path / "runs" / "long" / "last.pt")
        assert last["epoch"] >= 1
    finally:
        for pid in [proc.pid, *_processes_mentioning(str(config))]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def test_batch_must_divide_by_world_size(tmp_path, tiny_image_root):
    sets = overrides(tmp_path, tiny_image_root) + ["train.batch_size=33"]
    cmd = [sys.executable, "-m", "cnnkit", "train", "--config", "configs/lenet.yaml", "--nproc", "2", "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=_env(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2
    assert "train.batch_size=33" in proc.stderr and "Traceback" not in proc.stderr
    # Refused before any rank started: one line, from this process, with nothing written.
    assert proc.stderr.strip().count("\n") == 0 and "must divide by the 2 processes" in proc.stderr, proc.stderr
    assert not any(tmp_path.glob("runs/*")), list(tmp_path.glob("runs/*"))
