"""cnnkit sweep / cnnkit tune: the statistics, the plan, resuming after a kill, shared studies, bad input.

The sweep and search tests run the real command in subprocesses on a tiny image folder (a run takes
a second or two); the statistics are checked against values computed by hand.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import make_image_folder
from typer.testing import CliRunner

from cnnkit.cli import app
from cnnkit.errors import ConfigError
from cnnkit.experiments.aggregate import CellResult, describe, summarize, summary_csv, t_quantile
from cnnkit.experiments.grid import cells, parse_grid, parse_seeds, split_values, value_text

optuna = pytest.importorskip("optuna", reason="optuna not installed: pip install 'cnnkit[experiments]'")

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 300  # generous: this machine is shared and slow to start torch
runner = CliRunner()


# ---------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(("df", "expected"), [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105),
                                              (9, 2.262157163), (30, 2.042272456), (1000, 1.962339081)])
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-8)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-8)


def test_describe_by_hand():
    stat = describe([0.60, 0.62, 0.61])
    # mean 0.61; deviations -0.01, 0.01, 0 → s² = 0.0002 / 2 = 0.0001, s = 0.01;
    # half-width t(0.975, 2) · s / √3 = 4.302652730 · 0.01 / 1.732050808 = 0.024841377
    assert stat.n == 3 and stat.mean == pytest.approx(0.61, abs=1e-12)
    assert stat.std == pytest.approx(0.01, abs=1e-12)
    assert stat.ci95 == pytest.approx(0.024841377, abs=1e-9)
    assert (stat.low, stat.high) == (pytest.approx(0.585158623, abs=1e-9), pytest.approx(0.634841377, abs=1e-9))
    five = describe([1, 2, 3, 4, 5])  # s = √2.5, half-width 2.776445105 · √2.5 / √5 = 1.963243161
    assert five.std == pytest.approx(math.sqrt(2.5)) and five.ci95 == pytest.approx(1.963243161, abs=1e-8)
    one = describe([0.7])
    assert one.n == 1 and one.mean == 0.7 and one.std is None and one.ci95 is None
    assert describe([]) is None


def _cell(setting: str, seed: int, val: float, test: float, state: str = "complete") -> CellResult:
    return CellResult(f"{setting}-seed{seed}", {"optim.lr": setting}, seed, state,
                      metrics={"best_val": val, "test": test, "train_s": 10.0 + seed},
                      epochs=[{"epoch": 1, "val_acc": val - 0.1, "test_acc": test - 0.1},
                              {"epoch": 2, "val_acc": val, "test_acc": test}])


def test_selection_uses_validation_never_test():
    # Setting a is better on test, b on validation: b must be chosen.
    results = [_cell("a", 0, 0.50, 0.70), _cell("a", 1, 0.52, 0.72), _cell("b", 0, 0.60, 0.55),
               _cell("b", 1, 0.62, 0.57), _cell("b", 2, 0.0, 0.0, state="failed")]
    summary = summarize("s", ["optim.lr"], results, has_val=True)
    assert summary.best == "optim.lr=b"
    assert "test was not consulted" in summary.selection
    b = summary.settings[1]
    assert b.n == 2 and b.seeds == [0, 1] and b.failed[0]["cell"] == "b-seed2"
    assert b.stats["test"].mean == pytest.approx(0.56) and b.stats["best_val"].values == [0.60, 0.62]
    at2 = summarize("s", ["optim.lr"], results, has_val=True, at_epoch=1)
    assert at2.settings[0].stats["test_acc@1"].mean == pytest.approx(0.61)
    no_val = summarize("s", ["optim.lr"], results, has_val=False)
    assert no_val.best is None and no_val.selection.startswith("not selecting")
    csv_text = summary_csv(summary).splitlines()
    assert csv_text[0].startswith("optim.lr,n,best_val_mean,best_val_std,best_val_ci95_low")
    assert csv_text[2].startswith("b,2,0.61")


# ---------------------------------------------------------------------------------------- the plan


def test_grid_values_seeds_and_cells():
    assert split_values("0.1,0.2") == ["0.1", "0.2"]
    assert split_values("[32,64],[64,128]") == ["[32,64]", "[64,128]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,3,7") == [0, 3, 7]
    axes = parse_grid(["optim.lr=0.1,0.2", "train.batch_size=8,16"])
    plan = cells(axes, [0, 1])
    assert len(plan) == 8 and plan[0].name == "lr=0.1,batch_size=8-seed0"
    assert plan[1].overrides == ["optim.lr=0.1", "train.batch_size=8", "train.seed=1"]
    assert len({c.name for c in plan}) == 8
    # A key into a list of sections keeps the list's name in the label: which lr is swept.
    plan = cells(parse_grid(["optim.groups.0.lr=0.2,0.3"]), [0])
    assert [c.name for c in plan] == ["groups.0.lr=0.2-seed0", "groups.0.lr=0.3-seed0"]
    assert plan[0].overrides == ["optim.groups.0.lr=0.2", "train.seed=0"]
    for bad in (["optim.lr="], ["optim.lr=0.1,,0.2"], ["optim.lr=0.1,0.1"], ["lr"], ["train.seed=1,2"],
                ["optim.lr=1", "optim.lr=2"]):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    for bad in ("0", "x", "1,1"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)
    # A sampled float goes back through --set as the same float (YAML 1.1 reads 1e-05 as text).
    import yaml

    for value in (1e-05, 0.003, 2.5e-10, 1e20, 3):
        assert yaml.safe_load(value_text(value)) == value


# ---------------------------------------------------------------------------------------- commands


def _tiny_config(tmp_path: Path, epochs: int = 2, extra: str = "") -> Path:
    root = make_image_folder(tmp_path / "data", n_train_per_class=4, n_test_per_class=2)
    config = tmp_path / "tiny.yaml"
    config.write_text(textwrap.dedent(f"""\
        model: {{name: lenet}}
        data: {{root: {root}, val_split: 10}}
        optim: {{name: adam, lr: 0.003}}
        train: {{epochs: {epochs}, batch_size: 8, eval_batch_size: 64{extra}}}
        output: {{dir: {tmp_path / 'runs'}}}
        """))
    return config


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CNNKIT_DATA", None)
    env.update(CNNKIT_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200",
               PYTHONPATH=str(REPO))
    return env


def _start(tmp: Path, tag: str, *args: str) -> tuple[subprocess.Popen, Path]:
    out = tmp / f"{tag}.log"
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "cnnkit", *args], cwd=REPO, env=_env(tmp), stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, out


def _run_here(tmp: Path, monkeypatch, *args: str) -> tuple[int, str]:
    """The same command in this process, with the environment `_start` gives a subprocess: the
    coordinator reuses this process's torch (a new interpreter takes ~4 s to import it here); the
    workers are spawned as always. For commands no test signals."""
    for key, value in _env(tmp).items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("CNNKIT_DATA", raising=False)
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _wait(proc: subprocess.Popen, log: Path) -> int:
    try:
        return proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"cnnkit did not exit within {WAIT_S} s: {log.read_text()[-2000:]}")


def _finished(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/result.json"))


def _wait_for(predicate, what: str, log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _workers_of(pid: int) -> list[int]:
    """The worker processes a coordinator spawned (not multiprocessing's resource tracker)."""
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.slow
def test_sweep_interrupted_then_resumed_redoes_only_the_missing_cells(tmp_path: Path, monkeypatch):
    # 30 epochs: on an idle machine 3-epoch cells all finished in the 0.2 s between seeing the first
    # one and the SIGINT, leaving nothing to interrupt.
    config = _tiny_config(tmp_path, epochs=30)
    args = ["sweep", "--config", str(config), "--grid", "optim.lr=0.003,0.001", "--seeds", "2", "--workers", "2",
            "--name", "sw"]
    folder = tmp_path / "runs" / "sw"
    # 1. Ctrl-C (SIGINT to the coordinator) once a cell has finished: the others stop wherever they are.
    proc, log = _start(tmp_path, "first", *args)
    _wait_for(lambda: len(_finished(folder)) >= 1, "a finished cell", log)
    workers = _workers_of(proc.pid)
    os.kill(proc.pid, signal.SIGINT)
    assert _wait(proc, log) == 130, log.read_text()
    text = log.read_text()
    assert "error: SIGINT: stopped 2 worker(s)" in text, text
    assert len(workers) == 2 and not any(_alive(pid) for pid in workers), text  # every worker stopped with it
    done = {p.parent.name: {f.name: f.stat().st_mtime_ns for f in p.parent.iterdir()} for p in _finished(folder)}
    assert 1 <= len(done) < 4, text
    # 2. The same command again: only the missing cells run; the finished ones' files are untouched.
    code, text = _run_here(tmp_path, monkeypatch, *args)
    assert code == 0, text
    assert f"resuming: {folder} (4 runs: {len(done)} finished, {4 - len(done)} to run)" in text, text
    started = [line.split("start ")[1] for line in text.splitlines() if "] start " in line]
    assert sorted(started) == sorted({"lr=0.003-seed0", "lr=0.003-seed1", "lr=0.001-seed0", "lr=0.001-seed1"}
                                     - set(done)), text
    for cell, files in done.items():
        assert {f.name: f.stat().st_mtime_ns for f in (folder / cell).iterdir()} == files, cell
    summary = json.loads((folder / "summary.json").read_text())
    assert [s["n"] for s in summary["settings"]] == [2, 2]
    assert summary["best"] is not None and "test was not consulted" in summary["selection"]
    assert all(c["state"] == "complete" for c in summary["cells"])
    assert (folder / "summary.csv").read_text().count("\n") == 3
    shown = runner.invoke(app, ["sweep", "show", str(folder), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["settings"] == summary["settings"]
    drawn = runner.invoke(app, ["plot", str(folder)])
    assert drawn.exit_code == 0 and (folder / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", drawn.output


def test_trials_of_a_dead_worker_are_planned_again_with_their_values_and_folder(tmp_path: Path):
    from cnnkit.experiments import study as studies

    storage = studies.open_storage(None, tmp_path)
    study, created = studies.open_study(storage, "s", {"kind": "sweep"})
    assert created
    study.enqueue_trial({"optim.lr": "0.1"}, user_attrs={"cell": "lr=0.1-seed0", "fixed": {"optim.lr": "0.1"}})
    study.enqueue_trial({"optim.lr": "0.2"}, user_attrs={"cell": "lr=0.2-seed0", "fixed": {"optim.lr": "0.2"}})
    dead = subprocess.Popen(["true"])  # a pid that has ended
    dead.wait()
    first, second = studies.claim(study, storage), studies.claim(study, storage)
    assert studies.claim(study, storage) is None  # nothing else waits, and claim never creates a trial
    first.set_user_attr("worker", {**studies.worker_identity(), "pid": dead.pid, "start": None})
    second.set_user_attr("worker", studies.worker_identity())  # this process: alive
    assert studies.reap(study, storage) == ["lr=0.1-seed0"]
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "RUNNING", "WAITING"]
    assert "interrupted" in trials[0].user_attrs and not studies.counts_toward_plan(trials[0])
    assert trials[2].user_attrs["cell"] == "lr=0.1-seed0" and trials[2].user_attrs["attempts"] == 2
    again = studies.claim(study, storage)
    assert again.number == 2 and again.suggest_categorical("optim.lr", ["0.1", "0.2"]) == "0.1"


def test_a_sweep_planned_before_a_config_key_existed_resumes(tmp_path: Path):
    """A newer cnnkit (a config key added since, with its default) resumes an older sweep; a plan whose
    config really differs is still refused."""
    from cnnkit.config import load_config
    from cnnkit.experiments import study as studies

    today = load_config(None, ["model.name=lenet"]).to_dict()
    today["output"] = {}  # as sweep.prepare plans it
    older = {**today, "train": {k: v for k, v in today["train"].items() if k != "prepare"}}
    storage = studies.open_storage(None, tmp_path)
    studies.open_study(storage, "s", {"kind": "sweep", "config": older, "seeds": [0]})
    _, created = studies.open_study(storage, "s", {"kind": "sweep", "config": today, "seeds": [0]})
    assert not created
    longer = {**today, "train": {**today["train"], "epochs": 11}}
    with pytest.raises(ConfigError, match=r"planned differently \(config differ\)"):
        studies.open_study(storage, "s", {"kind": "sweep", "config": longer, "seeds": [0]})


def _space(tmp_path: Path, text: str) -> Path:
    space = tmp_path / "space.yaml"
    space.write_text(textwrap.dedent(text))
    return space


def _check_tune_result(tmp_path: Path, name: str, trials: int, storage: str | None = None) -> dict:
    shown = runner.invoke(app, ["tune", "show", str(tmp_path / "runs" / name), "--json",
                                *(["--storage", storage] if storage else [])])
    assert shown.exit_code == 0, shown.output
    result = json.loads(shown.stdout)
    numbers = [t["number"] for t in result["trials"]]
    assert sorted(numbers) == list(range(trials))  # exactly the trials asked, none twice, no extras
    assert all(t["state"] == "complete" for t in result["trials"])
    assert len({t["cell"] for t in result["trials"]}) == trials
    assert len({json.dumps(t["params"], sort_keys=True) for t in result["trials"]}) == trials
    return result


@pytest.mark.slow
def test_two_workers_on_one_study_make_exactly_the_trials_asked(tmp_path: Path, monkeypatch):
    config = _tiny_config(tmp_path, epochs=1)
    space = _space(tmp_path, """\
        optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        train.batch_size: {type: categorical, choices: [8, 16]}
        """)
    code, text = _run_here(tmp_path, monkeypatch, "tune", "--config", str(config), "--space", str(space), "--trials",
                           "4", "--study", "shared", "--pruner", "none", "--workers", "2")
    assert code == 0, text
    assert "2 worker(s) × 1 thread(s)" in text
    result = _check_tune_result(tmp_path, "shared", 4)
    best = tmp_path / "runs" / "shared" / "best.yaml"
    from cnnkit.config import load_config

    cfg = load_config(best)
    assert cfg.optim.lr == pytest.approx(result["best"]["params"]["optim.lr"])


def test_a_trial_behind_the_median_is_pruned_and_recorded_so(tmp_path: Path, one_torch_thread):
    from cnnkit.experiments import study as studies
    from cnnkit.experiments.tune import prepare, show
    from cnnkit.experiments.workers import run_trial

    config = _tiny_config(tmp_path, epochs=3)
    space = _space(tmp_path, "optim.lr: {type: categorical, choices: [1.0e-9]}\n")
    job, plan = prepare(config, space, [], 1, "pr", None, "median", 1, 0, None, 1)
    storage = studies.open_storage(None, Path(job.folder))
    study, created = studies.open_study(storage, job.study, plan, pruner=studies.make_pruner("median", 1))
    studies.Experiment("tune", job.study, None, str(config), [], plan).write(Path(job.folder))
    # Two finished trials that reached 90% from the first epoch on: the median to beat.
    dist = {"optim.lr": optuna.distributions.CategoricalDistribution([1e-9])}
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": 1e-9}, distributions=dist, value=0.9,
                                                  intermediate_values={1: 0.9, 2: 0.9, 3: 0.9}))
    study.enqueue_trial({}, user_attrs={"fixed": {}})
    trial = studies.claim(study, storage)

    class Events(list):
        put = list.append

    events = Events()
    assert run_trial(job, study, storage, trial, events) is True
    frozen = study.trials[-1]
    assert frozen.state == optuna.trial.TrialState.PRUNED
    assert frozen.user_attrs["pruned"].startswith("pruned after epoch 1 (val ")
    assert events[-1]["state"] == "pruned"
    assert len((Path(job.folder) / "trial-0002" / "metrics.jsonl").read_text().splitlines()) == 1
    rows = show(job.folder).trials
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned"]


# ---------------------------------------------------------------------------------------- bad input


def _refused(args: list[str], tmp_path: Path, *needles: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in result.output, err
    for needle in needles:
        assert needle in err, err
    assert not (tmp_path / "runs").exists(), "something was started"


@pytest.mark.parametrize(("grid", "needles"), [
    (["optim.lrr=0.1,0.2"], ["--grid optim.lrr=0.1", "unknown key 'optim.lrr'", "did you mean 'lr'"]),
    (["optim.lr=0.1,-1"], ["--grid optim.lr=-1", "optim.lr"]),
    (["optim.name=adam,sgdd"], ["--grid optim.name=sgdd", "unknown optimiser"]),
    (["optim.lr="], ["empty value"]),
    (["model.kwargs.widths=[8,16]"], ["--grid model.kwargs.widths=[8,16]", "widths not accepted by model 'lenet'"]),
    (["optim.groups.0.lr=0.1,0.2"], ["--grid optim.groups.0.lr=0.1", "'optim.groups' has no entries"]),
])
def test_sweep_refuses_a_bad_grid_before_anything_runs(tmp_path: Path, grid, needles):
    config = _tiny_config(tmp_path)
    args = ["sweep", "--config", str(config), "--seeds", "2"]
    for g in grid:
        args += ["--grid", g]
    _refused(args, tmp_path, *needles)


@pytest.mark.parametrize(("space", "needles"), [
    ("optim.lr: {type: float, low: 0.1, high: 0.01}\n", ["low 0.1 is above high 0.01"]),
    ("optim.lr: {type: gaussian, low: 0.1, high: 0.2}\n", ["unknown distribution type 'gaussian'"]),
    ("optim.lrr: {type: float, low: 0.01, high: 0.1}\n", ["unknown key 'optim.lrr'"]),
    ("train.batch_size: {type: int, low: 0, high: 8}\n", ["train.batch_size (value 0)"]),
    ("optim.lr: {type: float, low: 0.01, high: 0.1, lgo: true}\n", ["unknown field 'lgo'"]),
])
def test_tune_refuses_a_bad_space_before_anything_runs(tmp_path: Path, space, needles):
    config = _tiny_config(tmp_path)
    _refused(["tune", "--config", str(config), "--space", str(_space(tmp_path, space))], tmp_path, *needles)


def test_unreachable_storage_and_folders_that_are_not_experiments(tmp_path: Path):
    config = _tiny_config(tmp_path)
    space = _space(tmp_path, "optim.lr: {type: float, low: 0.001, high: 0.01}\n")
    _refused(["tune", "--config", str(config), "--space", str(space), "--storage",
              "postgresql://x@127.0.0.1:1/none"], tmp_path, "--storage postgresql://x@127.0.0.1:1/none",
             "cannot open it")
    _refused(["sweep", "--config", str(config), "--seeds", "2", "--storage", "postgresql://x:secret@127.0.0.1:1/none"],
             tmp_path, "postgresql://x:***@127.0.0.1:1/none")
    result = runner.invoke(app, ["sweep", "--config", str(config), "--seeds", "2", "--storage",
                                 "postgresql://x:secret@127.0.0.1:1/none"])
    assert "secret" not in result.output
    plain = tmp_path / "plain"
    plain.mkdir()
    for command in ("sweep", "tune"):
        _refused([command, "show", str(plain)], tmp_path, f"not a {command} folder")
        _refused([command, "show", str(tmp_path / "missing")], tmp_path, "no such folder")


# ---------------------------------------------------------------------------------------- PostgreSQL


def _postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: Debian's /usr/lib/postgresql/N/bin (not on PATH), or PATH's."""
    import glob
    import shutil

    candidates = [os.environ.get("CNNKIT_PG_BIN"), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    return next((Path(c) for c in candidates if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists()),
                None)


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server in a temporary folder on a free port; its URL. Skips without the binaries."""
    import pwd
    import shutil
    import socket
    import tempfile

    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on "
                    "PATH (or CNNKIT_PG_BIN): the shared-storage test needs them")
    pytest.importorskip("psycopg2", reason="psycopg2 not installed: pip install psycopg2-binary")
    as_user, owner = [], None
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing, so the server cannot run as postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="cnnkit-pg-"))  # /tmp, which the postgres user can reach
    data = folder / "data"
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                        "--no-sync"], check=True, capture_output=True, timeout=WAIT_S)
        subprocess.run([*pg_ctl, "-l", str(folder / "log"), "-w", "-t", "120", "-o",
                        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=WAIT_S)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=WAIT_S)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_commands_share_a_study_in_postgresql(tmp_path: Path, postgres_url: str, monkeypatch):
    config = _tiny_config(tmp_path, epochs=1)
    space = _space(tmp_path, "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    args = ["tune", "--config", str(config), "--space", str(space), "--trials", "4", "--study", "pg",
            "--storage", postgres_url, "--pruner", "none", "--workers", "1"]
    # The same command twice at once, as on two machines: one study, its trials shared out. One runs
    # as a new process, the other in this one.
    proc, log = _start(tmp_path, "pg0", *args)
    code, text = _run_here(tmp_path, monkeypatch, *args)
    assert code == 0, text
    assert _wait(proc, log) == 0, log.read_text()
    assert "study.journal" not in {p.name for p in (tmp_path / "runs" / "pg").iterdir()}
    _check_tune_result(tmp_path, "pg", 4, storage=postgres_url)


