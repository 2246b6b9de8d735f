"""One prepared GPU run: the GPU test tier and every throughput figure scdfast exists for.

    python benchmarks/gpu_suite.py --out DIR --budget-minutes 8 [--ucla-raw DIR]
    python benchmarks/gpu_suite.py --out DIR --dry-run      # the same run on a CPU, tiny sizes

Parts, each on its own (a failure is recorded and the next part runs), results written to
DIR/results.json and DIR/results.md after every part:

  environment  GPU, driver, torch, triton, numba versions; the roofline figures used
  gpu_tests    the GPU tier of the test suite (kernels, augmentation, compile gate, step)
  loss         MoCo InfoNCE from N x K = 64 x 8192 to 4096 x 65536 (D 128), SCD-Net's four
               terms, SimCLR's NT-Xent and CLIP at N 4096: eager PyTorch, torch.compile and
               fused, and the peers scdfast.nn replaces (lightly, pytorch-metric-learning,
               open_clip: pip install 'scdfast[peers]'); forward, backward and both;
               median time, peak extra memory, achieved TFLOP/s and GB/s against the roofline
  augment      views/s of the batched augmentation on the GPU (4,096 views of 64 frames)
  pretrain     paper-preset samples/s at batch 64 and 256 in bf16 under each torch.compile mode
               (eager, default, reduce-overhead with CUDA graphs, max-autotune-no-cudagraphs)
               with its warm-up and kernel launches a step, an authors-like loop at 64, model
               FLOP utilisation, the NTU-60 recipe's projected time (451 x 40,091)
  ucla         with --ucla-raw: prepare NW-UCLA, pretrain the paper-size model for what the
               budget leaves, then linear evaluation and 1-NN against random init

The budget covers the whole run, compilation included: a part that cannot fit in what is
left is skipped and says so. --dry-run runs every part on the CPU at tiny sizes (the Triton
kernels under the interpreter), so CI proves the script end to end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NTU60_EPOCHS, NTU60_SAMPLES = 451, 40091
# Data-sheet figures by words of the device name: dense bf16 TFLOP/s and HBM GB/s; tf32 is half
# the bf16 rate on Hopper and Ampere.
DEVICE_PEAKS = ((("H200",), 989.0, 4800.0), (("H100", "PCIe"), 756.0, 2000.0), (("H100",), 989.0, 3350.0),
                (("A100",), 312.0, 2039.0))
# (seconds a part needs at least, the share of the budget it may take)
PART_TIME = {"environment": (1, 0.01), "gpu_tests": (60, 0.3), "loss": (30, 0.25), "augment": (10, 0.05),
             "pretrain": (60, 0.25), "ucla": (60, 1.0)}


class Suite:
    """The run's settings, clock and results file."""

    def __init__(self, args):
        self.args, self.out, self.dry_run = args, args.out, args.dry_run
        self.start = time.monotonic()
        self.deadline = self.start + args.budget_minutes * 60
        self.results = {"command": " ".join(sys.argv), "dry_run": self.dry_run, "budget_minutes": args.budget_minutes,
                        "parts": {}}
        import torch
        self.device = torch.device("cuda" if torch.cuda.is_available() and not self.dry_run else "cpu")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allowance(self, name: str) -> float:
        return max(PART_TIME[name][0], PART_TIME[name][1] * self.left())

    def run(self, name: str, part) -> None:
        minimum = PART_TIME[name][0] if not self.dry_run else 0
        if self.left() < minimum:
            self.record(name, {"status": "skipped", "why": f"{self.left():.0f} s of the budget left, needs {minimum} s"})
            return
        print(f"== {name} ({self.left():.0f} s of the budget left)", flush=True)
        began = time.monotonic()
        try:
            result = {"status": "ok", **part(self)}
        except Exception as e:  # noqa: BLE001 - one part's failure is recorded, the rest still run
            traceback.print_exc()
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
        result["seconds"] = round(time.monotonic() - began, 1)
        self.record(name, result)

    def record(self, name: str, result: dict) -> None:
        self.results["parts"][name] = result
        from scdfast.train.rundir import atomic_write
        atomic_write(os.path.join(self.out, "results.json"), lambda f: json.dump(self.results, f, indent=1), mode="w")
        atomic_write(os.path.join(self.out, "results.md"), lambda f: f.write(render_markdown(self.results)), mode="w")
        print(f"   {name}: {result['status']} " + (result.get("why") or result.get("error") or ""), flush=True)


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(run, device, repeats: int) -> float:
    """Median wall time of run() in ms (CUDA events on a GPU)."""
    import torch
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            run()
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


