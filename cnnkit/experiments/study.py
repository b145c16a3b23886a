"""The one engine under `cnnkit sweep` and `cnnkit tune`: an Optuna study of planned trials.

A sweep plans one trial per cell with its values fixed; a search plans N trials whose values the
sampler (TPE) picks when they start. Either way the trials wait in the study's queue, and any
number of worker processes, on this machine or others sharing the storage, claim them one at a
time (Optuna's WAITING → RUNNING step, atomic in every storage). The storage is Optuna's journal
file in runs/NAME/ unless `--storage URL` names another (PostgreSQL, MySQL, SQLite, a journal file).

A trial whose worker was interrupted or died is marked FAIL with `interrupted` and planned again
(same values, same run folder), so the same command started again redoes exactly what is missing.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnnkit.config import config_from_dict
from cnnkit.errors import ConfigError, RunError, one_line
from cnnkit.fileio import atomic_write_text

JOURNAL = "study.journal"
EXPERIMENT = "experiment.yaml"  # what kind of experiment a folder holds and where its study lives
PLAN_ATTR = "cnnkit_plan"
PLANNED_ATTR = "cnnkit_planned"
MAX_ATTEMPTS = 3  # a trial whose worker dies this many times is failed, not planned again


def optuna():
    """Optuna, or one line saying how to install it (it is an optional extra)."""
    try:
        import optuna as module
    except ImportError:
        raise ConfigError("sweeps and searches need Optuna: pip install 'cnnkit[experiments]' "
                          "(or pip install optuna)") from None
    module.logging.set_verbosity(module.logging.WARNING)  # cnnkit reports trials itself
    return module


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***: safe to print and to write into a file."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str | None, folder: Path):
    """The study's storage: the journal file in `folder` by default, else `url` (checked reachable now)."""
    opt = optuna()
    if url is None or "://" not in url:
        path = folder / JOURNAL if url is None else Path(url).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return opt.storages.JournalStorage(opt.storages.journal.JournalFileBackend(str(path)))
        except OSError as exc:
            raise RunError(f"{path}: cannot open the study's journal file ({exc.strerror or exc}); "
                           "choose a writable folder") from None
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith(("postgresql", "postgres")):
        engine["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails in seconds, not minutes
    for attempt in range(3):
        try:
            # Wrapped as create_study would wrap it, so this process reads and writes through one object.
            return opt.storages.get_storage(opt.storages.RDBStorage(_with_driver(url), engine_kwargs=engine))
        except Exception as exc:  # sqlalchemy raises many kinds (bad URL, refused, auth, missing driver)
            # Workers started together on an empty database race to create Optuna's tables: the loser's
            # CREATE TABLE finds the winner's ("already exists"). Its next try sees them and goes on.
            if "already exists" in str(exc) and attempt < 2:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise ConfigError(f"--storage {mask_url(url)}: cannot open it ({one_line(exc)[:300]}); check the "
                              "URL, that the server is up and reachable, and that its driver is installed "
                              "(PostgreSQL: pip install 'cnnkit[postgres]', i.e. psycopg2-binary)") from None
    raise AssertionError("unreachable: the last attempt returns or raises")


def _with_driver(url: str) -> str:
    """postgresql://... with the driver that is installed: SQLAlchemy 2.1 assumes psycopg 3, cnnkit's
    `postgres` extra installs psycopg2; a URL that names its driver (postgresql+x://) is left alone."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2{sep}{rest}"
    return url


# ---------------------------------------------------------------------------------------- samplers, pruners


def _median(startup: int):
    # Judge a trial at an epoch only once `startup` trials have finished; from its first epoch on.
    return optuna().pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0)


def _percentile(startup: int):
    return optuna().pruners.PercentilePruner(25.0, n_startup_trials=startup, n_warmup_steps=0)


def _hyperband(startup: int):
    return optuna().pruners.HyperbandPruner()


def _none(startup: int):
    return optuna().pruners.NopPruner()


# name → a pruner, given how many trials must finish before it judges any
PRUNERS: dict[str, Callable] = {"median": _median, "percentile": _percentile, "hyperband": _hyperband,
                                "none": _none}


def make_pruner(name: str, startup: int):
    if name not in PRUNERS:
        raise ConfigError(f"--pruner {name}: unknown pruner; choose one of: {', '.join(PRUNERS)}")
    return PRUNERS[name](startup)


def make_sampler(kind: str, seed: int | None, startup: int, index: int):
    """TPE for a search (seeded per worker, so two workers never draw alike); a sweep's values are fixed."""
    opt = optuna()
    if kind != "tune":
        return opt.samplers.RandomSampler(seed=0)  # never asked: every value of a sweep's trial is fixed
    return opt.samplers.TPESampler(seed=None if seed is None else seed + index, n_startup_trials=startup)


# ---------------------------------------------------------------------------------------- the folder's record


@dataclass
class Experiment:
    """runs/NAME/experiment.yaml: what the folder holds and where its study lives."""

    kind: str  # sweep or tune
    study: str
    storage: str | None  # None: the journal file in the folder; a URL's password is masked
    config: str
    overrides: list[str]
    plan: dict  # the kind's own plan (the grid and seeds, or the space and trials)

    def write(self, folder: Path) -> None:
        record = {"kind": self.kind, "study": self.study,
                  "storage": mask_url(self.storage) if self.storage else None,
                  "config": self.config, "set": self.overrides, "plan": self.plan}
        atomic_write_text(folder / EXPERIMENT, yaml.safe_dump(record, sort_keys=False))


def read_experiment(folder: str | Path, kind: str) -> Experiment:
    """The record of a sweep or search folder; a RunError for any other folder."""
    folder = Path(folder)
    path = folder / EXPERIMENT
    command = f"cnnkit {kind} show"
    if not folder.is_dir():
        raise RunError(f"{folder}: no such folder; pass the folder a `cnnkit {kind}` made, e.g. runs/NAME")
    try:
        record = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{folder}: not a {kind} folder (no {EXPERIMENT}); {command} takes the folder a "
                       f"`cnnkit {kind}` made, e.g. runs/NAME") from None
    except (OSError, yaml.YAMLError) as exc:
        raise RunError(f"{path}: cannot read it ({one_line(exc)}); it is written by `cnnkit {kind}`") from None
    if not isinstance(record, dict) or record.get("kind") != kind:
        other = record.get("kind") if isinstance(record, dict) else None
        hint = f"; use cnnkit {other} show" if other in ("sweep", "tune") else ""
        raise RunError(f"{folder}: holds a {other or 'unknown'} experiment, not a {kind}{hint}")
    return Experiment(kind, str(record.get("study")), record.get("storage"), str(record.get("config")),
                      list(record.get("set") or []), dict(record.get("plan") or {}))


