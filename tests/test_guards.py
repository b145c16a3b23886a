"""Guards on the numbers users act on (issue 30): each test here fails when its behaviour is broken.

- `cnnkit tune`: a trial's value, and every value the pruner sees, is validation accuracy from the
  trial's own metrics.jsonl, never test accuracy (the runs here measure test every epoch too, with
  test accuracies that differ from the validation ones, so a swap shows).
- Grad-CAM: the coarse map is ReLU(Σₖ αₖ Aₖ), αₖ the spatial mean of ∂y/∂Aₖ, against numbers
  worked out by hand, on maps where the sum goes negative and gradients that vary across the map.
- Resume: a model with dropout, stopped mid-run and resumed, ends bit-identical to the unbroken run.
- Three things a new user met: `cnnkit look` naming two pictures of the same file name apart, and
  torch's "No CUDA runtime is found" note kept out of a CPU run's output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from torch import nn

from cnnkit.errors import Interrupted

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------- tune's objective


class _Events(list):
    put = list.append


def _tune_setup(tmp_path: Path, at_epoch: int | None = None):
    """A one-trial search on a tiny image folder that also measures test accuracy every epoch.

    17 validation images against 20 test ones: the two accuracies differ at every epoch (checked),
    so a value taken from the test set cannot pass for the validation one."""
    from cnnkit.experiments import study as studies
    from cnnkit.experiments.tune import prepare

    root = make_image_folder(tmp_path / "data", n_train_per_class=4, n_test_per_class=2)
    config = tmp_path / "tiny.yaml"
    config.write_text(textwrap.dedent(f"""\
        model: {{name: lenet}}
        data: {{root: {root}, val_split: 17}}
        optim: {{name: adam, lr: 0.003}}
        train: {{epochs: 4, batch_size: 8, eval_batch_size: 64, threads: 1, device: cpu, test_every_epoch: true}}
        output: {{dir: {tmp_path / 'runs'}}}
        """))
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {type: categorical, choices: [0.003]}\n")
    job, plan = prepare(config, space, [], 1, "guard", None, "median", 1, 0, None, 1, at_epoch=at_epoch)
    storage = studies.open_storage(None, Path(job.folder))
    study, _ = studies.open_study(storage, job.study, plan, pruner=studies.make_pruner("median", 1))
    studies.Experiment("tune", job.study, None, str(config), [], plan).write(Path(job.folder))
    return job, study, storage


def _run_one_trial(job, study, storage):
    """Plan one trial, run it in this process as a worker would; (the frozen trial, its metrics rows)."""
    from cnnkit.experiments import study as studies
    from cnnkit.experiments.workers import run_trial
    from cnnkit.reports.runs import read_metrics

    study.enqueue_trial({}, user_attrs={"fixed": {}})
    trial = studies.claim(study, storage)
    assert run_trial(job, study, storage, trial, _Events()) is True
    frozen = study.trials[trial.number]
    return frozen, read_metrics(Path(job.folder) / f"trial-{trial.number:04d}" / "metrics.jsonl")


def _val_by_epoch(rows: list[dict]) -> dict[int, float]:
    return {r["epoch"]: r["val_acc"] for r in rows}


def _test_differs_from_val(rows: list[dict]) -> None:
    """The precondition that makes these tests able to fail: test accuracy is measured and differs."""
    assert all("test_acc" in r and r["test_acc"] != r["val_acc"] for r in rows), rows


def test_a_trials_value_and_the_pruners_values_are_validation_accuracy_never_test(tmp_path):
    optuna = pytest.importorskip("optuna", reason="optuna not installed: pip install 'cnnkit[experiments]'")
    from cnnkit.experiments.tune import show

    job, study, storage = _tune_setup(tmp_path)
    trial, rows = _run_one_trial(job, study, storage)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    _test_differs_from_val(rows)
    vals = [r["val_acc"] for r in rows]
    best_val = max(vals)
    final_test = rows[-1]["final"]["test_acc"]  # best.pt on the test set: the number train prints last
    assert best_val not in (final_test, max(r["test_acc"] for r in rows), vals[-1]), rows  # each swap would show
    # The objective: the best validation accuracy of the trial's own epochs.
    assert trial.value == best_val
    # What the pruner judged the trial on: each epoch's validation accuracy, at that epoch.
    assert trial.intermediate_values == _val_by_epoch(rows)
    shown = show(job.folder)
    assert shown.trials[0]["value"] == best_val and shown.best["value"] == best_val
    assert shown.trials[0]["metrics"]["best_val"] == best_val and shown.trials[0]["metrics"]["test"] == final_test

    # A trial behind the median (two finished trials at 99% from the first epoch on) is pruned after
    # its first epoch, on that epoch's validation accuracy.
    dist = {"optim.lr": optuna.distributions.CategoricalDistribution([0.003])}
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": 0.003}, distributions=dist, value=0.99,
                                                  intermediate_values={e: 0.99 for e in range(1, 5)}))
    pruned, rows = _run_one_trial(job, study, storage)
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert [r["epoch"] for r in rows] == [1]
    _test_differs_from_val(rows)
    assert pruned.intermediate_values == _val_by_epoch(rows)
    assert f"(val {100 * rows[0]['val_acc']:.2f}%" in pruned.user_attrs["pruned"], pruned.user_attrs


def test_a_search_at_an_epoch_scores_each_trial_on_that_epochs_validation_accuracy(tmp_path):
    optuna = pytest.importorskip("optuna", reason="optuna not installed: pip install 'cnnkit[experiments]'")
    from cnnkit.experiments.tune import show

    job, study, storage = _tune_setup(tmp_path, at_epoch=2)
    trial, rows = _run_one_trial(job, study, storage)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert [r["epoch"] for r in rows] == [1, 2]  # stopped there
    _test_differs_from_val(rows)
    assert trial.value == rows[1]["val_acc"]
    assert trial.intermediate_values == _val_by_epoch(rows)
    assert trial.user_attrs["result"] == {"val_acc@2": rows[1]["val_acc"], "train_s": pytest.approx(
        sum(r["epoch_s"] for r in rows))}
    assert show(job.folder).trials[0]["value"] == rows[1]["val_acc"]


# ---------------------------------------------------------------------------------------- Grad-CAM's formula


# Two channels of 2×3 maps, chosen so that the weighted sum goes negative in some cells.
MAPS = torch.tensor([[[1.0, 2.0, 0.0], [-1.0, 3.0, 1.0]],
                     [[2.0, -1.0, 1.0], [0.0, 1.0, -2.0]]])  # A (K=2, h=2, w=3)
# ∂y_c/∂A for classes 1 and 2 (a linear head: these are its weights), varying across each map.
GRAD_1 = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]],  # mean 2/3, max 2
                       [[-3.0, 0.0, 0.0], [0.0, 0.0, -3.0]]])  # mean −1, max 0
GRAD_2 = torch.tensor([[[0.0, 0.0, 0.0], [-3.0, 0.0, 0.0]],  # mean −1/2, max 0
                       [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])  # mean 1
# By hand: α = (2/3, −1) gives (2/3)·A₀ − A₁ = [[−4/3, 7/3, −1], [−2/3, 1, 8/3]]; ReLU keeps the positive cells.
EXPECTED_1 = torch.tensor([[0.0, 7 / 3, 0.0], [0.0, 1.0, 8 / 3]])
# α = (−1/2, 1): −A₀/2 + A₁ = [[3/2, −2, 1], [1/2, −1/2, −5/2]].
EXPECTED_2 = torch.tensor([[1.5, 0.0, 1.0], [0.5, 0.0, 0.0]])


class _Explained(nn.Module):
    """input → `maps` (a 1×1 conv: A = x + bias, so A is not the layer's input) → a linear head."""

    def __init__(self):
        super().__init__()
        self.maps = nn.Conv2d(2, 2, 1)
        self.head = nn.Linear(12, 3, bias=False)
        with torch.no_grad():
            self.maps.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.maps.bias.copy_(torch.tensor([1.0, -1.0]))
            self.head.weight.copy_(torch.stack([torch.ones(2, 2, 3), GRAD_1, GRAD_2]).flatten(1))

    def forward(self, x):  # (N, 2, 2, 3)
        return self.head(self.maps(x).flatten(1))  # (N, 3)


def test_gradcam_coarse_map_is_relu_of_the_gradient_mean_weighted_maps():
    from cnnkit.inspection.gradcam import grad_cam

    model = _Explained().eval()
    inputs = (MAPS - torch.tensor([1.0, -1.0]).view(2, 1, 1)).expand(2, -1, -1, -1)  # both images give A = MAPS
    assert torch.equal(model.maps(inputs)[0], MAPS)
    # The same maps explained for two classes: each image its own channel weights.
    cam = grad_cam(model, inputs, "maps", target=torch.tensor([1, 2]))
    assert cam.layer_size == (2, 3) and cam.coarse.shape == (2, 2, 3)
    torch.testing.assert_close(cam.coarse[0], EXPECTED_1, rtol=0, atol=1e-6)
    torch.testing.assert_close(cam.coarse[1], EXPECTED_2, rtol=0, atol=1e-6)
    # The map at the input's size is the coarse one scaled to a peak of 1 (here 2×3 is the input's size too).
    torch.testing.assert_close(cam.maps[0], EXPECTED_1 / (8 / 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(cam.logits, model(inputs).detach())
    # By default the predicted class is explained.
    default = grad_cam(model, inputs[:1], "maps")
    assert default.target.tolist() == [int(model(inputs[:1]).argmax())]


# ---------------------------------------------------------------------------------------- resume with dropout


class _DropNet(nn.Module):
    """A small classifier with dropout (no built-in model has any): each training step draws masks
    from torch's global generator, so a resumed run matches only if that generator is restored."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, stride=2)  # (4, 15, 15)
        self.drop2d = nn.Dropout2d(0.25)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 15 * 15, num_classes)

    def forward(self, x):  # (B, C, 32, 32)
        x = self.drop2d(torch.relu(self.conv(x)))  # (B, 4, 15, 15)
        return self.fc(self.drop(x.flatten(1)))  # (B, num_classes)


def test_a_run_with_dropout_stopped_and_resumed_ends_bit_identical(tmp_path, monkeypatch):
    """Every generator a run draws from, resumed: torch's global one (dropout; saved in last.pt and
    restored), and the ones made afresh from (seed, epoch) each epoch: the order of the batches,
    the crops, random flips and brightness / contrast jitter (so a resumed epoch draws the same)."""
    from cnnkit.config import load_config
    from cnnkit.models import MODELS, ModelEntry
    from cnnkit.training.checkpoint import load_checkpoint
    from cnnkit.training.fit import fit, resume_config

    monkeypatch.setitem(MODELS, "dropnet", ModelEntry(_DropNet, "classify", "a test model with dropout"))
    net = _DropNet().train()
    x = torch.randn(4, 3, 32, 32)
    assert not torch.equal(net(x), net(x))  # dropout is live in training: each pass draws new masks
    root = make_image_folder(tmp_path / "data", n_train_per_class=4, n_test_per_class=2)

    def config():
        return load_config(None, [
            "model.name=dropnet", f"data.root={root}", "data.val_split=10", "data.augment=true",
            "data.crop_padding=2", "data.hflip=true", "data.flip_mode=random", "data.brightness=0.2",
            "data.contrast=0.2", "train.epochs=3", "train.batch_size=8", "train.eval_batch_size=64",
            "optim.name=adam", "optim.lr=0.003", "train.threads=1", "train.device=cpu", "train.deterministic=true",
            f"output.dir={tmp_path / 'runs'}"])

    full = fit(config(), run_name="full")
    full_last = load_checkpoint(full.run_dir / "last.pt")

    def stop_in_epoch_3(event):  # a Ctrl-C after the third epoch's first step: its remaining steps are dropped
        if event["kind"] == "step" and event["epoch"] == 3 and event["step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        fit(config(), run_name="cut", report=stop_in_epoch_3)
    last = tmp_path / "runs" / "cut" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 2
    torch.manual_seed(12345)  # whatever this process drew since: the resume must not depend on it
    resumed_config, payload = resume_config(last)
    resumed = load_checkpoint(fit(resumed_config, resume=last, resume_payload=payload).run_dir / "last.pt")

    assert resumed["epoch"] == full_last["epoch"] == 3
    assert resumed["model"].keys() == full_last["model"].keys()
    for key, value in full_last["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert torch.equal(resumed["rng"]["torch"], full_last["rng"]["torch"])  # the generator ends where it did
    keep = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")
    assert [{k: r[k] for k in keep} for r in resumed["metrics"]] == [{k: r[k] for k in keep}
                                                                     for r in full_last["metrics"]]


# ---------------------------------------------------------------------------------------- look's picture names


def test_picture_names_are_the_shortest_tail_that_tells_them_apart():
    from cnnkit.inspection.look import picture_names

    assert picture_names(["test/cat/0001.jpg", "test/ship/0001.jpg", "test/cat/0002.jpg"]) == [
        "cat/0001.jpg", "ship/0001.jpg", "0002.jpg"]
    assert picture_names(["a/x/p.png", "b/x/p.png"]) == ["a/x/p.png", "b/x/p.png"]
    assert picture_names(["/abs/p.png"]) == ["p.png"]
    assert picture_names(["p.png", "p.png"]) == ["p.png", "p.png"]  # one file given twice: nothing to tell apart
    assert picture_names([Path("cat/0001.jpg"), Path("/data/test/ship/0001.jpg")]) == ["cat/0001.jpg",
                                                                                       "ship/0001.jpg"]


def test_look_names_two_pictures_of_the_same_file_name_by_their_folders(tmp_path, monkeypatch):
    """test/cat/0001.png and test/ship/0001.png: captions and file names say cat/0001.png and ship/0001.png."""
    import numpy as np
    from PIL import Image

    from cnnkit.build import model_from_config
    from cnnkit.config import load_config
    from cnnkit.data import CIFAR10_CLASSES
    from cnnkit.inspection import draw
    from cnnkit.inspection.look import look
    from cnnkit.tasks import task_for
    from cnnkit.training.checkpoint import save_checkpoint

    config = load_config(None, ["model.name=lenet", "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]"])
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.pt", {"model": model_from_config(config, 10).state_dict(),
                                               "config": config.to_dict(), "classes": CIFAR10_CLASSES,
                                               "epoch": 0, "task": task_for(config).name})
    rng = np.random.default_rng(0)
    paths = []
    for folder in ("cat", "ship"):
        (tmp_path / "test" / folder).mkdir(parents=True)
        paths.append(tmp_path / "test" / folder / "0001.png")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8), "RGB").save(paths[-1])
    seen: dict[str, list[str]] = {"titles": [], "labels": []}

    def activations(image, layers, out_path, title):  # recorded, not drawn: the names are the point
        seen["titles"].append(title)
        return Path(out_path)

    def gradcam(panels, out_path, title):
        seen["labels"] += [panel.label for panel in panels]
        return Path(out_path)

    monkeypatch.setattr(draw, "write_activations", activations)
    monkeypatch.setattr(draw, "write_gradcam", gradcam)
    monkeypatch.setattr(draw, "write_filters", lambda weight, layer, out_path, title: Path(out_path))
    report = look(ckpt, paths, out_dir=tmp_path / "look")
    assert seen["labels"] == ["cat/0001.png", "ship/0001.png"]
    assert [t.split("\n")[0].rsplit(" sees in ", 1)[1] for t in seen["titles"]] == ["cat/0001.png", "ship/0001.png"]
    assert sorted(p.name for p in report.written) == ["activations-01-cat_0001.png", "activations-02-ship_0001.png",
                                                      "filters.png", "gradcam.png"]
    assert [p.path for p in report.pictures] == [str(p) for p in paths]  # the JSON keeps the paths as given


# ---------------------------------------------------------------------------------------- compile's CUDA note


def test_a_cpu_run_keeps_torchs_no_cuda_runtime_note_out_of_its_output(tmp_path):
    """With CUDA_HOME set (or nvcc on the PATH) and no GPU, importing torch.utils.cpp_extension, as
    torch.compile's CPU backend does mid-run, logs "No CUDA runtime is found, using CUDA_HOME=...".
    Once cnnkit has set up a CPU run, that note is dropped (and nothing else)."""
    script = textwrap.dedent("""\
        import sys
        import torch.utils.cpp_extension as ext  # imported before cnnkit chose anything: torch's note shows
        sys.stderr.write("=== cnnkit sets up a CPU run\\n")
        sys.stderr.flush()
        from cnnkit.device import setup_runtime
        setup_runtime("cpu", threads=1)
        ext._find_cuda_home()  # what the import runs, once more
        import logging
        logging.getLogger("torch.utils.cpp_extension").warning("another warning still shows")
        """)
    env = {**os.environ, "CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    env.pop("CUDA_PATH", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    before, marker, after = done.stderr.partition("=== cnnkit sets up a CPU run")
    assert marker, done.stderr
    if "No CUDA runtime is found" not in before:
        pytest.skip("this torch build has no CUDA: it never logs the note")
    assert "No CUDA runtime is found" not in after, after
    assert "another warning still shows" in after, after