def device_peaks(device) -> tuple[float | None, float | None]:
    """(dense bf16 FLOP/s, memory bytes/s) from the data sheet, None where unknown."""
    import torch
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for words, tflops, gbps in DEVICE_PEAKS:
        if all(w in name for w in words):
            return tflops * 1e12, gbps * 1e9
    return None, None


# ---- parts ---------------------------------------------------------------------------------------

def part_environment(suite: Suite) -> dict:
    import numba
    import torch
    import triton
    info = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "numba": numba.__version__, "device": str(suite.device)}
    if suite.device.type == "cuda":
        props = torch.cuda.get_device_properties(suite.device)
        info.update(gpu=props.name, sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            info["driver"] = "nvidia-smi not found"
    else:
        info.update(cpu=platform.processor() or platform.machine(), cores=os.cpu_count())
    flops, bandwidth = device_peaks(suite.device)
    info.update(peak_bf16_tflops=flops and flops / 1e12, peak_tf32_tflops=flops and flops / 2e12,
                peak_gbps=bandwidth and bandwidth / 1e9)
    return info


def part_gpu_tests(suite: Suite) -> dict:
    tests = ["tests/test_fused_loss.py", "tests/test_batched_augment.py", "tests/test_step.py",
             "tests/test_compile_gate.py"]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    env = dict(os.environ, SCDFAST_TEST_DEVICE="cuda" if suite.device.type == "cuda" else "cpu")
    if suite.dry_run:  # a handful, to prove the plumbing
        command += ["-k", "test_infonce_queue and 7-100-16 or test_slices_are_never_empty"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=suite.allowance("gpu_tests"))
    with open(os.path.join(suite.out, "gpu_tests.log"), "w") as f:
        f.write(done.stdout + done.stderr)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode:
        raise RuntimeError(f"pytest exited {done.returncode}: {summary} (see gpu_tests.log)")
    return {"summary": summary}


def loss_cases(dry_run: bool):
    """(name, n, k, d) of the loss benchmark."""
    if dry_run:
        return [("moco", 8, 64, 16), ("scd", 8, 64, 16), ("ntxent", 8, 0, 16), ("clip", 8, 0, 16)]
    return [("moco", 64, 8192, 128), ("moco", 256, 16384, 128), ("moco", 1024, 65536, 128),
            ("moco", 4096, 65536, 128), ("scd", 64, 8192, 128), ("ntxent", 4096, 0, 128), ("clip", 4096, 0, 128)]


def _loss_providers(name, n, k, d, device):
    """(inputs taking gradients, {provider: loss function}, FLOPs of forward+backward, bytes read)."""
    import torch
    import torch.nn.functional as F

    from peer_losses import clip_peers, ntxent_peers

    from scdfast.losses import clip_loss, infonce, nt_xent, scd_loss
    from scdfast.losses.reference import clip_ref, infonce_ref, nt_xent_ref, scd_loss_ref

    def unit(rows, grad=False):
        return F.normalize(torch.randn(rows, d, device=device), dim=1).requires_grad_(grad)
    peers = {}
    if name == "moco":
        q, pos, queue = unit(n, True), unit(n), unit(k)

        def eager(q):
            return infonce_ref(q, pos, queue, 0.2).mean()

        def fused(q):
            return infonce(q, pos, queue, 0.2, backend="triton", check_finite=False)
        inputs, flops, nbytes = [q], 4 * n * k * d, (k * d + 3 * n * d) * 4
    elif name == "ntxent":  # SimCLR in-batch: 2N views, each against every other
        inputs = [unit(n, True), unit(n, True)]

        def eager(a, b):
            return nt_xent_ref(a, b, 0.5).mean()

        def fused(a, b):
            return nt_xent(a, b, 0.5, backend="triton", check_finite=False)
        # logits (2N)^2 D, then dq and the columns pass: three products of 2 (2N)^2 D
        flops, nbytes = 3 * 2 * (2 * n) ** 2 * d, 2 * 2 * n * d * 4
        peers = ntxent_peers(device)
    elif name == "clip":  # both directions over N pairs
        inputs = [unit(n, True), unit(n, True)]

        def eager(a, b):
            return clip_ref(a, b, 0.07).mean()

        def fused(a, b):
            return clip_loss(a, b, 0.07, backend="triton", check_finite=False)
        flops, nbytes = 2 * 3 * 2 * n * n * d, 2 * n * d * 4
        peers = clip_peers(device)
    else:
        queries, keys, queues = [unit(n, True) for _ in range(3)], [unit(n) for _ in range(3)], [unit(k) for _ in range(3)]

        def eager(*q):
            return scd_loss_ref(q, keys, queues, 0.2).mean()

        def fused(*q):
            return scd_loss(q, keys, queues, 0.2, backend="triton", check_finite=False)
        inputs, flops, nbytes = queries, 4 * 4 * n * k * d, (3 * k * d + 9 * n * d) * 4
    return inputs, {"eager": eager, "compiled": torch.compile(eager, dynamic=False), "fused": fused, **peers}, flops, nbytes


def part_loss(suite: Suite) -> dict:
    import torch
    torch.backends.cuda.matmul.allow_tf32 = True  # eager and compiled in the fused kernels' precision
    device, repeats = suite.device, (3 if suite.dry_run else 20)
    peak_flops, peak_bytes = device_peaks(device)
    tf32_flops = peak_flops and peak_flops / 2
    rows = []
    for name, n, k, d in loss_cases(suite.dry_run):
        inputs, providers, flops, nbytes = _loss_providers(name, n, k, d, device)
        roofline_ms = tf32_flops and max(flops / tf32_flops, nbytes / peak_bytes) * 1e3
        for provider, fn in providers.items():
            row = {"case": name, "n": n, "k": k, "d": d, "provider": provider}
            if isinstance(fn, str):  # a peer that is not installed: why, instead of a time
                rows.append({**row, "error": fn})
                print(f"   {name} {n}x{k}: {provider} skipped: {fn}", flush=True)
                continue
            try:
                def forward():
                    return fn(*inputs)

                def both():
                    for t in inputs:
                        t.grad = None
                    forward().backward()
                for _ in range(2):
                    both()  # warm-up: compilation, autotuning, allocator
                _sync(device)
                base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                both()
                _sync(device)
                if device.type == "cuda":
                    row["peak_extra_mib"] = round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 2)
                row["forward_ms"] = _median_ms(forward, device, repeats)
                losses = []

                def backward_only():
                    losses.pop().backward()
                backward_times = []
                for _ in range(repeats):
                    losses.append(forward())
                    backward_times.append(_median_ms(backward_only, device, 1))
                row["backward_ms"] = statistics.median(backward_times)
                row["both_ms"] = _median_ms(both, device, repeats)
                row["tflops"] = flops / (row["both_ms"] * 1e-3) / 1e12
                row["gbps"] = nbytes / (row["both_ms"] * 1e-3) / 1e9
                if roofline_ms:
                    row["roofline_ms"], row["fraction_of_roofline"] = roofline_ms, roofline_ms / row["both_ms"]
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
                torch.cuda.empty_cache()
            rows.append(row)
            print(f"   {name} {n}x{k}: {provider} {row.get('both_ms', float('nan')):.3f} ms", flush=True)
    for row in rows:  # ratios of fused against each other provider, same case
        fused = next((r for r in rows if r["provider"] == "fused" and (r["case"], r["n"], r["k"]) ==
                      (row["case"], row["n"], row["k"])), None)
        if row["provider"] != "fused" and fused and "both_ms" in fused and "both_ms" in row:
            row["fused_speedup"] = row["both_ms"] / fused["both_ms"]
            if "peak_extra_mib" in row:
                row["fused_memory_ratio"] = row["peak_extra_mib"] / max(fused["peak_extra_mib"], 1e-6)
    return {"rows": rows}


