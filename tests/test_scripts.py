"""The measuring scripts: they print the figures the docs quote, so they must at least start, and their
arithmetic must be the one the docs describe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("*.py")), ids=lambda p: p.name)
def test_every_script_prints_its_help(script: Path):
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


def test_bench_reports_time_in_seed_loop_epochs_and_lenets_speed_up():
    from rich.console import Console

    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_train
    finally:
        sys.path.remove(str(SCRIPTS))
    results = {"textbook_epoch_s": 20.0, "models": [
        {"model": "lenet", "steps_s_to_target": 10.0, "train_s": 25.0, "target": 0.61},
        {"model": "fast", "steps_s_to_target": None, "train_s": 300.0, "target": 0.90}]}
    console = Console(width=200, record=True)
    console.print(bench_train.seed_loop_table(results))
    text = console.export_text()
    lenet = next(line for line in text.splitlines() if "lenet" in line)
    fast = next(line for line in text.splitlines() if "fast" in line)
    # 10 s of a 20 s seed-loop epoch = 0.50; the seed's 7 epochs (140 s) over 10 s = 14×.
    assert "0.50" in lenet and "1.25" in lenet and "14.0×" in lenet
    assert "not reached" in fast and "15.00" in fast
