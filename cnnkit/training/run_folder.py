"""The run folder: choose and create it, and write its metrics.jsonl.

metrics.jsonl is one JSON object per finished epoch. When the run ends, its last row also gets
"final": the final report (best.pt on the test set, in fp32, and with train.tta's views), the one
test figure that `train` prints last, `cnnkit eval` reproduces and `cnnkit runs` shows.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from cnnkit.config import Config
from cnnkit.errors import RunError
from cnnkit.fileio import atomic_write_text
from cnnkit.training import distributed


def choose_run_dir(config: Config, name: str | None, overwrite: bool, resume: str | Path | None) -> Path:
    """The resumed run's own folder, or a new one (made by rank 0); every rank gets rank 0's answer."""
    if resume is not None:
        run_dir = Path(resume).parent
    else:
        run_dir = new_run_dir(config, name, overwrite) if distributed.rank() == 0 else Path(config.output.dir)
    return distributed.broadcast_path(run_dir)


def new_run_dir(config: Config, name: str | None, overwrite: bool) -> Path:
    base = Path(config.output.dir).expanduser()
    stem = name or f"{config.output.name or config.model.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = base / stem
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RunError(f"{run_dir}: a run with this name exists; pass --overwrite to replace it, "
                       f"--name for a new one, or --resume {run_dir / 'last.pt'} to continue it")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"{run_dir}: cannot write the run folder ({exc.strerror or exc}); "
                       "set output.dir to a writable folder") from None
    if overwrite:
        for stale in ("metrics.jsonl", "last.pt", "best.pt", "curves.png", "confusion.png", "edges.png"):
            (run_dir / stale).unlink(missing_ok=True)
    return run_dir


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    # Rewritten whole each epoch (it is small) so a kill never leaves half a line.
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def record_final(run_dir: Path, history: list[dict], final: dict) -> None:
    """Add the final report to the last epoch row (history[-1]["final"]) and rewrite metrics.jsonl."""
    history[-1]["final"] = final
    write_metrics(run_dir, history)
