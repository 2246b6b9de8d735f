"""Where pretraining's views come from: the batched kernels on the training device (default)
or the per-sample NumPy reference, for a global batch or one rank's share of it."""
from __future__ import annotations

import numpy as np
import torch

from scdfast.augment import draw_views, make_views
from scdfast.augment.batched import BatchAugmenter
from scdfast.config import PretrainConfig, SCDConfig
from scdfast.data import SkeletonSet
from scdfast.data.resident import ResidentData


def reference_views(train: SkeletonSet, index: np.ndarray, rng: np.random.Generator,
                    model_config: SCDConfig, config: PretrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Query and key views from the per-sample NumPy reference (`--augment reference`)."""
    x = np.asarray(train.data[index])
    nf = train.num_frames[index]
    draws = draw_views(rng, np.concatenate([nf, nf]), model_config.window, config.crop_ratio,
                       model_config.num_joints)
    views = make_views(np.concatenate([x, x]), draws, model_config.window, config.representation,
                       model_config.skeleton)
    return views[: len(index)], views[len(index):]


class ViewSource:
    """Query and key views of a batch of sample indices, on `device`: the batched kernels by
    default, the NumPy reference when config.augment == "reference"."""

    def __init__(self, train: SkeletonSet, model_config: SCDConfig, config: PretrainConfig, device: torch.device):
        self.train, self.model_config, self.config, self.device = train, model_config, config, device
        if config.augment == "batched":
            self.resident = ResidentData(train, device)
            self.augmenter = BatchAugmenter(model_config.window, config.crop_ratio, config.representation,
                                            seed=config.seed, layout=model_config.skeleton)
        else:
            self.rng = np.random.default_rng(config.seed)

    def __call__(self, batch_index: np.ndarray, step: int,
                 shard: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the global batch `batch_index`, or of its samples [lo, hi) for one rank;
        a rank's views draw the random streams they have in the single-process batch. The
        views follow `self.samples(batch_index, shard)`, not `batch_index`'s order."""
        index, lo, hi, total = _share(batch_index, shard)
        if self.config.augment == "reference":
            q, k = reference_views(self.train, index, self.rng, self.model_config, self.config)
            return (torch.from_numpy(q).to(self.device, non_blocking=True),
                    torch.from_numpy(k).to(self.device, non_blocking=True))
        batch = self.resident.batch(index)
        both = (torch.cat([batch.index, batch.index]) if isinstance(batch.index, torch.Tensor)
                else np.concatenate([batch.index, batch.index]))
        view_ids = None  # one process: view i draws stream i
        if shard is not None:  # made where the kernel runs: no copy beyond the indices
            where = batch.index.device if isinstance(batch.index, torch.Tensor) else None
            positions = torch.arange(lo, hi, device=where)
            view_ids = torch.cat([positions, positions + total])
        views = self.augmenter(batch.data, batch.num_frames, both, step, validate=False, view_ids=view_ids)
        return views[: len(index)], views[len(index):]  # on self.device: where ResidentData put the batch

    def samples(self, batch_index: np.ndarray, shard: tuple[int, int] | None = None) -> torch.Tensor:
        """The sample of each view `self(batch_index, step, shard)` makes, in its order, on the
        device: what the queued keys are labelled with."""
        index = _share(batch_index, shard)[0]
        return torch.from_numpy(index.astype(np.int64)).to(self.device, non_blocking=True)


def _share(batch_index: np.ndarray, shard: tuple[int, int] | None) -> tuple[np.ndarray, int, int, int]:
    """(this rank's samples, lo, hi, global batch size): the global batch sorted (kinder to a
    memory-mapped array), then its [lo, hi) for the rank."""
    everything = np.sort(batch_index)
    lo, hi = shard or (0, len(everything))
    return everything[lo:hi], lo, hi, len(everything)


def epoch_order(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """The sample order of one epoch, a function of (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def queue_fill_batches(seed: int, num_samples: int, batch_size: int, count: int) -> list[np.ndarray]:
    """`count` batches of sample indices for filling the queues before training: whole
    permutations, drawn apart from the training order's stream."""
    rng = np.random.default_rng([seed, 0x51554555])  # "QUEUE"
    needed = count * batch_size
    order = np.concatenate([rng.permutation(num_samples) for _ in range(-(-needed // num_samples))])
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(count)]
