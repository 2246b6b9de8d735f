"""Configuration dataclasses: the model and its contrastive objective, and the schedules.

Every default is the paper's (SCDNET.md). The `tiny()` presets exist so that a CPU can run the
whole pipeline in minutes; each class's `_TINY` lists exactly what they change. Besides sizes
and schedule lengths, tiny pretraining changes two of the method's settings: 1,024 queued keys
(the paper's 8,192), and queues that start with real keys rather than random vectors, without
which a run this short collapses (benchmarks/ACCURACY.md).

A field with a fixed set of values is typed `Literal[...]`: `__post_init__` checks it, and the
command line's `choices=` are read from it (`choices(PretrainConfig, "compile")`).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Literal

from scdfast.errors import ScdError

Representation = Literal["joint", "motion", "bone"]
AugmentMode = Literal["batched", "reference"]
QueueInit = Literal["random", "keys"]
CompileMode = Literal["auto", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
Precision = Literal["auto", "fp32", "bf16"]
BatchNormMode = Literal["auto", "local", "shuffle", "sync"]


def choices(kind: type, field: str) -> tuple:
    """The values a Literal-typed config field takes."""
    return typing.get_args(typing.get_type_hints(kind)[field])


MAX_SEED = 2**32 - 1


def _typed(value, hint):
    """`value` as a value of the type hint `hint` (an int in a float field becomes a float, a
    list a tuple), or raise TypeError. Booleans are not numbers here, and floats are finite."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise TypeError(f"choose one of {', '.join(map(str, args))}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _typed(value, option)
            except TypeError:
                pass
        raise TypeError("expected " + " or ".join(_type_name(a) for a in args))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected {_type_name(hint)}")
        items = args[:1] * len(value) if args[-1] is Ellipsis else args
        if len(items) != len(value):
            raise TypeError(f"expected {_type_name(hint)}")
        return tuple(_typed(v, item) for v, item in zip(value, items))
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if hint is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise TypeError("expected a finite number")
        return float(value)
    if hint in (str, dict) and isinstance(value, hint):
        return value
    raise TypeError(f"expected {_type_name(hint)}")


def _type_name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return f"a list of {_type_name(args[0])}s" if args[-1] is Ellipsis else f"{len(args)} numbers"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a name", dict: "an object",
            type(None): "none"}.get(hint, str(hint))


def _check_fields(config) -> None:
    """Every field of `config` holds its declared type (converted in place: the same rule for a
    file, --set, a checkpoint and Python), else a one-line ScdError naming the field and value."""
    kind = type(config).__name__
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        try:
            setattr(config, field.name, _typed(value, hints[field.name]))
        except TypeError as exc:
            raise ScdError(f"{kind}: {field.name}={value!r}: {exc}") from None


def _check_rules(config, rules: list[tuple[bool, str]]) -> None:
    for ok, message in rules:
        if not ok:
            raise ScdError(f"{type(config).__name__}: {message}")


def _schedule_rules(config) -> list[tuple[bool, str]]:
    """What every schedule (pretraining, linear, fine-tuning) must satisfy."""
    return [
        (config.epochs >= 1, f"epochs={config.epochs}: must be >= 1"),
        (config.batch_size >= 1, f"batch_size={config.batch_size}: must be >= 1"),
        (config.lr is None or config.lr > 0, f"lr={config.lr} must be a finite number > 0"),
        (all(e >= 1 for e in config.lr_drop_epochs),
         f"lr_drop_epochs={','.join(map(str, config.lr_drop_epochs))}: epochs are counted from 1"),
        (0.0 <= config.sgd_momentum < 1.0, f"sgd_momentum={config.sgd_momentum}: must be in [0, 1)"),
        (config.weight_decay >= 0, f"weight_decay={config.weight_decay}: must be >= 0"),
        (0 <= config.seed <= MAX_SEED, f"seed={config.seed}: must be in [0, {MAX_SEED}]"),
    ]


class _Presets:
    """`paper()` is the dataclass defaults; `tiny()` applies the class's `_TINY` overrides."""

    _TINY: dict = {}

    @classmethod
    def paper(cls, **overrides):
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides):
        return cls(**{**cls._TINY, **overrides})


