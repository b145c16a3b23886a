"""`cnnkit shapes` for models that are not a plain chain: a small ResNet (residual adds, a strided
shortcut, functional ReLU, adaptive pooling, torch.flatten) and an Inception-style block (four
branches, one of them functional pooling, joined by torch.cat). Every row must match torch."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from cnnkit.cli import app
from cnnkit.models import MODELS, ModelEntry
from cnnkit.shapes import trace_model

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class BasicBlock(nn.Module):
    """torchvision's ResNet block: conv-BN-ReLU-conv-BN, plus the input (1×1 conv when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return F.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.block1 = BasicBlock(8, 8, 1)
        self.block2 = BasicBlock(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):  # (B, C, H, W)
        x = self.block2(self.block1(self.stem(x)))  # (B, 16, H/2, W/2)
        return self.fc(torch.flatten(self.pool(x), 1))  # (B, num_classes)


class Inception(nn.Module):
    """Four branches over the same input, concatenated along channels (GoogLeNet's block, small)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.b1 = nn.Conv2d(in_channels, 4, 1)
        self.b3 = nn.Sequential(nn.Conv2d(in_channels, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, 3, padding=1))
        self.b5 = nn.Sequential(nn.Conv2d(in_channels, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, 5, padding=2))
        self.bp = nn.Conv2d(in_channels, 4, 1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(16 * 16 * 16, num_classes)

    def forward(self, x):  # (B, C, 32, 32)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1)  # (B, C, 32, 32)
        x = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(pooled)], dim=1)  # (B, 16, 32, 32)
        return self.head(self.pool(x).flatten(1))  # (B, num_classes)


def leaf_shapes(model: nn.Module, shape) -> list[tuple[str, tuple, tuple]]:
    """(name, input, output) per image of every leaf module, from the test's own hooks."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: seen.append((n, tuple(a[0].shape[1:]), tuple(o.shape[1:]))))
             for n, m in model.named_modules() if next(m.children(), None) is None]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return seen


def test_resnet_gets_a_full_table_matching_torch():
    model = TinyResNet()
    report = trace_model(model, (3, 32, 32))
    rows = [(r.name, r.type, r.output) for r in report.layers]
    assert rows == [
        ("stem", "Conv2d", (8, 32, 32)),
        ("block1.conv1", "Conv2d", (8, 32, 32)), ("block1.bn1", "BatchNorm2d", (8, 32, 32)),
        ("block1.relu", "ReLU", (8, 32, 32)), ("block1.conv2", "Conv2d", (8, 32, 32)),
        ("block1.bn2", "BatchNorm2d", (8, 32, 32)),
        ("block1.add()", "Tensor.add_", (8, 32, 32)),  # out += identity
        ("block1.relu()", "F.relu", (8, 32, 32)),
        ("block2.down.0", "Conv2d", (16, 16, 16)), ("block2.down.1", "BatchNorm2d", (16, 16, 16)),
        ("block2.conv1", "Conv2d", (16, 16, 16)), ("block2.bn1", "BatchNorm2d", (16, 16, 16)),
        ("block2.relu", "ReLU", (16, 16, 16)), ("block2.conv2", "Conv2d", (16, 16, 16)),
        ("block2.bn2", "BatchNorm2d", (16, 16, 16)),
        ("block2.add()", "Tensor.add_", (16, 16, 16)), ("block2.relu()", "F.relu", (16, 16, 16)),
        ("pool", "AdaptiveAvgPool2d", (16, 1, 1)), ("flatten()", "torch.flatten", (16,)), ("fc", "Linear", (10,)),
    ]
    by_name = {r.name: r for r in report.layers}
    # Where each add takes its two inputs from: the block's last BN and the shortcut.
    assert by_name["block1.add()"].sources == ["block1.bn2", "stem"]
    assert by_name["block2.add()"].sources == ["block2.bn2", "block2.down.1"]
    assert by_name["block2.add()"].inputs == [(16, 16, 16), (16, 16, 16)]
    assert by_name["block2.conv1"].sources == ["block1.relu()"]  # not the shortcut that ran just before
    # The formula view for every conv, wherever it sits, checked against torch.
    assert by_name["block2.down.0"].formulas == ["⌊(32 + 2·0 − 1·(1−1) − 1) / 2⌋ + 1 = 16"] * 2
    assert by_name["block2.conv1"].formulas == ["⌊(32 + 2·1 − 1·(3−1) − 1) / 2⌋ + 1 = 16"] * 2
    assert all(r.computed for r in report.layers if r.kind == "module")
    # Receptive field through the branches: the add sees as far as its widest input.
    assert by_name["block1.add()"].receptive_field == by_name["block1.bn2"].receptive_field == (7, 7)
    assert by_name["block2.conv2"].receptive_field == (13, 13) and by_name["block2.conv2"].jump == (2, 2)
    assert [(r.name, r.input, r.output) for r in report.layers if r.kind == "module"] == leaf_shapes(model,
                                                                                                     (3, 32, 32))
    assert report.output == (10,)
    assert report.params == sum(p.numel() for p in model.parameters())


