"""Views per second of the four ways scdfast can make pretraining views.

  (a) reference: the per-sample NumPy feeder (one process), what the authors' DataLoader
      workers do for each sample;
  (b) cpu:  the batched Numba kernels, numba.njit(parallel=True), on every core;
  (c) cuda: the same kernels on the GPU, reading a device-resident dataset;
  (d) dali: DALI's numpy reader streaming per-sample files into the kernels.

    python benchmarks/augment_throughput.py                 # every path this machine has
    python benchmarks/augment_throughput.py --paths cpu cuda --batch 4096

Each path is timed for at least --seconds after a warm-up (the first call compiles); the
CUDA path is timed with CUDA events around whole batches. Views are (3, 64, 25, 2).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

from scdfast.augment import draw_views, make_views
from scdfast.augment.batched import BatchAugmenter
from scdfast.data.synthetic import generate

WINDOW = 64


def _timed(run, seconds: float, views_per_call: int, sync=lambda: None) -> float:
    run()
    sync()  # warm-up: compilation, caches
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        calls += 1
    sync()
    return calls * views_per_call / (time.perf_counter() - start)


def reference_path(data, nf, batch, seconds):
    rng = np.random.default_rng(0)
    index = np.arange(batch) % len(data)

    def run():
        draws = draw_views(rng, nf[index], WINDOW)
        make_views(data[index], draws, WINDOW)
    return _timed(run, seconds, batch)


def cpu_path(data, nf, batch, seconds):
    augmenter = BatchAugmenter(WINDOW, backend="cpu")
    index = np.arange(batch) % len(data)
    step = iter(range(1 << 62))
    return _timed(lambda: augmenter(data, nf, index, next(step), validate=False), seconds, batch)


def cuda_path(data, nf, batch, seconds):
    device = torch.device("cuda")
    x = torch.from_numpy(data).to(device)
    frames = torch.from_numpy(nf.astype(np.int32)).to(device)
    index = (torch.arange(batch, device=device) % len(data))
    augmenter = BatchAugmenter(WINDOW)
    step = iter(range(1 << 62))
    return _timed(lambda: augmenter(x, frames, index, next(step), validate=False), seconds, batch,
                  sync=torch.cuda.synchronize)


def dali_path(data, nf, batch, seconds):
    from scdfast.data.dali_stream import NUM_FRAMES_FILE, DaliStream
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as root:
        for i, x in enumerate(data):
            np.save(os.path.join(root, f"{i:06d}.npy"), x)
        np.save(os.path.join(root, NUM_FRAMES_FILE), nf)
        stream = DaliStream(root, batch, device, num_threads=os.cpu_count() or 2)
        augmenter = BatchAugmenter(WINDOW)
        step = iter(range(1 << 62))

        def run():
            b = stream.next_batch()
            augmenter(b.data, b.num_frames, b.index, next(step), validate=False)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        return _timed(run, seconds, batch, sync)


PATHS = {"reference": reference_path, "cpu": cpu_path, "cuda": cuda_path, "dali": dali_path}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    parser.add_argument("--samples", type=int, default=1024, help="distinct source samples (default 1024)")
    parser.add_argument("--batch", type=int, default=256, help="views per call (default 256)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per path (default 3)")
    args = parser.parse_args(argv)
    data = generate(args.samples, seed=0)
    x, nf = np.ascontiguousarray(data.data), data.num_frames
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__}; numba {__import__('numba').__version__}; "
          f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    results = {}
    for name in args.paths:
        if name == "cuda" and not torch.cuda.is_available():
            print(f"{name:>9}: skipped (no CUDA device)")
            continue
        try:
            rate = PATHS[name](x, nf, args.batch, args.seconds)
        except Exception as exc:  # noqa: BLE001 -- a missing extra or driver: report it, go on
            print(f"{name:>9}: skipped ({type(exc).__name__}: {exc})")
            continue
        results[name] = rate
        print(f"{name:>9}: {rate:>12,.0f} views/s", flush=True)
    if "reference" in results:
        for name, rate in results.items():
            if name != "reference":
                print(f"{name} / reference: {rate / results['reference']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
