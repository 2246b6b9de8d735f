"""The pretraining step, timed side by side on this machine: every precision x compile mode the
config offers, and an authors-like loop, in one process, in alternating rounds.

    python benchmarks/step_throughput.py                               # tiny preset, batch 64
    python benchmarks/step_throughput.py --preset paper --batch 8 --steps 2 --rounds 3
    python benchmarks/step_throughput.py --modes off,default --precisions fp32,bf16 --json out.json

Variants:
  authors-like   fp32 eager, views made per sample in NumPy, the reference loss, and the loss and
                 the queue pointer read back to the host every step (as the authors' loop does);
  <precision> <compile mode>
                 scdfast's loop: the batched view kernels, PretrainStep (no host reads), under
                 that precision (fp32 or bf16 autocast) and torch.compile mode ("off": eager).

Each variant holds its own model (the same initial weights). Its first steps (compilation,
allocator warm-up) are timed apart as warm-up; then every round runs --steps steps of each
variant, the order rotated round by round so that a slow spell of the machine lands on all, and
the figures are medians over rounds. Printed per variant: samples/s and the ratio to the
authors-like loop and to fp32 eager, the phase split of one synchronised step per round (views,
forward, backward, optimiser), model GFLOP/s against a roofline measured here (a large fp32 and
bf16 matmul on the same threads), and the warm-up; then the top operators of one step of each
--profile variant under torch.profiler, and the operator count of one eager step.

The process keeps freed host memory as scdfast's commands do (scdfast.hostmem); --malloc default
times it under glibc's own thresholds, as a library user's process runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

from scdfast.augment import draw_views, make_views
from scdfast.config import PretrainConfig, SCDConfig, choices, preset
from scdfast.data.synthetic import generate
from scdfast.hostmem import keep_freed_memory
from scdfast.losses.reference import scd_loss_ref
from scdfast.models import SCDNet
from scdfast.train.phases import PHASES, PhaseTimer, step_flops
from scdfast.train.step import PretrainStep, resolve_compile, resolve_precision
from scdfast.train.trainer import query_optimizer
from scdfast.train.views import ViewSource, epoch_order

AUTHORS = "authors-like"


def cpu_flags() -> str:
    """The CPU's model name and the flags that decide its matmul speed (x86 Linux)."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name == "unknown CPU":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return f"{name}, {os.cpu_count()} cores; flags: {' '.join(f for f in wanted if f in flags) or 'none of note'}"


