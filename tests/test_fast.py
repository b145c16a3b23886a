"""The fast model family and its optimiser: whitening init, Muon against its formula."""

from __future__ import annotations

import pytest
import torch

from cnnkit.models import build_model
from cnnkit.models.fast import FastNet
from cnnkit.optim.muon import NS_COEFFS, Muon, orthogonalize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_whitening_makes_patch_covariance_near_identity():
    torch.manual_seed(0)
    # Correlated channels and neighbouring pixels, as in real images.
    base = torch.randn(64, 1, 17, 17)
    images = torch.cat([base, 0.8 * base + 0.2 * torch.randn_like(base), torch.randn_like(base)], dim=1)
    images = images + torch.roll(images, 1, dims=3)  # (64, 3, 17, 17)
    model = FastNet(widths=(8, 8, 8), input_size=(17, 17))
    model.init_from_data(images, eps=0.0)
    out = torch.nn.functional.conv2d(images, model.whiten.weight)  # (64, 24, 16, 16), no bias
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)  # the positive-sign filters
    covariance = half.T @ half / len(half)
    assert torch.allclose(covariance, torch.eye(12), atol=1e-3)
    # The second half is the first with the sign flipped, so GELU sees both sides of every direction.
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])


def test_orthogonalize_pushes_singular_values_towards_one():
    torch.manual_seed(0)
    g = torch.randn(32, 72) @ torch.diag(torch.logspace(-2, 1, 72))  # badly conditioned
    s = torch.linalg.svdvals(orthogonalize(g, steps=5).float())
    assert s.min() > 0.5 and s.max() < 1.3  # the quintic's band, not exactly 1


@pytest.mark.parametrize("native_bf16", [True, False], ids=["bf16-device", "fp32-elsewhere"])
def test_muon_step_matches_reference_formula(monkeypatch, native_bf16):
    """The Newton–Schulz iteration runs in bf16 where the device has native bf16 matmuls, else in fp32."""
    from cnnkit.optim import muon

    monkeypatch.setattr(muon, "bf16_native", lambda device: native_bf16)
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
    opt = Muon([w], lr=0.1, momentum=0.5, nesterov=True, ns_steps=3)
    w0 = w.detach().clone()
    grads = [torch.randn_like(w) for _ in range(2)]
    buf = torch.zeros_like(w0)
    expected = w0.clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        # The reference: nesterov momentum, renormalised filter bank, quintic Newton–Schulz.
        buf = 0.5 * buf + g
        direction = (g + 0.5 * buf).reshape(4, -1)
        expected = expected * (4 ** 0.5 / expected.norm())
        a, b, c = NS_COEFFS
        x = direction.to(torch.bfloat16 if native_bf16 else torch.float32)
        x = x / (x.norm() + 1e-7)
        for _ in range(3):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        expected = expected - 0.1 * x.float().view_as(expected)
    assert torch.allclose(w.detach(), expected, atol=1e-6)


def test_muon_refuses_vectors():
    b = torch.nn.Parameter(torch.zeros(3))
    b.grad = torch.ones(3)
    with pytest.raises(ValueError, match="SGD/Adam"):
        Muon([b], lr=0.1).step()


def test_muon_descends_on_a_toy_problem():
    torch.manual_seed(0)
    target = torch.randn(8, 8)
    w = torch.nn.Parameter(torch.zeros(8, 8))
    opt = Muon([w], lr=0.2, momentum=0.9, normalize_weights=False)
    # Muon's steps have a fixed size (all singular values ≈ 1), so it converges as the lr decays.
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / 100)
    losses = []
    for _ in range(100):
        loss = (w - target).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
    assert losses[-1] < 0.01 * losses[0]


def test_fast_model_shapes_follow_torch():
    model = build_model("fast", widths=[16, 32, 32])
    x = torch.randn(2, 3, 32, 32)
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for m in (model.whiten, model.group1, model.group2, model.group3, model.pool)]
    out = model(x)
    for h in hooks:
        h.remove()
    assert shapes == [(24, 31, 31), (16, 15, 15), (32, 7, 7), (32, 3, 3), (32, 1, 1)]
    assert out.shape == (2, 10)


# ---------------------------------------------------------------------------------------- the recipe

FAST_TINY = [  # configs/fast.yaml shrunk to the tiny data: small widths and batches, fp32 for exactness
    "model.kwargs={widths: [8, 16, 16]}", "train.batch_size=40", "train.eval_batch_size=100",
    "train.precision=fp32", "train.threads=1", "train.deterministic=true", "train.data_init_images=100",
]


