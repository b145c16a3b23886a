"""How fast one training batch goes forward and backward when it is taken in chunks (train.micro_batch).

On a CPU a chunk whose activations stay in cache can be faster per image than the whole batch; the
gradients are the same sum either way (BatchNorm aside: each chunk is normalised by its own
statistics). Random images, the config's model, precision, memory format and batch size; no
optimiser step, so only the forward and backward passes are compared. Rounds alternate the chunk
sizes, and the best round of each is printed (this machine's speed drifts within minutes).

    python scripts/bench_micro_batch.py --config configs/fast.yaml --chunks 2000 500 250
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fast.yaml")
    parser.add_argument("--chunks", type=int, nargs="+", default=None,
                        help="chunk sizes to time (default: the whole batch, 1/4 and 1/8 of it)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="config override, as cnnkit's --set")
    args = parser.parse_args()

    import torch

    from cnnkit.build import model_from_config
    from cnnkit.config import load_config
    from cnnkit.device import setup_runtime

    config = load_config(args.config, ["train.device=cpu", *args.set])  # the CPU unless --set says otherwise
    train = config.train
    runtime = setup_runtime(train.device, train.precision, train.threads, train.channels_last)
    model = model_from_config(config).to(runtime.device, memory_format=runtime.memory_format).train()
    batch = train.batch_size
    chunks = args.chunks or [batch, batch // 4, batch // 8]
    images = torch.randn(batch, 3, 32, 32, device=runtime.device).to(memory_format=runtime.memory_format)
    labels = torch.randint(0, 10, (batch,), device=runtime.device)

    def forward_backward(size: int) -> None:
        for lo in range(0, batch, size):
            with runtime.autocast():
                loss = torch.nn.functional.cross_entropy(model(images[lo: lo + size]).float(), labels[lo: lo + size])
            (loss * (min(size, batch - lo) / batch)).backward()

    best: dict[int, float] = {}
    for _ in range(args.rounds):
        for size in chunks:
            forward_backward(size)  # warm: allocator and oneDNN kernels for this shape
            start = time.perf_counter()
            forward_backward(size)
            best[size] = min(best.get(size, float("inf")), time.perf_counter() - start)
    print(f"{args.config}: batch {batch}, {runtime.describe()}")
    whole = best.get(batch)
    for size in chunks:
        ratio = f"  {whole / best[size]:.2f}× the whole batch's speed" if whole and size != batch else ""
        print(f"chunks of {size:>5}: {best[size]:.3f} s a batch, {batch / best[size]:,.0f} img/s{ratio}")


if __name__ == "__main__":
    main()
