"""One protocol run, as the `scdfast linear|knn|semi|finetune|transfer` commands do it: load
the data and encoders (one per stream, plus random-init baselines), evaluate each, sum the
streams' class scores into the ensemble, and write scores, figures and reports."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from scdfast.config import MAX_SEED, FinetuneConfig, LinearConfig, SCDConfig, preset, to_dict
from scdfast.data import load_dataset
from scdfast.data.dataset import layout_spec, model_shape, num_classes
from scdfast.data.joint_maps import JointMap, get_joint_map
from scdfast.data.synthetic import SkeletonSet
from scdfast.errors import ScdError
from scdfast.evaluation.encoders import (
    EncoderSource,
    downstream_checkpoint,
    load_encoder,
    random_encoder,
)
from scdfast.evaluation.features import FeatureCache, dataset_identity, extract_features
from scdfast.evaluation.figures import EMBEDDINGS, confusion_png, embedding_png
from scdfast.evaluation.finetune import finetune
from scdfast.evaluation.knn import knn_classify
from scdfast.evaluation.linear import linear_probe, linear_probe_exact
from scdfast.evaluation.metrics import topk_accuracy
from scdfast.evaluation.reports import protocol_label, write_report
from scdfast.evaluation.subsets import stratified_subset
from scdfast.train.rundir import atomic_write, save_checkpoint

PROTOCOLS = ("linear", "knn", "semi", "finetune", "transfer")
STREAMS = ("joint", "motion", "bone")


@dataclass
class ProtocolRequest:
    protocol: str                              # one of PROTOCOLS
    data: str                                  # 'synthetic' or a dataset directory
    run_dir: str
    device: torch.device
    preset: str = "paper"                      # sizes of a random-init encoder
    checkpoints: tuple[str, ...] = ()          # one per stream
    random_init: bool = False
    random_baseline: bool = False
    streams: tuple[str, ...] | None = None     # overrides the checkpoints' own streams
    seed: int = 0                              # the run's one seed: it replaces the configs' own
    linear: LinearConfig | None = None
    finetune: FinetuneConfig | None = None
    k: int = 1
    label_fraction: float | None = None        # semi-supervised: the labelled fraction
    cache_dir: str | None = None               # None: no feature cache
    exact: bool = False                        # linear: the encoder re-run every epoch
    embedding: str = "pca"
    figures: bool = True
    precision: str = "auto"
    num_classes: int | None = None             # None: max label + 1, the same in both splits
    joint_map: str | JointMap | None = None    # places the data's joints into the encoder's layout
    progress: bool = True
    log: object = field(default=print)


def _check_request(r: ProtocolRequest) -> None:
    if r.protocol not in PROTOCOLS:
        raise ScdError(f"protocol {r.protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if bool(r.checkpoints) == r.random_init:
        raise ScdError("give --checkpoint (once per stream) or --random-init")
    if r.protocol == "transfer" and r.random_init:
        raise ScdError("transfer evaluates a pretrained encoder: give --checkpoint")
    if r.streams is not None:
        bad = [s for s in r.streams if s not in STREAMS]
        if bad:
            raise ScdError(f"--streams {','.join(r.streams)}: unknown stream {bad[0]!r} (use {', '.join(STREAMS)})")
        if len(set(r.streams)) != len(r.streams):
            raise ScdError(f"--streams {','.join(r.streams)}: a stream is named twice")
        if r.checkpoints and len(r.streams) != len(r.checkpoints):
            raise ScdError(f"--streams names {len(r.streams)} streams for {len(r.checkpoints)} checkpoints")
    if r.joint_map is not None and r.random_init:
        raise ScdError("--joint-map places the data into a pretrained encoder's layout: give --checkpoint")
    if r.protocol == "semi" and r.label_fraction is None:
        raise ScdError("semi needs --labels (e.g. 10%)")
    if r.protocol in ("semi", "finetune") and r.finetune is None:
        raise ScdError(f"{r.protocol} needs a FinetuneConfig (ProtocolRequest.finetune)")
    if not 0 <= r.seed <= MAX_SEED:
        raise ScdError(f"--seed {r.seed}: must be in [0, {MAX_SEED}]")
    if r.embedding not in EMBEDDINGS:
        raise ScdError(f"--embedding {r.embedding!r}: use {' or '.join(EMBEDDINGS)}")


def _with_bodies(samples: SkeletonSet, bodies: int) -> SkeletonSet:
    """The samples with absent (all-zero) persons added up to `bodies`, in memory."""
    pad = [(0, 0)] * 4 + [(0, bodies - samples.data.shape[4])]
    return replace(samples, data=np.pad(np.asarray(samples.data), pad))


def _sources(r: ProtocolRequest, data: dict, classes: int) -> list:
    """Factories of EncoderSource, one per (encoder, stream), each called once: fine-tuning
    changes its model in place, so no two evaluations share one. Where the encoders take more
    persons than the data holds, data["train"] and data["test"] gain absent ones (zeros, as
    every dataset writes a missing person)."""
    shape = model_shape(data["train"])
    if r.random_init:
        config = preset(r.preset, SCDConfig, **shape)
        return [lambda s=s: random_encoder(config, classes, r.seed, s) for s in (r.streams or ("joint",))]
    out = []
    streams_seen = set()
    for i, path in enumerate(r.checkpoints):
        source = load_encoder(path, classes, r.seed)
        theirs = {**{field: getattr(source.config, field) for field in shape},
                  "layout": layout_spec(source.config.skeleton)}
        if theirs["num_bodies"] > shape["num_bodies"] and {**theirs, "num_bodies": 0} == {**shape, "num_bodies": 0} \
                and i == 0:
            r.log(f"the data's {shape['num_bodies']} person(s) padded to the encoder's {theirs['num_bodies']} "
                  "with absent ones (zeros)")
            data.update({k: _with_bodies(v, theirs["num_bodies"]) for k, v in data.items()})
            shape = model_shape(data["train"])
        if theirs != shape:
            hint = "" if r.joint_map else "; --joint-map places a dataset's joints into another layout"
            raise ScdError(f"--checkpoint {path}: the encoder takes {theirs['num_joints']} joints x "
                           f"{theirs['num_bodies']} bodies (layout {source.config.skeleton.name}), the data "
                           f"{shape['num_joints']} x {shape['num_bodies']} "
                           f"(layout {data['train'].layout.name}){hint}")
        stream = r.streams[i] if r.streams else source.representation
        if stream in streams_seen:
            raise ScdError(f"--checkpoint {path}: a second encoder of the {stream} stream (one per stream; "
                           f"--streams says which is which)")
        streams_seen.add(stream)

        source.representation = stream
        out.append(lambda source=source: source)
        if r.random_baseline:
            out.append(lambda config=source.config, stream=stream: random_encoder(config, classes, r.seed, stream))
    return out


def _features(r: ProtocolRequest, cache: FeatureCache, source: EncoderSource, split: str, data) -> torch.Tensor:
    def compute():
        return extract_features(source.model, data, source.config.window, r.device, source.representation,
                                progress=r.progress, desc=f"{source.label} {source.representation}: {split} features")
    joint_map = r.joint_map and [r.joint_map.source.name, r.joint_map.target.name, r.joint_map.joints]
    features, hit = cache.get(compute, encoder=source.identity, data=dataset_identity(r.data, split),
                              stream=source.representation, window=source.config.window, joint_map=joint_map)
    if hit:
        r.log(f"{source.label} {source.representation}: {split} features from the cache")
    return features


def _evaluate(r: ProtocolRequest, source: EncoderSource, train, test, classes: int, cache: FeatureCache,
              index: np.ndarray | None) -> dict:
    """Scores, metrics and test features of one encoder under the protocol (`index`: semi's
    labelled subset of `train`)."""
    train_y, test_y = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
    if r.protocol in ("semi", "finetune"):
        result = finetune(source, train, test, r.finetune, r.device, index, r.precision, r.progress)
        name = f"{source.label.replace(' ', '-')}-{source.representation}.pt"
        save_checkpoint(downstream_checkpoint(source, source.model, r.data, {
            "protocol": r.protocol, "label_fraction": r.label_fraction, "top1": result.top1}),
            os.path.join(r.run_dir, "checkpoints", name))
        return {"scores": result.logits, "features": result.features, "best_top1": result.best_top1,
                "labelled": result.train_samples}
    if r.protocol in ("linear", "transfer") and r.exact:
        result = linear_probe_exact(source.model, train, test, source.config.window, source.representation,
                                    classes, r.linear, r.device, r.progress)
        return {"scores": result.logits, "features": None, "best_top1": result.best_top1}
    train_x = _features(r, cache, source, "train", train)
    test_x = _features(r, cache, source, "val", test)
    if r.protocol == "knn":
        result = knn_classify(train_x, train_y, test_x, test_y, classes, r.k, r.device)
        return {"scores": result.scores, "features": test_x}
    result = linear_probe(train_x, train_y, test_x, test_y, classes, r.linear, r.device, r.progress)
    return {"scores": result.logits, "features": test_x, "best_top1": result.best_top1}


def run_protocol(r: ProtocolRequest) -> dict:
    """Evaluate, write results.json, results.md, scores.npz and the figures; return the report."""
    _check_request(r)
    # one seed: the request's draws the subset, the random-init weights and each schedule's order
    r = replace(r, linear=r.linear and replace(r.linear, seed=r.seed),
                finetune=r.finetune and replace(r.finetune, seed=r.seed))
    train, test = load_dataset(r.data, seed=r.seed)
    if r.joint_map is not None:
        joint_map = r.joint_map if isinstance(r.joint_map, JointMap) else get_joint_map(r.joint_map)
        train, test = joint_map.apply(train), joint_map.apply(test)
        r = replace(r, joint_map=joint_map)
        r.log(f"joint map {joint_map.name}: {joint_map.source.name} joints placed into {joint_map.target.name}")
    classes = num_classes(train, test, r.num_classes)
    cache = FeatureCache(r.cache_dir)
    test_y = torch.from_numpy(test.labels)
    settings = _settings(r)
    index = stratified_subset(train.labels, r.label_fraction, r.seed) if r.protocol == "semi" else None
    if index is not None:
        r = _semi_schedule(r, len(train), len(index))
        settings["trained_epochs"] = r.finetune.epochs
    title = protocol_label({"protocol": r.protocol, "settings": settings})
    rows, scores, sources_seen, labelled = [], {}, [], len(train)
    data = {"train": train, "test": test}
    makers = _sources(r, data, classes)
    train, test = data["train"], data["test"]
    for make in makers:
        source = make()
        out = _evaluate(r, source, train, test, classes, cache, index)
        row = {"encoder": source.label, "stream": source.representation,
               "top1": topk_accuracy(out["scores"], test_y, 1), "top5": topk_accuracy(out["scores"], test_y, 5)}
        if "best_top1" in out:
            row["best_top1"] = out["best_top1"]
        rows.append(row)
        scores[(source.label, source.representation)] = out["scores"]
        sources_seen.append(source)
        labelled = out.get("labelled", labelled)
        r.log(f"{title}, {source.label}, "
              f"{source.representation}: top-1 {row['top1']:.2f}%  top-5 {row['top5']:.2f}%")
        if r.figures:
            tag = f"{source.label.replace(' ', '-')}-{source.representation}"
            confusion_png(os.path.join(r.run_dir, f"confusion-{tag}.png"), test.labels,
                          out["scores"].argmax(dim=1).numpy(), classes, f"{source.label}, {source.representation}")
            if out["features"] is not None:
                embedding_png(os.path.join(r.run_dir, f"embedding-{tag}.png"), out["features"], test.labels,
                              r.embedding, f"test features: {source.label}, {source.representation}", r.seed)
    for label in dict.fromkeys(lbl for lbl, _ in scores):
        streams = [s for lbl, s in scores if lbl == label]
        if len(streams) > 1:  # the field's ensemble: summed class scores of the streams
            total = sum(scores[(label, s)] for s in streams)
            scores[(label, "ensemble")] = total
            rows.append({"encoder": label, "stream": "ensemble", "streams": streams,
                         "top1": topk_accuracy(total, test_y, 1), "top5": topk_accuracy(total, test_y, 5)})
            r.log(f"ensemble of {'+'.join(streams)}, {label}: top-1 {rows[-1]['top1']:.2f}%  "
                  f"top-5 {rows[-1]['top5']:.2f}%")
            if r.figures:
                confusion_png(os.path.join(r.run_dir, f"confusion-{label.replace(' ', '-')}-ensemble.png"),
                              test.labels, total.argmax(dim=1).numpy(), classes, f"{label}, ensemble")
    buffer = io.BytesIO()
    np.savez(buffer, labels=test.labels, **{f"{lbl.replace(' ', '_')}__{s}": v.numpy() for (lbl, s), v in scores.items()})
    atomic_write(os.path.join(r.run_dir, "scores.npz"), lambda f: f.write(buffer.getvalue()))
    pretrained = [s for s in sources_seen if s.checkpoint]
    report = {"protocol": r.protocol, "data": r.data, "num_classes": classes, "train_samples": len(train),
              "labelled_samples": labelled, "test_samples": len(test), "rows": rows, "settings": settings,
              "checkpoints": [s.checkpoint for s in pretrained],
              "source": pretrained[0].pretrain_data if pretrained else None}
    write_report(r.run_dir, report)
    r.log(f"chance level: {100.0 / classes:.2f}% ({classes} classes); results in {r.run_dir}")
    return report


def _semi_schedule(r: ProtocolRequest, train_samples: int, labelled: int) -> ProtocolRequest:
    """The request with the schedule its labelled subset trains under (FinetuneConfig.for_labelled)."""
    schedule = r.finetune.for_labelled(train_samples, labelled)
    if schedule is not r.finetune:
        r.log(f"semi-supervised: {labelled} of {train_samples} samples labelled, so {schedule.epochs} epochs "
              f"(lr x0.1 at {', '.join(map(str, schedule.lr_drop_epochs)) or 'none'}) for fine-tuning's "
              f"{r.finetune.epochs}, the same samples seen; --set finetune.semi_samples_matched=false keeps "
              f"{r.finetune.epochs}")
    return replace(r, finetune=schedule)


def _settings(r: ProtocolRequest) -> dict:
    settings: dict = {"seed": r.seed}
    if r.joint_map is not None:
        settings["joint_map"] = r.joint_map.name
    if r.protocol in ("linear", "transfer"):
        settings.update(to_dict(r.linear) if r.linear else {}, exact_protocol=r.exact)
    if r.protocol in ("semi", "finetune"):
        settings.update(to_dict(r.finetune))  # _check_request: semi and finetune have one
    if r.protocol == "semi":
        settings["label_fraction"] = r.label_fraction
    if r.protocol == "knn":
        settings["k"] = r.k
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