def part_augment(suite: Suite) -> dict:
    import numpy as np
    import torch

    from scdfast.augment.batched import BatchAugmenter
    from scdfast.data.synthetic import generate
    views, samples = (64, 32) if suite.dry_run else (4096, 4096)
    data = generate(samples, seed=0)
    x = torch.from_numpy(np.ascontiguousarray(data.data)).to(suite.device)
    nf = torch.from_numpy(data.num_frames.astype(np.int32)).to(suite.device)
    index = torch.randint(0, samples, (views,), device=suite.device)
    augmenter = BatchAugmenter(64)
    step = [0]

    def batch():
        step[0] += 1
        augmenter(x, nf, index, step[0], validate=False)
    batch()
    ms = _median_ms(batch, suite.device, 3 if suite.dry_run else 30)
    return {"views_per_batch": views, "frames": 64, "ms_per_batch": ms, "views_per_s": views / (ms * 1e-3)}


# torch.compile modes the pretraining part times on CUDA (the dry run on a CPU: eager only, since
# compiling there takes minutes)
PRETRAIN_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")


def part_pretrain(suite: Suite) -> dict:
    import torch

    from scdfast.config import PretrainConfig, SCDConfig, preset
    from scdfast.data.synthetic import generate
    from scdfast.models import SCDNet
    from scdfast.train.phases import step_flops
    from step_throughput import AUTHORS, Variant, launches_per_step
    name = "tiny" if suite.dry_run else "paper"
    batches, steps = ((8, 16), 2) if suite.dry_run else ((64, 256), 10)
    modes = ("off",) if suite.dry_run else PRETRAIN_MODES
    model_config = preset(name, SCDConfig)
    data = generate(64 if suite.dry_run else 2048, seed=0)
    peak, _ = device_peaks(suite.device)
    deadline = time.monotonic() + suite.allowance("pretrain")
    rows = []
    for batch in batches:
        config = preset(name, PretrainConfig, batch_size=batch)
        views = torch.randn(batch, 3, model_config.window, 25, 2, device=suite.device)
        flops_per_sample = step_flops(SCDNet(model_config).to(suite.device).train(), views, views) / batch
        authors = None
        for variant_name in ([AUTHORS] if batch == batches[0] else []) + [f"bf16 {mode}" for mode in modes]:
            row = {"preset": name, "batch": batch, "variant": variant_name}
            rows.append(row)
            if time.monotonic() > deadline:
                row["skipped"] = "the part's share of the budget is spent"
                continue
            precision, mode = (None, None) if variant_name == AUTHORS else variant_name.split()
            variant = Variant(variant_name, model_config, config, data, suite.device, mode, precision)
            variant.warm_up(2)
            variant.timed_round(steps)
            rate = variant.rates[-1]
            row.update(samples_per_s=rate, warmup_s=round(variant.warmup_s, 1), launches=launches_per_step(variant),
                       model_tflops=flops_per_sample * rate / 1e12,
                       ntu60_projected_hours=NTU60_EPOCHS * NTU60_SAMPLES / rate / 3600)
            if peak:
                row["mfu"] = flops_per_sample * rate / peak
            if variant_name == AUTHORS:
                authors = rate
            elif authors:
                row["speedup_over_authors_like"] = rate / authors
            print(f"   batch {batch}, {variant_name}: {rate:.1f} samples/s (warm-up {variant.warmup_s:.0f} s)", flush=True)
            del variant
            if suite.device.type == "cuda":
                torch.cuda.empty_cache()
    measured = [r for r in rows if "samples_per_s" in r and r["variant"] != AUTHORS]
    if measured:
        suite.results.setdefault("measured", {})["samples_per_s"] = max(r["samples_per_s"] for r in measured)
    return {"rows": rows}


