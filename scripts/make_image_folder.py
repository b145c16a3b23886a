"""Build a small image folder of "your own" pictures from part of the CIFAR-10 copy: a few classes,
upscaled (bicubic) to 64×64 and written as PNG, in the layout `data.dataset: imagefolder` reads.

    python scripts/make_image_folder.py --out ../photos3            # cat, dog, horse: 1000 + 300 each
    cnnkit train --config configs/imagefolder.yaml --data-root ../photos3 --set data.input_size=[64,64]

It is how docs/data.md measures the image-folder path on real pictures: the pictures are CIFAR-10's
(so a model cannot see more in them at 64×64 than at 32×32; what changes is the arithmetic the
model does), the layout, formats and decoding are those of a user's own folder. The first files of
each class by name are taken (train/ from the copy's train/, test/ from its test/), so the same
arguments always give the same folder. Refuses to write into a folder that is not empty.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=os.environ.get("CNNKIT_DATA") or str(DEFAULT_SOURCE),
                        help="a CIFAR-10 image folder (train/<class>/*.jpg, test/<class>/*.jpg); default CNNKIT_DATA, "
                             "else ../shared/data/cifar10 beside the checkout")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    parser.add_argument("--classes", nargs="+", default=["cat", "dog", "horse"])
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=300)
    parser.add_argument("--val-per-class", type=int, default=0,
                        help="also write val/<class>/ from the next files of the source's train/ (default: none)")
    parser.add_argument("--size", type=int, default=64, help="side of the square PNGs written (default 64)")
    args = parser.parse_args()

    from PIL import Image

    source, out = Path(args.source).expanduser(), Path(args.out).expanduser()
    if not (source / "train").is_dir() or not (source / "test").is_dir():
        print(f"error: {source} is not a CIFAR-10 image folder (train/ and test/); pass --source", file=sys.stderr)
        return 2
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"error: {out} exists and is not an empty folder; choose another --out", file=sys.stderr)
        return 2
    plan = [("train", "train", 0, args.train_per_class),
            ("val", "train", args.train_per_class, args.val_per_class),
            ("test", "test", 0, args.test_per_class)]
    for name in args.classes:
        for split, _, _, _ in plan:
            if not (source / _src(split, plan) / name).is_dir():
                print(f"error: {source / _src(split, plan) / name} does not exist; --classes must be CIFAR-10 "
                      "classes of the source", file=sys.stderr)
                return 2
    written = 0
    for split, from_split, first, count in plan:
        for name in args.classes if count else ():
            files = sorted((source / from_split / name).iterdir())[first: first + count]
            if len(files) < count:
                print(f"error: {source / from_split / name} has {len(files)} files from #{first}, "
                      f"fewer than the {count} asked", file=sys.stderr)
                return 2
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for path in files:
                with Image.open(path) as im:
                    im.convert("RGB").resize((args.size, args.size), Image.Resampling.BICUBIC).save(
                        folder / f"{path.stem}.png")
                written += 1
    counts = ", ".join(f"{split} {count * len(args.classes):,}" for split, _, _, count in plan if count)
    print(f"wrote {written:,} {args.size}×{args.size} PNGs to {out} ({counts}; classes {', '.join(args.classes)})")
    return 0


def _src(split: str, plan) -> str:
    return next(from_split for name, from_split, _, _ in plan if name == split)


if __name__ == "__main__":
    raise SystemExit(main())