def storage_for_show(exp: Experiment, folder: Path, url: str | None):
    """The storage `show` reads: --storage if given, else the one recorded (a masked one must be given)."""
    url = url or exp.storage
    if url and "***" in url:
        raise ConfigError(f"{folder}: its study is in {url}, whose password is not stored; pass it with "
                          "--storage URL")
    return open_storage(url, folder)


# ---------------------------------------------------------------------------------------- the study


def open_study(storage, name: str, plan: dict, *, sampler=None, pruner=None, folder: Path | None = None):
    """Create the study (this process plans its trials: returns True) or load it and check it is the same.

    Creating is atomic in every storage, so of several workers started together exactly one plans.
    """
    opt = optuna()
    try:
        study = opt.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                                 pruner=pruner, load_if_exists=False)
    except opt.exceptions.DuplicatedStudyError:
        study = opt.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        _check_same_plan(study, plan, name, folder)
        return study, False
    study.set_user_attr(PLAN_ATTR, plan)
    return study, True


def _check_same_plan(study, plan: dict, name: str, folder: Path | None) -> None:
    saved = study.user_attrs.get(PLAN_ATTR)
    deadline = time.monotonic() + 30
    while saved is None and time.monotonic() < deadline:  # created a moment ago by another worker
        time.sleep(0.5)
        saved = study.user_attrs.get(PLAN_ATTR)
    if saved is None:
        return  # created by something else, or its creator died at once: take it as this plan's
    mine = _with_todays_defaults({k: v for k, v in plan.items() if k != "trials"})
    theirs = _with_todays_defaults({k: v for k, v in saved.items() if k != "trials"})
    if mine != theirs:
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        where = f"{folder}" if folder is not None else f"study {name}"
        raise ConfigError(f"{where} holds a {saved.get('kind', 'different')} experiment planned differently "
                          f"({', '.join(differ)} differ); the same command resumes it — for a new one pass "
                          "another --name (or --study)")


