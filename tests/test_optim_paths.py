"""The optimisers' fast paths against the plain ones they replace.

Config groups naming the same optimiser share one torch optimiser, a param group each, with foreach
(CPU) or fused (CUDA) kernels and one LambdaLR: on the CPU the weights, momentum buffers and
learning rates after N steps of fast.yaml's groups are bit-identical (torch.equal) to separate
optimisers with torch's default kernels, which is how cnnkit ran them before. Exactly equal, not
within an ulp: on the CPU torch's foreach ops run the per-tensor ops' own kernels in a loop, and a
param group is stepped with the same arithmetic whether its optimiser has other groups or not.
Checkpoints keep one state per config group, so the old layout loads into the shared optimisers
(and the other way round) and training goes on bit for bit.

Muon steps a group's parameters with foreach ops and can stack same-shape filter banks into one
batched Newton–Schulz chain (on by default off the CPU), compiled on CUDA: the stacked and compiled
paths against the bank-by-bank eager one.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from cnnkit.build import model_from_config
from cnnkit.config import config_from_dict, read_yaml
from cnnkit.errors import ConfigError
from cnnkit.optim import muon as muon_module
from cnnkit.optim.muon import Muon, orthogonalize
from cnnkit.optim.registry import (
    OptimizerSet,
    ScheduleSet,
    build_optimizer,
    build_optimizers,
    build_scheduler,
    build_schedules,
    plan_groups,
)
from cnnkit.training.loop import _step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH, STEPS_PER_EPOCH, EPOCHS = 16, 3, 4


def _fast_config(**train):
    """configs/fast.yaml at tiny widths in fp32; the whitening bias's schedule ends after epoch 1 of 4."""
    raw = read_yaml("configs/fast.yaml")
    raw["model"]["kwargs"]["widths"] = [8, 16, 16]
    raw["optim"]["groups"][1]["schedule_epochs"] = 1
    raw["train"].update({"batch_size": BATCH, "epochs": EPOCHS, "precision": "fp32", "device": "cpu", "threads": 1,
                         **train})
    return config_from_dict(raw)


def _separate(model, config):
    """Today's layout before sharing: one optimiser per config group, torch's default kernels, one LambdaLR each."""
    plans = plan_groups(model, config.optim, config.train.batch_size)
    optimizer = OptimizerSet([build_optimizer(p.params, p.name, p.lr, p.weight_decay, p.kwargs, p.where)
                              for p in plans])
    schedule = config.schedule
    warmup = round(schedule.warmup_epochs * STEPS_PER_EPOCH)
    schedulers, horizons = [], []
    for opt, plan in zip(optimizer.optimizers, plans, strict=True):
        total = round((plan.schedule_epochs or EPOCHS) * STEPS_PER_EPOCH)
        schedulers.append(build_scheduler(opt, schedule.name, total, min(warmup, total), schedule.final_lr_ratio))
        horizons.append(total if plan.schedule_epochs is not None else math.inf)
    return optimizer, ScheduleSet(schedulers, horizons, schedule.final_lr_ratio)


def _shared(model, config):
    optimizer, plans = build_optimizers(model, config.optim, config.train.batch_size)
    return optimizer, build_schedules(optimizer, plans, config.schedule, STEPS_PER_EPOCH, EPOCHS)


def _batches(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
            for _ in range(n)]


def _train(model, optimizer, scheduler, batches, first_step: int = 0) -> None:
    """The loop's own step (training.loop._step); freeze_finished at each epoch's start, as train_one_epoch."""
    model.train()
    for k, (x, y) in enumerate(batches, start=first_step):
        if k % STEPS_PER_EPOCH == 0:
            scheduler.freeze_finished()
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.2)
        _step(loss, model, optimizer, scheduler, None, None, None)


def _assert_same_weights(a, b) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        assert pa.requires_grad == pb.requires_grad, name


def _assert_same_optimiser_states(sa: dict, sb: dict, *, ignore=("foreach", "fused")) -> None:
    sa, sb = sa["optimizers"], sb["optimizers"]
    assert len(sa) == len(sb)
    for a, b in zip(sa, sb, strict=True):
        assert a["state"].keys() == b["state"].keys()
        for key, value in a["state"].items():
            assert value.keys() == b["state"][key].keys()
            assert all(torch.equal(value[k], b["state"][key][k]) for k in value)
        drop = lambda g: {k: v for k, v in g.items() if k not in ignore}  # noqa: E731
        assert [drop(g) for g in a["param_groups"]] == [drop(g) for g in b["param_groups"]]


