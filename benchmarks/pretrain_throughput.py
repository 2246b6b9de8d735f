"""End-to-end pretraining samples/s: scdfast's loop against one that behaves like the authors'.

    python benchmarks/pretrain_throughput.py --preset tiny --steps 30            # CPU
    python benchmarks/pretrain_throughput.py --preset paper --steps 50 --batch 64  # GPU

baseline: the same model and batch, fp32 eager, per-sample NumPy views made in DataLoader
          worker processes, the loss and the queue pointer read back to the host every step;
scdfast:  the batched augmentation kernels on the training device, `PretrainStep` (compiled
          encoders and bf16 on CUDA, the fused loss, device-side enqueue), no host reads.
Both run --warmup steps first (compilation, worker start-up), then --steps timed steps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from scdfast.augment import draw_views, make_views
from scdfast.config import PretrainConfig, SCDConfig, preset
from scdfast.data.synthetic import generate
from scdfast.losses.reference import scd_loss_ref
from scdfast.models import SCDNet
from scdfast.train.step import PretrainStep
from scdfast.train.views import ViewSource, epoch_order


class _PerSampleViews(torch.utils.data.Dataset):
    """What the authors' feeder does: one sample, two views, in NumPy, in a worker."""

    def __init__(self, data, window):
        self.data, self.window = data, window

    def __len__(self):
        return len(self.data.data)

    def __getitem__(self, i):
        rng = np.random.default_rng(i + int(time.time_ns() % 1_000_000))
        nf = self.data.num_frames[i:i + 1]
        x = np.asarray(self.data.data[i:i + 1])
        views = make_views(np.concatenate([x, x]), draw_views(rng, np.concatenate([nf, nf]), self.window),
                           self.window)
        return torch.from_numpy(views[0]), torch.from_numpy(views[1])


def baseline(model_config, config, data, device, steps, warmup, workers):
    torch.manual_seed(0)
    model = SCDNet(model_config).to(device).train()
    optimizer = torch.optim.SGD(model.query_encoder.parameters(), lr=config.lr, momentum=0.9, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(_PerSampleViews(data, model_config.window), batch_size=config.batch_size,
                                         shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    done, start = 0, None
    while done < warmup + steps:
        for q, k in loader:
            if done == warmup:
                start = time.perf_counter()
            q, k = q.to(device), k.to(device)
            model.momentum_update()
            keys = model.encode_keys(k)
            loss = scd_loss_ref(model.encode_queries(q), keys, model.queues, model_config.temperature).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.enqueue(keys)
            loss.item(), int(model.banks["instance"].ptr)  # the host reads the authors' loop makes
            done += 1
            if done == warmup + steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - start)


def scdfast_loop(model_config, config, data, device, steps, warmup):
    torch.manual_seed(0)
    views = ViewSource(data, model_config, config, device)
    model = SCDNet(model_config).to(device).train()
    optimizer = torch.optim.SGD(model.query_encoder.parameters(), lr=config.lr, momentum=0.9, weight_decay=1e-4)
    step = PretrainStep(model, optimizer, device, config.compile, config.precision)
    per_epoch = len(data.data) // config.batch_size
    start = None
    for s in range(warmup + steps):
        if s == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        epoch, b = divmod(s, per_epoch)
        order = epoch_order(0, epoch, len(data.data))
        q, k = views(order[b * config.batch_size:(b + 1) * config.batch_size], s)
        loss = step(q, k)
    loss.item()
    return steps * config.batch_size / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "paper"), default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="baseline DataLoader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model_config = preset(args.preset, SCDConfig)
    config = preset(args.preset, PretrainConfig, batch_size=args.batch)
    data = generate(args.samples, seed=0)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{os.cpu_count()} CPU cores'}), "
          f"torch {torch.__version__}, preset {args.preset}, batch {args.batch}")
    base = baseline(model_config, config, data, device, args.steps, args.warmup, args.workers)
    print(f"baseline (authors-like): {base:8.1f} samples/s", flush=True)
    fast = scdfast_loop(model_config, config, data, device, args.steps, args.warmup)
    print(f"scdfast:                 {fast:8.1f} samples/s  ({fast / base:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
