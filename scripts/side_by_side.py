"""airbench94_muon beside a cnnkit recipe, from their own logs: one table of what each reached and how fast.

    python scripts/side_by_side.py --airbench-log OUT/airbench.log --sweep runs/gpu5 [--airbench-wall-s 260]

- airbench: the last `--runs` rows of its table whose epoch is `eval` (the per-run final entries,
  after its warm-up run): TTA accuracy and its own timer (training plus TTA evaluation, its compile
  warm-up excluded). Launch-to-report is the whole process's wall time over the runs, when given.
- cnnkit: each cell of a `cnnkit sweep` folder (one per seed): metrics.jsonl's final entry, with
  `train_s` (the epochs' steps, warm-up excluded) + `tta_s` (the final TTA evaluation) as the figure
  that counts what airbench's timer counts, and `launch_to_report_s`.

Prints mean ± std (sample std, as airbench's `accs.std()`) per column and the gap.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def airbench_rows(log: Path, runs: int) -> list[dict]:
    rows = []
    for line in log.read_text(errors="replace").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1] == "eval":
            rows.append({"tta_acc": float(cells[4]), "timer_s": float(cells[5])})
    if len(rows) < runs:
        raise SystemExit(f"{log}: {len(rows)} final (eval) rows, expected {runs} runs after the warm-up")
    return rows[-runs:]


def cnnkit_rows(sweep: Path) -> list[dict]:
    rows = []
    for metrics in sorted(sweep.glob("*/metrics.jsonl")):
        final = json.loads(metrics.read_text().splitlines()[-1]).get("final")
        if final is None:
            continue
        rows.append({"cell": metrics.parent.name, "tta_acc": final.get("tta_acc"), "acc": final.get("test_acc"),
                     "timer_s": final["train_s"] + final.get("tta_s", 0.0), "train_s": final["train_s"],
                     "warmup_s": final.get("warmup_s", 0.0), "launch_to_report_s": final["launch_to_report_s"]})
    if not rows:
        raise SystemExit(f"{sweep}: no finished cells (metrics.jsonl with a final entry)")
    return rows


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airbench-log", type=Path, required=True)
    parser.add_argument("--sweep", type=Path, required=True, help="a cnnkit sweep folder (one cell per seed)")
    parser.add_argument("--runs", type=int, default=5, help="airbench runs after its warm-up")
    parser.add_argument("--airbench-wall-s", type=float, default=None,
                        help="airbench's whole process, launch to its last report (warm-up included)")
    args = parser.parse_args()
    ab, ck = airbench_rows(args.airbench_log, args.runs), cnnkit_rows(args.sweep)
    wall = f"{args.airbench_wall_s:.1f} for all {args.runs} (one process)" if args.airbench_wall_s else "—"
    print("| | runs | TTA accuracy (mean ± std) | timer s: training + TTA, warm-up apart | launch → report s |")
    print("|---|---|---|---|---|")
    print(f"| airbench94_muon | {len(ab)} | {mean_std([r['tta_acc'] for r in ab])} | "
          f"{mean_std([r['timer_s'] for r in ab])} | {wall} |")
    print(f"| cnnkit {args.sweep.name} | {len(ck)} | {mean_std([r['tta_acc'] for r in ck if r['tta_acc'] is not None])}"
          f" | {mean_std([r['timer_s'] for r in ck])} | {mean_std([r['launch_to_report_s'] for r in ck])} each |")
    gap_acc = statistics.mean(r["tta_acc"] for r in ck if r["tta_acc"] is not None) - statistics.mean(
        r["tta_acc"] for r in ab)
    ratio = statistics.mean(r["timer_s"] for r in ck) / statistics.mean(r["timer_s"] for r in ab)
    print(f"\ncnnkit − airbench: {100 * gap_acc:+.2f} points of TTA accuracy; "
          f"cnnkit's timer is {ratio:.2f}× airbench's")
    for r in ck:
        print(f"  {r['cell']}: tta {r['tta_acc']}, plain {r['acc']}, train {r['train_s']:.2f} s, "
              f"warm-up {r['warmup_s']:.1f} s, launch → report {r['launch_to_report_s']:.1f} s")


if __name__ == "__main__":
    main()
