"""Benchmark cnnkit's training on this machine, in one run: time-to-accuracy and trainer efficiency.

For each config: `cnnkit train` in a subprocess — training seconds (the steps alone) and wall
seconds from launch to the first epoch whose test accuracy reaches the config's target, the final
test accuracy with and without TTA (flip + 1-pixel shifts), training images/s and peak memory —
and a bare step loop just before and just after it over the same model, batch, device and
precision (data already on the device as one normalised batch, no augmentation, no schedule, no
EMA, no host syncs). cnnkit's img/s over the two bare loops' mean is the "trainer efficiency":
what the trainer's own work costs. (`scripts/profile_step.py` measures it within one process.)

The seed's textbook loop (per-image ToTensor DataLoader, batch 8, Adam 1e-3, LeNet) runs for
`--textbook-epochs` as the day's reference: this machine's speed drifts by up to 1.5× from day to
day, so absolute seconds are recorded beside that epoch time and compared as ratios.

    python scripts/bench_train.py --configs configs/fast.yaml configs/lenet.yaml configs/bn_cnn.yaml
    python scripts/bench_train.py --configs configs/fast.yaml --device cuda --no-textbook   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# The accuracy each shipped config is timed to: the targets its issue set.
TARGETS = {"lenet": 0.61, "bn_cnn": 0.78, "fast": 0.90}


def run_cnnkit_train(config: str, out_dir: Path, target: float, extra: list[str]) -> dict:
    name = Path(config).stem
    from cnnkit.config import load_config

    # The config's own TTA, or airbench's flip_translate for a config that has none.
    tta = [] if load_config(config).train.tta != "none" else ["--set", "train.tta=flip_translate"]
    cmd = [sys.executable, "-m", "cnnkit", "train", "--config", config, "--name", name, "--overwrite", "--quiet",
           "--set", f"output.dir={out_dir}", "--set", "train.test_every_epoch=true", *tta, *extra]
    launched = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait4 gives this child's own peak RSS (ru_maxrss, KiB on Linux).
    _, status, usage = os.wait4(proc.pid, 0)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"cnnkit train --config {config} failed:\n{stderr[-2000:]}")
    run_dir = out_dir / name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    reached = next((r for r in rows if r.get("test_acc", 0) >= target), None)
    final_line = next(line for line in stdout.splitlines() if line.startswith("best.pt"))
    tta_line = next((line for line in stdout.splitlines() if line.startswith("with TTA")), None)
    # Steady state: the first epoch carries one-time costs (allocator, oneDNN/cuDNN kernel choice).
    steady = sorted(r["images_per_s"] for r in (rows[1:] or rows))
    return {
        "config": config, "run_dir": str(run_dir), "epochs": len(rows), "target": target,
        "train_images_per_s": steady[len(steady) // 2],
        "train_s": sum(r["epoch_s"] for r in rows),
        "time_to_target_s": (reached["time"] - launched) if reached else None,
        # Of that wall time, the training steps alone (no start-up, evaluation or checkpoints).
        "steps_s_to_target": sum(r["epoch_s"] for r in rows[: reached["epoch"]]) if reached else None,
        "epoch_reaching_target": reached["epoch"] if reached else None,
        "peak_test_acc": max(r["test_acc"] for r in rows),
        "final_test_acc": float(final_line.split("test accuracy ")[1].split(",")[0]),
        "final_tta_acc": float(tta_line.split("test accuracy ")[1].split(",")[0]) if tta_line else None,
        "wall_s": time.time() - launched, "setup_s": _setup_seconds(stdout),
        "peak_rss_mib": usage.ru_maxrss / 1024, "stdout_tail": stdout.splitlines()[-4:],
        "rows": rows, "launched": launched,
    }


def _setup_seconds(stdout: str) -> float | None:
    line = next((x for x in stdout.splitlines() if "; set-up " in x), None)
    return float(line.rsplit("set-up ", 1)[1].split(" s")[0]) if line else None


def bare_loop(config_path: str, extra_sets: list[str], device: str, seconds: float) -> dict:
    """Images/s of the plainest loop over the config's model, batch, device and precision: one
    normalised batch already on the device, forward, loss, backward, the config's optimisers; the
    clock read only after the device has finished."""
    import torch
    import torch.nn.functional as F

    from cnnkit.build import model_from_config
    from cnnkit.config import load_config
    from cnnkit.device import setup_runtime
    from cnnkit.optim.registry import build_optimizers

    config = load_config(config_path, [*extra_sets, f"train.device={device}"])
    train = config.train
    runtime = setup_runtime(train.device, train.precision, train.threads, train.channels_last)
    torch.manual_seed(0)
    model = model_from_config(config, 10).to(runtime.device, memory_format=runtime.memory_format)
    optimizer, _ = build_optimizers(model, config.optim, train.batch_size)
    x = torch.randn(train.batch_size, 3, 32, 32, device=runtime.device).contiguous(memory_format=runtime.memory_format)
    y = torch.randint(0, 10, (train.batch_size,), device=runtime.device)

    def step():
        with runtime.autocast():
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=train.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync():
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    # At least `seconds` of steps: this machine's speed wobbles by ±10% over a few seconds.
    steps, t0 = 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - t0 < seconds:
        step()
        steps += 1
        if steps % 10 == 0:
            sync()
    sync()
    seconds = time.perf_counter() - t0
    return {"images_per_s": steps * train.batch_size / seconds, "batch": train.batch_size, "steps": steps,
            "precision": runtime.precision, "device": str(runtime.device), "threads": runtime.threads}


def measure_data_and_eval(run_dir: Path, data_root: str | None) -> dict:
    """The warm-cache data stage and eval in this process (imports excluded), then eval end to end."""
    from cnnkit.config import config_from_dict
    from cnnkit.data import prepare_data
    from cnnkit.evaluation.evaluate import evaluate_checkpoint
    from cnnkit.training.checkpoint import load_checkpoint

    config = config_from_dict(load_checkpoint(run_dir / "best.pt")["config"])
    start = time.perf_counter()
    prepare_data(config, data_root)
    data_stage_s = time.perf_counter() - start
    start = time.perf_counter()
    report = evaluate_checkpoint(run_dir / "best.pt", data_root=data_root)
    eval_in_process_s = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnkit", "eval", "--checkpoint", str(run_dir / "best.pt"), "--json"],
                   check=True, capture_output=True)
    eval_command_s = time.perf_counter() - start
    return {"data_stage_cached_s": data_stage_s, "eval_s_in_process": eval_in_process_s,
            "eval_images_per_s": report.result.n / report.result.seconds, "eval_command_s": eval_command_s,
            "eval_accuracy": report.result.accuracy}


def textbook_loop(model_name: str, data_root: str | None, target: float, max_epochs: int, max_seconds: float) -> dict:
    """The seed's recipe: per-image PIL → ToTensor in a DataLoader, batch 8, Adam 1e-3, CrossEntropy."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import Compose, ToTensor

    from cnnkit.data import load_cifar10, resolve_data_root
    from cnnkit.models import build_model

    torch.set_num_threads(os.cpu_count() or 1)
    data = load_cifar10(resolve_data_root(data_root, None))

    class SeedStyle(Dataset):
        # What torchvision's CIFAR10 does per item: an HWC uint8 array → PIL image → transform.
        def __init__(self, split):
            self.images = split.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
            self.labels = split.labels.tolist()
            self.transform = Compose([ToTensor()])

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(np.ascontiguousarray(self.images[i]))), self.labels[i]

    torch.manual_seed(0)
    model = build_model(model_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_set, test_set = SeedStyle(data.train), SeedStyle(data.test)
    start = time.time()
    epochs = []
    for epoch in range(max_epochs):
        model.train()
        t0 = time.time()
        for x, y in DataLoader(train_set, batch_size=8, shuffle=True):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        train_s = time.time() - t0
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in DataLoader(test_set, batch_size=8):
                correct += (model(x).argmax(1) == y).sum().item()
        acc = correct / len(test_set)
        epochs.append({"epoch": epoch + 1, "test_acc": acc, "train_s": train_s, "elapsed_s": time.time() - start})
        print(f"  textbook {model_name} epoch {epoch + 1}: test_acc {acc:.4f}, train {train_s:.1f} s, "
              f"elapsed {time.time() - start:.1f} s", flush=True)
        if acc >= target or time.time() - start > max_seconds:
            break
    reached = next((e for e in epochs if e["test_acc"] >= target), None)
    return {"epochs": epochs, "time_to_target_s": reached["elapsed_s"] if reached else None,
            "train_images_per_s": len(train_set) / (sum(e["train_s"] for e in epochs) / len(epochs)),
            "reached": reached is not None}


def cpu_choices(model_name: str, seconds: float) -> list[dict]:
    """Training images/s of each CPU option on one real-sized batch of random data."""
    import torch
    import torch.nn.functional as F

    from cnnkit.models import build_model

    results = []
    cores = os.cpu_count() or 1
    options = [(t, cl, comp, bs) for t in sorted({1, cores}) for cl in (False, True) for comp in (False, True)
               for bs in (256,)]
    for threads, channels_last, compiled, batch in options:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = build_model(model_name).to(memory_format=fmt)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        step_model = torch.compile(model) if compiled else model
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (batch,))
        t0 = time.time()
        try:
            for _ in range(3):  # warm-up (and compilation)
                loss = F.cross_entropy(step_model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        except Exception as exc:  # report the option as failed rather than abort the benchmark
            results.append({"model": model_name, "threads": threads, "channels_last": channels_last,
                            "compile": compiled, "error": str(exc).splitlines()[0][:120]})
            continue
        warmup_s = time.time() - t0
        n, t0 = 0, time.time()
        while time.time() - t0 < seconds:
            loss = F.cross_entropy(step_model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            n += batch
        results.append({"model": model_name, "threads": threads, "channels_last": channels_last,
                        "compile": compiled, "batch": batch, "images_per_s": n / (time.time() - t0),
                        "warmup_s": warmup_s})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/fast.yaml", "configs/lenet.yaml"])
    # "%%": argparse %-formats help strings.
    parser.add_argument("--target", type=float, default=None,
                        help="test accuracy to time (default: per model, " +
                        ", ".join(f"{k} {v * 100:.0f}%%" for k, v in TARGETS.items()) + ")")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (for cnnkit train and the bare loop)")
    parser.add_argument("--data-root", default=None, help="CIFAR-10 folder (default: CNNKIT_DATA)")
    parser.add_argument("--no-textbook", action="store_true", help="skip the seed's loop (the day's reference)")
    parser.add_argument("--textbook-epochs", type=int, default=1)
    parser.add_argument("--bare-seconds", type=float, default=20.0, help="how long to time the bare loop")
    parser.add_argument("--choices", action="store_true", help="also measure CPU fast-path options")
    parser.add_argument("--choice-seconds", type=float, default=4.0)
    parser.add_argument("--set", action="append", default=[], help="extra --set for every cnnkit train")
    parser.add_argument("--out", default="bench-results/bench_train.json")
    args = parser.parse_args()
    if args.data_root:
        os.environ["CNNKIT_DATA"] = args.data_root

    from cnnkit.config import load_config
    from cnnkit.fileio import atomic_write_text

    out_dir = ROOT / "bench-results" / "runs"
    sets = [*args.set, f"train.device={args.device}"]
    results = {"machine": {"cpus": os.cpu_count(), "device": args.device}, "models": []}
    if not args.no_textbook:
        print(f"the day's reference: the seed's textbook loop, {args.textbook_epochs} epoch(s) ...", flush=True)
        book = textbook_loop("lenet", args.data_root, 1.0, args.textbook_epochs, 1e9)
        results["textbook"] = book
        results["textbook_epoch_s"] = book["epochs"][0]["train_s"]
    for config in args.configs:
        model_name = load_config(config).model.name
        target = args.target or TARGETS.get(model_name, 0.5)
        # The bare loop runs just before and just after the training run and the two are averaged:
        # this machine's speed drifts by ±10% within minutes, and a bare loop timed on one side only
        # puts all of that drift into the efficiency.
        print(f"bare step loop for {model_name}, before the run ({args.bare_seconds:.0f} s) ...", flush=True)
        bare_before = bare_loop(config, args.set, args.device, args.bare_seconds)
        print(f"cnnkit train --config {config} ...", flush=True)
        entry = run_cnnkit_train(config, out_dir, target, [item for s in sets for item in ("--set", s)])
        print(f"bare step loop for {model_name}, after the run ({args.bare_seconds:.0f} s) ...", flush=True)
        bare_after = bare_loop(config, args.set, args.device, args.bare_seconds)
        entry.update(measure_data_and_eval(Path(entry["run_dir"]), args.data_root))
        entry["model"] = model_name
        entry["bare"] = {**bare_after, "before_images_per_s": bare_before["images_per_s"],
                         "after_images_per_s": bare_after["images_per_s"],
                         "images_per_s": (bare_before["images_per_s"] + bare_after["images_per_s"]) / 2}
        entry["trainer_efficiency"] = entry["train_images_per_s"] / entry["bare"]["images_per_s"]
        results["models"].append(entry)
    if args.choices:
        results["cpu_choices"] = [row for config in args.configs
                                  for row in cpu_choices(load_config(config).model.name, args.choice_seconds)]
    print_tables(results)
    out = ROOT / args.out
    atomic_write_text(out, json.dumps(results, indent=2))
    print(f"saved {out}")


def _bare_cell(bare: dict) -> str:
    """The mean of the bare loops before and after the run, with the two beside it."""
    if "before_images_per_s" not in bare:
        return f"{bare['images_per_s']:,.0f}"
    return f"{bare['images_per_s']:,.0f} ({bare['before_images_per_s']:,.0f}/{bare['after_images_per_s']:,.0f})"


# The seed's article (004) trained its LeNet for 7 epochs of this loop to reach 61% test accuracy.
SEED_EPOCHS_TO_61 = 7


def seed_loop_table(results: dict):
    """Training time in units of the day's seed-loop epoch: the machine-independent figure (issue 20
    asks fast.yaml for at most 16 of them), and lenet's speed-up over the seed's 7 epochs to 61%."""
    from rich.table import Table

    ref = results["textbook_epoch_s"]
    table = Table(title=f"against the seed's loop ({ref:.1f} s an epoch today)")
    for col in ("model", "seed-loop epochs to target", "seed-loop epochs (all)", "speed-up to 61% (seed: 7 epochs)"):
        table.add_column(col, justify="right")
    for e in results["models"]:
        to_target = e["steps_s_to_target"]
        speed_up = (f"{SEED_EPOCHS_TO_61 * ref / to_target:.1f}×"
                    if e["model"] == "lenet" and to_target and e["target"] == 0.61 else "-")
        table.add_row(e["model"], f"{to_target / ref:.2f}" if to_target else "not reached",
                      f"{e['train_s'] / ref:.2f}", speed_up)
    return table


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=180)
    ref = f", seed loop {results['textbook_epoch_s']:.1f} s/epoch" if "textbook_epoch_s" in results else ""
    table = Table(title=f"cnnkit training benchmark ({os.cpu_count()} CPUs, device {results['machine']['device']}"
                        f"{ref})")
    for col in ("model", "target", "train s to target", "wall s to target", "epoch", "train s (all)",
                "final test acc", "with TTA", "train img/s", "bare img/s (before/after)", "efficiency",
                "eval cmd s", "peak RSS"):
        table.add_column(col, justify="right")
    fmt_s = lambda v: f"{v:.1f}" if v is not None else "not reached"  # noqa: E731
    for e in results["models"]:
        table.add_row(e["model"], f"{e['target']:.0%}", fmt_s(e["steps_s_to_target"]), fmt_s(e["time_to_target_s"]),
                      str(e["epoch_reaching_target"] or "-"), f"{e['train_s']:.1f}", f"{e['final_test_acc']:.4f}",
                      f"{e['final_tta_acc']:.4f}" if e["final_tta_acc"] is not None else "-",
                      f"{e['train_images_per_s']:,.0f}", _bare_cell(e["bare"]),
                      f"{e['trainer_efficiency']:.2f}", f"{e['eval_command_s']:.2f}", f"{e['peak_rss_mib']:.0f} MiB")
    console.print(table)
    if "textbook_epoch_s" in results:
        console.print(seed_loop_table(results))
    if "cpu_choices" in results:
        choices = Table(title="CPU fast-path options (training, random data)")
        for col in ("model", "threads", "channels_last", "compile", "img/s", "warm-up s"):
            choices.add_column(col, justify="right")
        for row in results["cpu_choices"]:
            choices.add_row(row["model"], str(row["threads"]), str(row["channels_last"]), str(row["compile"]),
                            f"{row['images_per_s']:,.0f}" if "images_per_s" in row else row.get("error", ""),
                            f"{row.get('warmup_s', 0):.1f}")
        console.print(choices)


if __name__ == "__main__":
    main()
