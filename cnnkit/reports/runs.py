"""Run folders as data: read `metrics.jsonl` and `config.yaml` back and summarise each run.

Used by `cnnkit runs` (the table) and `cnnkit plot` (the curves). Nothing here prints; problems
are `RunError`s naming the folder and what to do.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from cnnkit.errors import RunError
from cnnkit.models import model_task
from cnnkit.tasks import TASKS

METRICS = "metrics.jsonl"
CONFIG = "config.yaml"


def read_metrics(path: str | Path) -> list[dict]:
    """The per-epoch rows of a metrics.jsonl, skipping torn or blank lines.

    cnnkit writes the file atomically, but a copy taken mid-write (rsync, a crashed editor, an
    older tool appending) can end in half a line; one bad line must not hide the good ones.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise RunError(f"{path}: no such file; pass a run folder that holds {METRICS} (see `cnnkit runs`)") from None
    except OSError as exc:
        raise RunError(f"{path}: cannot read it ({exc.strerror or exc}); check its permissions") from None
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
    return rows


def run_folder(path: str | Path) -> Path:
    """A run folder from what a user might pass: the folder, or a file in it (best.pt, metrics.jsonl)."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.exists():
        raise RunError(f"{path}: no such run folder; pass a folder made by `cnnkit train` (see `cnnkit runs`)")
    if not (path / METRICS).is_file():
        raise RunError(f"{path}: no {METRICS} here, so no finished epoch to show; pass a run folder made by "
                       "`cnnkit train` that completed at least one epoch")
    return path


def run_task(folder: Path, rows: list[dict]) -> str:
    """The task name of a run: its model's (from config.yaml), else the task whose metrics the rows hold."""
    model = (_read_config(folder / CONFIG).get("model") or {}).get("name")
    if isinstance(model, str) and model:
        return model_task(model)
    # No readable config (copied metrics, a damaged file): the rows tell.
    return next((task.name for task in TASKS.values() if rows and task.reports(rows[-1])), "?")


def run_metrics(path: str | Path) -> tuple[Path, list[dict]]:
    """(run folder, rows) for a run that has at least one readable epoch."""
    folder = run_folder(path)
    rows = read_metrics(folder / METRICS)
    if not rows:
        raise RunError(f"{folder / METRICS}: no readable epoch rows; the run stopped before its first epoch ended")
    return folder, rows


# ---------------------------------------------------------------------------------------- the table


@dataclass
class RunSummary:
    name: str
    path: str
    model: str | None
    task: str  # "classify", "edge" or "?" (no rows to tell)
    epochs: int  # epochs finished (the last row's epoch)
    planned_epochs: int | None  # train.epochs of the saved config
    complete: bool
    best_val: float | None  # best validation accuracy
    # The test accuracy of best.pt: the run's final report (fp32, what `train` printed last and `cnnkit
    # eval` prints, recorded as metrics.jsonl's "final"); for a run without one (stopped early), the
    # test_acc of the epoch best.pt keeps, when that epoch was tested.
    test_at_best: float | None
    best_test: float | None  # the highest per-epoch test_acc (seen, never used to choose)
    # The run's final test figure: the final report's when recorded (then equal to test_at_best), else
    # the last epoch's test_acc.
    final_test: float | None
    tta_test: float | None  # the final report with train.tta's views averaged, when the run had TTA
    best_val_mse: float | None  # edge runs
    final_test_mse: float | None
    wall_s: float | None
    images_per_s: float | None  # mean over epochs
    started: float | None  # unix time the run started
    date: str | None  # `started` as local YYYY-MM-DD HH:MM

    def to_dict(self) -> dict:
        return asdict(self)


# Sort keys: the column names `cnnkit runs --sort` accepts, and how each sorts by default.
SORT_COLUMNS: dict[str, str] = {
    "name": "asc", "model": "asc", "epochs": "desc", "best_val": "desc", "test_at_best": "desc",
    "best_test": "desc", "final_test": "desc", "tta_test": "desc", "wall_s": "desc", "images_per_s": "desc",
    "date": "desc",
}
_SORT_ALIASES = {"val": "best_val", "test": "test_at_best", "tta": "tta_test", "wall": "wall_s", "time": "wall_s",
                 "speed": "images_per_s", "img/s": "images_per_s", "images/s": "images_per_s",
                 "started": "date"}


