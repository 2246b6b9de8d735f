"""What a pretrained encoder has learnt, beside actions: the diagnostic behind ACCURACY.md's
"What the encoder learns in 240 steps".

    python benchmarks/what_pretraining_learns.py --data DIR RUN [RUN ...]

For each pretraining run (and the random-init encoder of the same architecture and seed), on
the downstream features concat(vt, vs) in eval mode:
- action: standardized linear evaluation and 1-NN (cosine), test split against training split;
- performer and recording: 1-NN on the test split, scored by the nearest training sample's
  performer and recording, and a standardized linear probe of the performer, read from the
  sample names (--names; NW-UCLA's aAA_sSS_eEE_vVV by
  default, whose cross-view test split holds other views of the training recordings);
- instance: two pretraining views of every training sample, top-1 retrieval of one among the
  other views (cosine), on raw and on standardized features;
- the SCD loss of the run's query and key encoders on fresh views against its own queues,
  with BatchNorm on batch statistics (as in training) and on running statistics: a loss that
  only falls with batch statistics would be information leaked through the batch.
"""
from __future__ import annotations

import argparse
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F

from scdfast.compat import read_checkpoint
from scdfast.config import LinearConfig, PretrainConfig, SCDConfig, from_dict
from scdfast.data.dataset import load_dataset, model_shape, num_classes
from scdfast.data.label_file import read_label_file
from scdfast.errors import ScdError
from scdfast.evaluation.encoders import load_encoder, random_encoder, resolve_checkpoint
from scdfast.evaluation.features import extract_features
from scdfast.evaluation.knn import knn_classify
from scdfast.evaluation.linear import linear_probe
from scdfast.losses.reference import scd_loss_ref
from scdfast.models import SCDNet
from scdfast.train.views import ViewSource

UCLA_NAMES = r"a(?P<action>\d+)_s(?P<performer>\d+)_e(?P<episode>\d+)_v\d+"
CPU = torch.device("cpu")


def _names(root: str, split: str, pattern: re.Pattern) -> tuple[np.ndarray, np.ndarray]:
    """(performer, recording) of every sample, from its name."""
    names = read_label_file(f"{root}/{split}_label.pkl")[0] or []
    found = [pattern.fullmatch(n) for n in names]
    if not all(found):
        bad = next(n for n, m in zip(names, found) if not m)
        sys.exit(f"{root}/{split}_label.pkl: sample name {bad!r} does not match --names {pattern.pattern!r}")
    return (np.array([m["performer"] for m in found]),
            np.array([f"{m['action']}_{m['performer']}_{m['episode']}" for m in found]))


def _nearest(train_x: torch.Tensor, test_x: torch.Tensor) -> np.ndarray:
    return (F.normalize(test_x, dim=1) @ F.normalize(train_x, dim=1).T).argmax(1).numpy()


def _instance_retrieval(model, train, config: SCDConfig) -> tuple[float, float]:
    """Top-1 % of a sample's second view among all second views, raw and standardized."""
    views = ViewSource(train, config, PretrainConfig.tiny(seed=123), CPU)
    first, second = [], []
    with torch.no_grad():
        for lo in range(0, len(train), 64):
            q, k = views(np.arange(lo, min(lo + 64, len(train))), 10_000 + lo)
            first.append(model.features(q))
            second.append(model.features(k))
    a, b = torch.cat(first), torch.cat(second)
    mean, std = a.mean(0), a.std(0).clamp_min(1e-6)
    own = np.arange(len(a))
    return tuple(100 * float((_nearest(y, x) == own).mean()) for x, y in ((a, b), ((a - mean) / std, (b - mean) / std)))


def _loss_by_batchnorm(path: str, train) -> tuple[float, float]:
    """SCD loss on fresh views: BatchNorm on batch statistics, then on running statistics."""
    payload = read_checkpoint(path)
    config = from_dict(SCDConfig, payload["model_config"])
    net = SCDNet(config)
    net.load_state_dict(payload["model"])
    views = ViewSource(train, config, PretrainConfig.tiny(seed=7), CPU)
    order = np.random.default_rng(0).permutation(len(train))
    losses = []
    for batch_statistics in (True, False):
        net.eval()  # dropout off
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train(batch_statistics)
        saved = {k: v.clone() for k, v in net.state_dict().items()}  # batch statistics update the running ones
        with torch.no_grad():
            values = []
            for s in range(max(1, min(6, len(train) // 64))):  # up to 6 full batches of 64
                q, k = views(order[s * 64:(s + 1) * 64], 50_000 + s)
                values.append(float(scd_loss_ref(net.encode_queries(q), net.encode_keys(k), net.queues,
                                                 config.temperature).mean()))
        net.load_state_dict(saved)
        losses.append(float(np.mean(values)))
    return losses[0], losses[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="pretraining run directories or checkpoints")
    parser.add_argument("--data", required=True, help="the dataset directory they were pretrained on")
    parser.add_argument("--names", default=UCLA_NAMES,
                        help="regex with groups action, performer, episode matching every sample name "
                             "(default: NW-UCLA's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init encoder (default 0)")
    args = parser.parse_args(argv)
    pattern = re.compile(args.names)
    train, test = load_dataset(args.data)
    classes = num_classes(train, test)
    train_who, train_rec = _names(args.data, "train", pattern)
    test_who, test_rec = _names(args.data, "val", pattern)
    train_y, test_y = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
    who = sorted(set(train_who) | set(test_who))
    who_train_y, who_test_y = (torch.tensor([who.index(p) for p in ps]) for ps in (train_who, test_who))
    sources = [("random init", random_encoder(SCDConfig.tiny(**model_shape(train)), classes, args.seed, "joint"), None)]
    sources += [(run, load_encoder(run, classes), resolve_checkpoint(run)) for run in args.runs]
    rows = {}
    for label, source, path in sources:
        print(f"[{label}] features", file=sys.stderr, flush=True)
        model = source.model.eval()
        fx = extract_features(model, train, source.config.window, CPU)
        gx = extract_features(model, test, source.config.window, CPU)
        nearest = _nearest(fx, gx)
        raw, standardized = _instance_retrieval(model, train, source.config)
        loss = _loss_by_batchnorm(path, train) if path else None
        rows[label] = {
            "action, standardized linear": linear_probe(fx, train_y, gx, test_y, classes, LinearConfig.tiny(), CPU).top1,
            "action, 1-NN": knn_classify(fx, train_y, gx, test_y, classes, k=1).top1,
            "performer, 1-NN": 100 * float((train_who[nearest] == test_who).mean()),
            "performer, standardized linear": linear_probe(fx, who_train_y, gx, who_test_y, len(who), LinearConfig.tiny(),
                                                           CPU).top1,
            "same recording, 1-NN": 100 * float((train_rec[nearest] == test_rec).mean()),
            "instance retrieval of two pretraining views": raw,
            "the same, standardized features": standardized,
            "SCD loss, BatchNorm batch / running statistics": f"{loss[0]:.2f} / {loss[1]:.2f}" if loss else "",
        }
    labels = list(rows)
    print("| top-1 % | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for metric in rows[labels[0]]:
        cells = [v if isinstance(v, str) else f"{v:.1f}" for v in (rows[label][metric] for label in labels)]
        print(f"| {metric} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    try:
        main()
    except ScdError as error:
        sys.exit(f"what_pretraining_learns: {error}")