def _fast_config(tmp_path, root, *extra: str, epochs: int = 3):
    from cnnkit.config import load_config

    return load_config("configs/fast.yaml", [f"data.root={root}", f"output.dir={tmp_path / 'runs'}",
                                             f"train.epochs={epochs}", *FAST_TINY, *extra])


def test_fast_yaml_trains_on_tiny_data_with_tta(tmp_path, tiny_image_root):
    from cnnkit.training.checkpoint import load_checkpoint
    from cnnkit.training.fit import fit

    config = _fast_config(tmp_path, tiny_image_root, epochs=4)
    result = fit(config, run_name="fast")
    assert result.test.accuracy > 0.5  # 10 colour-coded classes; chance is 0.1
    assert result.tta is not None and len(result.tta_views) == 6  # flip_translate
    payload = load_checkpoint(result.run_dir / "last.pt")
    # Four groups, one state each, saved side by side; the config that made them goes with them.
    assert [len(s["param_groups"]) for s in payload["optimizer"]["optimizers"]] == [1, 1, 1, 1]
    assert [g["name"] for g in payload["config"]["optim"]["groups"]] == ["muon", "sgd", "sgd", "sgd"]
    # The whitening filters came from the data (not torch's init) and never moved.
    w = payload["model"]["whiten.weight"]
    assert torch.equal(w[12:], -w[:12]) and w.abs().max() > 1.0


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_group_schedule_length_and_first_match_wins(tmp_path, tiny_image_root):
    from cnnkit.device import setup_runtime
    from cnnkit.training.state import build_state

    config = _fast_config(tmp_path, tiny_image_root, epochs=4)
    state = build_state(config, setup_runtime("cpu", threads=1), 10, 200)
    muon, sgd = state.optimizer.optimizers  # the three SGD groups share one SGD, a param group each
    whiten_bias, norm_bias, head = sgd.param_groups
    assert sum(p.numel() for p in whiten_bias["params"]) == 24
    assert all(p.ndim == 4 for p in muon.param_groups[0]["params"]) and len(muon.param_groups[0]["params"]) == 6
    steps = 4 * 5  # 200 images / batch 40, for 4 epochs; the whitening bias's schedule lasts 3 of them
    lrs = []
    for _ in range(steps):
        state.scheduler.step()
        lrs.append((whiten_bias["lr"], head["lr"]))
    assert lrs[14][0] == 0.0 and lrs[13][0] > 0  # 0 from step 15 = 3 epochs on
    assert lrs[18][1] > 0 and lrs[19][1] == 0.0  # the head's lasts the whole run
    # A group whose schedule has ended at lr 0 stops computing gradients; the others go on.
    state.scheduler.freeze_finished()
    assert not state.model.whiten.bias.requires_grad
    assert state.model.head.weight.requires_grad and state.model.group1.norm1.bias.requires_grad


def test_group_that_matches_nothing_is_one_clear_error(tmp_path, tiny_image_root):
    from cnnkit.device import setup_runtime
    from cnnkit.errors import ConfigError
    from cnnkit.training.state import build_state

    config = _fast_config(tmp_path, tiny_image_root, "optim.groups=[{params: ['conv9.*'], name: sgd, lr: 0.1}]")
    with pytest.raises(ConfigError, match=r"optim.groups.0.params: \['conv9.\*'\] match no trainable parameter"):
        build_state(config, setup_runtime("cpu", threads=1), 10, 200)