def matmul_roofline(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` (size x size) @ (size x size) products on this device's threads."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first warms the library up
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One way of running the step, with its own model, optimiser and views."""

    def __init__(self, name: str, model_config: SCDConfig, config: PretrainConfig, data, device: torch.device,
                 compile_mode: str | None = None, precision: str | None = None):
        self.name, self.config, self.data, self.device = name, config, data, device
        self.model_config = model_config
        torch.manual_seed(0)
        self.model = SCDNet(model_config).to(device).train()
        self.optimizer = query_optimizer(self.model, config)
        self.authors = compile_mode is None
        if self.authors:
            self.rng = np.random.default_rng(0)
        else:
            self.views = ViewSource(data, model_config, config, device)
            self.step_fn = PretrainStep(self.model, self.optimizer, device, compile_mode, precision)
        self.step = 0
        self.timer = PhaseTimer(device)
        self.view_seconds: list[float] = []
        self.rates: list[float] = []
        self.warmup_s = 0.0

    def batch(self) -> np.ndarray:
        per_epoch = len(self.data) // self.config.batch_size
        epoch, b = divmod(self.step, per_epoch)
        order = epoch_order(0, epoch, len(self.data))
        return order[b * self.config.batch_size:(b + 1) * self.config.batch_size]

    def make_views(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.authors:
            return self.views(index, self.step)
        # the authors' feeder: each sample's two views on its own, then stacked
        pairs = []
        for i in index:
            x = np.asarray(self.data.data[i:i + 1])
            nf = self.data.num_frames[i:i + 1]
            both = make_views(np.concatenate([x, x]), draw_views(self.rng, np.concatenate([nf, nf]),
                                                                 self.model_config.window),
                              self.model_config.window)
            pairs.append(both)
        q = torch.from_numpy(np.stack([p[0] for p in pairs])).to(self.device)
        k = torch.from_numpy(np.stack([p[1] for p in pairs])).to(self.device)
        return q, k

    def run_step(self, timer: PhaseTimer | None = None) -> float:
        """One whole step (views included); returns the seconds its views took."""
        t0 = time.perf_counter()
        q, k = self.make_views(self.batch())
        _sync(self.device)
        views_s = time.perf_counter() - t0
        if self.authors:
            self._authors_step(q, k, timer)
        else:
            self.step_fn(q, k, timer)
        self.step += 1
        return views_s

    def _authors_step(self, q, k, timer) -> None:
        model = self.model
        if timer is not None:
            timer.start()
        model.momentum_update()
        keys = model.encode_keys(k)
        loss = scd_loss_ref(model.encode_queries(q), keys, model.queues, self.model_config.temperature).mean()
        self.optimizer.zero_grad()
        if timer is not None:
            timer.mark("forward")
        loss.backward()
        if timer is not None:
            timer.mark("backward")
        self.optimizer.step()
        model.enqueue(keys)
        loss.item(), int(model.banks["instance"].ptr)  # the host reads the authors' loop makes
        if timer is not None:
            timer.mark("optimiser")

    def warm_up(self, steps: int) -> None:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.run_step()
        _sync(self.device)
        self.warmup_s = time.perf_counter() - t0

    def timed_round(self, steps: int) -> None:
        """`steps` steps timed whole, then one more synchronised phase by phase."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.run_step()
        _sync(self.device)
        self.rates.append(steps * self.config.batch_size / (time.perf_counter() - t0))
        self.view_seconds.append(self.run_step(self.timer))

    def summary(self, flops_per_step: float) -> dict:
        rate = statistics.median(self.rates)
        phases = {p: 1000 * s for p, s in self.timer.per_step().items()}
        return {"variant": self.name, "samples_per_s": rate, "rounds": [round(r, 2) for r in self.rates],
                "step_ms": 1000 * self.config.batch_size / rate, "views_ms": 1000 * statistics.median(self.view_seconds),
                **{f"{p}_ms": ms for p, ms in phases.items()}, "gflops": flops_per_step * rate / self.config.batch_size / 1e9,
                "warmup_s": self.warmup_s}


def operator_count(variant: Variant) -> int:
    """ATen operators dispatched by one eager step of `variant` (views excluded)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))
    q, k = variant.make_views(variant.batch())
    with Count() as counter:
        variant.step_fn(q, k)
    variant.step += 1
    return counter.count


def launches_per_step(variant: Variant) -> int:
    """What one whole step launches, from torch.profiler: CUDA kernels on a GPU, ATen operators
    (outermost and nested) on a CPU."""
    from torch.profiler import ProfilerActivity, profile
    cuda = variant.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        variant.run_step()
        _sync(variant.device)
    if cuda:
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def top_operators(variant: Variant, rows: int) -> str:
    """torch.profiler's table of one step's operators by self time."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if variant.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        variant.run_step()
        _sync(variant.device)
    sort = "self_cuda_time_total" if variant.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=48)


def main(argv=None) -> int:
    modes = [m for m in choices(PretrainConfig, "compile") if m != "auto"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "paper"), default="tiny")
    parser.add_argument("--batch", type=int, default=64, help="samples a step (default 64)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each variant a round (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps of each variant (default 2)")
    parser.add_argument("--samples", type=int, default=1024, help="synthetic training samples (default 1024)")
    parser.add_argument("--modes", default=",".join(modes), help=f"compile modes to time (default {','.join(modes)})")
    parser.add_argument("--precisions", default="fp32,bf16", help="precisions to time (default fp32,bf16)")
    parser.add_argument("--no-authors", action="store_true", help="leave the authors-like loop out")
    parser.add_argument("--profile", default="fp32 off", help="';'-separated variants whose top operators are "
                        "printed (default 'fp32 off'; 'none' for none)")
    parser.add_argument("--top", type=int, default=15, help="operators in each profile table (default 15)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--malloc", choices=("kept", "default"), default="kept",
                        help="'kept' (default): freed host memory stays with the process, as scdfast's commands "
                             "run (scdfast.hostmem); 'default': glibc's own thresholds, as a library user's "
                             "process runs")
    args = parser.parse_args(argv)
    # before this run allocates, as the commands do; the header says whether it took effect
    malloc = "freed memory kept" if args.malloc == "kept" and keep_freed_memory() else "malloc defaults"

    device = torch.device(args.device)
    model_config = preset(args.preset, SCDConfig)
    config = preset(args.preset, PretrainConfig, batch_size=args.batch)
    data = generate(args.samples, seed=0)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_flags()
    print(f"{where}; torch {torch.__version__}, {torch.get_num_threads()} threads; preset {args.preset}, "
          f"batch {args.batch}; {args.rounds} rounds of {args.steps} steps; {malloc}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}",
          flush=True)
    roofline = {name: matmul_roofline(device, dtype) for name, dtype in (("fp32", torch.float32),
                                                                         ("bf16", torch.bfloat16))}
    print("matmul roofline (2048^3, same threads): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s"
                                                                   for k, v in roofline.items()), flush=True)

    variants = [] if args.no_authors else [Variant(AUTHORS, model_config, config, data, device)]
    for precision in args.precisions.split(","):
        for mode in args.modes.split(","):
            name = f"{resolve_precision(precision, device)} {mode}"
            variants.append(Variant(name, model_config, config, data, device, mode, precision))
            print(f"  warming up {name} (compile {resolve_compile(mode, device)})...", end=" ", flush=True)
            variants[-1].warm_up(args.warmup)
            print(f"{variants[-1].warmup_s:.1f} s", flush=True)
    if not args.no_authors:
        variants[0].warm_up(args.warmup)
    probe = variants[-1]
    q, k = probe.make_views(probe.batch())
    flops = step_flops(SCDNet(model_config).to(device).train(), q, k)
    print(f"model: {flops / 1e9:.2f} GFLOP a step (query forward + backward, key forward)", flush=True)

    for r in range(args.rounds):
        for variant in variants[r % len(variants):] + variants[:r % len(variants)]:
            variant.timed_round(args.steps)
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{v.name} {v.rates[-1]:.1f}" for v in variants),
              flush=True)

    rows = [v.summary(flops) for v in variants]
    eager = next((row for row in rows if row["variant"] == "fp32 off"), None)
    authors = next((row for row in rows if row["variant"] == AUTHORS), None)
    print("\n| variant | samples/s | vs authors-like | vs fp32 eager | step ms | views ms | "
          + " | ".join(f"{p} ms" for p in PHASES) + " | GFLOP/s | % fp32 roofline | warm-up s |")
    print("|---" * (9 + len(PHASES)) + "|")
    for row in rows:
        ratio = lambda base: f"{row['samples_per_s'] / base['samples_per_s']:.2f}x" if base else ""  # noqa: E731
        print(f"| {row['variant']} | {row['samples_per_s']:.1f} | {ratio(authors)} | {ratio(eager)} | "
              f"{row['step_ms']:.0f} | {row['views_ms']:.1f} | "
              + " | ".join(f"{row[f'{p}_ms']:.0f}" for p in PHASES)
              + f" | {row['gflops']:.1f} | {100 * row['gflops'] * 1e9 / roofline['fp32']:.0f}% | {row['warmup_s']:.1f} |")

    profiles = {}
    for name in [] if args.profile == "none" else args.profile.split(";"):
        variant = next((v for v in variants if v.name == name.strip()), None)
        if variant is None:
            continue
        profiles[variant.name] = top_operators(variant, args.top)
        print(f"\ntop operators of one step, {variant.name}:\n{profiles[variant.name]}")
    eager_variant = next((v for v in variants if v.name.endswith(" off")), None)
    count = operator_count(eager_variant) if eager_variant is not None else None
    if count is not None:
        print(f"operators dispatched by one eager step ({eager_variant.name}, views excluded): {count:,}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": where, "torch": torch.__version__, "malloc": malloc, "preset": args.preset,
                       "batch": args.batch,
                       "roofline_gflops": {k: v / 1e9 for k, v in roofline.items()}, "flops_per_step": flops,
                       "rows": rows, "operators_per_eager_step": count, "profiles": profiles}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