@dataclass(kw_only=True)
class SCDConfig(_Presets):
    """SCD-Net's architecture and MoCo objective. `paper()`: the published configuration,
    92,017,840 parameters per encoder. `tiny()`: the `_TINY` values below."""

    num_joints: int = 25
    """V: joints per body; must be the layout's."""
    num_bodies: int = 2
    """M: bodies per sample."""
    layout: str | dict = "ntu25"
    """The skeleton layout: a built-in name (ntu25, kinect20, sbu15) or a custom layout's fields."""
    in_channels: int = 3
    """C: coordinates per joint."""
    window: int = 64
    """Frames every view is resized to (the transformer's temporal token count)."""
    gcn_channels: int = 64
    """CTR-GCN base width: the units are 3->c, c->4c, 4c->c."""
    d_model: int = 2048
    """Width of both transformer branches (the paper's d)."""
    num_heads: int = 8
    """Attention heads of each transformer branch."""
    num_layers: int = 1
    """Transformer encoder layers per branch."""
    dim_feedforward: int | None = None
    """Transformer feed-forward width; None means d_model, as the authors build it."""
    dropout: float = 0.1
    """Transformer dropout (PyTorch's default, which the authors keep)."""
    proj_dim: int = 128
    """Output width of the three projectors (the contrastive embedding size)."""
    queue_size: int = 8192
    """K: keys in each of the three queues; must be a multiple of the batch size."""
    temperature: float = 0.2
    """T of every InfoNCE term."""
    momentum: float = 0.999
    """Key-encoder EMA coefficient."""

    # A CPU-sized model: the same structure with narrow layers, a short window and a short
    # queue; temperature and key momentum are the paper's (a faster key encoder, 0.99, was
    # measured to lose more action information in 240 steps). CTR-GCN width 16, not 8: at 8
    # the pretrained NW-UCLA start fell 4.5-7.5 points behind random init (benchmarks/ACCURACY.md)
    _TINY = dict(window=32, gcn_channels=16, d_model=128, num_heads=4, proj_dim=64, queue_size=1024)

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_rules(self, [
            (self.num_bodies >= 1, f"num_bodies={self.num_bodies}: must be >= 1"),
            (self.in_channels >= 1, f"in_channels={self.in_channels}: must be >= 1"),
            (self.window > 0 and self.window % 16 == 0,
             f"window={self.window}: must be a positive multiple of 16 (temporal masking cuts 16 segments)"),
            (self.gcn_channels > 0 and self.gcn_channels % 4 == 0,
             f"gcn_channels={self.gcn_channels}: must be a positive multiple of 4 (4 temporal branches)"),
            (min(self.d_model, self.num_heads, self.proj_dim) >= 1,
             f"d_model={self.d_model}, num_heads={self.num_heads} and proj_dim={self.proj_dim} must be >= 1"),
            (self.num_heads < 1 or self.d_model % self.num_heads == 0,
             f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}"),
            (self.dim_feedforward is None or self.dim_feedforward >= 1,
             f"dim_feedforward={self.dim_feedforward}: must be >= 1 (or none: d_model)"),
            (0.0 <= self.dropout < 1.0, f"dropout={self.dropout}: must be in [0, 1)"),
            (self.temperature > 0, f"temperature={self.temperature}: must be > 0"),
            (0.0 <= self.momentum < 1.0, f"momentum={self.momentum}: must be in [0, 1)"),
            (self.queue_size > 0, f"queue_size={self.queue_size}: must be > 0"),
            (self.num_layers >= 1, f"num_layers={self.num_layers}: must be >= 1"),
        ])
        if self.skeleton.num_joints != self.num_joints:
            raise ScdError(f"SCDConfig: num_joints={self.num_joints} but layout {self.skeleton.name!r} has "
                           f"{self.skeleton.num_joints} joints")

    @property
    def skeleton(self):
        """The SkeletonLayout named by `layout`."""
        from scdfast.data.layouts import get_layout
        return get_layout(self.layout)

    @property
    def feedforward(self) -> int:
        return self.dim_feedforward or self.d_model

    @property
    def feature_dim(self) -> int:
        """Width of the downstream feature concat(vt, vs)."""
        return 2 * self.d_model



def _check_crop_ratio(ratio: tuple[float, float]) -> None:
    lo, hi = ratio
    if not 0.0 < lo <= hi <= 1.0:
        raise ScdError(f"crop_ratio={ratio}: need 0 < low <= high <= 1")


