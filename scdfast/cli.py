"""The `scdfast` command line: pretrain, linear, knn.

Only this module parses arguments; everything it calls takes config dataclasses. A user
error (ScdError, a missing file) prints one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from scdfast.config import LinearConfig, PretrainConfig, SCDConfig, preset
from scdfast.errors import ScdError

EXIT_USER_ERROR = 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=("tiny", "paper"), default="paper",
                        help="model and schedule sizes: 'paper' is the published setting (default), "
                             "'tiny' a CPU-sized model and schedule")
    parser.add_argument("--data", default="synthetic",
                        help="'synthetic' (the built-in generated dataset, default) or a dataset directory "
                             "holding {train,val}_data_joint.npy and {train,val}_label.pkl")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, default), cpu, cuda or cuda:N")
    parser.add_argument("--run-dir", default=None,
                        help="where config.json, metrics.csv and checkpoints go (default runs/<command>-<time>)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, data order and augmentation (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def _encoder_source(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--checkpoint", help="a pretraining run directory or checkpoint file (scdfast's or the "
                                            "authors' official SCD-Net checkpoint)")
    group.add_argument("--random-init", action="store_true",
                       help="evaluate a randomly initialised encoder of the preset's size instead")
    parser.add_argument("--random-baseline", action="store_true",
                        help="with --checkpoint, also evaluate a randomly initialised encoder of the same "
                             "architecture and seed, for comparison")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scdfast",
        description="Self-supervised skeleton action recognition with SCD-Net: pretrain an encoder "
                    "without labels, then evaluate it by linear classification or kNN retrieval.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("pretrain", help="MoCo pretraining of SCD-Net (no labels used)",
                            description="Pretrain SCD-Net's encoder with its four-term contrastive loss. "
                                        "Defaults are the paper's: batch 64, SGD lr 0.01, 451 epochs.")
    _common(p)
    p.add_argument("--epochs", type=int, help="override the preset's epochs (paper: 451)")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size (paper: 64)")
    p.add_argument("--lr", type=float, help="override the preset's learning rate (paper: 0.01)")
    p.add_argument("--representation", choices=("joint", "motion", "bone"), default="joint",
                   help="input stream (default joint)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint, with its saved settings "
                        "(the other schedule options are ignored)")
    p.add_argument("--checkpoint-steps", type=int,
                   help="also checkpoint every this many steps (default: at epoch ends only)")
    p.add_argument("--keep-last", type=int, help="step checkpoints to keep besides best.pt and last.pt (default 3)")
    p.add_argument("--log-every", type=int, help="steps between loss reads and steps.csv rows (default 10)")
    p.add_argument("--compile", choices=("auto", "off", "default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode of both encoders (default auto: 'default' on CUDA, off on the CPU)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="default auto: bf16 autocast on CUDA, fp32 on the CPU")
    p.add_argument("--bn", choices=("auto", "local", "shuffle", "sync"),
                   help="BatchNorm across torchrun ranks: auto (shuffle-BN when distributed, default), local, "
                        "shuffle, or sync (SyncBatchNorm, CUDA only)")
    p.add_argument("--augment", choices=("batched", "reference"), default="batched",
                   help="view generation: 'batched' Numba kernels on the training device (default) or the "
                        "per-sample NumPy 'reference'")

    p = commands.add_parser("linear", help="linear evaluation of a frozen encoder",
                            description="Train a linear classifier on the frozen encoder's features "
                                        "(paper: SGD lr 2.0, batch 1024, 80 epochs) and report test top-1/top-5.")
    _common(p)
    _encoder_source(p)
    p.add_argument("--epochs", type=int, help="override the classifier's epochs (paper: 80)")
    p.add_argument("--lr", type=float, help="override the classifier's learning rate (paper: 2.0)")
    p.add_argument("--batch-size", type=int, help="override the classifier's batch size")
    p.add_argument("--standardize", action="store_true",
                   help="z-score features with the training set's statistics before the classifier (a frozen "
                        "BatchNorm; not in the authors' protocol); a learning rate near 0.1 suits it")

    p = commands.add_parser("knn", help="kNN retrieval accuracy of a frozen encoder",
                            description="k-nearest-neighbour classification of test features against training "
                                        "features under cosine similarity (the paper reports k=1).")
    _common(p)
    _encoder_source(p)
    p.add_argument("--k", type=int, default=1, help="neighbours that vote (default 1)")

    p = commands.add_parser("prepare", help="convert a raw dataset download into a dataset directory",
                            description="Read a dataset as its authors ship it and write the array directory "
                                        "every command takes (--data DIR). Outputs appear only when complete.")
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    f = _prepare_format(formats, "ntu", "NTU RGB+D 60/120: raw .skeleton files (body selection, normalisation "
                        "and splits as the AGCN preprocessing; T 300, 2 bodies)", "SsssCcccPpppRrrrAaaa.skeleton")
    f.add_argument("--dataset", choices=("ntu60", "ntu120"), default="ntu60",
                   help="ntu60 takes setups 1-17 only (default), ntu120 all")
    f.add_argument("--benchmark", choices=("xsub", "xview", "xset"), default="xsub",
                   help="xsub (both), xview (ntu60) or xset (ntu120); default xsub")
    f.add_argument("--jobs", type=int, help="worker processes parsing files (default: every core)")
    _prepare_format(formats, "ucla", "NW-UCLA: the all_sqe JSON files (cross-view: views 1+2 train, 3 test)",
                    "aAA_sSS_eEE_vVV.json")
    f = _prepare_format(formats, "msr3d", "MSR Action3D: the Real3D skeleton text files (cross-subject: odd "
                        "subjects train, even test; reordered into kinect20; the release's all-zero a13_s09_e02 "
                        "needs --skip-bad)", "aXX_sYY_eZZ_skeleton3D.txt")
    f.add_argument("--files", help="only the sequence names listed in this file (e.g. files_used_in_cvpr12_paper.txt)")
    _prepare_format(formats, "utd-mhad", "UTD-MHAD: the aA_sS_tT_skeleton.mat files (cross-subject: odd "
                    "subjects train, even test; reordered into kinect20)", "aA_sS_tT_skeleton.mat")
    f = _prepare_format(formats, "sbu", "SBU Kinect Interaction: two-person skeleton_pos.txt files (5-fold "
                        "cross-validation over participant pairs; sbu15 layout, 2 bodies)",
                        "sAAsBB/<class>/<run>/skeleton_pos.txt")
    f.add_argument("--fold", type=int, default=1, help="the fold tested on, 1..5 (default 1); the others train")
    return parser


def _prepare_format(formats, name: str, help_text: str, files: str) -> argparse.ArgumentParser:
    """A `scdfast prepare NAME` parser with the options every importer takes."""
    f = formats.add_parser(name, help=help_text, description=help_text)
    f.add_argument("--raw", required=True, help=f"the folder of {files} files")
    f.add_argument("--out", required=True, help="the dataset directory to write (replaced when complete)")
    f.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable or malformed files, listing each and why in OUT/skipped.txt")
    f.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    return f


def _overrides(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _run_pretrain(args: argparse.Namespace) -> None:
    from scdfast.config import from_dict
    from scdfast.data import load_dataset
    from scdfast.data.dataset import model_shape
    from scdfast.train.device import resolve_device
    from scdfast.train.pretrain import load_resume_state, pretrain
    from scdfast.train.rundir import prepare_run_dir

    resume = None
    if args.resume:
        resume = load_resume_state(args.resume)
        model_config = from_dict(SCDConfig, resume["model_config"])
        config = from_dict(PretrainConfig, resume["pretrain_config"])
        run_dir = args.resume
        with open(os.path.join(run_dir, "config.json")) as f:
            data = json.load(f).get("data", args.data)
    else:
        config = preset(args.preset, PretrainConfig, representation=args.representation, augment=args.augment,
                        **_overrides(args, ("epochs", "batch_size", "lr", "seed", "checkpoint_steps", "keep_last",
                                            "log_every", "compile", "precision", "bn")))
        data = args.data if args.data == "synthetic" else os.path.abspath(args.data)
    device = resolve_device(args.device)
    train, _ = load_dataset(data, seed=config.seed)
    if not args.resume:  # the dataset fixes joints, bodies and layout
        model_config = preset(args.preset, SCDConfig, **model_shape(train))
        run_dir = prepare_run_dir(args.run_dir, "pretrain")
    verb = f"resuming at step {resume['step']}" if resume else "pretraining"
    print(f"{verb} on {data} ({len(train)} samples) on {device}; run directory {run_dir}")
    result = pretrain(model_config, config, train, run_dir, device, progress=not args.no_progress, resume=resume,
                      data=data)
    print(f"done: {result.steps} steps in {result.seconds:.0f} s, final loss {result.final_loss:.4f}; "
          f"checkpoint {result.checkpoint}")
    print(f"throughput: {result.report()}")


def _encoders(args: argparse.Namespace, num_classes: int, train):
    """(label, DownstreamEncoder, SCDConfig) for each encoder the command evaluates."""
    from scdfast.data.dataset import model_shape
    from scdfast.models import DownstreamEncoder
    from scdfast.train.evaluate import load_encoder

    shape = model_shape(train)
    if args.random_init:
        config = preset(args.preset, SCDConfig, **shape)
        torch.manual_seed(args.seed)
        return [("random init", DownstreamEncoder(config, num_classes), config)]
    encoder, config = load_encoder(args.checkpoint, num_classes)
    theirs = {"num_joints": config.num_joints, "num_bodies": config.num_bodies, "layout": config.layout}
    if theirs != shape:
        raise ScdError(f"--checkpoint {args.checkpoint}: the encoder takes {config.num_joints} joints x "
                       f"{config.num_bodies} bodies (layout {config.skeleton.name}), the data "
                       f"{shape['num_joints']} x {shape['num_bodies']} (layout {train.layout.name})")
    out = [("pretrained", encoder, config)]
    if args.random_baseline:
        torch.manual_seed(args.seed)
        out.append(("random init", DownstreamEncoder(config, num_classes), config))
    return out


def _run_eval(args: argparse.Namespace) -> None:
    from scdfast.data import load_dataset
    from scdfast.data.dataset import num_classes as count_classes
    from scdfast.train.device import resolve_device
    from scdfast.train.evaluate import extract_features, knn_accuracy, linear_probe
    from scdfast.train.rundir import MetricsCSV, prepare_run_dir, save_json

    device = resolve_device(args.device)
    train, test = load_dataset(args.data, seed=args.seed)
    classes = count_classes(train, test)
    run_dir = prepare_run_dir(args.run_dir, args.command)
    if args.command == "linear":
        linear = preset(args.preset, LinearConfig, standardize=args.standardize,
                        **_overrides(args, ("epochs", "lr", "batch_size", "seed")))
    results = {}
    for label, encoder, config in _encoders(args, classes, train):
        progress = not args.no_progress
        train_x = extract_features(encoder, train, config.window, device, progress=progress, desc=f"{label}: train features")
        test_x = extract_features(encoder, test, config.window, device, progress=progress, desc=f"{label}: test features")
        train_y, test_y = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
        if args.command == "linear":
            r = linear_probe(train_x, train_y, test_x, test_y, classes, linear, device, progress=progress)
            results[label] = {"top1": r.top1, "top5": r.top5, "best_top1": r.best_top1}
            print(f"linear evaluation, {label}: top-1 {r.top1:.2f}%  top-5 {r.top5:.2f}%  "
                  f"(best top-1 over epochs {r.best_top1:.2f}%)")
        else:
            acc = knn_accuracy(train_x, train_y, test_x, test_y, k=args.k)
            results[label] = {"top1": acc, "k": args.k}
            print(f"{args.k}-NN retrieval, {label}: top-1 {acc:.2f}%")
    print(f"chance level: {100.0 / classes:.2f}% ({classes} classes)")
    save_json({"command": args.command, "data": args.data, "checkpoint": args.checkpoint,
               "results": results, "num_classes": classes}, os.path.join(run_dir, "results.json"))
    metrics = MetricsCSV(os.path.join(run_dir, "metrics.csv"), ["encoder", "metric", "value"])
    for label, values in results.items():
        for name, value in values.items():
            metrics.write(encoder=label, metric=name, value=value)
    metrics.close()


def _run_prepare(args: argparse.Namespace) -> None:
    from scdfast.data import (
        prepare_msr3d,
        prepare_ntu,
        prepare_sbu,
        prepare_ucla,
        prepare_utd,
    )

    common = {"skip_bad": args.skip_bad, "progress": not args.no_progress}
    importers = {
        "ntu": lambda: prepare_ntu.prepare_ntu(args.raw, args.out, dataset=args.dataset, benchmark=args.benchmark,
                                               jobs=args.jobs, **common),
        "ucla": lambda: prepare_ucla.prepare_ucla(args.raw, args.out, **common),
        "msr3d": lambda: prepare_msr3d.prepare_msr3d(args.raw, args.out, files=args.files, **common),
        "utd-mhad": lambda: prepare_utd.prepare_utd(args.raw, args.out, **common),
        "sbu": lambda: prepare_sbu.prepare_sbu(args.raw, args.out, fold=args.fold, **common),
    }
    counts = importers[args.format]()
    print(f"wrote {args.out}: {counts['train']} training and {counts['val']} test sequences of up to "
          f"{counts['frames']} frames" + (f"; skipped {counts['skipped']} (see skipped.txt)" if counts["skipped"] else ""))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            _run_pretrain(args)
        elif args.command == "prepare":
            _run_prepare(args)
        else:
            _run_eval(args)
    except (ScdError, FileNotFoundError, PermissionError) as exc:
        print(f"scdfast {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"scdfast {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from scdfast.train.signals import Interrupted
        if not isinstance(exc, Interrupted):
            raise
        print(f"scdfast {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
