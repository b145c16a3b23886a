"""fp16's grad scaler across several optimisers, on the CPU (torch.amp.GradScaler("cpu")).

The same GradScaler code runs on CUDA; here the real OptimizerSet steps through it: every
optimiser's gradients unscaled, one overflow check for all of them, all step or none does, one
scale update — including when a group has no gradients because its schedule has ended.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.optim.registry import OptimizerSet
from cnnkit.training.loop import _step


class _NoSchedule:
    def step(self) -> None:
        pass


def _three_groups():
    """Two trained weights with momentum SGD, and a third whose group has finished (frozen)."""
    torch.manual_seed(0)
    a, b, done = (nn.Parameter(torch.randn(4)) for _ in range(3))
    done.requires_grad_(False)  # what ScheduleSet.freeze_finished does to a group at lr 0
    optimizer = OptimizerSet([torch.optim.SGD([p], lr=0.1, momentum=0.9) for p in (a, b, done)])
    model = nn.Module()
    model.a, model.b, model.done = a, b, done
    return model, optimizer


def _loss(model, x: torch.Tensor) -> torch.Tensor:
    return (model.a * x).sum() + (model.b * x).square().sum() + (model.done * x).sum()


def test_a_finished_group_steps_with_the_others_through_the_scaler():
    # torch's GradScaler.step(opt) asserts "No inf checks were recorded for this optimizer" on the
    # frozen group (after the first optimisers have already stepped): fast.yaml's epoch 4 in fp16.
    model, optimizer = _three_groups()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.linspace(-1, 1, 4)
    _step(_loss(model, x) * 1.0, model, optimizer, _NoSchedule(), scaler, None, None)
    # Both trained weights took exactly SGD's first step on the unscaled gradient; the frozen one stayed.
    torch.testing.assert_close(model.a.detach(), before["a"] - 0.1 * x, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.b.detach(), before["b"] - 0.1 * 2 * before["b"] * x * x, rtol=0, atol=1e-6)
    assert torch.equal(model.done.detach(), before["done"])
    assert scaler.get_scale() == 2.0**10 and scaler._get_growth_tracker() == 1  # one good step counted


def test_an_overflow_skips_the_step_for_every_optimiser_and_halves_the_scale():
    model, optimizer = _three_groups()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.linspace(-1, 1, 4)
    _step(_loss(model, x), model, optimizer, _NoSchedule(), scaler, None, None)  # a good step: momentum starts
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    momentum = [opt.state[opt.param_groups[0]["params"][0]].get("momentum_buffer") for opt in optimizer.optimizers]
    momentum = [m.clone() if m is not None else None for m in momentum]
    # An inf in b's gradient only: a's optimiser alone would step; all or none means none does.
    poisoned = x.clone()
    poisoned[0] = float("inf")

    def loss_with_inf_in_b():
        return (model.a * x).sum() + (model.b * poisoned).sum() + (model.done * x).sum()

    _step(loss_with_inf_in_b(), model, optimizer, _NoSchedule(), scaler, None, None)
    for name, value in before.items():
        assert torch.equal(getattr(model, name).detach(), value), name
    for opt, saved in zip(optimizer.optimizers, momentum, strict=True):
        now = opt.state[opt.param_groups[0]["params"][0]].get("momentum_buffer")
        assert (now is None and saved is None) or torch.equal(now, saved)
    assert scaler.get_scale() == 2.0**9 and scaler._get_growth_tracker() == 0
    # And the next good step moves both trained weights again.
    _step(_loss(model, x), model, optimizer, _NoSchedule(), scaler, None, None)
    assert not torch.equal(model.a.detach(), before["a"]) and not torch.equal(model.b.detach(), before["b"])


def test_fast_yaml_through_a_grad_scaler_past_the_whitening_bias_schedule(tmp_path, tiny_image_root, monkeypatch):
    # The real run: fast.yaml's four optimisers, its whitening-bias group ending after epoch 1 of 2
    # (3 of 14 in the shipped config), through a GradScaler as train.precision=fp16 would on CUDA.
    from cnnkit.config import config_from_dict, read_yaml
    from cnnkit.training import fit as fit_mod
    from cnnkit.training.checkpoint import load_checkpoint

    raw = read_yaml("configs/fast.yaml")
    raw["optim"]["groups"][1]["schedule_epochs"] = 1
    raw["model"]["kwargs"]["widths"] = [8, 16, 16]
    raw["data"].update(root=str(tiny_image_root), val_split=20)
    raw["train"].update(epochs=2, batch_size=40, eval_batch_size=100, device="cpu", threads=1,
                        precision="fp32", data_init_images=100, tta="none")
    raw["output"] = {"dir": str(tmp_path)}
    real_build = fit_mod.build_state

    def build_state(*args, **kwargs):
        state = real_build(*args, **kwargs)
        state.scaler = torch.amp.GradScaler("cpu")
        return state

    monkeypatch.setattr(fit_mod, "build_state", build_state)
    weights = {}

    def keep_weights(event):  # last.pt as each epoch left it
        if event["kind"] == "epoch":
            weights[event["epoch"]] = load_checkpoint(tmp_path / "fp16" / "last.pt")["model"]

    result = fit_mod.fit(config_from_dict(raw), run_name="fp16", report=keep_weights)
    assert [row["epoch"] for row in result.history] == [1, 2]
    # Epoch 2 trained every group but the finished one, which stayed where epoch 1 left it.
    assert torch.equal(weights[2]["whiten.bias"], weights[1]["whiten.bias"])
    for key in ("group1.conv1.weight", "group1.norm1.bias", "head.weight"):
        assert not torch.equal(weights[2][key], weights[1][key]), key
    # The scaler's state is saved for a resume; in fp32 nothing overflows at 65536, so all 2 × 4
    # steps were taken and counted towards the next growth of the scale.
    scaler = load_checkpoint(result.run_dir / "last.pt")["scaler"]
    assert scaler["scale"] == 65536.0 and scaler["_growth_tracker"] == 8
