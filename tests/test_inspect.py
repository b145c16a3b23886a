"""Looking at results: curves, the eval report and its pictures, predict, the runs table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image
from typer.testing import CliRunner

from cnnkit.cli import app
from cnnkit.config import config_from_dict, load_config
from cnnkit.data import Split, prepare_data, to_grayscale
from cnnkit.errors import CheckpointError, RunError
from cnnkit.evaluation.evaluate import _shift, classification_report, evaluate, most_confused
from cnnkit.evaluation.predict import load_image, predict_images
from cnnkit.reports.curves import write_curves
from cnnkit.reports.runs import list_runs, read_metrics
from cnnkit.tasks import TASKS
from cnnkit.training.checkpoint import load_checkpoint, model_from_checkpoint
from cnnkit.training.fit import fit

runner = CliRunner()


def tiny_config(out: Path, root: Path, *extra: str, epochs: int = 2):
    return load_config(None, [
        "model.name=lenet", f"data.root={root}", "data.val_split=20", f"train.epochs={epochs}",
        "train.batch_size=32", "train.eval_batch_size=64", "optim.lr=0.003", f"output.dir={out}",
        "train.threads=1", "train.deterministic=true", "train.test_every_epoch=true", *extra,
    ])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Two tiny lenet runs (2 epochs and 1 epoch) on generated CIFAR look-alikes, made once per module."""
    base = tmp_path_factory.mktemp("inspect")
    root = make_image_folder(base / "tiny", n_train_per_class=20, n_test_per_class=10)
    runs = base / "runs"
    # Module scope runs before the per-test environment fixture: isolate the data env here too.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNKIT_CACHE", str(base / "cache"))
        mp.delenv("CNNKIT_DATA", raising=False)
        fit(tiny_config(runs, root, epochs=2), run_name="a")
        fit(tiny_config(runs, root, "optim.lr=0.001", epochs=1), run_name="b")
    return {"root": root, "runs": runs, "a": runs / "a", "b": runs / "b"}


def assert_png(path: Path, min_side: int = 200) -> None:
    assert path.is_file(), path
    with Image.open(path) as im:
        im.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > min_side and im.size[1] > min_side, im.size


# ---------------------------------------------------------------------------------------- curves


def test_plot_one_and_two_runs(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["plot", str(trained["a"])])
    assert result.exit_code == 0, result.output
    assert_png(trained["a"] / "curves.png")
    # Several runs: overlaid, written beside them so no run's own curves.png is replaced.
    result = runner.invoke(app, ["plot", str(trained["a"]), str(trained["b"] / "best.pt")])
    assert result.exit_code == 0, result.output
    assert_png(trained["runs"] / "compare-curves.png")
    assert str(trained["runs"] / "compare-curves.png") in result.output
    result = runner.invoke(app, ["plot", str(trained["a"]), str(trained["b"]), "--out", "both.png"])
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "both.png")


