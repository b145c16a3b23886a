"""docs/stems.md's table: params, MACs and head map of each stem family's examples, before/after the stem.

On one 32×32 image, before and after `model.cifar_stem` (cnnkit.models.stems.adapt_stem).

    python scripts/stem_macs.py [--only resnet] [--classes 10]

Each example of cnnkit.models.stems.STEM_FAMILIES is built without weights (torchvision's
get_model, timm's create_model), traced with cnnkit.shapes.trace_model on a 3×32×32 input, adapted
and traced again. The columns: parameters (and the change, in brackets), multiply-accumulates
before and after, and the H×W of the map entering the head's global pooling, before → after. A
markdown table on stdout; models whose library is missing (timm) are left out with a note on
stderr. It measures, it does not assert (tests/test_stems.py does, for the small ones).
"""

from __future__ import annotations

import argparse
import sys
import warnings


def build(name: str, num_classes: int):
    """'torchvision:resnet18' or 'timm:resnet18', without weights."""
    source, _, model = name.partition(":")
    if source == "timm":
        import timm

        return timm.create_model(model, pretrained=False, num_classes=num_classes)
    import torchvision

    return torchvision.models.get_model(model, weights=None, num_classes=num_classes)


def head_map(report) -> str:
    """H×W entering the last global pooling (adaptive pooling, or x.mean() over H and W): the map the
    classifier is made from."""
    pools = [row for row in report.layers
             if len(row.input) == 3 and ("adaptive" in row.type.lower() or row.type.endswith(".mean"))]
    if not pools:
        return "?"
    return "×".join(str(d) for d in pools[-1].input[-2:])


def measure(name: str, num_classes: int) -> dict:
    from cnnkit.models.stems import adapt_stem
    from cnnkit.shapes import trace_model

    model = build(name, num_classes)
    figures = {}
    for when in ("before", "after"):
        if when == "after":
            adapt_stem(model, name)
        report = trace_model(model, (3, 32, 32))
        figures[when] = {"params": sum(p.numel() for p in model.parameters()), "macs": report.macs,
                         "map": head_map(report)}
    return figures


def millions(n: int) -> str:
    return f"{n / 1e6:,.1f}M" if n >= 1e6 else f"{n / 1e6:.2f}M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="families whose name contains this (case-insensitive)")
    parser.add_argument("--classes", type=int, default=10, help="num_classes the models are built with")
    args = parser.parse_args()

    import torch

    from cnnkit.models.stems import STEM_FAMILIES

    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    print("| family | model | what changes | params | MACs before | MACs after | × | head map |")
    print("|---|---|---|---|---|---|---|---|")
    for family in STEM_FAMILIES:
        if args.only.lower() not in family.name.lower():
            continue
        for name in family.examples:
            try:
                figures = measure(name, args.classes)
            except ModuleNotFoundError as exc:
                print(f"{name}: skipped ({exc})", file=sys.stderr)
                continue
            before, after = figures["before"], figures["after"]
            params = millions(before["params"])
            if after["params"] != before["params"]:
                params += f" ({after['params'] - before['params']:+,})"
            ratio = after["macs"] / before["macs"]
            print(f"| {family.name} | `{name}` | {family.change} | {params} | {millions(before['macs'])} "
                  f"| {millions(after['macs'])} | {ratio:.1f} | {before['map']} → {after['map']} |")


if __name__ == "__main__":
    main()