@dataclass(kw_only=True)
class PretrainConfig(_Presets):
    """MoCo pretraining schedule and view generation."""

    epochs: int = 451
    """Passes over the training set."""
    batch_size: int = 64
    """The global batch (split over the ranks under torchrun)."""
    lr: float = 0.01
    """SGD learning rate of the query encoder."""
    lr_drop_epochs: tuple[int, ...] = (351,)
    """Epochs at which the learning rate is multiplied by 0.1."""
    sgd_momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1e-4
    """L2 weight decay of the query encoder."""
    crop_ratio: tuple[float, float] = (0.1, 1.0)
    """Range of the temporal crop ratio r."""
    representation: Representation = "joint"
    """Input stream: joint, motion or bone."""
    augment: AugmentMode = "batched"
    """View generation: "batched" (the Numba kernels, on the GPU when training there) or
    "reference" (the per-sample NumPy reference, for comparison)."""
    queue_init: QueueInit = "random"
    """How the three queues start: "random" (unit normal vectors, the paper's) or "keys" (the
    key encoder's keys of K / batch_size batches of real views, before the first step; the tiny
    preset's). With random queues SCD-Net's cross-head terms are lowered most by mapping every
    sample to one direction, until the random keys have left the queue; a run of a few hundred
    steps keeps the collapsed features (their spread falls to about 1% of their mean) and
    fine-tuning from them ended at chance. Real keys leave no such shortcut
    (benchmarks/ACCURACY.md has both measured)."""
    exclude_own_keys: bool = False
    """Leave a queued key of the query's own sample out of its negatives (the keys carry their
    sample ids). Off in the paper's recipe: with NTU's 40,091 samples, K = 8192 and batch 64
    a query's own older key is in the queue about 2% of the time. On in the tiny preset: with
    1,024 keys it is there for 56% of NW-UCLA's queries and for nearly every query of a dataset
    of a few hundred samples, which SCD-Net would push away from their own samples."""
    seed: int = 0
    """Seeds the weights, the data order, the views and dropout."""
    checkpoint_every: int = 1
    """Epochs between checkpoints."""
    checkpoint_steps: int = 0
    """Also checkpoint every this many steps (0: only at epoch ends)."""
    keep_last: int = 3
    """Step checkpoints kept (best.pt and last.pt are kept besides)."""
    log_every: int = 10
    """Steps between host reads of the loss (progress bar, steps.csv, the non-finite guard)."""
    compile: CompileMode = "auto"
    """torch.compile mode of both encoders: auto ("default" on CUDA, eager on the CPU, where
    compiling costs minutes and the compiled bf16 step is no faster), off, default,
    reduce-overhead, max-autotune, max-autotune-no-cudagraphs."""
    precision: Precision = "auto"
    """auto (bf16 autocast on CUDA and on CPUs with AVX-512-BF16 or AMX, fp32 on other CPUs),
    fp32 or bf16."""
    bn: BatchNormMode = "auto"
    """BatchNorm across ranks under torchrun: auto (shuffle when distributed), local, shuffle
    (MoCo's shuffle-BN for the key encoder) or sync (SyncBatchNorm, CUDA)."""

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_rules(self, [
            (min(self.checkpoint_every, self.keep_last, self.log_every) >= 1 and self.checkpoint_steps >= 0,
             "checkpoint_every, keep_last and log_every must be >= 1, checkpoint_steps >= 0"),
            *_schedule_rules(self)])
        _check_crop_ratio(self.crop_ratio)

    # 16 epochs with the drop at 13 at the paper's lr and batch; the queues start with real keys
    # and a query's own keys are no negatives (the two docstrings say why; the paper does neither)
    _TINY = dict(epochs=16, batch_size=64, lr_drop_epochs=(13,), queue_init="keys", exclude_own_keys=True)


@dataclass(kw_only=True)
class LinearConfig(_Presets):
    """Linear evaluation: frozen encoder (eval mode), a trained Linear classifier."""

    epochs: int = 80
    """Passes of the classifier over the training features."""
    batch_size: int = 1024
    """Features per classifier step."""
    lr: float | None = None
    """None: the authors' 2.0 on raw features, 0.1 on standardized ones."""
    lr_drop_epochs: tuple[int, ...] = (50, 70)
    """Epochs at which the learning rate is multiplied by 0.1."""
    sgd_momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 0.0
    """L2 weight decay of the classifier (the authors' 0)."""
    seed: int = 0
    """Seeds the classifier's initialisation and the batch order."""
    standardize: bool = False
    """Z-score each feature with the training set's mean and std before the classifier (a
    frozen BatchNorm without affine, as MAE's linear probe). Off in the authors' protocol (the
    paper preset); on in the tiny preset, whose short pretraining leaves features whose spread
    is about 1% of their mean, which a classifier on the raw features cannot use (README)."""

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.lr is None:
            self.lr = 0.1 if self.standardize else 2.0
        _check_rules(self, _schedule_rules(self))

    # standardized features (so lr 0.1) in batches of 256
    _TINY = dict(batch_size=256, standardize=True)


