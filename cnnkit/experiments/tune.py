"""`cnnkit tune`: an Optuna search (TPE) over a space, on the study engine of cnnkit.experiments.study.

Each trial is an ordinary run folder runs/NAME/trial-NNNN whose per-epoch validation accuracy is
reported to the study; the pruner (median by default) stops trials that fall behind. At the end the
best trial's config is written to runs/NAME/best.yaml, ready for `cnnkit train --config`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cnnkit.config import Config, load_config
from cnnkit.errors import ConfigError, RunError
from cnnkit.experiments import study as studies
from cnnkit.experiments.grid import check_buildable, planned_config, value_text
from cnnkit.experiments.space import read_space, validate_space
from cnnkit.experiments.study import make_pruner
from cnnkit.experiments.workers import Job, execute, split_cores
from cnnkit.fileio import atomic_write_text

BEST = "best.yaml"


@dataclass
class TuneResult:
    folder: Path
    study: str
    trials: list[dict]  # number, state, cell, params, value, reason
    best: dict | None  # the best complete trial, with its config's path
    planned: int
    space: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "study": self.study, "planned": self.planned, "space": self.space,
                "at_epoch": self.plan.get("at_epoch"), "best": self.best, "trials": self.trials}


def default_name(config: str | Path, overrides: list[str], space_raw: dict, at_epoch: int | None = None) -> str:
    """The same command, the same study (so running it again resumes it)."""
    digest = hashlib.sha1(json.dumps([str(config), overrides, space_raw, at_epoch], sort_keys=True,
                                     default=str).encode())
    return f"{Path(config).stem}-tune-{digest.hexdigest()[:6]}"


def prepare(config: str | Path, space_path: str | Path, overrides: list[str], trials: int, name: str | None,
            storage: str | None, pruner: str, startup_trials: int, seed: int | None,
            data_root: str | None, workers: int | None, at_epoch: int | None = None) -> tuple[Job, dict]:
    """Everything checked before anything starts: config, space, pruner, storage. The job and the plan."""
    if trials < 1:
        raise ConfigError(f"--trials {trials}: must be at least 1")
    base = load_config(config, overrides)
    if base.data.val_split == 0:
        raise ConfigError(f"{config}: a search selects on validation accuracy, and this config has no validation "
                          "split; set data.val_split (e.g. --set data.val_split=5000)")
    check_buildable(base, str(config))
    space, raw = read_space(space_path)
    validate_space(space, config, overrides, str(space_path))
    make_pruner(pruner, startup_trials)
    if at_epoch is not None and not 1 <= at_epoch <= base.train.epochs:
        raise ConfigError(f"--at-epoch {at_epoch}: must be between 1 and train.epochs ({base.train.epochs})")
    name = name or default_name(config, overrides, raw, at_epoch)
    folder = Path(base.output.dir).expanduser() / name
    plan = {"kind": "tune", "config": _plan_config(base), "space": raw, "trials": trials, "at_epoch": at_epoch}
    workers, threads = split_cores(base, workers)
    job = Job("tune", str(folder), name, storage, str(config), list(overrides), data_root=data_root,
              threads=threads, space=raw, pruner=pruner, startup_trials=startup_trials, seed=seed, workers=workers,
              at_epoch=at_epoch, base=plan["config"])
    return job, plan


def _plan_config(config: Config) -> dict:
    data = config.to_dict()
    data["output"] = {}  # where the runs go is not what they are
    return data


def run_tune(job: Job, plan: dict, report: Callable[[dict], None]) -> TuneResult:
    """Plan the trials (or find them planned), run them in the job's worker processes, write best.yaml."""
    folder = Path(job.folder)

    def top_up(study, existing: list) -> None:
        counted = [t for t in existing if studies.counts_toward_plan(t)]
        for _ in range(plan["trials"] - len(counted)):
            study.enqueue_trial({}, user_attrs={"fixed": {}})

    execute(job, plan, top_up, report)
    return show(folder, job.storage, write_best=True)


def trial_rows(study) -> list[dict]:
    rows = []
    for t in studies.trials(study):
        if not studies.counts_toward_plan(t):
            continue
        state = t.state.name.lower()
        reason = t.user_attrs.get("error") or t.user_attrs.get("pruned")
        rows.append({"number": t.number, "state": state, "cell": t.user_attrs.get("cell"),
                     "params": dict(t.params) or dict(t.user_attrs.get("fixed") or {}),
                     "value": t.value if t.value is not None else (
                         t.intermediate_values[t.last_step] if t.last_step is not None else None),
                     "epochs": len(t.intermediate_values), "reason": reason,
                     "metrics": t.user_attrs.get("result") or {}})
    return rows


def show(folder: str | Path, storage_url: str | None = None, write_best: bool = False) -> TuneResult:
    """The trials of the search in `folder` (number, state, params, value) and its best one."""
    folder = Path(folder)
    exp = studies.read_experiment(folder, "tune")
    storage = studies.storage_for_show(exp, folder, storage_url)
    opt = studies.optuna()
    try:
        study = opt.load_study(study_name=exp.study, storage=storage)
    except KeyError:
        raise RunError(f"{folder}: its study {exp.study!r} is not in the storage; pass the --storage it ran "
                       "with") from None
    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "complete"]
    best = None
    if complete:
        top = max(complete, key=lambda r: (r["value"], -r["number"]))
        best = {**top, "config": str(folder / BEST)}
        if write_best:
            write_best_config(folder, exp, top["params"])
    return TuneResult(folder, exp.study, rows, best, int(exp.plan.get("trials", len(rows))), exp.plan.get("space"),
                      exp.plan)


def write_best_config(folder: Path, exp, params: dict) -> Path:
    """The base config with the best trial's values, as YAML for `cnnkit train --config`."""
    overrides = [f"{k}={v if isinstance(v, str) else value_text(v)}" for k, v in params.items()]
    try:
        config = planned_config(exp.plan["config"], overrides, folder.parent, flag="best trial")
    except ConfigError as exc:
        raise RunError(f"{folder / BEST}: cannot rebuild the best trial's config ({exc})") from None
    config.output.name = f"{folder.name}-best"
    header = (f"# The best trial of the search in {folder} ({', '.join(overrides)}), on {exp.config}"
              f"{' with --set ' + ' '.join(exp.overrides) if exp.overrides else ''}.\n"
              f"# Train it: cnnkit train --config {folder / BEST}\n")
    return atomic_write_text(folder / BEST, header + config.to_yaml())
