"""`cnnkit look` (feature maps, filters, Grad-CAM, the edge toy) and `cnnkit eval --worst`.

Checkpoints are written with cnnkit's own `save_checkpoint` from models built or trained here in
seconds: untrained weights for the shapes and error tests, a lenet trained on synthetic pictures
whose class is where a bright patch is for Grad-CAM, and the edge toy trained as the seed trains it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_image_folder
from PIL import Image
from typer.testing import CliRunner

from cnnkit.build import model_from_config
from cnnkit.cli import app
from cnnkit.config import load_config
from cnnkit.data import CIFAR10_CLASSES
from cnnkit.data.datasets import stripes_image
from cnnkit.errors import ConfigError, ShapeError
from cnnkit.inspection.gradcam import grad_cam, spearman
from cnnkit.inspection.look import look
from cnnkit.models import MODELS, build_model
from cnnkit.shapes import trace_model
from cnnkit.tasks import task_for
from cnnkit.training.checkpoint import save_checkpoint

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUADRANTS = ["top-left", "top-right", "bottom-left", "bottom-right"]
PATCH = 7


def write_checkpoint(path: Path, name: str, *sets: str, model=None, classes=None) -> Path:
    """A checkpoint as `cnnkit train` writes one, for a model built here (untrained unless `model` is given)."""
    edge = MODELS[name].task == "edge"
    base = ["data.dataset=stripes", "data.mean=[0.0]", "data.std=[1.0]"] if edge else \
        ["data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]"]
    config = load_config(None, [f"model.name={name}", *base, *sets])
    classes = classes or (["stripes"] if edge else CIFAR10_CLASSES)
    model = model if model is not None else model_from_config(config, len(classes))
    return save_checkpoint(path, {"model": model.state_dict(), "config": config.to_dict(), "classes": classes,
                                  "epoch": 0, "task": task_for(config).name})


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    return [write_png(folder / f"photo{i}.png", rng.integers(0, 256, (40, 48, 3))) for i in range(2)]


# ---------------------------------------------------------------------------------------- one source of truth


# One model per family file (resnet20 for resnet20-110, vgg11_bn for both VGGs, ...): look draws a row
# per layer, and the deep members of a family add minutes (resnet110 alone 33 s) and no new layer kind.
ONE_PER_FAMILY = list({MODELS[name].build.__module__: name for name in reversed(list(MODELS))}.values())[::-1]


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_look_captures_the_shapes_table_for_every_model(name, tmp_path, photos):
    """The maps look draws have, layer by layer, the shapes `cnnkit shapes` prints for that input."""
    ckpt = write_checkpoint(tmp_path / f"{name}.pt", name)
    report = look(ckpt, photos[:1], out_dir=tmp_path / "out")
    shapes = runner.invoke(app, ["shapes", "--model", name, "--input", "x".join(map(str, report.input)), "--json"])
    assert shapes.exit_code == 0, shapes.output
    table = [(layer["name"], layer["output"]) for layer in json.loads(shapes.output)["layers"]]
    assert [(layer["name"], layer["output"]) for layer in report.to_dict()["layers"]] == table
    for path in report.written:
        assert path.is_file() and path.stat().st_size > 0, path
    # The first conv layer's filters and one picture of feature maps, always.
    names = sorted(p.name for p in report.written)
    assert "filters.png" in names and "activations.png" in names


def test_look_errors_when_the_maps_differ_from_the_table(tmp_path, photos, monkeypatch):
    """A model whose layers change with the picture (not only its shape) cannot be captioned: error."""
    from cnnkit.inspection import look as look_module

    ckpt = write_checkpoint(tmp_path / "lenet.pt", "lenet")
    real = look_module.trace_model

    def off(model, shape):
        table = real(model, shape)
        table.layers[2].output = (6, 14, 15)
        return table

    monkeypatch.setattr(look_module, "trace_model", off)
    with pytest.raises(ShapeError, match=r"layer 3: `cnnkit shapes` computes pool1 6×14×15 but the forward pass"):
        look(ckpt, photos[:1], out_dir=tmp_path / "out")


# ---------------------------------------------------------------------------------------- Grad-CAM


def patch_pictures(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 (n, 3, 32, 32) noise with one bright 7×7 patch; the class is the quadrant it lies in.

    Returns (images, labels, top-left corners (n, 2))."""
    g = torch.Generator().manual_seed(seed)
    images = (100 + 30 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 255)
    labels = torch.randint(0, 4, (n,), generator=g)
    corner = torch.stack([(labels // 2) * 16, (labels % 2) * 16], dim=1) + torch.randint(0, 16 - PATCH + 1, (n, 2),
                                                                                          generator=g)
    for i in range(n):
        r, c = corner[i].tolist()
        images[i, :, r:r + PATCH, c:c + PATCH] = 250
    return images.round().to(torch.uint8), labels, corner


MEAN, STD = [110.0 / 255] * 3, [45.0 / 255] * 3


def as_inputs(images: torch.Tensor) -> torch.Tensor:
    from cnnkit.data import normalize

    return normalize(images, MEAN, STD)


@pytest.fixture(scope="module")
def patch_lenet() -> torch.nn.Module:
    """lenet taught, in 40 Adam steps, that the class is the quadrant holding the bright patch."""
    torch.manual_seed(0)
    images, labels, _ = patch_pictures(512, seed=0)
    inputs = as_inputs(images)
    model = build_model("lenet", num_classes=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(40):
        batch = torch.randint(0, len(labels), (64,), generator=g)
        loss = F.cross_entropy(model(inputs[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def on_patch(peak, corner, margin: int = 1) -> bool:
    """Within the patch, or `margin` pixels of it (conv2's map has a cell every 2 pixels)."""
    return all(corner[i] - margin <= peak[i] < corner[i] + PATCH + margin for i in range(2))


def test_gradcam_peak_falls_on_the_bright_patch(patch_lenet):
    images, labels, corners = patch_pictures(32, seed=7)
    inputs = as_inputs(images)
    assert (patch_lenet(inputs).argmax(dim=1) == labels).all()  # it learned the task
    row = {r.name: r for r in trace_model(patch_lenet, (3, 32, 32)).layers}["conv2"]
    cam = grad_cam(patch_lenet, inputs, "conv2", start=row.start, jump=row.jump)
    hits = [on_patch(peak, corner.tolist()) for peak, corner in zip(cam.peaks, corners, strict=True)]
    # A peak at random would land on (or next to) the patch one time in ~12; 31 of 32 when written.
    assert sum(hits) >= 29, (sum(hits), cam.peaks, corners.tolist())


def test_gradcam_passes_the_model_randomisation_sanity_check(patch_lenet):
    """Adebayo et al. 2018: re-initialised weights must give different maps (rank correlation < 0.5)."""
    images, labels, _ = patch_pictures(8, seed=11)
    inputs = as_inputs(images)
    row = {r.name: r for r in trace_model(patch_lenet, (3, 32, 32)).layers}["conv2"]
    trained = grad_cam(patch_lenet, inputs, "conv2", labels, row.start, row.jump)
    torch.manual_seed(123)
    fresh = build_model("lenet", num_classes=4).eval()
    random = grad_cam(fresh, inputs, "conv2", labels, row.start, row.jump)
    assert all(float(m.max() - m.min()) > 0.5 for m in trained.maps)  # the trained maps do say something
    rho = [spearman(a, b) for a, b in zip(trained.maps, random.maps, strict=True)]
    assert np.mean(rho) < 0.5, rho
    # The measure itself: a map against itself, and against a monotone change of itself, is 1.
    assert spearman(trained.maps[0], trained.maps[0]) == pytest.approx(1.0)
    assert spearman(trained.maps[0], trained.maps[0].double() * 2 + 3) == pytest.approx(1.0)


def test_gradcam_map_is_placed_by_the_receptive_fields():
    """lenet's conv2 cell i is centred on picture pixel 3.5 + 2·i (cnnkit shapes' start and jump)."""
    from cnnkit.inspection.gradcam import CamResult, place

    coarse = torch.zeros(2, 13, 13)
    coarse[0, 0, 0] = coarse[1, 12, 5] = 1.0
    maps = place(coarse, (32, 32), (3.5, 3.5), (2, 2))
    assert maps.shape == (2, 32, 32)
    # Cell (0, 0) is centred on pixel (3.5, 3.5): full strength up to it (held out to the edge), then
    # bilinear towards cell 1's centre at 5.5.
    assert [round(float(maps[0, i, i]), 4) for i in (0, 3, 4, 5, 6)] == [1.0, 1.0, 0.5625, 0.0625, 0.0]
    # Cell (12, 5): centred on (27.5, 13.5).
    assert [round(float(maps[1, r, c]), 4) for r, c in ((27, 13), (28, 13), (31, 14), (27, 16))] == [
        0.5625, 0.75, 0.75, 0.0]
    result = CamResult("conv2", (13, 13), coarse, maps, torch.zeros(2, 4), torch.zeros(2), (3.5, 3.5), (2, 2))
    assert result.peaks == [(4, 4), (28, 14)]
    stretched = CamResult("conv2", (13, 13), coarse, maps, torch.zeros(2, 4), torch.zeros(2))
    assert stretched.peaks == [(1, 1), (30, 13)]  # (i + 0.5)·32/13 − 0.5: a few pixels off at the borders


def test_look_reports_gradcam_on_the_patch_and_the_top_classes(patch_lenet, tmp_path):
    images, labels, corners = patch_pictures(2, seed=5)
    paths = [write_png(tmp_path / f"p{i}.png", images[i].permute(1, 2, 0).numpy()) for i in range(2)]
    ckpt = write_checkpoint(tmp_path / "patch.pt", "lenet", f"data.mean={MEAN}", f"data.std={STD}",
                            "model.num_classes=4", model=patch_lenet, classes=QUADRANTS)
    result = runner.invoke(app, ["look", "--checkpoint", str(ckpt), *map(str, paths), "--out", str(tmp_path / "o"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["gradcam_layer"] == {"name": "conv2", "size": [13, 13]}
    for image, label, corner in zip(data["images"], labels.tolist(), corners.tolist(), strict=True):
        assert image["top"][0]["class"] == QUADRANTS[label] and len(image["top"]) == 3
        assert image["gradcam"]["class"] == QUADRANTS[label]
        assert on_patch(image["gradcam"]["peak"], corner), (image, corner)
    assert sorted(Path(p).name for p in data["written"]) == [
        "activations-01-p0.png", "activations-02-p1.png", "filters.png", "gradcam.png"]
    # --class explains the class asked for, not the predicted one.
    other = QUADRANTS[(labels[0].item() + 1) % 4]
    result = runner.invoke(app, ["look", "--checkpoint", str(ckpt), str(paths[0]), "--class", other,
                                 "--out", str(tmp_path / "o2"), "--json"])
    assert json.loads(result.output)["images"][0]["gradcam"]["class"] == other
    # --layer moves Grad-CAM to another layer: conv1's 30×30 maps, still peaking on the patch.
    result = runner.invoke(app, ["look", "--checkpoint", str(ckpt), *map(str, paths), "--layer", "conv1",
                                 "--out", str(tmp_path / "o3"), "--json"])
    data = json.loads(result.output)
    assert data["gradcam_layer"] == {"name": "conv1", "size": [30, 30]}
    for image, corner in zip(data["images"], corners.tolist(), strict=True):
        assert on_patch(image["gradcam"]["peak"], corner), (image, corner)


# ---------------------------------------------------------------------------------------- the edge toy


def test_edge_toy_output_equals_the_articles_y(tmp_path):
    """Seed 000: trained on the striped X, the kernel's output is Y = X ⋆ [[1, −1]] (±1 at the edges)."""
    torch.manual_seed(0)
    model = build_model("edge", in_channels=1)
    x = stripes_image().float() / 255  # (1, 1, 6, 8): white, four black middle columns
    y = F.conv2d(x, torch.tensor([[[[1.0, -1.0]]]]))  # (1, 1, 6, 7)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03)
    for _ in range(20):  # configs/edge.yaml: 20 steps of SGD on the summed squared error
        loss = (model(x) - y).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ckpt = write_checkpoint(tmp_path / "edge.pt", "edge", model=model)
    report = look(ckpt, [], out_dir=tmp_path / "out")
    picture = report.pictures[0]
    article_y = torch.zeros(6, 7)
    article_y[:, 1], article_y[:, 5] = 1.0, -1.0  # white→black at column 1, black→white at column 5
    assert torch.equal(picture.target_map, article_y)
    (k0, k1), = report.kernel
    kernel_error = abs(k0 - 1) + abs(k1 + 1)
    assert kernel_error < 0.05  # the kernel was learned
    # |out − Y| = |(k0 − 1)·X[j] + (k1 + 1)·X[j+1]| ≤ kernel error, since 0 ≤ X ≤ 1.
    assert float((picture.output_map - article_y).abs().max()) <= kernel_error + 1e-6
    assert picture.edge_error == pytest.approx(float((picture.output_map - article_y).abs().max()))
    assert sorted(p.name for p in report.written) == ["activations.png", "edges.png", "filters.png"]


# ---------------------------------------------------------------------------------------- bad input


def cli_error(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path, photos):
    ckpt = write_checkpoint(tmp_path / "lenet.pt", "lenet")
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    message = cli_error("look", "--checkpoint", ckpt, photos[0], text)
    assert "notes.png" in message and "not an image" in message
    message = cli_error("look", "--checkpoint", ckpt, photos[0], "--class", "dgo")
    assert "'dgo'" in message and "did you mean 'dog'" in message and "airplane" in message
    message = cli_error("look", "--checkpoint", photos[0], photos[1])
    assert "not a torch checkpoint" in message and "PNG" in message
    message = cli_error("look", "--checkpoint", ckpt)
    assert "at least one picture" in message
    edge = write_checkpoint(tmp_path / "edge.pt", "edge")
    assert "no classes" in cli_error("look", "--checkpoint", edge, "--class", "cat")
    assert "drop --layer" in cli_error("look", "--checkpoint", edge, "--layer", "conv")
    # --layer: a name that is not there, or a layer without maps; each says what would work, and
    # nothing is drawn first.
    out = tmp_path / "nothing"
    message = cli_error("look", "--checkpoint", ckpt, photos[0], "--layer", "conv9", "--out", out)
    assert "no such layer" in message and "did you mean 'conv2'" in message, message
    assert "Grad-CAM can explain: conv1, relu1, pool1, conv2, relu2, pool2 (" in message, message
    message = cli_error("look", "--checkpoint", ckpt, photos[0], "--layer", "fc1", "--out", out)
    assert "'fc1'" in message and "its output is 120" in message and "cnnkit shapes --model lenet" in message
    assert not out.exists()


# ---------------------------------------------------------------------------------------- eval --worst


def test_eval_worst_lists_the_highest_losses(tmp_path):
    root = make_image_folder(tmp_path / "data", n_train_per_class=1, n_test_per_class=2)
    torch.manual_seed(0)
    ckpt = write_checkpoint(tmp_path / "run" / "best.pt", "lenet")
    result = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--worst", "5",
                                 "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    worst = data["worst"]
    # The same losses computed here, image by image, from the pictures on disk.
    model = model_from_config(load_config(None, ["data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]"]))
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    model.eval()
    files = sorted((root / "test").glob("*/*.png"))  # classes, then files, in name order
    images = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in files])
    labels = torch.tensor([CIFAR10_CLASSES.index(f.parent.name) for f in files])
    with torch.no_grad():
        logits = model((images.float() / 255 - 0.5) / 0.25)
    losses = F.cross_entropy(logits, labels, reduction="none")
    expected = torch.argsort(-losses, stable=True)[:5].tolist()
    assert [w["index"] for w in worst] == expected
    for w in worst:
        assert w["file"] == files[w["index"]].relative_to(root).as_posix()  # the very file, to open
        assert w["loss"] == pytest.approx(losses[w["index"]].item(), rel=1e-4)
        assert w["true"] == CIFAR10_CLASSES[labels[w["index"]]]
        assert w["p_true"] == pytest.approx(np.exp(-w["loss"]), rel=1e-4)
        assert w["predicted"] == CIFAR10_CLASSES[logits[w["index"]].argmax()]
    assert str(ckpt.parent / "worst.png") in data["plots"]
    with Image.open(ckpt.parent / "worst.png") as im:
        assert im.size[0] > 500 and im.size[1] > 200
    # The table, and eval's last line unchanged.
    text = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--worst", "3"])
    assert text.exit_code == 0 and "highest loss" in text.output and f"#{expected[0]}" in text.output
    assert files[expected[0]].relative_to(root).as_posix() in text.output
    assert text.output.strip().splitlines()[-1].startswith("test accuracy ")


def test_worst_png_captions_name_each_image_by_its_file():
    from cnnkit.inspection.worst import WorstImage, _label

    def worst(file):
        return WorstImage(7, "cat", "dog", 0.1, 0.6, 2.3, file)

    assert _label(worst("test/cat/0398.jpg")) == "cat/0398.jpg"  # test/ is every test image's folder
    assert _label(worst("test_batch[42]")) == "test_batch[42]"
    assert _label(worst(None)) == "#7"  # no file: the index in the test split
    long = _label(worst("test/a_long_class_name/IMG_20231201_123456.jpg"))  # the end, where the file is
    assert long == "…IMG_20231201_123456.jpg" and len(long) == 24


def test_eval_worst_refuses_the_edge_toy(tmp_path):
    edge = write_checkpoint(tmp_path / "edge.pt", "edge")
    message = cli_error("eval", "--checkpoint", edge, "--worst", "3")
    assert "--worst" in message and "no classes" in message


def test_layer_choice_explains_why_a_layer_cannot_be_explained():
    """--layer on a model whose conv runs twice, with a torch function between modules."""
    from torch import nn

    from cnnkit.inspection.capture import capture
    from cnnkit.inspection.look import _cam_layer

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 3, 3, padding=1)
            self.d = nn.Conv2d(3, 4, 3)

        def forward(self, x):  # (B, 3, 8, 8)
            x = self.c(self.c(x))  # the same module twice: rows c and c#2
            x = torch.relu(x)  # a function row, relu()
            return self.d(x).flatten(1)  # (B, 144)

    calls = capture(Twice(), torch.randn(1, 3, 8, 8)).calls
    assert [c.name for c in calls] == ["c", "c#2", "relu()", "d", "flatten()"]
    assert _cam_layer(calls, None, "twice") == "d" and _cam_layer(calls, "d", "twice") == "d"
    for asked, why in (("c", "runs more than once"), ("c#2", "runs more than once"), ("relu()", "torch function"),
                       ("flatten()", "torch function"), ("e", "no such layer")):
        with pytest.raises(ConfigError, match="Grad-CAM can explain: d ") as info:
            _cam_layer(calls, asked, "twice")
        assert why in str(info.value), (asked, str(info.value))
