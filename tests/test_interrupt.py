"""Interrupts and atomic writes, with real processes and real signals.

A real `python -m cnnkit train` is stopped with SIGTERM (exit 143), resumed, stopped with SIGINT
(exit 130), and resumed to the end: each stop prints one line saying how to resume and leaves a
loadable last.pt. (Bit-identical resume is tested in-process in test_train.py.) Every file cnnkit
writes goes through `atomic_write`; a failure or a SIGKILL in the middle of a write leaves the old
file intact.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import make_image_folder, write_long_run_config

from cnnkit.config import load_config
from cnnkit.errors import RunError
from cnnkit.fileio import atomic_write, atomic_write_bytes, atomic_write_text
from cnnkit.training.checkpoint import load_checkpoint
from cnnkit.training.fit import fit

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 120  # generous: this machine is shared and slow to start torch


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CNNKIT_DATA", None)
    env.update(CNNKIT_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    return env


class Cnnkit:
    """`python -m cnnkit ARGS` in the background, its output going to files (a pipe could fill up)."""

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "cnnkit", *args], cwd=REPO, env=_env(tmp),
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"cnnkit did not exit within {WAIT_S} s; stderr: {self.stderr()}")

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _epochs_logged(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _wait_for_epochs(job: Cnnkit, run: Path, at_least: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while _epochs_logged(run) < at_least:
        if job.proc.poll() is not None:
            pytest.fail(f"cnnkit exited early ({job.proc.returncode}): {job.stderr()}")
        if time.monotonic() > deadline:
            job.kill()
            pytest.fail(f"no epoch {at_least} within {WAIT_S} s: {job.stdout()} {job.stderr()}")
        time.sleep(0.02)


def _check_stopped(job: Cnnkit, run: Path, sig: signal.Signals, code: int) -> int:
    """Send `sig`; the run exits `code` with one line on how to resume and a loadable last.pt."""
    job.proc.send_signal(sig)
    assert job.wait() == code, job.stderr()
    lines = job.stderr().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {sig.name} during epoch "), lines[0]
    assert f"cnnkit train --resume {run / 'last.pt'}" in lines[0]
    assert "Traceback" not in job.stdout() + job.stderr()
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] >= 1
    # last.pt, best.pt and metrics.jsonl agree: no half-written epoch, no temporary files left.
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, last["epoch"] + 1))
    assert load_checkpoint(run / "best.pt")["epoch"] <= last["epoch"]
    assert not list(run.glob(".*.tmp"))
    return last["epoch"]


def test_sigterm_and_sigint_stop_cleanly_and_resume(tmp_path: Path) -> None:
    config = write_long_run_config(tmp_path)
    run = tmp_path / "runs" / "long"
    job = Cnnkit(tmp_path, "first", "train", "--config", str(config), "--name", "long", "--quiet")
    try:
        _wait_for_epochs(job, run, 1)
        first = _check_stopped(job, run, signal.SIGTERM, 143)

        job = Cnnkit(tmp_path, "second", "train", "--resume", str(run / "last.pt"), "--quiet")
        _wait_for_epochs(job, run, first + 1)
        second = _check_stopped(job, run, signal.SIGINT, 130)
        assert f"resuming after epoch {first}" in job.stdout()
        assert second > first
    finally:
        job.kill()

    # To the end: a finite number of epochs this time.
    job = Cnnkit(tmp_path, "third", "train", "--resume", str(run / "last.pt"), "--set",
                 f"train.epochs={second + 1}", "--quiet")
    assert job.wait() == 0, job.stderr()
    assert f"resuming after epoch {second}" in job.stdout()
    assert load_checkpoint(run / "last.pt")["epoch"] == second + 1
    assert _epochs_logged(run) == second + 1


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _writes_half_then_fails(exc: BaseException):
    def write(f) -> None:
        f.write(b"NEW CONTENT, PART 1 ")
        raise exc

    return write


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left")],
                         ids=["error", "ctrl-c", "disk-full"])
def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, exc: BaseException) -> None:
    target = tmp_path / "metrics.jsonl"
    target.write_bytes(b"OLD CONTENT\n")
    expected = RunError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected) as info:
        atomic_write(target, _writes_half_then_fails(exc))
    if expected is RunError:
        assert str(target) in str(info.value) and "No space left" in str(info.value)
    assert target.read_bytes() == b"OLD CONTENT\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "new.pt", _writes_half_then_fails(ValueError("boom")))
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_whole_and_keeps_ordinary_permissions(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
        assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600
        (tmp_path / "config.yaml").chmod(0o640)
        atomic_write_bytes(tmp_path / "config.yaml", b"b: 2\n")
        assert (tmp_path / "config.yaml").read_bytes() == b"b: 2\n"
        assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_unwritable_destination_is_a_run_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunError, match=str(blocker / "sub" / "x.pt")):
        atomic_write_bytes(blocker / "sub" / "x.pt", b"data")
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(RunError, match="folder.pt"):
        atomic_write_bytes(tmp_path / "folder.pt", b"data")


def test_sigkill_in_the_middle_of_a_write_leaves_the_old_file(tmp_path: Path) -> None:
    target, ready = tmp_path / "last.pt", tmp_path / "ready"
    target.write_bytes(b"OLD" * 1000)
    script = textwrap.dedent(f"""\
        import time
        from pathlib import Path
        from cnnkit.fileio import atomic_write

        def write(f):
            f.write(b"NEW" * 500)  # half of the new file...
            f.flush()
            Path({str(ready)!r}).write_text("")
            time.sleep(60)  # ...and killed here
            f.write(b"NEW" * 500)

        atomic_write({str(target)!r}, write)
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=_env(tmp_path))
    try:
        deadline = time.monotonic() + WAIT_S
        while not ready.exists():
            assert proc.poll() is None, "the writer exited early"
            assert time.monotonic() < deadline, "the writer never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=WAIT_S) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert target.read_bytes() == b"OLD" * 1000
    # A kill -9 cannot clean up: its temporary file stays, hidden and beside the target, never in its place.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("last.pt", "ready")]
    assert all(name.startswith(".last.pt.") and name.endswith(".tmp") for name in leftovers), leftovers


def test_every_file_a_run_writes_is_written_atomically(tmp_path: Path, monkeypatch) -> None:
    """Each file in the run folder and the data cache was put in place by os.replace."""
    root = make_image_folder(tmp_path / "data", n_train_per_class=4, n_test_per_class=2)
    replaced: list[Path] = []
    real_replace = os.replace

    def recording_replace(src, dst, *args, **kwargs):
        replaced.append(Path(dst).resolve())
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", recording_replace)
    cache = tmp_path / "cache"
    config = load_config(None, [f"data.root={root}", "data.val_split=10", "train.epochs=2", "train.batch_size=16",
                                f"data.cache_dir={cache}", f"output.dir={tmp_path / 'runs'}", "train.threads=1"])
    result = fit(config, run_name="atomic")
    written = sorted(p.resolve() for folder in (result.run_dir, cache) for p in folder.rglob("*") if p.is_file())
    assert {p.name for p in written} >= {"config.yaml", "metrics.jsonl", "last.pt", "best.pt"}
    assert any(p.parent == cache.resolve() for p in written)
    not_atomic = [str(p) for p in written if p not in replaced]
    assert not not_atomic, f"written without atomic_write: {not_atomic}"
    assert [r["epoch"] for r in result.history] == [1, 2]