def _with_todays_defaults(plan: dict) -> dict:
    """A plan's config as this cnnkit resolves it: a key added to the config since the study was planned
    takes its default, so that a newer cnnkit resumes an older sweep (a key it no longer knows leaves the
    plan as saved, and the comparison says the config differs). Both plans compared go through it."""
    if not isinstance(plan.get("config"), dict):
        return plan
    try:
        return {**plan, "config": config_from_dict(plan["config"]).to_dict()}
    except ConfigError:
        return plan


def wait_until_planned(study, timeout_s: float = 30.0) -> bool:
    """True once the creator has finished planning (a flag it sets last)."""
    deadline = time.monotonic() + timeout_s
    while PLANNED_ATTR not in study.user_attrs:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def mark_planned(study) -> None:
    study.set_user_attr(PLANNED_ATTR, True)


def trials(study, states=None) -> list:
    return study.get_trials(deepcopy=False, states=states)


def counts_toward_plan(trial) -> bool:
    """Every trial except those interrupted and planned again (their replacement counts instead)."""
    return "interrupted" not in trial.user_attrs


def claim(study, storage):
    """A waiting trial of this study, now RUNNING for this process; None when none waits.

    Optuna's own step (WAITING → RUNNING succeeds for exactly one caller), without `study.ask`,
    which would create a new trial when the queue is empty.
    """
    opt = optuna()
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(opt.trial.TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, state=opt.trial.TrialState.RUNNING):
                return opt.trial.Trial(study, trial_id)
        except opt.exceptions.UpdateFinishedTrialError:
            continue
    return None


# ---------------------------------------------------------------------------------------- workers alive or not


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def worker_identity() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_ticks(pid)}


def worker_dead(identity: dict | None) -> bool:
    """True only when the worker surely is gone: same host, and its pid ended (or now is another process)."""
    if not isinstance(identity, dict) or identity.get("host") != socket.gethostname():
        return False  # another machine's worker: only it can say
    pid = identity.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    start = _start_ticks(pid)
    return identity.get("start") is not None and start is not None and start != identity["start"]


def requeue(study, storage, frozen, reason: str) -> None:
    """Mark an unfinished trial interrupted (FAIL) and plan it again with the same values and run folder."""
    opt = optuna()
    attempts = int(frozen.user_attrs.get("attempts", 1))
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                               frozen.number)
    storage.set_trial_user_attr(trial_id, "interrupted", reason)
    try:
        storage.set_trial_state_values(trial_id, state=opt.trial.TrialState.FAIL)
    except opt.exceptions.UpdateFinishedTrialError:
        return  # someone else finished or requeued it first
    params = {**(frozen.user_attrs.get("fixed") or {}), **frozen.params}
    user_attrs = {"cell": frozen.user_attrs.get("cell", f"trial-{frozen.number:04d}"), "fixed": params}
    if attempts >= MAX_ATTEMPTS:
        # Not again: the same trial killed its worker every time. Record it as an ordinary failure.
        study.add_trial(opt.trial.create_trial(
            state=opt.trial.TrialState.FAIL, params={}, distributions={},
            user_attrs={**user_attrs, "error": f"its worker stopped {attempts} times ({reason}); not retried"}))
        return
    study.enqueue_trial(params, user_attrs={**user_attrs, "attempts": attempts + 1})


def reap(study, storage, only_pids: set[int] | None = None) -> list[str]:
    """Requeue RUNNING trials whose worker on this machine has died; the cells requeued."""
    opt = optuna()
    done = []
    for frozen in trials(study, states=(opt.trial.TrialState.RUNNING,)):
        identity = frozen.user_attrs.get("worker")
        if only_pids is not None and (identity or {}).get("pid") not in only_pids:
            continue
        # No identity yet: claimed a moment ago and about to say by whom; leave it.
        if worker_dead(identity):
            requeue(study, storage, frozen, "its worker stopped before the run finished")
            done.append(str(frozen.user_attrs.get("cell", frozen.number)))
    return done
