"""An NTU-25 encoder on Kinect v1 datasets through the kinect20 joint map, in one resumable command.

Pretrain the tiny preset on NTU-layout data (default: the built-in synthetic generator, the
largest NTU-layout set ../shared holds; or give --checkpoint, e.g. the authors' released
NTU checkpoint), then evaluate it on NW-UCLA, MSR Action3D and UTD-MHAD with
`--joint-map kinect20`, each against a randomly initialised encoder of the same shape:
linear evaluation on standardised features (`scdfast transfer`) and 1-NN retrieval. Every
step is an ordinary `scdfast` command whose run directory lands under --out; finished steps
are skipped on a rerun.

    python benchmarks/cross_layout.py --out runs/cross-layout
"""
from __future__ import annotations

import argparse
import os
import sys

from accuracy import SHARED, Budget, _prepare_step, _pretrain_step, _step

from scdfast.evaluation.reports import merge_tables, read_report
from scdfast.train.rundir import atomic_write

KINECT_V1 = ("nw_ucla", "msr_action3d", "utd_mhad")
PROTOCOLS = {"transfer": ("transfer", ["--standardize"]), "knn": ("knn", ["--k", "1"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/cross-layout", help="where every run goes (default runs/cross-layout)")
    parser.add_argument("--shared", default=SHARED, help="the shared data folder (default ../shared/data)")
    parser.add_argument("--pretrain-data", default="synthetic",
                        help="NTU-layout data to pretrain on: 'synthetic' (default) or a dataset directory")
    parser.add_argument("--checkpoint", help="evaluate this NTU-25 checkpoint instead of pretraining one "
                                             "(scdfast's, or the authors' checkpoint_0450.pth.tar)")
    parser.add_argument("--preset", default="tiny", help="the random-init encoder's and the protocols' preset "
                                                         "(tiny; paper for the authors' checkpoint)")
    parser.add_argument("--budget-minutes", type=float, help="stop before a step once this much time has passed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out, budget = os.path.abspath(args.out), Budget(args.budget_minutes)
    common = ["--device", args.device, "--seed", str(args.seed), "--no-progress"]
    ok = True
    checkpoint = args.checkpoint
    if checkpoint is None:
        ok = _pretrain_step(out, "ntu25", args.pretrain_data, common, budget, None, [])
        checkpoint = os.path.join(out, "pretrain", "ntu25")
    runs = []
    for name in KINECT_V1:
        data = os.path.join(out, "data", name)
        ok = ok and _prepare_step(out, name, args.shared, budget)
        for run_name, (command, options) in PROTOCOLS.items():
            run = os.path.join(out, run_name, f"ntu25-to-{name}")
            ok = ok and _step(f"{run_name} ntu25 -> {name}", os.path.isfile(os.path.join(run, "results.json")),
                              budget, [command, "--preset", args.preset, "--data", data, "--checkpoint", checkpoint,
                                       "--joint-map", "kinect20", "--random-baseline", "--run-dir", run,
                                       "--no-figures", "--feature-cache", os.path.join(out, "feature-cache"),
                                       *options, *common])
            if os.path.isfile(os.path.join(run, "results.json")):
                runs.append(run)
    table = merge_tables([read_report(run) for run in runs]) if runs else "(no results yet)\n"
    summary = f"# NTU-25 encoder on Kinect v1 datasets (--joint-map kinect20)\n\ncheckpoint: {checkpoint}\n\n{table}"
    atomic_write(os.path.join(out, "summary.md"), lambda f: f.write(summary), mode="w")
    print(summary)
    print("complete" if ok else "incomplete: rerun the same command to continue")
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