def test_a_search_at_an_epoch_stops_each_trial_there_and_scores_it_then(tmp_path: Path, one_torch_thread):
    from cnnkit.experiments import study as studies
    from cnnkit.experiments.tune import prepare, show
    from cnnkit.experiments.workers import run_trial

    config = _tiny_config(tmp_path, epochs=4)
    space = _space(tmp_path, "optim.lr: {type: categorical, choices: [0.003]}\n")
    job, plan = prepare(config, space, [], 1, "at", None, "none", 1, 0, None, 1, at_epoch=2)
    # The trial runs the config as planned: editing the file afterwards changes nothing.
    config.write_text(config.read_text().replace("epochs: 4", "epochs: 1"))
    storage = studies.open_storage(None, Path(job.folder))
    study, _ = studies.open_study(storage, job.study, plan)
    studies.Experiment("tune", job.study, None, str(config), [], plan).write(Path(job.folder))
    study.enqueue_trial({}, user_attrs={"fixed": {}})

    class Events(list):
        put = list.append

    assert run_trial(job, study, storage, studies.claim(study, storage), Events()) is True
    run = Path(job.folder) / "trial-0000"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # of 4 planned: the schedule is the 4-epoch one
    assert "epochs: 4" in (run / "config.yaml").read_text()
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == rows[1]["val_acc"]
    result = show(job.folder, write_best=True)
    assert result.trials[0]["value"] == rows[1]["val_acc"] and result.to_dict()["at_epoch"] == 2
    assert "epochs: 4" in (Path(job.folder) / "best.yaml").read_text()