def part_ucla(suite: Suite) -> dict:
    from scdfast.cli import main as scdfast
    from scdfast.data.label_file import read_label_file
    raw = suite.args.ucla_raw
    if not raw:
        return {"status": "skipped", "why": "no --ucla-raw"}
    name = "tiny" if suite.dry_run else "paper"
    data, run = os.path.join(suite.out, "ucla"), os.path.join(suite.out, "ucla-pretrain")
    began = time.monotonic()
    if scdfast(["prepare", "ucla", "--raw", raw, "--out", data, "--no-progress"]):
        raise RuntimeError("scdfast prepare ucla failed")
    prepared = time.monotonic() - began
    # pretraining gets half of what is left (evaluation and its compilation take the rest)
    rate = suite.results.get("measured", {}).get("samples_per_s")
    train_samples = len(read_label_file(os.path.join(data, "train_label.pkl"))[1])
    epochs = 1 if suite.dry_run or not rate else max(1, int(0.5 * suite.left() * rate / train_samples))
    if scdfast(["pretrain", "--preset", name, "--data", data, "--run-dir", run, "--epochs", str(epochs),
                "--no-progress"]):
        raise RuntimeError("scdfast pretrain failed")
    out = {"prepare_s": round(prepared, 1), "epochs": epochs}
    for protocol in ("linear", "knn"):
        protocol_dir = os.path.join(suite.out, f"ucla-{protocol}")
        if scdfast([protocol, "--preset", name, "--data", data, "--checkpoint", run, "--random-baseline",
                    "--run-dir", protocol_dir, "--feature-cache", os.path.join(suite.out, "features"),
                    "--no-progress", "--no-figures"]):
            raise RuntimeError(f"scdfast {protocol} failed")
        with open(os.path.join(protocol_dir, "results.json")) as f:
            out[protocol] = json.load(f)
    return out


