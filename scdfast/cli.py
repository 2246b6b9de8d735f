"""The `scdfast` command line: pretrain, the downstream protocols, report, diagnose, prepare, export.

Only this module parses arguments; everything it calls takes config dataclasses. A user
error (ScdError, a missing file) prints one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys

from scdfast.config import PRESETS, LinearConfig, PretrainConfig, SCDConfig, choices, preset
from scdfast.data.synthetic import is_synthetic
from scdfast.errors import ScdError
from scdfast.settings import merged, parse_sets, read_config_file, refuse_sections, tiny_overrides

EXIT_USER_ERROR = 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=PRESETS, default="paper",
                        help="'paper' is the published setting (default). 'tiny' is CPU-sized, the paper's "
                             "method at a small size with the queues filled with real keys first and a query's own "
                             f"keys left out of its negatives; it sets {tiny_overrides()}")
    parser.add_argument("--data", default="synthetic",
                        help="'synthetic' (the built-in generated dataset on NTU's 25 joints, default), "
                             "'synthetic:kinect20' or 'synthetic:sbu15' (the same bodies on those layouts), or a "
                             "dataset directory holding {train,val}_data_joint.npy and {train,val}_label.pkl")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, default), cpu, cuda or cuda:N")
    parser.add_argument("--run-dir", default=None,
                        help="where config.json, metrics.csv and checkpoints go (default runs/<command>-<time>); "
                             "a directory holding an earlier run is refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in --run-dir: removes only the files scdfast writes there")
    parser.add_argument("--seed", type=int, help="seed for weights, data order and augmentation (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    parser.add_argument("--config", metavar="FILE",
                        help="settings from a file: a run's own config.json, or TOML/YAML with [model], [pretrain], "
                             "[linear] and [finetune] sections of config fields (scdfast/config.py documents each); "
                             "the preset gives the rest, and the flags given here override the file")
    parser.add_argument("--set", dest="settings", action="append", metavar="SECTION.FIELD=VALUE",
                        help="set any config field, applied last, e.g. --set pretrain.lr=0.05 --set "
                             "model.queue_size=4096 --set linear.lr_drop_epochs=50,70 (repeatable)")


def _protocol_common(parser: argparse.ArgumentParser, random_init: bool = True) -> None:
    """Options every protocol command takes: the encoders, streams, cache and figures."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--checkpoint", action="append",
                       help="a pretraining run directory or checkpoint file (scdfast's, or the authors' official "
                            "SCD-Net checkpoint); give one per stream for the three-stream ensemble")
    if random_init:
        group.add_argument("--random-init", action="store_true",
                           help="evaluate a randomly initialised encoder of the preset's size instead")
    parser.add_argument("--random-baseline", action="store_true",
                        help="with --checkpoint, also evaluate a randomly initialised encoder of the same "
                             "architecture, seed and stream, for comparison")
    parser.add_argument("--streams", type=lambda text: tuple(text.split(",")),
                        help="comma-separated streams (joint, motion, bone): with --random-init the streams to "
                             "evaluate (default joint); with --checkpoint the stream of each checkpoint in order "
                             "(default: the stream it was pretrained on). Two or more streams add the ensemble "
                             "row (summed class scores)")
    parser.add_argument("--no-figures", action="store_true", help="skip the confusion-matrix and embedding PNGs")
    parser.add_argument("--num-classes", type=int,
                        help="the dataset's class count (default: max label + 1, which both splits must agree on; "
                             "give it for a subset whose splits miss the highest classes)")
    parser.add_argument("--joint-map", metavar="MAP",
                        help="place the data's joints into the encoder's layout: kinect20, sbu15 or coco17 (each into "
                        "ntu25, e.g. an NTU-pretrained encoder on NW-UCLA), or a JSON file {\"from\", \"to\", "
                        "\"joints\"}; see docs/data.md")
    parser.add_argument("--embedding", choices=("pca", "tsne"), default="pca",
                        help="the 2-D projection of test features in embedding-*.png (default pca)")


