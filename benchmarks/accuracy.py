"""The accuracy table on real data, in one resumable command.

For NW-UCLA, MSR Action3D, UTD-MHAD and SBU (fold 1) from ../shared/data: prepare the
arrays, pretrain the tiny preset on the CPU, then evaluate the pretrained encoder and a
randomly initialised one of the same seed under linear evaluation (the authors' raw protocol
and with standardised features), 1-NN retrieval, 10% semi-supervised training and fine-tuning
(each at several seeds, judged on their mean), plus transfer rows (NW-UCLA -> MSR Action3D,
NW-UCLA -> UTD-MHAD). The frozen probes and the transfer rows have no seed of their own: their
noise is the pretraining's and the random init's, so --frozen-seeds pretrains again at further
seeds and judges them on the mean. Every step is an ordinary
`scdfast` command whose run directory lands under --out; a step whose results exist is
skipped, so an interrupted run (or one stopped by --budget-minutes) continues where it ended;
--protocols runs a subset (the pretrainings always), and the summary lists every finished run.

    python benchmarks/accuracy.py --out runs/accuracy --frozen-seeds 3 --budget-minutes 90
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from scdfast.cli import main as scdfast
from scdfast.evaluation.reports import merge_tables, read_report
from scdfast.train.rundir import atomic_write, save_json

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")

# name: (prepare format, raw folder under the shared data, extra prepare options)
DATASETS = {
    "nw_ucla": ("ucla", "nw_ucla/all_sqe", []),
    "msr_action3d": ("msr3d", "msr_action3d/skeleton3d",
                     ["--files", "msr_action3d/protocol/files_used_in_cvpr12_paper.txt", "--skip-bad"]),
    "utd_mhad": ("utd-mhad", "utd_mhad/Skeleton", []),
    "sbu_fold1": ("sbu", "sbu_kinect_interaction", ["--fold", "1"]),
}
TRANSFERS = (("nw_ucla", "msr_action3d"), ("nw_ucla", "utd_mhad"))
# protocol run name: (command, options); every one also evaluates the random-init baseline
PROTOCOLS = {
    "linear": ("linear", ["--no-standardize"]),
    "linear-standardized": ("linear", ["--standardize"]),
    "knn": ("knn", ["--k", "1"]),
    "semi10": ("semi", ["--labels", "10%"]),
    "finetune": ("finetune", []),
}
RUN_NAMES = (*PROTOCOLS, "transfer")  # what --protocols can name
HEADLINE = ("linear-standardized", "knn", "semi10", "finetune")  # pretrained against random init
NEVER_BEHIND = ("semi10", "finetune")  # a pretrained start must come within MARGIN of random init here
FROZEN = ("linear", "linear-standardized", "knn")  # the encoder frozen: noise from pretraining and random init
MARGIN = 2.0  # top-1 points
# the NEVER_BEHIND protocols train the encoder, and one run's top-1 swings with the seed: 10% of a
# small training set is a few labelled samples a class (NW-UCLA's random init spans 41.6-61.9%
# over four seeds), and SBU's 55 test samples make one sample 1.8 points. So they run at SEEDS
# seeds (subset, random init, new classifier, crops; the same pretraining), judged on the mean.
SEEDS = 3


class Budget:
    def __init__(self, minutes: float | None):
        self.deadline = None if minutes is None else time.monotonic() + 60.0 * minutes

    def exhausted(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def _step(label: str, done: bool, budget: Budget, args: list[str]) -> bool:
    """Run one scdfast command unless its results exist; False when the budget stops the run."""
    if done:
        print(f"[done] {label}", flush=True)
        return True
    if budget.exhausted():
        print(f"[budget] time budget reached before {label}; rerun the same command to continue", flush=True)
        return False
    print(f"[run] {label}: scdfast {' '.join(args)}", flush=True)
    start = time.monotonic()
    code = scdfast(args)
    if code != 0:
        sys.exit(f"accuracy: step {label} failed with exit status {code}")
    print(f"[ok] {label} in {time.monotonic() - start:.0f} s", flush=True)
    return True


def _prepare_step(out: str, name: str, shared: str, budget: Budget) -> bool:
    """Prepare dataset `name` (DATASETS) from the shared data into out/data/name."""
    fmt, raw, extra = DATASETS[name]
    data = os.path.join(out, "data", name)
    extra = [os.path.join(shared, e) if e.endswith(".txt") else e for e in extra]
    return _step(f"prepare {name}", os.path.isfile(os.path.join(data, "val_label.pkl")), budget,
                 ["prepare", fmt, "--raw", os.path.join(shared, raw), "--out", data, "--no-progress", *extra])


def _pretrain_step(out: str, name: str, data: str, common: list[str], budget: Budget, epochs: int | None,
                   sets: list[str], folder: str = "pretrain") -> bool:
    run = os.path.join(out, folder, name)
    finished = os.path.isfile(os.path.join(run, "report.json"))
    started = os.path.isfile(os.path.join(run, "checkpoints", "last.pt"))
    if started and not finished:
        return _step(f"{folder} {name} (resumed)", False, budget, ["pretrain", "--resume", run, *common])
    extra = ["--epochs", str(epochs)] if epochs else []
    extra += [option for item in sets for option in ("--set", item)]
    return _step(f"{folder} {name}", finished, budget,
                 ["pretrain", "--preset", "tiny", "--data", data, "--run-dir", run, *extra, *common])


def _protocol_runs(out: str) -> list[str]:
    """Every finished protocol run under `out`, in table order."""
    runs = []
    for protocol in (*PROTOCOLS, "transfer"):
        folder = os.path.join(out, protocol)
        if os.path.isdir(folder):
            runs += [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                     if os.path.isfile(os.path.join(folder, n, "results.json"))]
    return runs


def _top1(path: str) -> dict[str, float]:
    return {r["encoder"]: r["top1"] for r in read_report(path)["rows"] if r["stream"] == "joint"}


def _seed_folder(protocol: str, seed_index: int) -> str:
    """The folder of a protocol's run at its seed_index-th seed: the table's own at 0."""
    return protocol if seed_index == 0 else f"{protocol}-seed{seed_index}"


def _seed_paths(out: str, protocol: str, name: str, seeds: int) -> list[str]:
    """results.json of the finished runs of (protocol, name) over its seeds, the table's first."""
    paths = [os.path.join(out, _seed_folder(protocol, s), name, "results.json") for s in range(seeds)]
    return [p for p in paths if os.path.isfile(p)]