def test_per_group_optimisers_resume_bit_identically(tmp_path, tiny_image_root):
    import os
    import signal

    from cnnkit.errors import Interrupted
    from cnnkit.training.checkpoint import load_checkpoint
    from cnnkit.training.fit import fit, resume_config

    # 4 epochs: the whitening bias's schedule (3 epochs) ends, and it is frozen, in both runs.
    full = fit(_fast_config(tmp_path, tiny_image_root, epochs=4), run_name="full")

    def interrupt_after_epoch_2(event):
        if event["kind"] == "epoch" and event["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        fit(_fast_config(tmp_path, tiny_image_root, epochs=4), run_name="cut", report=interrupt_after_epoch_2)
    last = tmp_path / "runs" / "cut" / "last.pt"
    config, payload = resume_config(last)
    assert config.optim.groups[1].schedule_epochs == 3  # the saved config, groups included
    resumed = fit(config, resume=last, resume_payload=payload)
    a = load_checkpoint(full.run_dir / "last.pt")
    b = load_checkpoint(resumed.run_dir / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["optimizers"], b["optimizer"]["optimizers"], strict=True):
        for (pa, ta), (pb, tb) in zip(sa["state"].items(), sb["state"].items(), strict=True):
            assert pa == pb and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_flip_translate_tta_is_airbench_weighted_average():
    from cnnkit.data import Split
    from cnnkit.device import setup_runtime
    from cnnkit.evaluation.evaluate import evaluate, tta_views
    from cnnkit.tasks import TASKS

    torch.manual_seed(0)
    # A random linear map of the pixels: every view gets clearly different logits.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(6) % 10
    views = tta_views("flip_translate", "reflect")
    task, mean, std = TASKS["classify"], [0.5] * 3, [0.25] * 3
    result = evaluate(model, Split(images, labels), task=task, runtime=setup_runtime("cpu", threads=1),
                      batch_size=6, mean=mean, std=std, num_classes=10,
                      views=[v for v, _ in views.values()], weights=[w for _, w in views.values()])

    def logits(x):
        with torch.no_grad():
            return model(task.inputs(x, mean, std))

    def mirror(x):
        return 0.5 * (logits(x) + logits(x.flip(-1)))

    padded = torch.nn.functional.pad(images.float(), (1, 1, 1, 1), mode="reflect").to(torch.uint8)
    expected = (0.5 * mirror(images) + 0.25 * mirror(padded[:, :, 0:32, 0:32])
                + 0.25 * mirror(padded[:, :, 2:34, 2:34]))  # (6, 10): airbench's infer_mirror_translate
    loss = torch.nn.functional.cross_entropy(expected, labels).item()
    assert result.loss == pytest.approx(loss, rel=1e-4)
    # Equal weights would be a different number: the test can tell the schemes apart.
    unweighted = (2 * mirror(images) + 2 * mirror(padded[:, :, 0:32, 0:32]) + 2 * mirror(padded[:, :, 2:34, 2:34])) / 6
    assert abs(torch.nn.functional.cross_entropy(unweighted, labels).item() - loss) > 1e-3 * loss


def test_eval_tta_and_runs_report_the_runs_own_numbers(tmp_path, tiny_image_root):
    """One number per question: a bf16 run with train.tta flip_translate records its final report
    (best.pt in fp32, and with TTA) in metrics.jsonl; `cnnkit eval --tta` reproduces both figures,
    with the run's own TTA mode; `cnnkit runs` shows the same two."""
    import json

    from typer.testing import CliRunner

    from cnnkit.cli import app
    from cnnkit.evaluation.evaluate import evaluate_checkpoint
    from cnnkit.reports.runs import list_runs, read_metrics
    from cnnkit.training.fit import fit

    result = fit(_fast_config(tmp_path, tiny_image_root, "train.precision=bf16", epochs=2), run_name="fast")
    final = read_metrics(result.run_dir / "metrics.jsonl")[-1]["final"]
    assert final["tta_mode"] == "flip_translate" and final["epoch"] == result.best_epoch
    assert final["test_acc"] == result.test.accuracy and final["tta_acc"] == result.tta.accuracy

    report = evaluate_checkpoint(result.run_dir / "best.pt", tta=True)  # no mode named: the run's own
    assert report.tta.mode == "flip_translate" and report.tta.views == result.tta_views
    assert report.tta.accuracy == final["tta_acc"] and report.tta.loss == pytest.approx(final["tta_loss"])
    assert report.result.accuracy == final["test_acc"]
    # --tta-mode still picks another.
    assert evaluate_checkpoint(result.run_dir / "best.pt", tta_mode="flip").tta.views == ["original", "flip"]

    (run,) = list_runs(tmp_path / "runs")
    assert run.final_test == run.test_at_best == final["test_acc"] and run.tta_test == final["tta_acc"]
    out = CliRunner().invoke(app, ["runs", str(tmp_path / "runs")])
    assert out.exit_code == 0, out.output
    row = next(line for line in out.stdout.splitlines() if "fast" in line and "%" in line)
    assert f"{final['test_acc']:.2%}" in row and f"{final['tta_acc']:.2%}" in row
    data = json.loads(CliRunner().invoke(app, ["eval", "--checkpoint", str(result.run_dir / "best.pt"), "--tta",
                                               "--no-plots", "--json"]).stdout)
    assert data["tta_mode"] == "flip_translate" and data["tta_accuracy"] == final["tta_acc"]