def test_workers_racing_to_create_the_tables_both_open_the_storage(tmp_path: Path, monkeypatch):
    """Two commands started together on an empty database both run CREATE TABLE; the loser's error
    says the table "already exists" (seen with PostgreSQL in CI-like runs). It must try again and
    join the study, not stop with 'cannot open it'."""
    import optuna

    from cnnkit.experiments.study import open_storage

    real = optuna.storages.RDBStorage
    calls = []

    class Racing(real):  # a subclass: optuna.storages.get_storage checks isinstance against this name
        def __init__(self, url, **kwargs):
            calls.append(url)
            if len(calls) == 1:
                raise RuntimeError('(psycopg2.errors.DuplicateTable) relation "studies" already exists')
            super().__init__(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", tmp_path)
    assert len(calls) == 2
    assert storage.get_all_studies() == []


def test_a_storage_that_keeps_failing_is_still_one_line(tmp_path: Path, monkeypatch):
    import optuna

    from cnnkit.errors import ConfigError
    from cnnkit.experiments.study import open_storage

    def broken(url, **kwargs):
        raise RuntimeError("password authentication failed")

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(ConfigError, match="cannot open it .*password authentication failed"):
        open_storage("sqlite:///x.db", tmp_path)


@pytest.mark.parametrize("space", sorted((REPO / "configs" / "spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_search_spaces_are_valid_for_their_config(space: Path):
    from cnnkit.experiments.space import read_space, validate_space

    parsed, _ = read_space(space)
    validate_space(parsed, REPO / "configs" / f"{space.stem}.yaml", [], str(space))
    assert parsed