PARTS = {"environment": part_environment, "gpu_tests": part_gpu_tests, "loss": part_loss, "augment": part_augment,
         "pretrain": part_pretrain, "ucla": part_ucla}


# ---- the report ----------------------------------------------------------------------------------

def _fmt(x, digits=3):
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def render_markdown(results: dict) -> str:
    parts = results["parts"]
    lines = [f"# GPU suite{' (dry run on the CPU)' if results['dry_run'] else ''}", "",
             f"`{results['command']}`, budget {results['budget_minutes']} min", ""]
    env = parts.get("environment", {})
    if env.get("status") == "ok":
        lines += [", ".join(f"{k} {v}" for k, v in env.items() if k not in ("status", "seconds") and v is not None), ""]
    lines += ["| part | status | seconds | note |", "|---|---|---|---|"]
    for name, p in parts.items():
        lines.append(f"| {name} | {p['status']} | {p.get('seconds', '')} | {p.get('why') or p.get('error') or p.get('summary') or ''} |")
    loss = parts.get("loss", {}).get("rows")
    if loss:
        lines += ["", "## Loss (forward + backward unless stated)", "",
                  "| case | N | K | D | provider | fwd ms | bwd ms | both ms | peak extra MiB | TFLOP/s | GB/s | "
                  "of roofline | fused speed-up | fused memory saving |", "|" + "---|" * 14]
        for r in loss:  # a provider that could not run says why in the time's place
            lines.append("| " + " | ".join(_fmt(r["error"] if key == "both_ms" and "error" in r else r.get(key)) for key in (
                "case", "n", "k", "d", "provider", "forward_ms", "backward_ms", "both_ms", "peak_extra_mib", "tflops",
                "gbps", "fraction_of_roofline", "fused_speedup", "fused_memory_ratio")) + " |")
    aug = parts.get("augment", {})
    if aug.get("status") == "ok":
        lines += ["", f"## Augmentation: {_fmt(aug['views_per_s'])} views/s ({aug['views_per_batch']} views of "
                      f"{aug['frames']} frames, {_fmt(aug['ms_per_batch'])} ms a batch)"]
    pre = parts.get("pretrain", {}).get("rows")
    if pre:
        lines += ["", "## Pretraining (whole steps, views included; launches: CUDA kernels a step, on a CPU ATen "
                      "operators)", "",
                  "| preset | batch | variant | samples/s | vs authors-like | warm-up s | launches | model TFLOP/s | MFU | "
                  "NTU-60 recipe, hours |", "|" + "---|" * 10]
        for r in pre:
            lines.append("| " + " | ".join(_fmt(r.get("skipped") if k == "samples_per_s" and "skipped" in r else r.get(k))
                                           for k in ("preset", "batch", "variant", "samples_per_s",
                                                     "speedup_over_authors_like", "warmup_s", "launches",
                                                     "model_tflops", "mfu", "ntu60_projected_hours")) + " |")
    ucla = parts.get("ucla", {})
    if ucla.get("status") == "ok" and "linear" in ucla:
        lines += ["", f"## NW-UCLA, {ucla['epochs']} pretraining epochs", "", "| protocol | encoder | top-1 % | top-5 % |",
                  "|---|---|---|---|"]
        for protocol in ("linear", "knn"):
            for r in ucla[protocol]["rows"]:
                lines.append(f"| {protocol} | {r['encoder']} | {_fmt(r['top1'])} | {_fmt(r.get('top5'))} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_suite.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for results.json, results.md and the parts' files")
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="the whole run's time (default 8)")
    parser.add_argument("--ucla-raw", metavar="DIR", help="the NW-UCLA release (all_sqe/*.json) for the ucla part")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="run only these parts")
    parser.add_argument("--dry-run", action="store_true", help="every part on the CPU at tiny sizes")
    args = parser.parse_args(argv)
    if args.budget_minutes <= 0:
        parser.error(f"--budget-minutes {args.budget_minutes}: must be > 0")
    if args.dry_run:  # before triton and numba are imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    os.makedirs(args.out, exist_ok=True)
    sys.path.insert(0, HERE)
    suite = Suite(args)
    for name in args.parts:
        suite.run(name, PARTS[name])
    failed = [n for n, p in suite.results["parts"].items() if p["status"] == "failed"]
    print(f"results in {os.path.join(args.out, 'results.md')}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
