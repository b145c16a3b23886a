"""The measuring scripts: they print the figures the docs quote, so they must at least start, and their
arithmetic must be the one the docs describe."""

from __future__ import annotations

import json
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


def test_side_by_side_reads_airbenchs_final_rows_and_cnnkits_final_entries(tmp_path: Path):
    # airbench94_muon's table as its print_columns writes it: a warm-up run, then two runs.
    def row(*cells):
        return "".join(f"|  {c}  " for c in cells) + "|"

    lines = [row("run   ", "epoch", "train_acc", "val_acc", "tta_val_acc", "time_seconds")]
    for run, (acc, secs) in [("warmup", (0.1, 9.0)), ("0", (0.9082, 1.91)), ("1", (0.9072, 1.89))]:
        lines += [row(run.rjust(6), "1".rjust(5), "0.5".rjust(9), "0.6".rjust(7), "".rjust(11), "1.0".rjust(12)),
                  row("".rjust(6), "eval".rjust(5), "0.9".rjust(9), "0.9".rjust(7), f"{acc:.4f}".rjust(11),
                      f"{secs:.4f}".rjust(12))]
    log = tmp_path / "airbench.log"
    log.write_text("\n".join(lines) + "\nMean: 0.9077    Std: 0.0007\n")
    sweep = tmp_path / "gpu5"
    for seed, (tta, train_s) in enumerate([(0.9090, 1.5), (0.9070, 1.7)]):
        (sweep / f"seed{seed}").mkdir(parents=True)
        final = {"tta_acc": tta, "test_acc": 0.89, "train_s": train_s, "tta_s": 0.1, "warmup_s": 30.0,
                 "launch_to_report_s": 50.0}
        rows = [{"epoch": 1}, {"epoch": 2, "final": final}]
        (sweep / f"seed{seed}" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    proc = subprocess.run([sys.executable, str(SCRIPTS / "side_by_side.py"), "--airbench-log", str(log), "--sweep",
                           str(sweep), "--runs", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "| airbench94_muon | 2 | 0.9077 ± 0.0007 | 1.9000 ± 0.0141 |" in proc.stdout  # the warm-up left out
    assert "| cnnkit gpu5 | 2 | 0.9080 ± 0.0014 | 1.7000 ± 0.1414 | 50.0000 ± 0.0000 each |" in proc.stdout
    assert "+0.03 points of TTA accuracy; cnnkit's timer is 0.89× airbench's" in proc.stdout
