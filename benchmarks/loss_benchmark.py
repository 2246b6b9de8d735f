"""Forward + backward time and peak extra memory of the contrastive losses, fused against PyTorch.

    python benchmarks/loss_benchmark.py                    # every case, on the GPU
    python benchmarks/loss_benchmark.py --cases scd moco   # some of them

Cases (fp32 inputs unless --dtype bf16):
  scd      SCD-Net's four terms at its size: N 64, D 128, K 8192
  moco     MoCo InfoNCE, large: N 4096, D 128, K 65536 (a queue)
  ntxent   SimCLR NT-Xent in-batch, large: N 16384 (2N = 32768 views), D 128

Each case runs three ways: "eager" (einsum + cat + cross_entropy, the reference the
popular implementations use), "compiled" (torch.compile of the same function) and
"fused" (scdfast's Triton kernels). Time is the median over --repeats of forward plus
backward, measured with CUDA events; peak extra memory is the allocator's peak during one
forward + backward above what the inputs already hold. The roofline line states the
matrix-product FLOPs the loss must do (forward and backward) and the bytes it must read, and
the time those take at the device's peak (--peak-tflops, --peak-gbps; defaults are an H100
SXM's dense TF32 and HBM3 figures).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from scdfast.losses import infonce, nt_xent, scd_loss
from scdfast.losses.reference import infonce_ref, nt_xent_ref, scd_loss_ref

CASES = {
    "scd": {"n": 64, "d": 128, "k": 8192},
    "moco": {"n": 4096, "d": 128, "k": 65536},
    "ntxent": {"n": 16384, "d": 128, "k": 0},
}


def _unit(rows, d, dtype, device, grad=False):
    x = torch.nn.functional.normalize(torch.randn(rows, d, device=device), dim=1).to(dtype)
    return x.requires_grad_(grad)


def make_case(name, dtype, device):
    """(inputs, {way: loss function}, matmul FLOPs, bytes read)."""
    c = CASES[name]
    n, d, k = c["n"], c["d"], c["k"]
    size = torch.finfo(dtype).bits // 8
    if name == "scd":
        queries = [_unit(n, d, dtype, device, True) for _ in range(3)]
        keys = [_unit(n, d, dtype, device) for _ in range(3)]
        queues = [_unit(k, d, dtype, device) for _ in range(3)]
        inputs = queries

        def eager(*q):
            return scd_loss_ref(q, keys, queues, 0.2)

        def fused(*q):
            return scd_loss(q, keys, queues, 0.2, backend="triton", check_finite=False)
        # 4 terms x (logits 2NKD + dq 2NKD); the queues are read once each
        flops, nbytes = 4 * 4 * n * k * d, (3 * k * d + 6 * n * d) * size
    elif name == "moco":
        inputs = [_unit(n, d, dtype, device, True)]
        pos, queue = _unit(n, d, dtype, device), _unit(k, d, dtype, device)

        def eager(q):
            return infonce_ref(q, pos, queue, 0.2)

        def fused(q):
            return infonce(q, pos, queue, 0.2, backend="triton", check_finite=False)
        flops, nbytes = 4 * n * k * d, (k * d + 2 * n * d) * size
    else:
        inputs = [_unit(n, d, dtype, device, True), _unit(n, d, dtype, device, True)]

        def eager(a, b):
            return nt_xent_ref(a, b, 0.5)

        def fused(a, b):
            return nt_xent(a, b, 0.5, backend="triton", check_finite=False)
        rows = 2 * n  # logits (2N)^2 D, then dq and the column pass: 3 products of 2 (2N)^2 D
        flops, nbytes = 3 * 2 * rows * rows * d, 2 * rows * d * size
    return inputs, {"eager": eager, "compiled": torch.compile(eager), "fused": fused}, flops, nbytes


def measure(fn, inputs, repeats):
    def once():
        for t in inputs:
            t.grad = None
        fn(*inputs).backward()
    for _ in range(3):  # warm-up: compilation, autotuning, allocator
        once()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    once()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        once()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--ways", nargs="+", choices=("eager", "compiled", "fused"), default=["eager", "compiled", "fused"])
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=494.7, help="matmul peak, TFLOP/s (H100 SXM TF32 dense)")
    parser.add_argument("--peak-gbps", type=float, default=3350.0, help="memory bandwidth, GB/s (H100 SXM)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("loss_benchmark.py needs a CUDA device (on a CPU: pytest benchmarks/test_loss_bench.py)")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    device = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {__import__('triton').__version__}, dtype {args.dtype}")
    for name in args.cases:
        inputs, ways, flops, nbytes = make_case(name, dtype, device)
        roofline_ms = max(flops / (args.peak_tflops * 1e12), nbytes / (args.peak_gbps * 1e9)) * 1e3
        print(f"\n{name} {CASES[name]}: {flops / 1e9:.1f} GFLOP of matrix products, {nbytes / 1e6:.1f} MB read; "
              f"roofline {roofline_ms:.3f} ms")
        results = {}
        for way in args.ways:
            try:
                ms, peak = measure(ways[way], inputs, args.repeats)
            except torch.OutOfMemoryError:
                print(f"  {way:>9}: out of memory")
                torch.cuda.empty_cache()
                continue
            results[way] = (ms, peak)
            print(f"  {way:>9}: {ms:8.3f} ms   peak extra {peak / 2**20:9.1f} MiB   "
                  f"{ms / roofline_ms:5.1f}x roofline", flush=True)
        if "fused" in results:
            for way in ("eager", "compiled"):
                if way in results:
                    ms, peak = results[way]
                    print(f"  fused vs {way}: {ms / results['fused'][0]:.2f}x faster, "
                          f"{peak / max(results['fused'][1], 1):.1f}x less peak memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