def _feature_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--feature-cache", metavar="DIR",
                        help="where frozen-encoder features are cached, one file per checkpoint, dataset split "
                             "and stream (default ~/.cache/scdfast/features)")
    parser.add_argument("--no-feature-cache", action="store_true", help="always recompute features")


def _data_source(data: str) -> str:
    """--data as run directories record it: a synthetic name as given, a directory absolute."""
    return data if is_synthetic(data) else os.path.abspath(data)


def _linear_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int,
                        help="override the classifier's epochs (paper: 80); the lr drops keep their place in the run")
    parser.add_argument("--lr", type=float,
                        help="override the classifier's learning rate (default 2.0 on raw features, the authors'; "
                             "0.1 on standardized ones)")
    parser.add_argument("--batch-size", type=int, help="override the classifier's batch size (paper: 1024)")
    parser.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                        help="z-score features with the training set's statistics before the classifier (a frozen "
                             "BatchNorm, as MAE's linear probe). Default: on with --preset tiny, whose short "
                             "pretraining leaves nearly constant raw features; off with --preset paper and "
                             "--exact-protocol (the authors' protocol, raw features)")
    parser.add_argument("--exact-protocol", action="store_true",
                        help="run the frozen encoder on every batch of every epoch, as the authors' script does, "
                             "instead of training on cached features (same result, far slower)")


def _finetune_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int,
                        help="override the epochs (default 100; tiny 30); the lr drop keeps its place in the run; "
                             "tiny semi multiplies them by training / labelled samples (see the description)")
    parser.add_argument("--lr", type=float, help="override the learning rate (default 0.1; tiny 0.01)")
    parser.add_argument("--batch-size", type=int, help="override the batch size (default 128; tiny 32)")
    parser.add_argument("--precision", choices=choices(PretrainConfig, "precision"), default="auto",
                        help="default auto: bf16 autocast on CUDA and on CPUs with AVX-512-BF16 or AMX, fp32 on "
                             "other CPUs")


def _knn_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=1, help="neighbours that vote (default 1)")


def _label_fraction(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, metavar="FRACTION",
                        help="labelled fraction of the training set: a percentage (1%%, 10%%) or a fraction in (0, 1]")