def test_branching_model_gets_a_full_table_matching_torch():
    model = Inception()
    report = trace_model(model, (3, 32, 32))
    assert [(r.name, r.output) for r in report.layers] == [
        ("max_pool2d()", (3, 32, 32)),
        ("b1", (4, 32, 32)),
        ("b3.0", (2, 32, 32)), ("b3.1", (2, 32, 32)), ("b3.2", (4, 32, 32)),
        ("b5.0", (2, 32, 32)), ("b5.1", (2, 32, 32)), ("b5.2", (4, 32, 32)),
        ("bp", (4, 32, 32)),
        ("cat()", (16, 32, 32)),
        ("pool", (16, 16, 16)), ("flatten()", (4096,)), ("head", (10,)),
    ]
    by_name = {r.name: r for r in report.layers}
    assert by_name["cat()"].sources == ["b1", "b3.2", "b5.2", "bp"]
    assert by_name["cat()"].inputs == [(4, 32, 32)] * 4
    assert by_name["b1"].sources == ["input"] and by_name["bp"].sources == ["max_pool2d()"]
    # The functional pool has its formula; its receptive field feeds the pooled branch.
    assert by_name["max_pool2d()"].formulas == ["⌊(32 + 2·1 − 1·(3−1) − 1) / 1⌋ + 1 = 32"] * 2
    assert by_name["bp"].receptive_field == (3, 3) and by_name["b5.2"].receptive_field == (5, 5)
    assert by_name["cat()"].receptive_field == (5, 5)
    assert [(r.name, r.input, r.output) for r in report.layers if r.kind == "module"] == leaf_shapes(model,
                                                                                                     (3, 32, 32))


def test_cli_shapes_on_a_registered_residual_model(monkeypatch):
    """A new user's model file registered with one line: `cnnkit shapes --model` shows it all."""
    monkeypatch.setitem(MODELS, "tinyres", ModelEntry(TinyResNet, "classify", "a test ResNet"))
    result = runner.invoke(app, ["shapes", "--model", "tinyres"])
    assert result.exit_code == 0, result.output
    assert "block2.add()" in result.output and "← bn2 + down.1" in result.output
    assert "input 3×32×32 → output 10" in result.output
    data = json.loads(runner.invoke(app, ["shapes", "--model", "tinyres", "--json"]).output)
    add = next(layer for layer in data["layers"] if layer["name"] == "block1.add()")
    assert add["kind"] == "function" and add["sources"] == ["block1.bn2", "stem"] and not add["computed"]
    folded = json.loads(runner.invoke(app, ["shapes", "--model", "tinyres", "--depth", "1", "--json"]).output)
    assert [(layer["name"], layer["sources"]) for layer in folded["layers"]] == [
        ("stem", ["input"]), ("block1", ["stem"]), ("block2", ["block1"]), ("pool", ["block2"]),
        ("flatten()", ["pool"]), ("fc", ["flatten()"])]


def test_timm_tf_same_padding_layers_get_their_formula():
    """timm's TensorFlow ports pad 'SAME' at run time (Conv2dSame, MaxPool2dSame): the output is
    ⌈in / stride⌉ and the odd padding pixel goes after. Rows computed by that rule, equal to torch's."""
    conv_same = pytest.importorskip("timm.layers.conv2d_same")
    pool_same = pytest.importorskip("timm.layers.pool2d_same")
    from cnnkit.shapes import same_padding

    assert same_padding(32, 3, 2, 1) == (1, 0, 1) and same_padding(15, 3, 2, 1) == (2, 1, 1)
    assert same_padding(16, 5, 1, 2) == (8, 4, 4) and same_padding(7, 1, 2, 1) == (0, 0, 0)
    model = nn.Sequential(conv_same.Conv2dSame(3, 8, 3, stride=2), conv_same.Conv2dSame(8, 8, 5, dilation=2),
                          pool_same.MaxPool2dSame(3, stride=2), pool_same.AvgPool2dSame(2, stride=2))
    report = trace_model(model, (3, 15, 15))
    assert [(r.type, r.input, r.output, r.padding, r.computed) for r in report.layers] == [
        ("Conv2dSame", (3, 15, 15), (8, 8, 8), (1, 1), True),  # pad 2: 1 + 1
        ("Conv2dSame", (8, 8, 8), (8, 8, 8), (4, 4), True),  # dilated 5×5 spans 9: pad 8
        ("MaxPool2dSame", (8, 8, 8), (8, 4, 4), (0, 0), True),  # pad 1: 0 before, 1 after
        ("AvgPool2dSame", (8, 4, 4), (8, 2, 2), (0, 0), True),
    ]
    assert report.layers[0].formulas == ["⌈15 / 2⌉ = 8 ('same': pad 1+1)"] * 2
    assert report.layers[2].formulas == ["⌈8 / 2⌉ = 4 ('same': pad 0+1)"] * 2
    assert report.layers[0].macs == 8 * 8 * 8 * 3 * 9


def test_a_subclass_that_changes_its_shape_shows_torch_s_shape():
    """A user's Conv2d subclass whose forward pads on its own: the inherited rule would be wrong, so the
    row shows what torch produced (not computed), instead of stopping `cnnkit shapes`."""

    class PaddedConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(F.pad(x, (1, 1, 1, 1)))

    report = trace_model(nn.Sequential(PaddedConv(3, 4, 3), nn.Conv2d(4, 4, 3)), (3, 8, 8))
    assert [(r.type, r.output, r.computed) for r in report.layers] == [
        ("PaddedConv", (4, 8, 8), False), ("Conv2d", (4, 6, 6), True)]
    # A subclass that keeps the shape still gets its formula.
    report = trace_model(nn.Sequential(type("Plain", (nn.Conv2d,), {})(3, 4, 3)), (3, 8, 8))
    assert report.layers[0].computed and report.layers[0].formulas == ["⌊(8 + 2·0 − 1·(3−1) − 1) / 1⌋ + 1 = 6"] * 2
