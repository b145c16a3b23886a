"""`cnnkit sweep` and `cnnkit tune` (each with `show`): parse, call cnnkit.experiments, render with rich."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cnnkit.cli.app import ConfigOpt, SetOpt, _guard, _print_json, app, console

sweep_app = typer.Typer(help="Run a grid of settings × seeds; report mean ± std ± 95% CI per setting.",
                        invoke_without_command=True, no_args_is_help=False)
tune_app = typer.Typer(help="Search settings with Optuna (TPE, pruning); shared storage scales it out.",
                       invoke_without_command=True, no_args_is_help=False)
app.add_typer(sweep_app, name="sweep")
app.add_typer(tune_app, name="tune")

DataRootOpt = typer.Option(None, "--data-root", help="CIFAR-10 folder (beats CNNKIT_DATA and data.root).")
StorageOpt = typer.Option(None, "--storage", help="Optuna storage URL (postgresql://..., sqlite:///...) or a "
                          "journal file; default: a journal file in runs/NAME/. Several machines given one "
                          "URL share the study.")
WorkersOpt = typer.Option(None, "--workers", "-w", help="Worker processes on this machine; the cores are split "
                          "between them (train.threads, unless the config sets it). Default: one per core on "
                          "the CPU (at most 8), one on a GPU.")


def _need_config(ctx: typer.Context, config: Optional[Path], command: str) -> Path | None:
    if ctx.invoked_subcommand is not None:
        return None
    if config is None:
        from cnnkit.errors import ConfigError

        raise ConfigError(f"no config: pass --config, e.g. cnnkit {command} --config configs/lenet.yaml ...; "
                          f"or cnnkit {command} show runs/NAME")
    return config


# ---------------------------------------------------------------------------------------------- sweep
@sweep_app.callback()
@_guard
def sweep_cmd(
    ctx: typer.Context,
    config: Optional[Path] = ConfigOpt,
    grid: Optional[list[str]] = typer.Option(None, "--grid", "-g", help="KEY=V1,V2,... (repeatable; the "
                                             "product of all is swept). None: the config as it is, over seeds."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="How many seeds (5: seeds 0-4) or which (0,3,7)."),
    workers: Optional[int] = WorkersOpt,
    name: Optional[str] = typer.Option(None, "--name", help="Folder under output.dir (default: from the config "
                                       "and the grid, so the same command resumes)."),
    set_: Optional[list[str]] = SetOpt,
    storage: Optional[str] = StorageOpt,
    at_epoch: Optional[int] = typer.Option(None, "--at-epoch", help="Also report val and test accuracy at "
                                           "this epoch of every run (and select on val there)."),
    data_root: Optional[str] = DataRootOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON at the end."),
):
    """Sweep settings × seeds: `cnnkit sweep --config configs/lenet.yaml --grid optim.lr=0.003,0.006 --seeds 5`."""
    config = _need_config(ctx, config, "sweep")
    if config is None:
        return
    if seeds is None:
        from cnnkit.errors import ConfigError

        raise ConfigError("--seeds is required: how many seeds per setting (e.g. --seeds 5) or which (0,3,7)")
    from cnnkit.experiments.sweep import prepare, run_sweep

    job, plan = prepare(config, list(grid or []), seeds, list(set_ or []), name, storage, data_root, workers)
    summary = run_sweep(job, plan, _Progress(), at_epoch=at_epoch)
    if as_json:
        return _print_json(summary.to_dict())
    render_sweep(summary)
    print(f"wrote {Path(job.folder) / 'summary.json'} and summary.csv; `cnnkit plot {job.folder}` draws it")
    if summary.unfinished:
        raise typer.Exit(1)


@sweep_app.command("show")
@_guard
def sweep_show_cmd(
    folder: Path = typer.Argument(..., help="A sweep's folder, e.g. runs/NAME."),
    storage: Optional[str] = typer.Option(None, "--storage", help="The storage URL, if it had a password."),
    at_epoch: Optional[int] = typer.Option(None, "--at-epoch", help="Also val and test accuracy at this epoch "
                                           "(default: the sweep's own --at-epoch)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Reprint a sweep's summary (from its study: partial while it runs)."""
    from cnnkit.experiments.sweep import show

    summary = show(folder, storage, at_epoch=at_epoch)
    if as_json:
        return _print_json(summary.to_dict())
    render_sweep(summary)