def _seeds_table(out: str, names: list[str], seeds: int,
                 protocols: tuple[str, ...] = NEVER_BEHIND) -> list[str]:
    lines = ["| dataset | protocol | seeds | pretrained top-1 %, mean (min-max) | random init top-1 %, mean (min-max) |",
             "|---|---|---|---|---|"]
    for name in names:
        for protocol in protocols:
            runs = [_top1(p) for p in _seed_paths(out, protocol, name, seeds)]
            if not runs:
                continue
            cells = []
            for encoder in ("pretrained", "random init"):
                v = [r[encoder] for r in runs]
                cells.append(f"{sum(v) / len(v):.1f} ({min(v):.1f}-{max(v):.1f})")
            lines.append(f"| {name} | {protocol} | {len(runs)} | {cells[0]} | {cells[1]} |")
    return lines


def _seed_noise(out: str, names: list[str], seeds: int) -> str | None:
    """How far one seed's difference (pretrained minus random init) strays from its cell's mean,
    pooled over the NEVER_BEHIND cells: the noise the MARGIN verdicts sit in."""
    squares, freedom = 0.0, 0
    for name in names:
        for protocol in NEVER_BEHIND:
            diffs = [r["pretrained"] - r["random init"] for r in map(_top1, _seed_paths(out, protocol, name, seeds))]
            if len(diffs) > 1:
                mean = sum(diffs) / len(diffs)
                squares += sum((d - mean) ** 2 for d in diffs)
                freedom += len(diffs) - 1
    if not freedom:
        return None
    std = (squares / freedom) ** 0.5
    return (f"One seed's difference (pretrained minus random init) has a pooled standard deviation of {std:.1f} "
            f"points around its cell's mean, so a mean of {seeds} seeds one of about {std / seeds ** 0.5:.1f}.")