# name, --help line, description, option groups
_PROTOCOL_PARSERS = (
    ("linear", "linear evaluation of a frozen encoder",
     "Train a linear classifier on the frozen encoder's features (paper: SGD lr 2.0, batch 1024, 80 epochs, x0.1 at "
     "50 and 70) and report test top-1/top-5. Features are computed once per checkpoint and cached.",
     (_feature_cache, _linear_options)),
    ("knn", "kNN retrieval accuracy of a frozen encoder",
     "k-nearest-neighbour classification of test features against training features under cosine similarity (the "
     "paper reports k=1), in chunks on the device; top-1 and top-5.",
     (_feature_cache, _knn_options)),
    ("semi", "semi-supervised: fine-tune on a fraction of the labels",
     "Fine-tune the encoder with a classifier on a class-stratified, seeded fraction of the training labels (the "
     "paper's 1% and 10%), then test on the whole test set. The tiny preset trains as many samples as fine-tuning "
     "on every label (10% of the labels: 10 times the epochs, lr drop and evaluation interval alike); the paper "
     "preset, or --set finetune.semi_samples_matched=false, keeps the fine-tuning epochs.",
     (_label_fraction, _finetune_options)),
    ("finetune", "fine-tune the whole network with every label",
     "Train encoder and classifier together on every training label (SGD lr 0.1, batch 128, 100 epochs, x0.1 at 80 "
     "by default), then test.",
     (_finetune_options,)),
    ("transfer", "linear evaluation on another dataset of the same layout",
     "Linear evaluation of an encoder pretrained on one dataset, on another dataset with the same skeleton layout "
     "(the paper: NTU-120 -> PKU-MMD II; here e.g. NW-UCLA -> MSR Action3D or UTD-MHAD).",
     (_feature_cache, _linear_options)),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scdfast",
        description="Self-supervised skeleton action recognition with SCD-Net: pretrain an encoder "
                    "without labels, then evaluate it by linear classification, kNN retrieval, "
                    "semi-supervised training, fine-tuning or transfer, and merge the results into a table.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("pretrain", help="MoCo pretraining of SCD-Net (no labels used)",
                            description="Pretrain SCD-Net's encoder with its four-term contrastive loss. "
                                        "Defaults are the paper's: batch 64, SGD lr 0.01, 451 epochs.")
    _common(p)
    p.add_argument("--epochs", type=int, help="override the preset's epochs (paper: 451); the lr drop keeps its "
                   "place in the run (epoch 351 of 451 becomes 78 of 100)")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size (paper: 64)")
    p.add_argument("--lr", type=float, help="override the preset's learning rate (paper: 0.01)")
    p.add_argument("--representation", choices=choices(PretrainConfig, "representation"),
                   help="input stream (default joint)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint, with its saved settings "
                        "(the other schedule options are ignored)")
    p.add_argument("--checkpoint-steps", type=int,
                   help="also checkpoint every this many steps (default: at epoch ends only)")
    p.add_argument("--keep-last", type=int, help="step checkpoints to keep besides best.pt and last.pt (default 3)")
    p.add_argument("--log-every", type=int, help="steps between loss reads and steps.csv rows (default 10)")
    p.add_argument("--compile", choices=choices(PretrainConfig, "compile"),
                   help="torch.compile mode of both encoders (default auto: 'default' on CUDA, off on the CPU, where "
                        "compiling takes minutes and the compiled bf16 step is no faster)")
    p.add_argument("--precision", choices=choices(PretrainConfig, "precision"),
                   help="default auto: bf16 autocast on CUDA and on CPUs with AVX-512-BF16 or AMX, fp32 on other "
                        "CPUs")
    p.add_argument("--bn", choices=choices(PretrainConfig, "bn"),
                   help="BatchNorm across torchrun ranks: auto (shuffle-BN when distributed, default), local, "
                        "shuffle, or sync (SyncBatchNorm, CUDA only)")
    p.add_argument("--queue-init", choices=choices(PretrainConfig, "queue_init"),
                   help="how the queues start: random unit vectors (the paper's, the paper preset's) or the "
                        "initial key encoder's keys of real views (the tiny preset's), which keeps a short run "
                        "from collapsing its features")
    p.add_argument("--exclude-own-keys", action=argparse.BooleanOptionalAction, default=None,
                   help="leave queued keys of a query's own sample out of its negatives (on in the tiny preset, "
                        "off in the paper preset as in the authors' loss; on NTU with 8,192 keys a query meets "
                        "its own older key about 2%% of the time, with 1,024 keys on a small dataset nearly always)")
    p.add_argument("--augment", choices=choices(PretrainConfig, "augment"),
                   help="view generation: 'batched' Numba kernels on the training device (default) or the "
                        "per-sample NumPy 'reference'")

    for name, help_text, description, options in _PROTOCOL_PARSERS:
        p = commands.add_parser(name, help=help_text, description=description)
        _common(p)
        _protocol_common(p, random_init=name != "transfer")
        for add in options:
            add(p)

    p = commands.add_parser("report", help="merge protocol runs into one table",
                            description="Read the results.json of each protocol run directory and print one "
                                        "Markdown table in the paper's layout: a row per protocol (and stream, "
                                        "encoder), a column per dataset.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="protocol run directories (or their results.json)")
    p.add_argument("--out", help="also write the table to this file: a new file, or a table scdfast report wrote "
                                 "before (anything else is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="let --out replace a file scdfast did not write")

    p = commands.add_parser("diagnose", help="collapse readings of a run or checkpoint (the pretraining monitor's)",
                            description="Read a checkpoint's encoder on up to --samples training samples and "
                                        "print the pretraining collapse monitor's readings, in train mode (as "
                                        "pretraining sees it) and in eval mode (what the protocols read): per "
                                        "projection head the std of the unit projections x sqrt(dim) (near 1 "
                                        "healthy, below 0.05 in any head collapse) and RankMe (effective rank), and the "
                                        "downstream feature's spread (||std|| / ||mean|| over the samples). "
                                        "Takes scdfast's pretraining and downstream checkpoints and the authors'.")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a pretraining run directory (its checkpoints/last.pt) or a checkpoint file, a "
                        "fine-tuned one in a protocol run's checkpoints/ included")
    p.add_argument("--data", help="the dataset to read samples from: 'synthetic' or a dataset directory "
                                  "(default: the one the checkpoint records, where it is still there)")
    p.add_argument("--samples", type=int, default=256, help="training samples read (default 256)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, default), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="picks the samples and the dropout (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the readings as JSON: a new file, or readings "
                                                  "diagnose wrote before (anything else is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="let --json replace a file scdfast did not write")

    p = commands.add_parser("doctor", help="compile the GPU kernels for sm_90 and sm_80 and check them (no GPU needed)",
                            description="Compile every Triton loss-kernel configuration the launchers can choose "
                                        "and the Numba CUDA augmentation kernels with the real compilers for "
                                        "H100/H200 (sm_90) and A100 (sm_80), on any machine, and print registers, "
                                        "stack (spills), shared memory and tensor-core use. Exit status 1 when a "
                                        "configuration fails to compile, spills, exceeds shared memory or lacks "
                                        "tensor cores at the default precision. Takes minutes on 2 cores.")
    p.add_argument("--targets", nargs="+", type=int, choices=(90, 80), default=[90, 80],
                   help="compute capabilities (default: 90 80)")
    p.add_argument("--jobs", type=int, help="compiler processes (default: one per core)")
    p.add_argument("--json", metavar="FILE", help="also write every row as JSON: a new file, or rows doctor "
                                                  "wrote before (anything else is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="let --json replace a file scdfast did not write")

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
    f = _prepare_format(formats, "pku", "PKU-MMD part I or II: skeleton text files (a frame per line, 2 persons "
                        "x 25 joints x 3) cut into one sample per labelled action, with NTU's normalisation "
                        "(ntu25, T 300, 2 bodies)", "<sequence>.txt skeleton")
    f.add_argument("--labels", required=True, help="the folder of <sequence>.txt label files (action, start, end, "
                   "confidence per line; start a 0-based frame, end inclusive)")
    f.add_argument("--split", required=True, help="the dataset's split file (cross-subject.txt or cross-view.txt): "
                   "its training list trains, its validation list tests")
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
    f = _prepare_format(formats, "pyskl", "a pyskl / MMAction2 skeleton annotation pickle: NTU-25 3D (body "
                        "selection and normalisation as prepare ntu) or COCO-17 2D keypoints with scores (x and y "
                        "normalised by the image size, first two persons); read without running any code in it",
                        None)
    f.add_argument("--ann", required=True, metavar="FILE.pkl",
                   help="the annotation file (e.g. ntu60_3danno.pkl, ntu60_hrnet.pkl, ucf101_hrnet.pkl); "
                   "--skip-bad skips malformed samples")
    f.add_argument("--split", default="xsub", help="which of the file's splits: NAME takes NAME_train and NAME_val "
                   "(xsub, xview, xset), or TRAIN,TEST names both (e.g. train,val); default xsub")
    f.add_argument("--normalise", choices=("ntu", "none"), default="ntu",
                   help="3D only: ntu (default) selects and normalises bodies as prepare ntu; none stores the "
                   "keypoints as given (first two persons), so that export gives them back")

    p = commands.add_parser("export", help="write a dataset directory in another toolbox's format",
                            description="Write a dataset directory as another toolbox reads it.")
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    f = formats.add_parser("pyskl", help="a pyskl / MMAction2 annotation pickle (split and annotations)",
                           description="Write a dataset directory as a pyskl / MMAction2 annotation pickle: "
                                       "each sample's frames and persons, labels, frame counts and the two "
                                       "splits; 2D datasets in pixels with keypoint_score and img_shape.")
    f.add_argument("--data", required=True, help="the dataset directory")
    f.add_argument("--out", required=True, metavar="FILE.pkl", help="the annotation file to write (a new file)")
    f.add_argument("--split", default="xsub", help="the names of the two splits in the file: NAME gives NAME_train "
                   "and NAME_val, TRAIN,TEST names both; default xsub")
    f.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    f.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    return parser


def _prepare_format(formats, name: str, help_text: str, files: str | None) -> argparse.ArgumentParser:
    """A `scdfast prepare NAME` parser with the options every importer takes."""
    f = formats.add_parser(name, help=help_text, description=help_text)
    if files is not None:
        f.add_argument("--raw", required=True, help=f"the folder of {files} files")
    f.add_argument("--out", required=True, help="the dataset directory to write: a new or empty folder, or an earlier "
                   "output of scdfast prepare, which is replaced when the new one is complete; never a folder "
                   "that is, holds or lies inside the source")
    f.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable or malformed files, listing each and why in OUT/skipped.txt")
    f.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    return f


def _settings(args: argparse.Namespace, sections: tuple[str, ...]) -> tuple[dict, dict]:
    """(--config FILE's sections, --set's); a --set of a section this command does not read is
    an error (a file's other sections are left: a run's config.json holds several)."""
    file = read_config_file(args.config) if args.config else {}
    sets = parse_sets(args.settings)
    refuse_sections(args.command, sections, sets)
    return file, sets


def _overrides(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _run_pretrain(args: argparse.Namespace) -> None:
    from scdfast.data import load_training_split
    from scdfast.data.dataset import model_shape
    from scdfast.train.device import resolve_device
    from scdfast.train.pretrain import compile_views_ahead, load_resume_state, pretrain
    from scdfast.train.rundir import RunDir

    resume = None
    if args.resume:
        if args.overwrite:
            raise ScdError("--resume continues a run and --overwrite replaces one: give one of them")
        if args.config or args.settings:
            raise ScdError("--resume continues with the run's saved settings; --config and --set do not apply")
        resume = load_resume_state(args.resume)
        model_config, config = resume["model_config"], resume["pretrain_config"]
        run_dir, data = args.resume, resume["data"]
    else:
        file, sets = _settings(args, ("model", "pretrain"))
        flags = _overrides(args, ("epochs", "batch_size", "lr", "seed", "checkpoint_steps", "keep_last", "log_every",
                                  "compile", "precision", "bn", "queue_init", "exclude_own_keys", "representation",
                                  "augment"))
        config = preset(args.preset, PretrainConfig, **{**merged("pretrain", file), **flags, **merged("pretrain", sets)})
        data = _data_source(args.data)
    device = resolve_device(args.device)
    if is_synthetic(data):  # generated for seconds: compile the view kernels beside it
        compile_views_ahead(config, device)
    train = load_training_split(data, seed=config.seed)
    if not args.resume:  # the dataset fixes joints, bodies and layout
        shape = model_shape(train)
        for name, value in merged("model", sets).items():
            if name in shape and value != shape[name]:
                raise ScdError(f"--set model.{name}={value}: the dataset fixes {name} to {shape[name]}")
        model_config = preset(args.preset, SCDConfig, **{**merged("model", file, sets), **shape})
        run_dir = args.run_dir
    with RunDir(run_dir, "pretrain", overwrite=args.overwrite, resume=resume is not None) as run_dir:
        verb = f"resuming at step {resume['step']}" if resume else "pretraining"
        print(f"{verb} on {data} ({len(train)} samples) on {device}; run directory {run_dir}")
        result = pretrain(model_config, config, train, run_dir, device, progress=not args.no_progress,
                          resume=resume, data=data)
    if result is None:
        print(f"{run_dir} finished at step {resume['step']}: nothing to resume; its outputs are unchanged")
        return
    print(f"done: {result.steps} steps in {result.seconds:.0f} s, final loss {result.final_loss:.4f}; "
          f"checkpoint {result.checkpoint}")
    print(f"throughput: {result.report()}")
    if result.collapse_report():
        print(result.collapse_report())


def _run_protocol(args: argparse.Namespace) -> None:
    from scdfast.config import FinetuneConfig
    from scdfast.evaluation.features import default_cache_dir
    from scdfast.evaluation.protocols import ProtocolRequest, run_protocol
    from scdfast.evaluation.subsets import parse_fraction
    from scdfast.train.device import resolve_device
    from scdfast.train.rundir import RunDir

    command, options = args.command, {}
    section = {"linear": "linear", "transfer": "linear", "semi": "finetune", "finetune": "finetune"}.get(command)
    file, sets = _settings(args, (section,) if section else ())
    schedule = _overrides(args, ("epochs", "lr", "batch_size", "seed"))
    if command in ("linear", "transfer"):
        # --standardize / --no-standardize, or the preset's choice; the authors' exact protocol is raw
        chosen = False if args.exact_protocol and args.standardize is None else args.standardize
        standardize = {} if chosen is None else {"standardize": chosen}
        options.update(linear=preset(args.preset, LinearConfig, **{**merged("linear", file), **standardize,
                                                                     **schedule, **merged("linear", sets)}),
                       exact=args.exact_protocol)
    if command in ("semi", "finetune"):
        options.update(finetune=preset(args.preset, FinetuneConfig, **{**merged("finetune", file), **schedule,
                                                                         **merged("finetune", sets)}),
                       precision=args.precision)
    if command == "semi":
        options["label_fraction"] = parse_fraction(args.labels)
    if command == "knn":
        options["k"] = args.k
    if command in ("linear", "knn", "transfer") and not args.no_feature_cache:
        options["cache_dir"] = args.feature_cache or default_cache_dir()
    # one seed for the whole run: the schedule's (--seed, or --set/--config's {section}.seed), which also
    # draws the labelled subset and the random-init weights; knn, which has no schedule, takes --seed
    schedule_config = options.get("linear") or options.get("finetune")
    seed = schedule_config.seed if schedule_config is not None else (args.seed or 0)
    device = resolve_device(args.device)
    joint_map = None
    if args.joint_map is not None:  # a bad map is refused before the run directory is made
        from scdfast.data.joint_maps import get_joint_map
        joint_map = get_joint_map(args.joint_map)
    with RunDir(args.run_dir, command, overwrite=args.overwrite) as run_dir:
        run_protocol(ProtocolRequest(
            protocol=command, data=_data_source(args.data), run_dir=run_dir, device=device, preset=args.preset,
            checkpoints=tuple(args.checkpoint or ()), random_init=getattr(args, "random_init", False),
            random_baseline=args.random_baseline, streams=args.streams, seed=seed, embedding=args.embedding,
            figures=not args.no_figures, num_classes=args.num_classes, progress=not args.no_progress,
            joint_map=joint_map, **options))


def _json_signature(command: str) -> str:
    """How a `--json FILE` written by `command` begins: its first field names the command."""
    return '{\n "written_by": ' + json.dumps(f"scdfast {command}")


def _json_output(path: str, command: str, report: dict, overwrite: bool) -> None:
    from scdfast.train.rundir import write_output_file

    text = json.dumps({"written_by": f"scdfast {command}", **report}, indent=1)
    write_output_file(path, "--json", text, _json_signature(command), overwrite)


def _run_report(args: argparse.Namespace) -> None:
    from scdfast.evaluation.reports import REPORT_SIGNATURE, merge_tables, read_report
    from scdfast.train.rundir import check_output_file, write_output_file

    if args.out:
        check_output_file(args.out, "--out", REPORT_SIGNATURE, args.overwrite)
    table = merge_tables([read_report(run) for run in args.runs])
    print(table, end="")
    if args.out:
        write_output_file(args.out, "--out", REPORT_SIGNATURE + table, REPORT_SIGNATURE, args.overwrite)


def _run_prepare(args: argparse.Namespace) -> None:
    from scdfast.data import (
        prepare_msr3d,
        prepare_ntu,
        prepare_pku,
        prepare_sbu,
        prepare_ucla,
        prepare_utd,
        pyskl,
    )

    from scdfast.data.writer import check_output_dir

    if args.format == "pyskl":
        sources = {"--ann": args.ann}
    else:
        sources = {"--raw": args.raw, **({"--labels": args.labels} if args.format == "pku" else {})}
    check_output_dir(args.out, sources)  # before any file is read
    common = {"skip_bad": args.skip_bad, "progress": not args.no_progress}
    importers = {
        "ntu": lambda: prepare_ntu.prepare_ntu(args.raw, args.out, dataset=args.dataset, benchmark=args.benchmark,
                                               jobs=args.jobs, **common),
        "pku": lambda: prepare_pku.prepare_pku(args.raw, args.labels, args.split, args.out, **common),
        "ucla": lambda: prepare_ucla.prepare_ucla(args.raw, args.out, **common),
        "msr3d": lambda: prepare_msr3d.prepare_msr3d(args.raw, args.out, files=args.files, **common),
        "utd-mhad": lambda: prepare_utd.prepare_utd(args.raw, args.out, **common),
        "sbu": lambda: prepare_sbu.prepare_sbu(args.raw, args.out, fold=args.fold, **common),
        "pyskl": lambda: pyskl.prepare_pyskl(args.ann, args.out, split=args.split,
                                             normalise_ntu=args.normalise == "ntu", **common),
    }
    counts = importers[args.format]()
    print(f"wrote {args.out}: {counts['train']} training and {counts['val']} test sequences of up to "
          f"{counts['frames']} frames" + (f"; skipped {counts['skipped']} (see skipped.txt)" if counts["skipped"] else ""))


def _run_export(args: argparse.Namespace) -> None:
    from scdfast.data.pyskl import export_pyskl

    counts = export_pyskl(args.data, args.out, split=args.split, overwrite=args.overwrite,
                          progress=not args.no_progress)
    print(f"wrote {args.out}: {counts['train']} training and {counts['val']} test samples ({counts['layout']})"
          + ("; sample names repeat across the splits, so each frame_dir is its split_name" if counts["renamed"]
             else ""))


def _run_diagnose(args: argparse.Namespace) -> None:
    from scdfast.evaluation.diagnose import diagnose, format_report
    from scdfast.train.device import resolve_device
    from scdfast.train.rundir import check_output_file

    if args.samples < 2:
        raise ScdError(f"--samples {args.samples}: the readings need at least 2 samples")
    if args.json:
        check_output_file(args.json, "--json", _json_signature("diagnose"), args.overwrite)
    data = _data_source(args.data) if args.data else None
    report = diagnose(args.checkpoint, data, args.samples, args.seed, resolve_device(args.device))
    print(format_report(report))
    if args.json:
        _json_output(args.json, "diagnose", report, args.overwrite)


def _run_doctor(args: argparse.Namespace) -> int:
    from scdfast.doctor import print_report, run_in_child
    from scdfast.train.rundir import check_output_file

    if args.json:
        check_output_file(args.json, "--json", _json_signature("doctor"), args.overwrite)
    targets = ", ".join(f"sm_{t}" for t in args.targets)
    print(f"compiling every GPU kernel configuration for {targets} (about 5 minutes on 2 cores for both)...",
          flush=True)
    report = run_in_child(args.targets, args.jobs)
    if args.json:
        _json_output(args.json, "doctor", report, args.overwrite)
    return 0 if print_report(report) else 1


# commands that run the encoders, for which malloc keeps freed memory (scdfast.hostmem)
COMPUTING_COMMANDS = ("pretrain", *(name for name, *_ in _PROTOCOL_PARSERS))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in COMPUTING_COMMANDS:
        from scdfast.hostmem import keep_freed_memory
        keep_freed_memory()  # before the first tensor: freed activations stay with the process
    try:
        if args.command == "doctor":
            return _run_doctor(args)
        if args.command == "pretrain":
            _run_pretrain(args)
        elif args.command == "prepare":
            _run_prepare(args)
        elif args.command == "export":
            _run_export(args)
        elif args.command == "report":
            _run_report(args)
        elif args.command == "diagnose":
            _run_diagnose(args)
        else:
            _run_protocol(args)
    except (ScdError, FileNotFoundError, PermissionError) as exc:
        print(f"scdfast {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ImportError as exc:
        from scdfast.extras import missing_extra_message
        message = missing_extra_message(exc, args.command)
        if message is None:
            raise
        print(f"scdfast {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # the machine's, not a bug: a full disk, an I/O error, a read-only folder
        if exc.filename and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            from scdfast.train.rundir import write_error
            exc = write_error(exc.filename, exc)
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
