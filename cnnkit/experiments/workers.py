"""Worker processes: each claims a waiting trial, trains it as an ordinary cnnkit run, tells the study.

The coordinator (`run_workers`) starts W processes (spawned: a fresh interpreter, never a fork of
one whose torch threads are running) and splits the cores between them. On SIGINT/SIGTERM it
passes SIGTERM on; each worker's run stops at its next step (fit's own signal handling), marks its
trial interrupted and plans it again; a worker still busy after STOP_GRACE_S is killed, and its
trial requeued here. Workers get SIGTERM should the coordinator itself die (Linux).
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cnnkit.errors import CnnkitError, ConfigError, Interrupted, one_line
from cnnkit.experiments import study as studies
from cnnkit.fileio import atomic_write_text

STOP_GRACE_S = 15.0  # after a stop signal, a worker still running this long is killed
RESULT = "result.json"  # in a finished trial's run folder


class Reached(Exception):
    """Raised from a search trial's report at `--at-epoch`: its objective is known, the rest is not needed."""


class Pruned(Exception):
    """Raised from a run's per-epoch report when the study's pruner stops the trial."""

    def __init__(self, epoch: int, value: float):
        super().__init__(f"pruned after epoch {epoch} (val {value:.2%})")
        self.epoch, self.value = epoch, value


@dataclass
class Job:
    """Everything a worker needs, picklable: the study, the base config and how to run a trial."""

    kind: str  # sweep or tune
    folder: str  # runs/NAME: every trial's run folder goes in here
    study: str
    storage: str | None
    config: str
    overrides: list[str]
    data_root: str | None = None
    threads: int | None = None  # torch threads per worker (None: the config's own)
    space: dict = field(default_factory=dict)  # tune: key → entry as in SPACE.yaml
    choices: dict = field(default_factory=dict)  # sweep: key → every value of its axis (seeds too), as texts
    pruner: str = "none"
    startup_trials: int = 5
    seed: int | None = None  # the sampler's seed (each worker adds its index)
    workers: int = 1  # worker processes this command starts
    at_epoch: int | None = None  # tune: the objective is val accuracy at this epoch; trials stop there
    base: dict = field(default_factory=dict)  # the planned config (file + --set, resolved when planned)
    index: int = 0


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Measured on lenet cells (docs/experiments.md): 2 workers × 1 thread did the same cells in less time than
# 1 worker × 2 threads on a 2-core CPU, so by default a CPU sweep runs one single-threaded worker per
# core. Capped: each worker holds the dataset and a torch runtime (~1 GB). On a GPU: one worker.
MAX_AUTO_WORKERS = 8