def _pair(config):
    torch.manual_seed(0)
    model = model_from_config(config, 10)
    twin = copy.deepcopy(model)
    return (model, *_separate(model, config)), (twin, *_shared(twin, config))


def test_fast_yaml_groups_share_one_sgd_with_their_own_settings():
    config = _fast_config()
    _, (model, optimizer, scheduler) = _pair(config)
    muon, sgd = optimizer.optimizers
    assert isinstance(muon, Muon) and len(muon.param_groups) == 1
    assert type(sgd) is torch.optim.SGD and len(sgd.param_groups) == 3
    whiten, norms, head = sgd.param_groups
    assert whiten["params"] == [model.whiten.bias] and head["params"] == [model.head.weight]
    # lr_per_image: the optimiser's lr is the config's × the batch; each group keeps its weight decay.
    assert (whiten["lr"], norms["lr"], head["lr"]) == pytest.approx((0.053 * BATCH, 0.053 * BATCH, 0.67 * BATCH))
    assert (whiten["weight_decay"], head["weight_decay"]) == (3.774e-5, 2.985e-6)
    assert all(g["momentum"] == 0.85 and g["nesterov"] and g["foreach"] for g in sgd.param_groups)
    # One LambdaLR for the three, each group on its own length; the set reads in config order.
    assert len(scheduler.schedulers) == 2 and scheduler.schedulers[1].optimizer is sgd
    assert optimizer.param_groups == [muon.param_groups[0], whiten, norms, head]
    assert scheduler.horizons == [math.inf, STEPS_PER_EPOCH, math.inf, math.inf]


def test_shared_sgd_steps_bit_identical_to_separate_optimisers():
    """fast.yaml's four groups for 4 epochs (12 steps) of the fast model: the shared SGD (foreach,
    three param groups, one LambdaLR) against three SGDs with the default kernels and a LambdaLR
    each. Every weight, momentum buffer and lr is bit-identical after every epoch, including the
    whitening bias's schedule ending after epoch 1 and its group being frozen."""
    config = _fast_config()
    (ref, ref_opt, ref_sched), (new, new_opt, new_sched) = _pair(config)
    assert ref_opt.optimizers[1].param_groups[0]["foreach"] is None  # torch's default: per tensor on the CPU
    initial = {name: p.detach().clone() for name, p in new.named_parameters()}
    batches = _batches(EPOCHS * STEPS_PER_EPOCH, seed=1)
    for epoch in range(EPOCHS):
        part = batches[epoch * STEPS_PER_EPOCH: (epoch + 1) * STEPS_PER_EPOCH]
        _train(ref, ref_opt, ref_sched, part, epoch * STEPS_PER_EPOCH)
        _train(new, new_opt, new_sched, part, epoch * STEPS_PER_EPOCH)
        _assert_same_weights(ref, new)
        assert [g["lr"] for g in ref_opt.param_groups] == [g["lr"] for g in new_opt.param_groups]
    assert not new.whiten.bias.requires_grad and new_opt.param_groups[1]["lr"] == 0.0
    moved = {name for name, p in new.named_parameters() if not torch.equal(p, initial[name])}
    stepped = {id(p) for g in new_opt.param_groups for p in g["params"]}  # all trained, the whitening bias for 1 epoch
    assert moved == {name for name, p in new.named_parameters() if id(p) in stepped} and "whiten.bias" in moved
    # Checkpoints: one state per config group, as before; the same tensors, the same settings (but
    # the kernel choice), the same schedule state.
    _assert_same_optimiser_states(ref_opt.state_dict(), new_opt.state_dict())
    assert [len(s["param_groups"]) for s in new_opt.state_dict()["optimizers"]] == [1, 1, 1, 1]
    assert new_sched.state_dict() == ref_sched.state_dict()


