"""`cnnkit sweep`: a grid × seeds, each cell an ordinary run folder runs/NAME/CELL, and what they add up to.

The cells are planned as trials with fixed values on the study engine (cnnkit.experiments.study), so a
sweep resumes, shares its storage with other machines and runs in worker processes exactly as a search
does. The result is computed from the study: runs/NAME/summary.json and summary.csv.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from cnnkit.config import load_config
from cnnkit.errors import RunError
from cnnkit.experiments import study as studies
from cnnkit.experiments.aggregate import CellResult, SweepSummary, summarize, summary_csv
from cnnkit.experiments.grid import SEED_KEY, Axis, cells, parse_grid, parse_seeds, validate_cells
from cnnkit.experiments.workers import Job, execute, split_cores
from cnnkit.fileio import atomic_write_text

SUMMARY_JSON, SUMMARY_CSV = "summary.json", "summary.csv"


def default_name(config: str | Path, overrides: list[str], axes: list[Axis], seeds: list[int]) -> str:
    """The same command, the same folder (so running it again resumes the sweep)."""
    key = json.dumps([str(config), overrides, [[a.key, list(a.values)] for a in axes], seeds])
    return f"{Path(config).stem}-sweep-{hashlib.sha1(key.encode()).hexdigest()[:6]}"


def prepare(config: str | Path, grid: list[str], seeds: str, overrides: list[str], name: str | None,
            storage: str | None, data_root: str | None, workers: int | None) -> tuple[Job, dict]:
    """Parse and validate the whole grid (every cell's config, model and optimiser groups) first."""
    axes, seed_list = parse_grid(grid), parse_seeds(seeds)
    plan_cells = cells(axes, seed_list)
    configs = validate_cells(config, overrides, plan_cells)
    base = load_config(config, overrides)
    name = name or default_name(config, overrides, axes, seed_list)
    folder = Path(base.output.dir).expanduser() / name
    base_dict = base.to_dict()
    base_dict["output"] = {}
    plan = {"kind": "sweep", "config": base_dict, "axes": [[a.key, list(a.values)] for a in axes],
            "seeds": seed_list, "has_val": configs[0].data.val_split > 0}
    workers, threads = split_cores(base, workers)
    choices = {**{a.key: list(a.values) for a in axes}, SEED_KEY: [str(s) for s in seed_list]}
    return Job("sweep", str(folder), name, storage, str(config), list(overrides), data_root, threads,
               choices=choices, workers=workers, base=base_dict), plan


def run_sweep(job: Job, plan: dict, report: Callable[[dict], None], at_epoch: int | None = None) -> SweepSummary:
    """Run the cells not yet finished in the job's worker processes; summarise, write summary.json/.csv."""
    planned = cells([Axis(k, tuple(v)) for k, v in plan["axes"]], plan["seeds"])

    def top_up(study, existing: list) -> None:
        have = {t.user_attrs.get("cell") for t in existing if studies.counts_toward_plan(t)}
        for cell in planned:
            if cell.name not in have:
                study.enqueue_trial(cell.params, user_attrs={"cell": cell.name, "fixed": cell.params})

    execute(job, plan, top_up, report)
    return show(job.folder, job.storage, at_epoch=at_epoch, write=True)


def cell_results(study, plan: dict) -> list[CellResult]:
    """Each planned cell as the study holds it (a finished trial beats an unfinished one for the same cell)."""
    rank = {"complete": 0, "failed": 1, "pruned": 2, "running": 3, "waiting": 4}
    best: dict[str, CellResult] = {}
    for t in studies.trials(study):
        if not studies.counts_toward_plan(t):
            continue
        state = {"fail": "failed"}.get(t.state.name.lower(), t.state.name.lower())
        result = CellResult(str(t.user_attrs.get("cell")), {}, 0, state, t.user_attrs.get("error"),
                            dict(t.user_attrs.get("result") or {}), list(t.user_attrs.get("epochs") or []))
        old = best.get(result.name)
        if old is None or rank.get(state, 9) < rank.get(old.state, 9):
            best[result.name] = result
    out = []
    for cell in cells([Axis(k, tuple(v)) for k, v in plan["axes"]], plan["seeds"]):
        found = best.get(cell.name) or CellResult(cell.name, {}, 0, "waiting")
        found.setting, found.seed = cell.setting, cell.seed
        out.append(found)
    return out


def _last_at_epoch(folder: Path) -> int | None:
    try:
        value = json.loads((folder / SUMMARY_JSON).read_text()).get("at_epoch")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def show(folder: str | Path, storage_url: str | None = None, at_epoch: int | None = None,
         write: bool = False) -> SweepSummary:
    """The sweep in `folder`, summarised from its study (partial while it runs); `write`: summary files too."""
    folder = Path(folder)
    exp = studies.read_experiment(folder, "sweep")
    storage = studies.storage_for_show(exp, folder, storage_url)
    try:
        study = studies.optuna().load_study(study_name=exp.study, storage=storage)
    except KeyError:
        raise RunError(f"{folder}: its study {exp.study!r} is not in the storage; pass the --storage it ran "
                       "with") from None
    results = cell_results(study, exp.plan)
    if at_epoch is None and not write:  # reprinting: as the sweep itself reported it (its --at-epoch)
        at_epoch = _last_at_epoch(folder)
    summary = summarize(folder.name, [k for k, _ in exp.plan["axes"]], results,
                        has_val=bool(exp.plan.get("has_val")), at_epoch=at_epoch)
    if write:
        data = summary.to_dict()
        data["cells"] = [{"cell": r.name, "setting": r.setting, "seed": r.seed, "state": r.state,
                          "reason": r.reason, "metrics": r.metrics, "epochs": r.epochs} for r in results]
        atomic_write_text(folder / SUMMARY_JSON, json.dumps(data, indent=2) + "\n")
        atomic_write_text(folder / SUMMARY_CSV, summary_csv(summary))
    return summary
