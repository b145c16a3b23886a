"""What the optimiser's paths cost on this machine: the measurements behind cnnkit/optim's choices.

    python scripts/bench_optim.py [--config configs/fast.yaml] [--device cpu] [--threads 1] [--compile]
    python scripts/bench_optim.py --against HEAD [--steps 20]     # whole steps, cnnkit/optim at HEAD vs now

On the config's model (its parameters and optimiser groups; gradients are random, the timings do
not depend on them), milliseconds per optimiser step, interleaved over rounds (this machine's speed
drifts within minutes) and the best round of each printed:

- the config's groups as separate optimisers, each with torch's default kernels (how cnnkit ran
  them before groups shared one), against the shared optimisers `build_optimizers` makes now;
- the SGD groups alone that way, and shared with foreach or fused kernels (registry.kernel_choice);
- Muon's Newton–Schulz over the model's filter banks one by one against same-shape banks stacked
  (muon._stacks), and with `--compile`, against `torch.compile`d (muon._orthogonalizer; the first,
  compiling, calls are timed apart).
With `--against REV` it times the whole training step instead (forward, loss, backward, the
config's optimisers and schedule, on one random batch of the config's size and precision) with
cnnkit/optim as git has it at REV (read with `git show`, nothing checked out) and as the working tree
has it, steps interleaved A B B A, and says whether the two models' weights ended identical.
It measures, it does not assert.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fast.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override, as cnnkit's --set")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="time each path for at least this long a round")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd Newton–Schulz")
    parser.add_argument("--against", metavar="REV", help="time whole steps against cnnkit/optim at this git revision")
    parser.add_argument("--steps", type=int, default=20, help="with --against: timed steps of each")
    args = parser.parse_args()

    import torch

    from cnnkit.build import model_from_config
    from cnnkit.config import load_config
    from cnnkit.device import bf16_native, setup_runtime
    from cnnkit.optim import muon
    from cnnkit.optim.registry import OptimizerSet, build_optimizer, build_optimizers, plan_groups

    config = load_config(args.config, [f"train.device={args.device}", *args.set])
    train = config.train
    runtime = setup_runtime(train.device, train.precision, args.threads or train.threads, train.channels_last)
    device = runtime.device
    torch.manual_seed(0)
    model = model_from_config(config, 10).to(device, memory_format=runtime.memory_format)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if args.against:
        whole_steps(args, config, runtime, model, optim_at(args.against), sync)
        return

    def per_call(fn) -> float:
        fn()
        sync()
        calls, start = 0, time.perf_counter()
        while calls < 5 or time.perf_counter() - start < args.seconds:
            fn()
            calls += 1
        sync()
        return 1000 * (time.perf_counter() - start) / calls

    plans = plan_groups(model, config.optim, train.batch_size)
    separate = OptimizerSet([build_optimizer(p.params, p.name, p.lr, p.weight_decay, p.kwargs, p.where)
                             for p in plans])
    shared, _ = build_optimizers(model, config.optim, train.batch_size)
    paths = {"separate optimisers (before)": separate.step, "shared optimisers (now)": shared.step}

    sgd = [p for p in plans if p.name == "sgd"]
    if sgd:
        def sgd_groups(**kernels):
            groups = [dict(params=p.params, lr=p.lr, weight_decay=p.weight_decay, **p.kwargs) for p in sgd]
            return torch.optim.SGD(groups, **kernels).step
        paths[f"{len(sgd)} SGD group(s) separate"] = OptimizerSet(
            [build_optimizer(p.params, p.name, p.lr, p.weight_decay, p.kwargs, p.where) for p in sgd]).step
        paths["  shared, foreach"] = sgd_groups(foreach=True)
        paths["  shared, fused"] = sgd_groups(fused=True)

    banks = [p.grad for p in params if p.ndim == 4 and any(p is q for g in shared.param_groups
                                                             if "ns_steps" in g for q in g["params"])]
    if banks:
        dtype = torch.bfloat16 if bf16_native(device) else torch.float32
        matrices = [b.reshape(len(b), -1) for b in banks]
        shapes: dict[tuple, list[torch.Tensor]] = {}
        for m in matrices:
            shapes.setdefault(tuple(m.shape), []).append(m)
        stacks = [ms[0] if len(ms) == 1 else torch.stack(ms) for ms in shapes.values()]

        def newton_schulz(fn, stacked: bool):
            return lambda: [fn(m, 3, dtype=dtype) for m in (stacks if stacked else matrices)]

        label = f"Newton–Schulz, {len(matrices)} banks ({len(shapes)} shapes), {str(dtype).removeprefix('torch.')}"
        paths[label + ", one by one"] = newton_schulz(muon.orthogonalize, False)
        if len(shapes) < len(matrices):
            paths["  same shapes stacked"] = newton_schulz(muon.orthogonalize, True)
        if args.compile:
            compiled = torch.compile(muon.orthogonalize, dynamic=None)
            start = time.perf_counter()
            newton_schulz(compiled, True)()
            sync()
            print(f"torch.compile of Newton–Schulz: {time.perf_counter() - start:.1f} s for its first calls")
            paths["  compiled"] = newton_schulz(compiled, True)

    best = {name: float("inf") for name in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            best[name] = min(best[name], per_call(fn))
    print(f"{args.config} on {runtime.describe()}: ms per call, best of {args.rounds} interleaved rounds")
    for name, ms in best.items():
        print(f"  {name:<60} {ms:8.3f}")


def optim_at(rev: str):
    """cnnkit/optim as git has it at `rev`, importable beside today's as `optim_at_rev`."""
    folder = Path(tempfile.mkdtemp()) / "optim_at_rev"
    folder.mkdir()
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "cnnkit/optim/"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        text = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout
        (folder / Path(name).name).write_text(text.replace("cnnkit.optim.", "optim_at_rev."))
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module("optim_at_rev.registry")


def whole_steps(args, config, runtime, model, before, sync) -> None:
    import copy

    import torch
    import torch.nn.functional as F

    from cnnkit.optim import registry

    train = config.train
    device = runtime.device
    x = torch.randn(train.batch_size, 3, 32, 32, device=device).contiguous(memory_format=runtime.memory_format)
    y = torch.randint(0, 10, (train.batch_size,), device=device)
    runs = {}
    for name, reg in ((f"{args.against}", before), ("working tree", registry)):
        twin = copy.deepcopy(model)
        for p in twin.parameters():
            p.grad = None
        optimizer, plans = reg.build_optimizers(twin, config.optim, train.batch_size)
        runs[name] = (twin, optimizer, reg.build_schedules(optimizer, plans, config.schedule, 25, train.epochs))

    def step(twin, optimizer, scheduler) -> None:
        with runtime.autocast():
            out = twin(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=train.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    for run in runs.values():  # warm: allocator, oneDNN primitives, momentum buffers
        step(*run)
        step(*run)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(args.steps):
        for name in names if i % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            step(*runs[name])
            sync()
            times[name].append(1000 * (time.perf_counter() - start))
    print(f"{args.config}, batch {train.batch_size}, on {runtime.describe()}: whole steps, interleaved")
    for name, ms in times.items():
        print(f"  cnnkit/optim at {name:<14} median {statistics.median(ms):8.1f} ms/step, "
              f"mean {statistics.mean(ms):8.1f}, min {min(ms):8.1f} ({len(ms)} steps)")
    (a, *_), (b, *_) = runs.values()
    same = all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    print(f"  weights after the same {args.steps + 2} steps: {'identical' if same else 'different'}")


if __name__ == "__main__":
    main()