def _frozen_seeds_section(out: str, names: list[str], frozen_seeds: int) -> list[str]:
    """The frozen probes and transfer rows over their pretraining seeds, where there are several."""
    if frozen_seeds < 2:
        return []
    rows = _seeds_table(out, names, frozen_seeds, tuple(p for p in HEADLINE if p in FROZEN))
    rows += _seeds_table(out, _transfer_names(names), frozen_seeds, ("transfer",))[2:]
    return ["", f"## Frozen probes and transfer over {frozen_seeds} pretraining seeds", "", *rows]


def _transfer_names(names: list[str]) -> list[str]:
    return [f"{source}-to-{target}" for source, target in TRANSFERS if source in names and target in names]


def _verdicts(out: str, names: list[str], seeds: int, frozen_seeds: int = 1) -> list[str]:
    """A line per (dataset, headline protocol) and per transfer: pretrained against random init,
    the mean over the protocol's seeds (NEVER_BEHIND: `seeds`; the others: `frozen_seeds`
    pretrainings)."""
    lines = ["| dataset | protocol | pretrained top-1 % | random init top-1 % | difference | verdict |",
             "|---|---|---|---|---|---|"]
    cells = [(name, protocol) for name in names for protocol in HEADLINE]
    cells += [(name, "transfer") for name in _transfer_names(names)]
    for name, protocol in cells:
        paths = _seed_paths(out, protocol, name, seeds if protocol in NEVER_BEHIND else frozen_seeds)
        if not paths:
            continue
        runs = [_top1(p) for p in paths]
        pre, rand = (sum(r[e] for r in runs) / len(runs) for e in ("pretrained", "random init"))
        if pre > rand:
            verdict = "pretrained beats random init"
        elif protocol in NEVER_BEHIND:
            verdict = f"within {MARGIN:g} points" if pre >= rand - MARGIN else f"**behind by more than {MARGIN:g}**"
        elif pre == rand:
            verdict = "even"
        else:
            verdict = "**random init ahead**"
        label = f"{protocol} (mean of {len(runs)} seeds)" if len(runs) > 1 else protocol
        lines.append(f"| {name} | {label} | {pre:.1f} | {rand:.1f} | {pre - rand:+.1f} | {verdict} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/accuracy", help="where every run directory goes (default runs/accuracy)")
    parser.add_argument("--shared", default=SHARED, help="the shared data folder (default ../shared/data)")
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help=f"comma-separated subset of {', '.join(DATASETS)} (default all)")
    parser.add_argument("--protocols", default=",".join(RUN_NAMES),
                        help=f"comma-separated subset of {', '.join(RUN_NAMES)} (default all); "
                             "the summary lists every finished run under --out")
    parser.add_argument("--budget-minutes", type=float,
                        help="stop before starting a step once this much time has passed (rerun to continue)")
    parser.add_argument("--pretrain-epochs", type=int, help="override the tiny preset's pretraining epochs")
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="a config field for every pretraining, as `scdfast pretrain --set` (repeatable), "
                             "e.g. --pretrain-set model.gcn_channels=8; the protocols read the model from the "
                             "checkpoint; use a new --out, finished runs are not redone")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=SEEDS,
                        help=f"seeds of the semi-supervised and fine-tuning runs, whose verdicts are their means "
                             f"(default {SEEDS}; the first table shows --seed's run)")
    parser.add_argument("--frozen-seeds", type=int, default=1,
                        help="pretrainings per dataset for the frozen probes (linear, kNN) and the transfer rows, "
                             "at --seed, --seed + 1, ...; their verdicts are the means (default 1: the table's "
                             "own; the extra ones go to pretrain-seedK/ and <protocol>-seedK/)")
    args = parser.parse_args(argv)
    for option, value in (("--seeds", args.seeds), ("--frozen-seeds", args.frozen_seeds)):
        if value < 1:
            parser.error(f"{option}: {value}; the table's own run is one seed, so at least 1")
    names = [n for n in args.datasets.split(",") if n]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"--datasets: unknown {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    chosen = [p for p in args.protocols.split(",") if p]
    unknown = [p for p in chosen if p not in RUN_NAMES]
    if unknown:
        parser.error(f"--protocols: unknown {unknown[0]!r}; choose from {', '.join(RUN_NAMES)}")
    out, budget = os.path.abspath(args.out), Budget(args.budget_minutes)
    def run_options(seed: int) -> list[str]:
        return ["--device", args.device, "--seed", str(seed), "--no-progress"]
    common = run_options(args.seed)
    cache = ["--feature-cache", os.path.join(out, "feature-cache")]
    frozen = [p for p in FROZEN if p in chosen]
    transfer_sources = {s for s, t in TRANSFERS if "transfer" in chosen and s in names and t in names}
    ok = True
    for name in names:
        data = os.path.join(out, "data", name)
        ok = ok and _prepare_step(out, name, args.shared, budget)
        ok = ok and _pretrain_step(out, name, data, common, budget, args.pretrain_epochs, args.pretrain_set)
        checkpoint = os.path.join(out, "pretrain", name)
        for run_name, (command, options) in PROTOCOLS.items():
            if run_name not in chosen:
                continue
            run = os.path.join(out, run_name, name)
            uses_cache = cache if command in ("linear", "knn") else []
            ok = ok and _step(f"{run_name} {name}", os.path.isfile(os.path.join(run, "results.json")), budget,
                              [command, "--preset", "tiny", "--data", data, "--checkpoint", checkpoint,
                               "--random-baseline", "--run-dir", run, *options, *uses_cache, *common])
        for seed in range(1, args.seeds):  # the same pretraining; subset, random init and crops change
            for run_name in (p for p in NEVER_BEHIND if p in chosen):
                command, options = PROTOCOLS[run_name]
                run = os.path.join(out, _seed_folder(run_name, seed), name)
                ok = ok and _step(f"{run_name} {name} seed {args.seed + seed}",
                                  os.path.isfile(os.path.join(run, "results.json")), budget,
                                  [command, "--preset", "tiny", "--data", data, "--checkpoint", checkpoint,
                                   "--random-baseline", "--run-dir", run, *options, *run_options(args.seed + seed)])
        for seed in range(1, args.frozen_seeds):  # another pretraining, random init and probe
            if not frozen and name not in transfer_sources:
                continue
            pretrained = _seed_folder("pretrain", seed)
            ok = ok and _pretrain_step(out, name, data, run_options(args.seed + seed), budget, args.pretrain_epochs,
                                       args.pretrain_set, pretrained)
            for run_name in frozen:
                command, options = PROTOCOLS[run_name]
                run = os.path.join(out, _seed_folder(run_name, seed), name)
                ok = ok and _step(f"{run_name} {name} seed {args.seed + seed}",
                                  os.path.isfile(os.path.join(run, "results.json")), budget,
                                  [command, "--preset", "tiny", "--data", data, "--checkpoint",
                                   os.path.join(out, pretrained, name), "--random-baseline", "--run-dir", run,
                                   *options, *cache, *run_options(args.seed + seed)])
    for source, target in TRANSFERS:
        if source not in transfer_sources or target not in names:
            continue
        for seed in range(args.frozen_seeds):
            run = os.path.join(out, _seed_folder("transfer", seed), f"{source}-to-{target}")
            label = f"transfer {source} -> {target}" + (f" seed {args.seed + seed}" if seed else "")
            ok = ok and _step(label, os.path.isfile(os.path.join(run, "results.json")), budget,
                              ["transfer", "--preset", "tiny", "--data", os.path.join(out, "data", target),
                               "--checkpoint", os.path.join(out, _seed_folder("pretrain", seed), source),
                               "--random-baseline", "--standardize", "--run-dir", run, *cache,
                               *run_options(args.seed + seed)])
    reports = [read_report(run) for run in _protocol_runs(out)]
    table = merge_tables(reports) if reports else "(no results yet)\n"
    summary = "\n".join(["# Accuracy on real data (tiny preset)", "", table,
                         f"## Semi-supervised 10% and fine-tuning over {args.seeds} seeds", "",
                         *_seeds_table(out, names, args.seeds),
                         *(["", noise] if (noise := _seed_noise(out, names, args.seeds)) else []),
                         *_frozen_seeds_section(out, names, args.frozen_seeds),
                         "", "## Pretrained against random init", "",
                         *_verdicts(out, names, args.seeds, args.frozen_seeds), ""])
    atomic_write(os.path.join(out, "summary.md"), lambda f: f.write(summary), mode="w")
    save_json({"complete": ok, "runs": len(reports)}, os.path.join(out, "status.json"))
    print(summary)
    print("complete" if ok else "incomplete: rerun the same command to continue")
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