def summarize_run(folder: Path) -> RunSummary | None:
    """One run's summary; None when the folder is not a run folder at all (no config, no metrics)."""
    metrics_path, config_path = folder / METRICS, folder / CONFIG
    if not metrics_path.is_file() and not config_path.is_file():
        return None
    config = _read_config(config_path)
    rows = read_metrics(metrics_path) if metrics_path.is_file() else []
    model = (config.get("model") or {}).get("name") if config else None
    planned = (config.get("train") or {}).get("epochs") if config else None
    epochs = rows[-1]["epoch"] if rows else 0
    task = run_task(folder, rows) if rows else "?"

    def values(key: str) -> list[float]:
        return [r[key] for r in rows if isinstance(r.get(key), (int, float))]

    val_acc, test_acc = values("val_acc"), values("test_acc")
    # best.pt is the first epoch with the highest val_acc (fit keeps strictly better ones only);
    # with no validation split it is the last epoch.
    best_row = max(rows, key=lambda r: (r.get("val_acc", -1.0), -r["epoch"])) if val_acc else (rows[-1] if rows else {})
    val_mse = values("val_mse")
    final = rows[-1].get("final") if rows and isinstance(rows[-1].get("final"), dict) else {}
    last = rows[-1] if rows else {}

    def final_or(key: str, row: dict) -> float | None:
        """The final report's `key` when the run recorded one, else that epoch row's."""
        value = final.get(key) if final else row.get(key)
        return value if isinstance(value, (int, float)) else None
    speeds = values("images_per_s")
    started = None
    if rows and isinstance(rows[0].get("time"), (int, float)) and isinstance(rows[0].get("elapsed_s"), (int, float)):
        started = rows[0]["time"] - rows[0]["elapsed_s"]
    elif rows:
        started = metrics_path.stat().st_mtime
    return RunSummary(
        name=folder.name, path=str(folder), model=model, task=task, epochs=epochs,
        planned_epochs=planned if isinstance(planned, int) else None,
        complete=bool(rows) and (not isinstance(planned, int) or epochs >= planned),
        best_val=max(val_acc) if val_acc else None,
        test_at_best=final_or("test_acc", best_row),
        best_test=max(test_acc) if test_acc else None,
        final_test=final_or("test_acc", last),
        tta_test=final.get("tta_acc") if isinstance(final.get("tta_acc"), (int, float)) else None,
        best_val_mse=min(val_mse) if val_mse else None,
        final_test_mse=final_or("test_mse", last),
        wall_s=_wall_seconds(rows),
        images_per_s=sum(speeds) / len(speeds) if speeds else None,
        started=started,
        date=datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M") if started is not None else None,
    )


# `cnnkit runs`'s score columns; each task fills those its runs have (cnnkit.tasks: Task.run_cells).
# "test" is best.pt's test accuracy as the run's final report measured it (= `cnnkit eval`), "TTA" the
# same with the run's train.tta, "best test" the highest per-epoch figure.
SCORE_COLUMNS = ("best val", "test", "TTA", "best test")
_CELL_FORMATS = {"percent": lambda v: f"{v:.2%}", "mse": lambda v: f"mse {v:.2g}"}


def score_cells(run: RunSummary) -> list[str]:
    """The run's SCORE_COLUMNS cells as text, as its task describes them; empty where it has no number."""
    cells = TASKS[run.task].run_cells if run.task in TASKS else {}
    out = []
    for column in SCORE_COLUMNS:
        field, how = cells.get(column, (None, None))
        value = getattr(run, field) if field else None
        out.append(_CELL_FORMATS[how](value) if value is not None else "")
    return out


def list_runs(root: str | Path = "runs", sort: str = "date", reverse: bool = False) -> list[RunSummary]:
    """Every run folder under `root` (or `root` itself when it is one), sorted by `sort`."""
    root = Path(root)
    column = sort_column(sort)
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise RunError(f"{root}: {what}; pass the folder that holds run folders (output.dir, default runs/)")
    if (root / METRICS).is_file():
        folders = [root]
    else:
        try:
            folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as exc:
            raise RunError(f"{root}: cannot list it ({exc.strerror or exc}); check its permissions") from None
    runs = [s for s in (summarize_run(f) for f in folders) if s is not None]
    return sort_runs(runs, column, reverse)


def sort_column(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _SORT_ALIASES.get(key, key)
    if key not in SORT_COLUMNS:
        close = difflib.get_close_matches(key, list(SORT_COLUMNS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise RunError(f"--sort {name!r}: unknown column; {hint}choose one of: {', '.join(SORT_COLUMNS)}")
    return key


def sort_runs(runs: list[RunSummary], column: str, reverse: bool = False) -> list[RunSummary]:
    """Numbers best-first and dates newest-first, names A→Z; runs without the value always last."""
    key = "started" if column == "date" else column
    have = [r for r in runs if getattr(r, key) is not None]
    missing = [r for r in runs if getattr(r, key) is None]
    descending = SORT_COLUMNS[column] == "desc"
    have.sort(key=lambda r: (getattr(r, key), r.name), reverse=descending != reverse)
    return have + missing


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except (yaml.YAMLError, OSError):
        return {}  # a damaged config only costs the model column, not the whole table
    return data if isinstance(data, dict) else {}


def _wall_seconds(rows: list[dict]) -> float | None:
    """Training wall time over every session of the run.

    `elapsed_s` restarts from zero when a run is resumed, so the total is the sum of each
    session's last value: a row whose successor has a smaller elapsed_s ends a session.
    """
    elapsed = [r.get("elapsed_s") for r in rows]
    if not elapsed or not all(isinstance(e, (int, float)) and math.isfinite(e) for e in elapsed):
        return None
    total = 0.0
    for i, e in enumerate(elapsed):
        if i + 1 == len(elapsed) or elapsed[i + 1] < e:
            total += e
    return total
