"""`cnnkit export`: a tiny trained lenet (and the edge toy) to pt2 and ONNX, scored like `cnnkit eval` scores it."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from typer.testing import CliRunner

from cnnkit.cli import app
from cnnkit.config import load_config
from cnnkit.data import load_cifar10
from cnnkit.errors import ExportError
from cnnkit.evaluation.evaluate import evaluate_checkpoint
from cnnkit.evaluation.export import export_checkpoint
from cnnkit.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(best.pt of a 3-epoch lenet on tiny images, the data root)."""
    tmp = tmp_path_factory.mktemp("export")
    root = make_image_folder(tmp / "data", n_train_per_class=20, n_test_per_class=10)
    config = load_config(ROOT / "configs" / "lenet.yaml", [
        f"data.root={root}", f"data.cache_dir={tmp / 'cache'}", "data.val_split=20", "train.epochs=3",
        "train.batch_size=32", f"output.dir={tmp / 'runs'}", "train.threads=1"])
    result = fit(config, run_name="tiny")
    return result.run_dir / "best.pt", root


def assert_shareable(path: Path, checkpoint: Path) -> None:
    """A model file is made to be shared: the mode an ordinary write gives (0o666 minus the umask), as
    the checkpoint has, not mkstemp's private 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask == stat.S_IMODE(checkpoint.stat().st_mode)


def tiny_test_images(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    test = load_cifar10(root).test
    return test.images.float() / 255, test.labels  # (N, 3, 32, 32) in [0, 1], (N,)


def test_pt2_gives_the_same_top1_as_eval(lenet_run, tmp_path: Path) -> None:
    checkpoint, root = lenet_run
    result = export_checkpoint(checkpoint, "pt2", tmp_path / "lenet.pt2")
    assert result.max_abs_diff <= 1e-4 and result.top1_agree == result.n_checked
    assert "float32 [N, 3, 32, 32]" in result.input_spec and "[0, 1]" in result.input_spec
    module = torch.export.load(tmp_path / "lenet.pt2").module()
    images, labels = tiny_test_images(root)
    with torch.no_grad():
        hits = int((module(images).argmax(1) == labels).sum())
    report = evaluate_checkpoint(checkpoint)
    assert hits == round(report.result.accuracy * len(labels))
    with torch.no_grad():
        assert module(images[:1]).shape == (1, 10)  # any batch size, one included
    assert_shareable(tmp_path / "lenet.pt2", checkpoint)


def test_onnx_gives_the_same_top1_as_eval(lenet_run, tmp_path: Path) -> None:
    for module in ("onnx", "onnxruntime", "onnxscript"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'cnnkit[onnx]')")
    import onnxruntime

    checkpoint, root = lenet_run
    result = export_checkpoint(checkpoint, "onnx", tmp_path / "lenet.onnx")
    assert result.max_abs_diff <= 1e-3 and result.top1_agree == result.n_checked
    assert_shareable(tmp_path / "lenet.onnx", checkpoint)
    session = onnxruntime.InferenceSession(str(tmp_path / "lenet.onnx"), providers=["CPUExecutionProvider"])
    images, labels = tiny_test_images(root)
    (logits,) = session.run(None, {"images": images.numpy()})
    hits = int((torch.from_numpy(logits).argmax(1) == labels).sum())
    assert hits == round(evaluate_checkpoint(checkpoint).result.accuracy * len(labels))


def test_cli_export_prints_the_spec_and_the_check(lenet_run) -> None:
    checkpoint, _ = lenet_run
    result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--format", "pt2"])
    assert result.exit_code == 0, result.output
    assert "input  images: float32 [N, 3, 32, 32]" in result.output
    assert "max |exported − PyTorch|" in result.output and "top-1 agrees on 100/100" in result.output
    assert checkpoint.with_suffix(".pt2").is_file()
    data = json.loads(runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--json"]).output)
    assert data["path"] == str(checkpoint.with_suffix(".pt2")) and data["max_abs_diff"] <= 1e-4


def test_edge_toy_exports(tmp_path: Path) -> None:
    config = load_config(ROOT / "configs" / "edge.yaml", [f"output.dir={tmp_path}"])
    run = fit(config, run_name="edge").run_dir
    result = export_checkpoint(run / "best.pt", "pt2")
    assert result.top1_agree is None and result.max_abs_diff <= 1e-4
    assert "float32 [N, 1, 6, 8]" in result.input_spec and "[N, 1, 6, 7]" in result.output_spec


def test_without_the_onnx_extra_one_line_names_it(lenet_run, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: importing it fails
    checkpoint, _ = lenet_run
    with pytest.raises(ExportError, match=r"pip install 'cnnkit\[onnx\]'"):
        export_checkpoint(checkpoint, "onnx", tmp_path / "x.onnx")
    result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out",
                                 str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "cnnkit[onnx]" in result.stderr and not (tmp_path / "x.onnx").exists()


def test_unknown_format_and_missing_checkpoint_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "no.pt"), "--format", "pt2"])
    assert result.exit_code == 2 and "no such checkpoint" in result.stderr
    with pytest.raises(ExportError, match="unknown export format"):
        export_checkpoint(tmp_path / "no.pt", "torchscript")