@dataclass(kw_only=True)
class FinetuneConfig(_Presets):
    """Fine-tuning and semi-supervised training: encoder and classifier trained together on
    labelled samples. Defaults are the field's usual schedule (AimCLR's and CrosSCLR's
    fine-tuning: SGD lr 0.1, batch 128, 100 epochs, x0.1 at epoch 80); SCD-Net's paper reports
    these protocols without publishing their settings."""

    epochs: int = 100
    """Passes over the labelled training samples."""
    batch_size: int = 128
    """Labelled samples per step; an epoch's last partial batch of fewer than half this joins the
    one before it, so no step trains on a sliver of samples."""
    lr: float = 0.1
    """SGD learning rate of the encoder and the classifier."""
    lr_drop_epochs: tuple[int, ...] = (80,)
    """Epochs at which the learning rate is multiplied by 0.1."""
    sgd_momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1e-4
    """L2 weight decay of the encoder and the classifier."""
    crop_ratio: tuple[float, float] = (0.5, 1.0)
    """Training views are random temporal crops with r in this range, resized to the window (no
    other augmentation); test views are the evaluation centre crop."""
    eval_every: int = 5
    """Epochs between test evaluations (for the best-epoch figure); the last epoch always."""
    seed: int = 0
    """Seeds the classifier's initialisation, the subset, the crops and the batch order."""
    semi_samples_matched: bool = False
    """Semi-supervised training sees as many samples as fine-tuning on every label: its epochs,
    lr drops and evaluation interval are multiplied by (training samples / labelled samples),
    so 10% of the labels get 10 times the passes instead of a tenth of the training. A fixed
    training budget whatever the label count is how Oliver et al. (NeurIPS 2018, "Realistic
    evaluation of deep semi-supervised learning algorithms") compare label counts. Off in the
    paper preset (the field's semi-supervised protocol, AimCLR's, keeps the fine-tuning epochs:
    ample steps at NTU's size); on in the tiny preset, where 30 epochs of MSR Action3D's 33
    labels are 60 SGD steps that leave either start at chance (benchmarks/ACCURACY.md)."""

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_rules(self, [(self.eval_every >= 1, f"eval_every={self.eval_every}: must be >= 1"),
                            *_schedule_rules(self)])
        _check_crop_ratio(self.crop_ratio)

    # 30 epochs (drop at 24) in batches of 32 at lr 0.01; semi-supervised runs as many samples
    _TINY = dict(epochs=30, batch_size=32, lr=0.01, lr_drop_epochs=(24,), eval_every=10, semi_samples_matched=True)

    def for_labelled(self, train_samples: int, labelled_samples: int) -> "FinetuneConfig":
        """The schedule semi-supervised training runs on `labelled_samples` of `train_samples`:
        this one, or with semi_samples_matched its epochs, lr drops and evaluation interval
        scaled by their ratio (rounded)."""
        if not self.semi_samples_matched or labelled_samples >= train_samples:
            return self
        if labelled_samples < 1:
            raise ScdError(f"semi-supervised training on {labelled_samples} labelled samples")
        scale = train_samples / labelled_samples
        epochs, eval_every = _scaled_epochs((self.epochs, self.eval_every), scale)
        return dataclasses.replace(self, epochs=epochs, eval_every=eval_every,
                                   lr_drop_epochs=_scaled_epochs(self.lr_drop_epochs, scale))


def _scaled_epochs(epochs: tuple[int, ...], factor: float) -> tuple[int, ...]:
    """Epoch counts or positions stretched by `factor`, rounded, at least 1: how a schedule keeps
    its shape when its length changes."""
    return tuple(max(1, round(e * factor)) for e in epochs)


def step_lr(base_lr: float, drop_epochs: tuple[int, ...], epoch: int) -> float:
    """The step schedule both protocols use: x0.1 at each epoch in drop_epochs."""
    return base_lr * 0.1 ** sum(epoch >= e for e in drop_epochs)


PRESETS = ("tiny", "paper")


def preset(name: str, kind: type, **overrides):
    """`preset("tiny", SCDConfig, window=64)` -> SCDConfig.tiny(window=64). A schedule whose
    `epochs` is overridden keeps its learning-rate drops at the same fractions of the run
    (the paper's 351 of 451 becomes 78 of 100), unless `lr_drop_epochs` is given too."""
    if name not in PRESETS:
        raise ScdError(f"--preset {name!r}: choose one of {', '.join(PRESETS)}")
    make = getattr(kind, name)
    if overrides.get("epochs") and "lr_drop_epochs" not in overrides and hasattr(kind, "lr_drop_epochs"):
        base = make()
        overrides["lr_drop_epochs"] = _scaled_epochs(base.lr_drop_epochs, overrides["epochs"] / base.epochs)
    return make(**overrides)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(kind: type, values: dict, where: str | None = None):
    """Rebuild a config from its dict (a checkpoint's, a config.json's), refusing unknown fields
    and bad values in one line that names `where` (the file) when given."""
    try:
        if not isinstance(values, dict):
            raise ScdError(f"{kind.__name__}: expected an object of fields, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(map(str, set(values) - names))
        if unknown:
            raise ScdError(f"{kind.__name__}: unknown field(s) {', '.join(unknown)}")
        return kind(**values)  # the fields' types are checked (and lists made tuples) by the class
    except ScdError as exc:
        if where is None:
            raise
        raise ScdError(f"{where}: {exc}") from None