def _pct(value: float | None, fraction: bool) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.2f}" if fraction else f"{value:.1f}"


def render_sweep(summary) -> None:
    table = Table(title=f"sweep {summary.name}: {summary.done}/{summary.total} runs finished "
                  "(accuracies in %, 95% CI: Student's t over seeds)")
    for col, justify in (("setting", "left"), ("metric", "left"), ("n", "right"), ("mean", "right"),
                         ("std", "right"), ("95% CI", "right"), ("values (by seed)", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for s in summary.settings:
        label = ("* " if s.label == summary.best else "") + s.label
        first = True
        for key, (title, fraction) in summary.metrics.items():
            stat = s.stats.get(key)
            if stat is None:
                continue
            ci = "—" if stat.ci95 is None else f"{_pct(stat.low, fraction)} – {_pct(stat.high, fraction)}"
            table.add_row(label if first else "", title, str(stat.n), _pct(stat.mean, fraction),
                          _pct(stat.std, fraction), ci, " ".join(_pct(v, fraction) for v in stat.values))
            first = False
        if first:
            table.add_row(label, "—", "0", "", "", "", "no finished run")
        table.add_section()
    console.print(table)
    for s in summary.settings:
        for f in s.failed:
            print(f"failed: {f['cell']}: {f['reason']}")
    print(summary.selection)
    if summary.unfinished:
        print(f"{len(summary.unfinished)} run(s) not finished: {', '.join(summary.unfinished[:6])}"
              f"{' ...' if len(summary.unfinished) > 6 else ''} — run the same command again to finish them")


class _Progress:
    """The workers' events as one line each."""

    def __call__(self, e: dict) -> None:
        kind = e["kind"]
        if kind == "plan":
            verb = "new" if e["created"] else "resuming"
            print(f"{verb}: {e['folder']} ({e['total']} runs: {e['finished']} finished, {e['waiting']} to run"
                  f"{', ' + str(e['running_elsewhere']) + ' running elsewhere' if e['running_elsewhere'] else ''}"
                  f"); study in {e['storage']}", flush=True)
            if e["requeued"]:
                print(f"planned again (their worker had stopped): {', '.join(e['requeued'])}", flush=True)
        elif kind == "workers":
            threads = f" × {e['threads']} thread(s)" if e["threads"] else ""
            print(f"{e['n']} worker(s){threads}", flush=True)
        elif kind == "trial_start":
            print(f"[w{e['worker']}] start {e['cell']}", flush=True)
        elif kind == "trial_end":
            print(f"{e['state']}: {e['cell']}: {self._result(e)}", flush=True)
        elif kind == "requeued":
            print(f"planned again: {', '.join(e['cells'])}", flush=True)
        elif kind in ("note", "crashed"):
            print(e.get("line") or f"worker exit codes {e.get('exitcodes')}", file=sys.stderr, flush=True)

    @staticmethod
    def _result(e: dict) -> str:
        m = e.get("metrics")
        if not m:
            return e.get("line", "")
        parts = [f"{label} {100 * m[key]:.2f}%" for key, label in (("best_val", "best val"), ("test", "test"),
                                                                  ("tta", "TTA")) if key in m]
        return ", ".join(parts + [f"{m['train_s']:.0f} s training"])


# ---------------------------------------------------------------------------------------------- tune
@tune_app.callback()
@_guard
def tune_cmd(
    ctx: typer.Context,
    config: Optional[Path] = ConfigOpt,
    space: Optional[Path] = typer.Option(None, "--space", help="SPACE.yaml: config keys → distributions."),
    trials: int = typer.Option(20, "--trials", "-n", help="Trials in the study (all workers together)."),
    workers: Optional[int] = WorkersOpt,
    study: Optional[str] = typer.Option(None, "--study", "--name", help="Study and folder name (default: from "
                                        "the config and space, so the same command resumes)."),
    storage: Optional[str] = StorageOpt,
    pruner: str = typer.Option("median", "--pruner", help="median, percentile, hyperband or none."),
    startup_trials: int = typer.Option(5, "--startup-trials", help="Trials that finish before the pruner "
                                       "judges and TPE models (random until then)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="The sampler's seed (per worker: seed + index)."),
    at_epoch: Optional[int] = typer.Option(None, "--at-epoch", help="Optimise val accuracy at this epoch of the "
                                           "configured schedule (not the best over the run); trials stop there."),
    set_: Optional[list[str]] = SetOpt,
    data_root: Optional[str] = DataRootOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the trials as JSON at the end."),
):
    """Search with Optuna: `cnnkit tune --config configs/lenet.yaml --space space.yaml --trials 20`."""
    config = _need_config(ctx, config, "tune")
    if config is None:
        return
    if space is None:
        from cnnkit.errors import ConfigError

        raise ConfigError("--space is required: a YAML file of config keys → distributions, e.g. "
                          "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}")
    from cnnkit.experiments.tune import prepare, run_tune

    job, plan = prepare(config, space, list(set_ or []), trials, study, storage, pruner, startup_trials, seed,
                        data_root, workers, at_epoch)
    result = run_tune(job, plan, _Progress())
    if as_json:
        return _print_json(result.to_dict())
    render_tune(result)


@tune_app.command("show")
@_guard
def tune_show_cmd(
    folder: Path = typer.Argument(..., help="A search's folder, e.g. runs/NAME."),
    storage: Optional[str] = typer.Option(None, "--storage", help="The storage URL, if it had a password."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """List a search's trials (number, state, params, value) and its best one."""
    from cnnkit.experiments.tune import show

    result = show(folder, storage)
    if as_json:
        return _print_json(result.to_dict())
    render_tune(result)


def render_tune(result) -> None:
    keys = list(result.space or {}) or sorted({k for r in result.trials for k in r["params"]})
    at = (result.plan or {}).get("at_epoch")
    what = f"val acc at epoch {at}, where each trial stopped" if at else "best val acc"
    done = sum(r["state"] in ("complete", "pruned", "fail") for r in result.trials)
    table = Table(title=f"search {result.study}: {done} of {result.planned} trials finished (value: {what}, %)")
    short = [k.rpartition(".")[2] for k in keys]
    headers = [h if short.count(h) == 1 else k for h, k in zip(short, keys, strict=True)]
    for col in ("trial", "state", *headers, "value", "epochs", "note"):
        table.add_column(col, justify="left" if col in ("state", "note") else "right", overflow="fold")
    best = result.best["number"] if result.best else None
    for r in result.trials:
        params = [_param(r["params"].get(k)) for k in keys]
        value = "" if r["value"] is None else f"{100 * r['value']:.2f}"
        table.add_row(("* " if r["number"] == best else "") + str(r["number"]), r["state"], *params, value,
                      str(r["epochs"]), r["reason"] or "")
    console.print(table)
    if result.best is None:
        print("no trial has finished yet")
        return
    b = result.best
    best_table = Table(title=f"best trial: {b['number']} ({what.split(',')[0]} {100 * b['value']:.2f}%)")
    best_table.add_column("key")
    best_table.add_column("value", justify="right")
    for k, v in b["params"].items():
        best_table.add_row(k, _param(v))
    console.print(best_table)
    print(f"its config: {b['config']} — train it with: cnnkit train --config {b['config']}")


def _param(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