def test_plot_refuses_a_folder_without_metrics(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["plot", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "metrics.jsonl" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(RunError, match="no such run folder"):
        write_curves([tmp_path / "nope"], tmp_path / "x.png")


# ---------------------------------------------------------------------------------------- eval


def test_eval_report_tta_and_confusion_png(trained):
    best = trained["a"] / "best.pt"
    result = runner.invoke(app, ["eval", "--checkpoint", str(best), "--tta", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"accuracy", "loss", "n", "per_class", "confusion"} <= set(data)
    assert {"report", "most_confused", "tta_accuracy", "tta_views", "plots"} <= set(data)
    assert data["tta_views"] == ["original", "flip"] and 0 <= data["tta_accuracy"] <= 1
    assert set(data["report"]["per_class"]) == set(data["per_class"])
    assert data["report"]["macro_avg"]["support"] == data["n"] == 100
    assert data["report"]["accuracy"] == pytest.approx(data["accuracy"])
    assert_png(trained["a"] / "confusion.png", min_side=500)

    result = runner.invoke(app, ["eval", "--checkpoint", str(best), "--no-plots", "--tta-shift"])
    assert result.exit_code == 0, result.output
    assert "macro avg" in result.output and "precision" in result.output
    assert "10 views" in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"test accuracy {data['accuracy']:.4f}, loss ") and "— Acc: " in last


def test_tta_without_views_equals_plain_eval(trained):
    from cnnkit.evaluation.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(trained["a"] / "best.pt", tta=True)
    assert report.tta.plain_accuracy == pytest.approx(report.result.accuracy)
    assert report.plots == []  # the library draws only when asked


def test_classification_report_and_most_confused_by_hand():
    # rows: true class, columns: predicted
    confusion = torch.tensor([[5, 3, 0], [1, 4, 0], [2, 0, 0]])
    classes = ["a", "b", "c"]
    report = classification_report(confusion, classes)
    a, b, c = (report["per_class"][k] for k in classes)
    assert a["precision"] == pytest.approx(5 / 8) and a["recall"] == pytest.approx(5 / 8)
    assert b["precision"] == pytest.approx(4 / 7) and b["recall"] == pytest.approx(4 / 5)
    assert b["f1"] == pytest.approx(2 * (4 / 7) * (4 / 5) / (4 / 7 + 4 / 5))
    assert c == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}  # never predicted
    assert report["macro_avg"]["recall"] == pytest.approx((5 / 8 + 4 / 5 + 0) / 3)
    assert report["weighted_avg"]["recall"] == pytest.approx(report["accuracy"]) == pytest.approx(9 / 15)
    pairs = most_confused(confusion, classes, top=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("a", "b", 3), ("c", "a", 2)]
    assert pairs[1]["fraction"] == pytest.approx(1.0)


def test_shift_moves_pixels_and_zero_fills():
    x = torch.arange(1, 10, dtype=torch.uint8).reshape(1, 1, 3, 3)  # (1, 1, 3, 3)
    right = _shift(x, 0, 1)
    assert right[0, 0].tolist() == [[0, 1, 2], [0, 4, 5], [0, 7, 8]]
    up = _shift(x, -1, 0)
    assert up[0, 0].tolist() == [[4, 5, 6], [7, 8, 9], [0, 0, 0]]


def test_edge_eval_writes_edges_png(tmp_path):
    result = fit(load_config(Path("configs/edge.yaml"), [f"output.dir={tmp_path}"]), run_name="edge")
    out = runner.invoke(app, ["eval", "--checkpoint", str(result.run_dir / "best.pt")])
    assert out.exit_code == 0, out.output
    assert "edges.png" in out.output and "MSE" in out.output
    assert_png(result.run_dir / "edges.png")
    assert not (result.run_dir / "confusion.png").exists()
    out = runner.invoke(app, ["eval", "--checkpoint", str(result.run_dir / "best.pt"), "--tta"])
    assert out.exit_code == 2 and "--tta" in out.stderr
    with pytest.raises(CheckpointError, match="does not classify"):
        predict_images(result.run_dir / "best.pt", [tmp_path])


# ---------------------------------------------------------------------------------------- predict


def eval_predictions(checkpoint: Path, images: torch.Tensor) -> list[int]:
    """What `cnnkit eval`'s code path predicts for each uint8 image (C, H, W), one at a time.

    Each image is its own one-image test set; the single 1 in its confusion row is its prediction.
    """
    loaded = model_from_checkpoint(checkpoint, "cpu")
    config = loaded.config
    predicted = []
    for image in images:
        split = Split(image[None].contiguous(), torch.zeros(1, dtype=torch.int64))
        result = evaluate(loaded.model, split, task=TASKS["classify"], runtime=loaded.runtime, batch_size=1,
                          mean=config.data.mean, std=config.data.std, num_classes=len(loaded.classes))
        predicted.append(int(result.confusion[0].argmax()))
    return predicted


def find_in_split(split: Split, image: torch.Tensor) -> int:
    """Index of `image` (C, H, W) uint8 in the split: the tensor eval uses for that file."""
    hits = (split.images == image[None]).flatten(1).all(dim=1).nonzero().flatten()
    assert len(hits) >= 1
    return int(hits[0])


def check_predict_matches_eval(checkpoint: Path, files: list[Path], data_root: Path | None = None) -> None:
    payload = load_checkpoint(checkpoint)
    config = config_from_dict(payload["config"], "test")
    config.data.subset = None  # look the files up in the whole test set, whatever the run trained on
    test = prepare_data(config, str(data_root) if data_root else None).test
    indices = []
    for f in files:
        pixels = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)  # (3, H, W)
        indices.append(find_in_split(test, pixels))
    expected = eval_predictions(checkpoint, test.images[indices])  # (10,) via eval's own evaluate()
    report = predict_images(checkpoint, files, top_k=3, device="cpu")
    got = [payload["classes"].index(p.top[0][0]) for p in report.predictions]
    assert got == expected
    for p in report.predictions:
        probs = [prob for _, prob in p.top]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_predict_matches_eval_on_ten_test_images(trained):
    test_dir = trained["root"] / "test"
    classes = sorted(p.name for p in test_dir.iterdir())
    files = [sorted((test_dir / cls).glob("*.png"))[i % 3] for i, cls in enumerate(classes)]
    assert len(files) == 10
    check_predict_matches_eval(trained["a"] / "best.pt", files)
    # And through the command line, as JSON.
    result = runner.invoke(app, ["predict", "--checkpoint", str(trained["a"] / "best.pt"), "--json", "--top-k", "2",
                                 *map(str, files)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["predicted"] == 10 and data["errors"] == 0
    assert all(len(p["top"]) == 2 and p["size"] == [32, 32] for p in data["predictions"])


def test_predict_real_cifar10_jpegs(tmp_path, real_data_root, monkeypatch, real_cache_dir):
    monkeypatch.setenv("CNNKIT_CACHE", str(real_cache_dir))
    config = load_config(Path("configs/lenet.yaml"), [f"output.dir={tmp_path}", "train.epochs=1",
                                                      "data.subset=2000", "data.val_split=0"])
    result = fit(config, data_root=str(real_data_root), run_name="real")
    test_dir = real_data_root / "test"
    classes = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
    files = [sorted((test_dir / c).iterdir())[0] for c in classes][:10]
    check_predict_matches_eval(result.run_dir / "best.pt", files, real_data_root)


def make_odd_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (61, 45), dtype=np.uint8), "L").save(folder / "b_gray_odd.png")
    Image.fromarray(rng.integers(0, 256, (20, 90, 4), dtype=np.uint8), "RGBA").save(folder / "c_rgba.png")
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), "RGB").save(folder / "a_big.jpg")
    (folder / "d_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not a picture")