def _roundtrip(state: dict) -> dict:
    """Through a checkpoint file and back, as torch.load(weights_only=True) reads it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("direction", ["old checkpoint into shared", "new checkpoint into separate"])
def test_checkpoints_cross_between_layouts_and_resume_bit_identically(direction):
    """A checkpoint saved by separate optimisers (every checkpoint before groups shared one) loads
    into the shared ones, and the other way round; training then goes on exactly as the saving
    run would have, across the frozen group and its ended schedule."""
    config = _fast_config()
    (ref, ref_opt, ref_sched), (new, new_opt, new_sched) = _pair(config)
    batches = _batches(EPOCHS * STEPS_PER_EPOCH, seed=2)
    cut = 2 * STEPS_PER_EPOCH
    saver, loader = ((ref, ref_opt, ref_sched), (new, new_opt, new_sched)) if direction.startswith("old") else \
        ((new, new_opt, new_sched), (ref, ref_opt, ref_sched))
    model, optimizer, scheduler = saver
    _train(model, optimizer, scheduler, batches[:cut])
    payload = _roundtrip({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict()})
    _train(model, optimizer, scheduler, batches[cut:], cut)  # the saving run, uninterrupted

    resumed, resumed_opt, resumed_sched = loader
    resumed.load_state_dict(payload["model"])
    resumed_opt.load_state_dict(payload["optimizer"])
    resumed_sched.load_state_dict(payload["scheduler"])
    # The kernels stay the loading side's: torch would take the checkpoint's (None before sharing).
    assert [g.get("foreach") for g in resumed_opt.param_groups[1:]] == \
        ([True] * 3 if direction.startswith("old") else [None] * 3)
    _train(resumed, resumed_opt, resumed_sched, batches[cut:], cut)
    _assert_same_weights(model, resumed)
    _assert_same_optimiser_states(optimizer.state_dict(), resumed_opt.state_dict(), ignore=("foreach", "fused"))


def test_a_checkpoint_with_another_number_of_groups_is_one_clear_error():
    config = _fast_config()
    _, (_, optimizer, scheduler) = _pair(config)
    three = {"optimizers": optimizer.state_dict()["optimizers"][:3]}
    with pytest.raises(ConfigError, match="the checkpoint holds 3 optimiser"):
        optimizer.load_state_dict(three)
    with pytest.raises(ConfigError, match="the checkpoint holds 3 schedule"):
        scheduler.load_state_dict({"schedulers": scheduler.state_dict()["schedulers"][:3]})


def test_shared_adam_groups_bit_identical_to_separate():
    """The same for Adam (lenet, two groups with their own lr, betas and weight decay): its step
    counters, moments and weights after 6 steps."""
    raw = read_yaml("configs/lenet.yaml")
    raw["optim"].update(name="adam", lr=2e-3, kwargs={"betas": [0.9, 0.99]}, groups=[
        {"params": ["*.bias"], "name": "adam", "lr": 5e-3, "weight_decay": 1e-4, "kwargs": {"betas": [0.8, 0.95]}}])
    raw["train"].update(batch_size=BATCH, device="cpu", threads=1, precision="fp32", ema_decay=None)
    config = config_from_dict(raw)
    (ref, ref_opt, ref_sched), (new, new_opt, new_sched) = _pair(config)
    assert len(new_opt.optimizers) == 1 and len(new_opt.optimizers[0].param_groups) == 2
    batches = _batches(6, seed=3)
    _train(ref, ref_opt, ref_sched, batches)
    _train(new, new_opt, new_sched, batches)
    _assert_same_weights(ref, new)
    _assert_same_optimiser_states(ref_opt.state_dict(), new_opt.state_dict())


def test_group_kwargs_are_still_checked_and_the_configs_kernels_kept():
    raw = read_yaml("configs/fast.yaml")
    raw["model"]["kwargs"]["widths"] = [8, 16, 16]
    raw["optim"]["groups"][2]["kwargs"] = {"momentum": 0.0, "nesterov": True}
    with pytest.raises(ConfigError, match=r"optim.groups.2.kwargs: Nesterov momentum requires"):
        build_optimizers(model_from_config(config_from_dict(raw), 10), config_from_dict(raw).optim, BATCH)
    raw["optim"]["groups"][2]["kwargs"] = {"momentum": 0.85, "nesterov": True, "foreach": False}
    config = config_from_dict(raw)
    optimizer, _ = build_optimizers(model_from_config(config, 10), config.optim, BATCH)
    # A group that names its kernels: the shared optimiser imposes none on any group.
    assert [g["foreach"] for g in optimizer.optimizers[1].param_groups] == [None, False, None]


def test_fused_shared_sgd_on_the_cpu_close_to_separate(monkeypatch):
    """CUDA's choice (fused, registry.kernel_choice), run on the CPU's fused kernel: fast.yaml's
    groups after 12 steps, close to the separate optimisers'. Not asserted bit for bit: the fused
    kernel may round momentum differently (by 1 ulp for plain momentum on this CPU, after 20 steps
    of random gradients), which is why the CPU runs foreach."""
    from cnnkit.optim import registry

    monkeypatch.setattr(registry, "kernel_choice", lambda name, device: {"fused": True} if name == "sgd" else {})
    config = _fast_config()
    (ref, ref_opt, ref_sched), (new, new_opt, new_sched) = _pair(config)
    assert all(g["fused"] for g in new_opt.optimizers[1].param_groups)
    batches = _batches(EPOCHS * STEPS_PER_EPOCH, seed=4)
    _train(ref, ref_opt, ref_sched, batches)
    _train(new, new_opt, new_sched, batches)
    for (name, a), b in zip(ref.named_parameters(), new.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------- Muon


@pytest.fixture
def fp32_newton_schulz(monkeypatch):
    """Newton–Schulz in fp32 whatever the CPU (bf16 where it has AVX512-BF16/AMX), for tight comparisons."""
    monkeypatch.setattr(muon_module, "bf16_native", lambda device: False)


def _banks(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    return params, grads


def _muon_steps(params, grads, **kwargs):
    opt = Muon(params, lr=0.1, momentum=0.6, **kwargs)
    for step in grads:
        for p, g in zip(params, step, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("native_bf16", [False, True], ids=["fp32", "bf16"])
def test_stacked_banks_match_one_by_one(monkeypatch, native_bf16):
    """Same-shape banks in one batched chain, a different-shape one alone: the same steps as bank by
    bank, to rounding (a batched matmul may block the sums differently)."""
    monkeypatch.setattr(muon_module, "bf16_native", lambda device: native_bf16)
    shapes = [(16, 8, 3, 3), (16, 8, 3, 3), (16, 8, 3, 3), (8, 4, 3, 3)]
    one = _muon_steps(*_banks(shapes), stack=False)
    stacked = _muon_steps(*_banks(shapes), stack=True)
    tolerance = dict(rtol=0, atol=2e-2 * 0.1) if native_bf16 else dict(rtol=1e-5, atol=1e-6)
    for a, b in zip(one, stacked, strict=True):
        torch.testing.assert_close(a, b, **tolerance)


def test_stacked_orthogonalize_is_each_matrix_alone():
    g = torch.Generator().manual_seed(0)
    stack = torch.randn(5, 12, 40, generator=g) @ torch.diag(torch.logspace(-2, 1, 40))  # (5, 12, 40)
    together = orthogonalize(stack, steps=5, dtype=torch.float32)
    for k in range(5):
        torch.testing.assert_close(together[k], orthogonalize(stack[k], steps=5, dtype=torch.float32),
                                   rtol=1e-5, atol=1e-6)
        s = torch.linalg.svdvals(together[k])
        assert s.min() > 0.5 and s.max() < 1.3


@pytest.mark.usefixtures("fp32_newton_schulz")
@pytest.mark.parametrize("stack", [False, True])
def test_a_tall_filter_bank_steps(stack):
    """A 1×1 conv with more outputs than inputs (a ResNet's shortcut): its update is orthogonalised on
    the transposed side, and comes back in the parameter's shape (a view of it failed before)."""
    params, grads = _banks([(32, 8, 1, 1), (32, 8, 1, 1)])
    w0 = [p.detach().clone() for p in params]
    after = _muon_steps(params, grads[:1], stack=stack, nesterov=False)
    for w, a, g in zip(w0, after, grads[0], strict=True):
        w = w * (32 ** 0.5 / w.norm())
        expected = w - 0.1 * orthogonalize(g.reshape(32, 8), 3, dtype=torch.float32).reshape(32, 8, 1, 1)
        torch.testing.assert_close(a, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("fp32_newton_schulz")
def test_muon_without_normalisation_decays_the_weights():
    params, grads = _banks([(6, 4, 3, 3), (6, 4, 3, 3)])
    w0 = [p.detach().clone() for p in params]
    after = _muon_steps(params, grads[:1], normalize_weights=False, weight_decay=0.5, nesterov=False)
    for w, a, g in zip(w0, after, grads[0], strict=True):
        expected = w * (1 - 0.1 * 0.5) - 0.1 * orthogonalize(g.reshape(6, -1), 3, dtype=torch.float32).view_as(w)
        torch.testing.assert_close(a, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("fp32_newton_schulz")
def test_compiled_newton_schulz_matches_eager_on_the_cpu(monkeypatch):
    """compile=True forces the compiled chain on the CPU (by default only CUDA compiles it): the
    same steps to rounding, for a stack and a lone bank of another shape."""
    monkeypatch.setattr(muon_module, "_COMPILED", {})
    shapes = [(8, 4, 3, 3), (8, 4, 3, 3), (16, 8, 3, 3)]
    eager = _muon_steps(*_banks(shapes), stack=True, compile=False)
    compiled = _muon_steps(*_banks(shapes), stack=True, compile=True)
    assert "fn" in muon_module._COMPILED
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_muon_defaults_stack_and_compile_only_off_the_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not muon_module._stacks(cpu, None) and muon_module._stacks(cuda, None)
    assert muon_module._stacks(cpu, True) and not muon_module._stacks(cuda, False)
    assert muon_module._orthogonalizer(cpu, None) is orthogonalize
    assert muon_module._orthogonalizer(cpu, True) is muon_module._compiled


# ---------------------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_cuda_fused_shared_sgd_and_compiled_stacked_muon_track_the_plain_paths(monkeypatch):
    """On CUDA the defaults are the fast paths (fused SGD, stacked and compiled bf16 Newton–Schulz):
    after 12 steps of fast.yaml's groups, against separate optimisers with torch's defaults
    (foreach) and Muon bank by bank, eager. Close, not equal: fused and foreach SGD may round
    differently, and so do a batched and a single bf16 matmul chain."""
    monkeypatch.setattr(muon_module, "_COMPILED", {})
    config = _fast_config()
    torch.manual_seed(0)
    ref = model_from_config(config, 10).cuda()
    new = copy.deepcopy(ref)
    ref_opt, ref_sched = _separate(ref, config)
    new_opt, new_sched = _shared(new, config)
    for group in ref_opt.optimizers[0].param_groups:
        group.update(stack=False, compile=False)
    assert all(g["fused"] for g in new_opt.optimizers[1].param_groups)
    batches = [(x.cuda(), y.cuda()) for x, y in _batches(EPOCHS * STEPS_PER_EPOCH, seed=5)]
    _train(ref, ref_opt, ref_sched, batches)
    _train(new, new_opt, new_sched, batches)
    assert "fn" in muon_module._COMPILED  # the shared Muon's chain was the compiled one
    for (name, a), b in zip(ref.named_parameters(), new.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3, msg=name)


@cuda
def test_cuda_optimiser_step_never_waits_on_the_device():
    """The shared optimisers' step (fused SGD, Muon's foreach ops and stacked banks) reads nothing
    back to the host. Newton–Schulz eager here: under the audit's dispatch mode dynamo would trace
    the compiled chain anew, and that graph has no host read anyway (its guards check shapes)."""
    from host_syncs import HostSyncAudit

    config = _fast_config()
    torch.manual_seed(0)
    model = model_from_config(config, 10).cuda()
    optimizer, scheduler = _shared(model, config)
    optimizer.optimizers[0].param_groups[0]["compile"] = False
    x, y = (t.cuda() for t in _batches(1, seed=6)[0])
    for _ in range(2):  # momentum buffers made, kernels warm
        _step(torch.nn.functional.cross_entropy(model(x), y), model, optimizer, scheduler, None, None, None)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    torch.cuda.synchronize()
    with HostSyncAudit("cuda") as audit:
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    assert audit.events == []
