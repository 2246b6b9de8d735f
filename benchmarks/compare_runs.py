"""Two pretraining runs of the same recipe side by side, interval by interval: how far the loss
of one strays from the other's, and whether either's collapse monitor read collapse. Made for
bf16 against fp32 (the same seed and data, `--precision bf16` and `--precision fp32`):

    scdfast pretrain --preset tiny --precision fp32 --run-dir runs/fp32
    scdfast pretrain --preset tiny --precision bf16 --run-dir runs/bf16
    python benchmarks/compare_runs.py runs/fp32 runs/bf16 --tolerance 0.02

Reads each run's steps.csv (the mean loss of every log interval and the collapse readings of its
last batch). Exit status 1 when an interval's loss differs by more than --tolerance (relative)
or a run's monitor read collapse.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

from scdfast.train.collapse import COLLAPSE_STD, HEADS


def read_steps(run_dir: str) -> dict[int, dict]:
    path = os.path.join(run_dir, "steps.csv")
    if not os.path.isfile(path):
        raise SystemExit(f"{run_dir}: no steps.csv (not a pretraining run directory)")
    with open(path, newline="") as f:
        return {int(row["step"]): row for row in csv.DictReader(f)}


def smallest_std(row: dict) -> float:
    return min(float(row[f"std_{head}"]) for head in HEADS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", help="the run compared against (fp32)")
    parser.add_argument("other", help="the run compared (bf16)")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest relative difference of an interval's mean loss (default 0.02)")
    args = parser.parse_args(argv)
    ref, other = read_steps(args.reference), read_steps(args.other)
    steps = sorted(set(ref) & set(other))
    if not steps:
        raise SystemExit("the runs share no logged step")
    print("| step | loss, reference | loss, other | relative difference | smallest head std x sqrt(dim), "
          "reference / other |\n|---|---|---|---|---|")
    worst = 0.0
    for step in steps:
        a, b = float(ref[step]["loss"]), float(other[step]["loss"])
        worst = max(worst, abs(b - a) / abs(a))
        print(f"| {step} | {a:.4f} | {b:.4f} | {(b - a) / a:+.2%} | {smallest_std(ref[step]):.3f} / "
              f"{smallest_std(other[step]):.3f} |")
    collapsed = [name for name, rows in ((args.reference, ref), (args.other, other))
                 if any(smallest_std(row) < COLLAPSE_STD for row in rows.values())]
    print(f"\n{len(steps)} intervals to step {steps[-1]}: largest relative loss difference {worst:.2%} "
          f"(tolerance {args.tolerance:.0%}); collapse read by: {', '.join(collapsed) or 'neither run'}")
    return 0 if worst <= args.tolerance and not collapsed else 1


if __name__ == "__main__":
    sys.exit(main())