def test_predict_folder_odd_and_unreadable_files(trained, tmp_path):
    make_odd_images(tmp_path / "pics")
    best = str(trained["a"] / "best.pt")
    result = runner.invoke(app, ["predict", "--checkpoint", best, str(tmp_path / "pics"),
                                 str(tmp_path / "missing.jpg"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    names = [Path(p["path"]).name for p in data["predictions"]]
    assert names == ["a_big.jpg", "b_gray_odd.png", "c_rgba.png", "d_broken.png", "missing.jpg"]  # sorted, in order
    ok = {Path(p["path"]).name: p for p in data["predictions"] if "top" in p}
    assert set(ok) == {"a_big.jpg", "b_gray_odd.png", "c_rgba.png"}
    assert ok["b_gray_odd.png"]["size"] == [45, 61] and ok["b_gray_odd.png"]["mode"] == "L"
    errors = {Path(p["path"]).name: p["error"] for p in data["predictions"] if "error" in p}
    assert errors == {"d_broken.png": "not an image Pillow can read", "missing.jpg": "no such file"}
    assert [Path(s).name for s in data["skipped"]] == ["notes.txt"]
    # The table: one line per file, the bad one included, then a summary.
    result = runner.invoke(app, ["predict", "--checkpoint", best, str(tmp_path / "pics")])
    assert result.exit_code == 0, result.output
    assert "error: not an image Pillow can read" in result.output
    assert "predicted 3 of 4 image(s); 1 could not be read" in result.output


def test_predict_nothing_readable_exits_2(trained, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    result = runner.invoke(app, ["predict", "--checkpoint", str(trained["a"] / "best.pt"), str(tmp_path / "bad.jpg")])
    assert result.exit_code == 2
    assert "bad.jpg" in result.output and "error:" in result.stderr


def test_load_image_converts_like_the_training_data(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "x.png")
    as_rgb, size, mode = load_image(tmp_path / "x.png", (3, 32, 32))
    assert (size, mode) == ((32, 32), "RGB")
    assert torch.equal(as_rgb, torch.from_numpy(rgb).permute(2, 0, 1))  # no resize: exact pixels
    # A grayscale model sees the luma the grayscale training data had (data.grayscale).
    as_gray, _, _ = load_image(tmp_path / "x.png", (1, 32, 32))
    assert torch.equal(as_gray, to_grayscale(as_rgb[None])[0])
    # Odd sizes and modes end up as the model's input shape.
    make_odd_images(tmp_path / "odd")
    for name in ("a_big.jpg", "b_gray_odd.png", "c_rgba.png"):
        image, _, _ = load_image(tmp_path / "odd" / name, (3, 32, 32))
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    sixteen = (rng.random((10, 12)) * 65535).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    image, _, mode = load_image(tmp_path / "deep.png", (1, 32, 32))
    assert image.shape == (1, 32, 32) and mode.startswith("I")


# ---------------------------------------------------------------------------------------- runs


def test_runs_table_sort_and_json(trained, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained["runs"], runs, ignore=shutil.ignore_patterns("*.png"))
    # A torn last line (a copy taken mid-write) costs that line only.
    with open(runs / "a" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')
    assert [r["epoch"] for r in read_metrics(runs / "a" / "metrics.jsonl")] == [1, 2]
    # A run killed before its first epoch: config only, listed as incomplete; a stray folder is skipped.
    (runs / "killed").mkdir()
    shutil.copy(runs / "a" / "config.yaml", runs / "killed" / "config.yaml")
    (runs / "stray").mkdir()

    result = runner.invoke(app, ["runs", str(runs), "--json", "--sort", "name"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == ["a", "b", "killed"]
    a, b, killed = rows
    assert a["model"] == "lenet" and a["epochs"] == 2 and a["complete"] and b["epochs"] == 1
    history = read_metrics(trained["a"] / "metrics.jsonl")
    assert a["best_val"] == max(r["val_acc"] for r in history)
    # The run's final test figure is its final report (best.pt, fp32), recorded in the last row.
    assert a["final_test"] == a["test_at_best"] == history[-1]["final"]["test_acc"]
    assert a["tta_test"] is None  # train.tta: none
    assert a["wall_s"] == pytest.approx(history[-1]["elapsed_s"])
    assert a["images_per_s"] == pytest.approx(np.mean([r["images_per_s"] for r in history]))
    assert a["date"] and len(a["date"]) == len("2024-01-01 12:00")
    assert killed["epochs"] == 0 and not killed["complete"]

    by_val = [r.name for r in list_runs(runs, sort="best_val")]
    vals = {r["name"]: r["best_val"] for r in rows if r["best_val"] is not None}
    assert by_val[:2] == sorted(vals, key=lambda n: -vals[n]) and by_val[-1] == "killed"

    result = runner.invoke(app, ["runs", str(runs), "--sort", "wall"])
    assert result.exit_code == 0, result.output
    assert "lenet" in result.output and "incomplete" in result.output and "stray" not in result.output
    result = runner.invoke(app, ["runs", str(runs), "--sort", "acuracy"])
    assert result.exit_code == 2 and "choose one of" in result.stderr
    result = runner.invoke(app, ["runs", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_wall_time_adds_resumed_sessions(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    rows = [{"epoch": 1, "elapsed_s": 10.0, "time": 100.0}, {"epoch": 2, "elapsed_s": 20.0, "time": 110.0},
            {"epoch": 3, "elapsed_s": 7.0, "time": 500.0}]  # resumed: elapsed_s restarts
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (summary,) = list_runs(tmp_path)
    assert summary.wall_s == pytest.approx(27.0) and summary.epochs == 3


# ---------------------------------------------------------------------------------------- values, not files


def test_curves_plot_the_runs_numbers(trained, tmp_path, monkeypatch):
    """The lines drawn are the metrics.jsonl values, epoch by epoch, in the panel they belong to."""
    import cnnkit.reports.curves

    figures = []
    monkeypatch.setattr(cnnkit.reports.curves, "save_png", lambda fig, out: figures.append(fig) or Path(out))
    write_curves([trained["a"]], tmp_path / "c.png")
    rows = read_metrics(trained["a"] / "metrics.jsonl")
    lines = {(ax.get_title(), line.get_label()): line for ax in figures[0].axes for line in ax.get_lines()
             if not line.get_label().startswith("_")}
    for (title, label), key in [(("loss", "train"), "train_loss"), (("loss", "val"), "val_loss"),
                                (("validation / test accuracy", "val"), "val_acc"),
                                (("validation / test accuracy", "test"), "test_acc")]:
        line = lines[(title, label)]
        assert list(line.get_xdata()) == [r["epoch"] for r in rows], key
        assert list(line.get_ydata()) == pytest.approx([r[key] for r in rows]), key


def test_tta_logits_are_the_average_of_the_views(trained):
    from cnnkit.evaluation.evaluate import _forward, tta_views

    loaded = model_from_checkpoint(trained["a"] / "best.pt", "cpu")
    config, task = loaded.config, loaded.task
    mean, std = config.data.mean, config.data.std
    test = prepare_data(config).test
    images, labels = test.images[:16], test.labels[:16]  # (16, 3, 32, 32) uint8, (16,)
    # flip_translate: airbench's unequal weights (1, 1, ½ on each diagonal shift and its mirror).
    views, weights = zip(*tta_views("flip_translate", config.data.pad_mode).values(), strict=True)
    averaged, _ = _forward(loaded.model, images, labels, task, loaded.runtime, mean, std, views, weights)  # (16, 10)
    with torch.no_grad():
        each = torch.stack([loaded.model(task.inputs(view(images), mean, std)) for view in views])  # (6, 16, 10)
    w = torch.tensor(weights).view(-1, 1, 1)  # (6, 1, 1)
    assert weights == (1.0, 1.0, 0.5, 0.5, 0.5, 0.5)
    torch.testing.assert_close(averaged, (each * w).sum(0) / w.sum())
    assert not torch.allclose(each[0], each[1])  # the flip is a different view, so the average is not a no-op
    # And the reported TTA accuracy is the argmax of those averages over the whole test set.
    result = evaluate(loaded.model, test, task=task, runtime=loaded.runtime, batch_size=64, mean=mean, std=std,
                      num_classes=10, views=views, weights=weights)
    with torch.no_grad():
        all_views = torch.stack([loaded.model(task.inputs(view(test.images), mean, std)) for view in views])
    mean_logits = (all_views * w).sum(0) / w.sum()  # (N, 10)
    assert result.accuracy == pytest.approx((mean_logits.argmax(1) == test.labels).double().mean().item())


def test_best_value_labels_sit_inside_the_panel_apart_from_each_other(trained, tmp_path, monkeypatch):
    """curves.png: each run's best-value label is inside its panel, clear of the title and of the other
    run's label (two runs overlaid by `cnnkit plot` used to print both on top of one another, cut by the title)."""
    import cnnkit.reports.curves

    figures = []
    monkeypatch.setattr(cnnkit.reports.curves, "save_png", lambda fig, out: figures.append(fig) or Path(out))
    # The same run twice, under two names: the worst case, both stars on the very same point.
    shutil.copytree(trained["a"], tmp_path / "a2", ignore=shutil.ignore_patterns("*.pt", "*.png"))
    write_curves([trained["a"], tmp_path / "a2", trained["b"]], tmp_path / "c.png")
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    (ax,) = [ax for ax in fig.axes if ax.get_title() == "validation / test accuracy"]
    labels = [t for t in ax.texts if "%" in t.get_text()]
    assert len(labels) == 3, [t.get_text() for t in ax.texts]
    boxes = [t.get_window_extent(renderer) for t in labels]
    inside, title = ax.get_window_extent(renderer), ax.title.get_window_extent(renderer)
    for text, box in zip(labels, boxes, strict=True):
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, text
        assert not box.overlaps(title), text
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())
    best = max(r["val_acc"] for r in read_metrics(trained["a"] / "metrics.jsonl"))
    assert f"{best:.1%}" in labels[0].get_text()