def split_cores(config, workers: int | None) -> tuple[int, int | None]:
    """(workers, torch threads per worker): the cores shared out; the config's train.threads is kept."""
    from cnnkit.device import resolve_device

    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    if workers is None:
        on_cpu = resolve_device(config.train.device).type == "cpu"
        per_worker = config.train.threads or 1
        workers = max(1, min(MAX_AUTO_WORKERS, cores() // per_worker)) if on_cpu else 1
    threads = max(1, cores() // workers) if config.train.threads is None else None
    return workers, threads


# ---------------------------------------------------------------------------------------- one worker


def worker_main(job: Job, events) -> None:
    """A worker process: claim, run, tell, until no trial waits or a stop signal came."""
    _die_with_parent()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    storage = studies.open_storage(job.storage, Path(job.folder))
    study = studies.optuna().load_study(
        study_name=job.study, storage=storage, pruner=studies.make_pruner(job.pruner, job.startup_trials),
        sampler=studies.make_sampler(job.kind, job.seed, job.startup_trials, job.index))
    while _STATE["signum"] is None:
        trial = studies.claim(study, storage)
        if trial is None:
            break
        if not run_trial(job, study, storage, trial, events):
            break


# A worker's stop signal: between trials it only ends the loop; inside one (setting up, the final test)
# it interrupts at once. During the epochs fit's own handler takes over and stops at the next step.
_STATE: dict = {"signum": None, "busy": False}


def _on_signal(signum, frame) -> None:
    _STATE["signum"] = signum
    if _STATE["busy"]:
        _STATE["busy"] = False
        name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
        raise Interrupted(f"{name} while the run was starting or finishing", 130 if name == "SIGINT" else 143)


def _die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent (the coordinator) dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


def trial_overrides(job: Job, trial) -> list[str]:
    """The trial's values as `KEY=TEXT` overrides: a sweep's fixed texts, or the sampler's picks."""
    from cnnkit.experiments.grid import value_text
    from cnnkit.experiments.space import parse_space

    fixed = trial.user_attrs.get("fixed") or {}
    if job.kind == "sweep":
        # The trial's value is fixed; the distribution is the whole axis (Optuna wants one per key per study).
        return [f"{key}={trial.suggest_categorical(key, job.choices[key])}" for key in fixed]
    out = []
    for key, param in parse_space(job.space, "space").items():
        value = param.suggest(trial, key)
        out.append(f"{key}={value if isinstance(value, str) else value_text(value)}")
    return out


def run_trial(job: Job, study, storage, trial, events) -> bool:
    """Train one trial and tell the study how it ended; False when the worker must stop."""
    from cnnkit.experiments.grid import planned_config
    from cnnkit.training.fit import fit

    opt = studies.optuna()
    cell = trial.user_attrs.get("cell") or f"trial-{trial.number:04d}"
    trial.set_user_attr("cell", cell)
    trial.set_user_attr("worker", studies.worker_identity())
    events.put({"kind": "trial_start", "cell": cell, "number": trial.number, "worker": job.index})
    _STATE["busy"] = True
    try:
        overrides = trial_overrides(job, trial)
        config = planned_config(job.base, overrides, job.folder, flag="trial")
        if job.threads is not None and config.train.threads is None:
            config.train.threads = job.threads
        result = fit(config, data_root=job.data_root, run_name=cell, overwrite=True,
                     report=_Reporter(trial, prune=job.kind == "tune", stop_at=job.at_epoch))
    except Reached:
        _STATE["busy"] = False
        return _tell_reached(job, study, trial, cell, events)
    except Pruned as exc:
        _STATE["busy"] = False
        trial.set_user_attr("pruned", str(exc))
        study.tell(trial, state=opt.trial.TrialState.PRUNED)
        events.put({"kind": "trial_end", "cell": cell, "number": trial.number, "state": "pruned",
                    "line": str(exc)})
        return True
    except (Interrupted, KeyboardInterrupt) as exc:
        _STATE["busy"] = False
        reason = one_line(exc) if isinstance(exc, Interrupted) else "KeyboardInterrupt"
        frozen = storage.get_trial(_trial_id(study, storage, trial))
        studies.requeue(study, storage, frozen, f"interrupted: {reason}")
        events.put({"kind": "trial_end", "cell": cell, "number": trial.number, "state": "interrupted",
                    "line": "interrupted; planned again"})
        return False
    except Exception as exc:  # a failed cell is recorded with its reason, and the sweep goes on
        _STATE["busy"] = False
        reason = one_line(exc)
        if not isinstance(exc, CnnkitError):
            reason = f"{type(exc).__name__}: {reason}"
        trial.set_user_attr("error", reason[:1000])
        study.tell(trial, state=opt.trial.TrialState.FAIL)
        events.put({"kind": "trial_end", "cell": cell, "number": trial.number, "state": "failed", "line": reason})
        return True
    _STATE["busy"] = False  # from here on a signal waits for the trial to be recorded
    metrics, epochs = result_metrics(result)
    trial.set_user_attr("result", metrics)
    trial.set_user_attr("epochs", epochs)
    trial.set_user_attr("run_dir", str(result.run_dir))
    # Without a validation split the value is the last epoch's train accuracy: never the test set's.
    value = metrics.get("best_val", metrics.get("final_train_acc", 0.0))
    study.tell(trial, value)
    # The run folder's own record that it finished, written after the study knows (so it never claims more).
    atomic_write_text(result.run_dir / RESULT, json.dumps({"trial": trial.number, "params": trial.params,
                                                           "metrics": metrics}, indent=2) + "\n")
    events.put({"kind": "trial_end", "cell": cell, "number": trial.number, "state": "complete",
                "metrics": metrics})
    return True


def _tell_reached(job: Job, study, trial, cell: str, events) -> bool:
    """A search trial stopped at --at-epoch: its value is that epoch's val accuracy (metrics.jsonl)."""
    from cnnkit.reports.runs import read_metrics

    rows = read_metrics(Path(job.folder) / cell / "metrics.jsonl")
    keep = ("epoch", "train_loss", "train_acc", "val_acc", "test_acc", "epoch_s")
    epochs = [{k: r[k] for k in keep if k in r} for r in rows]
    value = rows[-1]["val_acc"]
    metrics = {f"val_acc@{job.at_epoch}": value, "train_s": sum(r.get("epoch_s", 0.0) for r in rows)}
    trial.set_user_attr("result", metrics)
    trial.set_user_attr("epochs", epochs)
    trial.set_user_attr("stopped", f"stopped after epoch {job.at_epoch} (--at-epoch)")
    study.tell(trial, value)
    events.put({"kind": "trial_end", "cell": cell, "number": trial.number, "state": "complete",
                "line": f"val acc at epoch {job.at_epoch}: {100 * value:.2f}%"})
    return True


def _trial_id(study, storage, trial) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                           trial.number)


class _Reporter:
    """fit's progress events → the trial: each epoch's val accuracy reported, the pruner consulted."""

    def __init__(self, trial, prune: bool, stop_at: int | None = None):
        self.trial, self.prune, self.stop_at = trial, prune, stop_at

    def __call__(self, event: dict) -> None:
        if event["kind"] != "epoch" or not isinstance(event.get("val_acc"), float):
            return
        self.trial.report(event["val_acc"], event["epoch"])
        if self.stop_at is not None and event["epoch"] >= self.stop_at:
            raise Reached()
        if self.prune and self.trial.should_prune():
            raise Pruned(event["epoch"], event["val_acc"])


def result_metrics(result) -> tuple[dict, list[dict]]:
    """A finished run's numbers: best val acc, best.pt's test (and TTA) accuracy, training seconds."""
    history = result.history
    metrics: dict[str, float] = {"train_s": sum(r.get("epoch_s", 0.0) for r in history),
                                 "wall_s": result.extra.get("wall_s", math.nan)}
    vals = [r["val_acc"] for r in history if isinstance(r.get("val_acc"), float)]
    if vals:
        metrics["best_val"] = max(vals)
    if history and isinstance(history[-1].get("train_acc"), float):
        metrics["final_train_acc"] = history[-1]["train_acc"]
    if result.test is not None and result.test.accuracy is not None:
        metrics["test"] = result.test.accuracy
    if result.tta is not None and result.tta.accuracy is not None:
        metrics["tta"] = result.tta.accuracy
    keep = ("epoch", "train_loss", "train_acc", "val_acc", "test_acc", "epoch_s")
    epochs = [{k: r[k] for k in keep if k in r} for r in history]
    return metrics, epochs


# ---------------------------------------------------------------------------------------- the coordinator


def execute(job: Job, plan: dict, top_up: Callable, report: Callable[[dict], None]) -> None:
    """Open or create the study, plan what is missing, record the folder, run the workers."""
    folder = Path(job.folder)
    storage = studies.open_storage(job.storage, folder)
    study, created = studies.open_study(storage, job.study, plan, folder=folder,
                                        pruner=studies.make_pruner(job.pruner, job.startup_trials))
    studies.Experiment(job.kind, job.study, job.storage, job.config, job.overrides, plan).write(folder)
    if not created and not studies.wait_until_planned(study):
        report({"kind": "note", "line": "the study was never marked planned (its creator stopped early?); "
                                        "planning what is missing"})
    requeued = studies.reap(study, storage) if not created else []
    top_up(study, studies.trials(study))
    studies.mark_planned(study)
    opt = studies.optuna()
    counted = [t for t in studies.trials(study) if studies.counts_toward_plan(t)]
    waiting = sum(t.state == opt.trial.TrialState.WAITING for t in counted)
    running = [t for t in counted if t.state == opt.trial.TrialState.RUNNING]
    report({"kind": "plan", "created": created, "total": len(counted), "waiting": waiting,
            "running_elsewhere": len(running), "finished": len(counted) - waiting - len(running),
            "requeued": requeued, "folder": str(folder), "storage": studies.mask_url(job.storage or
                                                                                    str(folder / studies.JOURNAL))})
    if waiting:
        run_workers(job, min(job.workers, waiting), study, storage, report)



def run_workers(job: Job, workers: int, study, storage, report: Callable[[dict], None]) -> None:
    """Run `workers` worker processes until no trial waits; raise Interrupted (130/143) on a stop signal."""
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    procs = []
    stop: dict = {"signum": None, "since": None, "count": 0}

    def handler(signum, frame):
        stop["count"] += 1
        if stop["signum"] is None:
            stop["signum"], stop["since"] = signum, time.monotonic()
        for p in procs:  # SIGTERM, not SIGINT: a worker's run takes a second SIGINT as "out now"
            if p.is_alive():
                try:
                    os.kill(p.pid, signal.SIGKILL if stop["count"] > 1 else signal.SIGTERM)
                except ProcessLookupError:
                    pass

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(workers):
            p = ctx.Process(target=worker_main, args=(_replace_index(job, i), events), name=f"cnnkit-worker-{i}")
            p.start()
            procs.append(p)
            if stop["signum"] is not None:
                break
        report({"kind": "workers", "n": len(procs), "threads": job.threads, "pids": [p.pid for p in procs]})
        while any(p.is_alive() for p in procs):
            _drain(events, report, timeout=0.2)
            if stop["since"] is not None and time.monotonic() - stop["since"] > STOP_GRACE_S:
                for p in procs:
                    if p.is_alive():
                        p.kill()
        for p in procs:
            p.join()
        _drain(events, report, timeout=0.05)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    # A worker that was killed, or crashed, left its trial RUNNING: plan it again.
    requeued = studies.reap(study, storage, only_pids={p.pid for p in procs})
    if requeued:
        report({"kind": "requeued", "cells": requeued})
    crashed = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if stop["signum"] is not None:
        code = 130 if stop["signum"] == signal.SIGINT else 143
        name = "SIGINT" if code == 130 else "SIGTERM"
        raise Interrupted(f"{name}: stopped {len(procs)} worker(s); finished trials are kept — run the same "
                          "command again to do the rest", code)
    if crashed and requeued:
        report({"kind": "crashed", "exitcodes": crashed})


def _replace_index(job: Job, index: int) -> Job:
    from dataclasses import replace

    return replace(job, index=index)


def _drain(events, report: Callable[[dict], None], timeout: float) -> None:
    try:
        event = events.get(timeout=timeout)
    except queue.Empty:
        return
    report(event)
    while True:
        try:
            report(events.get_nowait())
        except queue.Empty:
            return
