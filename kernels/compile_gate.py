"""Compile every Triton kernel configuration the launchers can choose for real GPU targets, on
any machine: a stand-in driver reports the target, launches only compile (`warmup`), and the
compiled kernel's resources are read from its cubin (`cuobjdump -res-usage`, shipped in
Triton's wheel) and its PTX.

A configuration fails the gate on: a compile error; a stack frame (register spills to local
memory); shared memory above the target's per-block limit; or, for a kernel with a dot at the
default precision, no tensor-core instruction (`mma` / `wgmma`) in its PTX.

`scdfast doctor` runs it (with the Numba kernels' gate) in a child process without
TRITON_INTERPRET (the interpreter compiles nothing) and with a fresh TRITON_CACHE_DIR, so that
nothing cached hides an error.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

# sm -> (per-block shared memory limit in bytes, SMs of the reference part: H100/H200, A100)
TARGETS = {90: (232448, 132), 80: (166912, 108)}
MMA = re.compile(r"^\s*(wgmma\.mma_async|mma\.sync)", re.MULTILINE)
RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


@dataclass
class GateRow:
    """One compiled configuration and what its compiler reported."""

    target: str
    kernel: str
    dtype: str
    precision: str
    flags: str
    block_d: int
    tile: str
    registers: int = 0
    stack: int = 0
    shared: int = 0
    tensor_cores: bool = False
    error: str = ""

    def failures(self, shared_limit: int) -> list[str]:
        if self.error:
            return [self.error]
        out = []
        if self.stack:
            out.append(f"{self.stack} B of stack (register spills)")
        if self.shared > shared_limit:
            out.append(f"{self.shared} B of shared memory > {shared_limit}")
        if self.precision in ("tf32", "bf16") and not self.tensor_cores:
            out.append("no tensor-core instruction at the default precision")
        return out


class CompileOnlyDriver:
    """What Triton's JIT asks of a driver before it compiles, for a GPU that is not there.
    Each target gets its own device number, so the JIT's per-device caches never mix them."""

    def __init__(self, capability: int):
        self.capability = capability

    def get_current_device(self):
        return self.capability

    def get_current_stream(self, device):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", self.capability, 32)

    def get_active_torch_device(self):
        import torch
        return torch.device("cpu")


def _cuobjdump() -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _resources(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) from cuobjdump -res-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    found = RESOURCES.search(report)
    if found is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no resources: {report!r}")
    registers, stack, _, local = (int(x) for x in found.groups())
    return registers, stack + local


def configurations(sm_count: int):
    """(kernel, inputs, precision, flags, block_d, tile, Launch) for every configuration the
    launchers can choose, built by the launchers' own planning code at a small problem size."""
    import torch

    from scdfast.kernels import infonce as K

    f32, bf16 = torch.float32, torch.bfloat16
    n, k_rows = 64, 256
    variants = [("fp32", f32, f32, p) for p in K.PRECISIONS] + [("bf16", bf16, bf16, "tf32"),
                                                                ("fp32, bf16 negatives", f32, bf16, "tf32")]
    # (in_batch, ids, normalize, SCD-Net's three queues): queues take ids and normalisation, in-batch neither
    split_flags = [(K.NO_EXCLUSION, ids, norm, scd) for ids, norm, scd in itertools.product((False, True), repeat=3)]
    split_flags += [(K.EXCLUDE_POSITIVE, False, False, False), (K.EXCLUDE_SELF_AND_POSITIVE, False, False, False)]
    column_flags = [(K.NO_EXCLUSION, False), (K.NO_EXCLUSION, True), (K.EXCLUDE_POSITIVE, False),
                    (K.EXCLUDE_SELF_AND_POSITIVE, False)]
    ids = torch.zeros(n, dtype=torch.int64), torch.zeros(k_rows, dtype=torch.int64)
    for label, q_dtype, c_dtype, precision in variants:
        dot = "bf16" if q_dtype == c_dtype == bf16 else precision
        mixed = q_dtype != c_dtype  # a signature of its own; every flag is covered by the uniform ones
        for block_d, tiles in K.TILE_CANDIDATES[K.tile_family(precision)].items():
            q = torch.zeros(4, n, block_d, dtype=q_dtype)
            c = torch.zeros(k_rows, block_d, dtype=c_dtype)
            for tile in tiles:
                tile_label = f"{tile.block_n}x{tile.block_k} w{tile.num_warps} s{tile.num_stages}"
                for in_batch, has_ids, normalize, scd in split_flags[:1] if mixed else split_flags:
                    terms = 4 if scd else 1
                    problem = K.RowsProblem(q[:terms], q[:terms], (c,) * (3 if scd else 1), 5.0, in_batch=in_batch,
                                            query_ids=ids[0] if has_ids else None,
                                            queue_ids=ids[1] if has_ids else None, normalize=normalize,
                                            precision=precision)
                    split, _, _ = K.rows_launches(problem, tile, sm_count)
                    yield ("rows", label, dot, f"in_batch={in_batch} ids={int(has_ids)} normalize={int(normalize)} "
                           f"scd={int(scd)}", block_d, tile_label, split)
                for in_batch, has_ids in column_flags[:1] if mixed else column_flags:
                    launch, _ = K.columns_launch(q[0], c, torch.zeros(n), 5.0, 1.0 / n, tile, sm_count,
                                                 in_batch=in_batch, query_ids=ids[0] if has_ids else None,
                                                 queue_ids=ids[1] if has_ids else None, precision=precision)
                    yield "columns", label, dot, f"in_batch={in_batch} ids={int(has_ids)}", block_d, tile_label, launch
            if precision == "tf32" and not mixed:  # the combine has no dot: once per input dtype
                for normalize, k_grad in itertools.product((False, True), repeat=2):
                    problem = K.RowsProblem(q[:1], q[:1], (c,), 5.0, normalize=normalize, k_grad=k_grad)
                    _, combine, _ = K.rows_launches(problem, tiles[0], sm_count)
                    yield ("combine", label, "none", f"normalize={int(normalize)} k_grad={int(k_grad)}", block_d,
                           f"{combine.meta['BLOCK_N']} rows", combine)


def representative(configs):
    """Of `configurations`, per kernel, input types and width: every tile with the first flag set
    and every flag set with the first tile, so that each compiles at least once, in two thirds of
    the whole gate's compiles (for a second compiler, where the whole gate runs with the first)."""
    first_flags, first_tile = {}, {}
    for config in configs:
        kernel, dtype, precision, flags, block_d, tile, _ = config
        key = kernel, dtype, precision, block_d
        if first_flags.setdefault(key, flags) == flags or first_tile.setdefault(key, tile) == tile:
            yield config


def _compile_share(capability: int, share: int, shares: int, every: bool = True) -> list[GateRow]:
    """Compile every `shares`-th configuration (of all, or of the representative ones) for one
    target (one worker's part)."""
    _, sm_count = TARGETS[capability]
    configs = configurations(sm_count) if every else representative(configurations(sm_count))
    rows = []
    with compiling_for(capability):
        for i, (kernel, dtype, precision, flags, block_d, tile, launch) in enumerate(configs):
            if i % shares != share:
                continue
            rows.append(inspect(launch, GateRow(f"sm_{capability}", kernel, dtype, precision, flags, block_d, tile)))
    return rows


def inspect(launch, row: GateRow) -> GateRow:
    """Compile `launch` for the active (stand-in) driver's target and fill in `row`."""
    try:
        compiled = launch.compile_only()
        row.registers, row.stack = _resources(compiled.asm["cubin"])
        row.shared = compiled.metadata.shared
        row.tensor_cores = bool(MMA.search(compiled.asm["ptx"]))
    except Exception as e:  # noqa: BLE001 - a compile error is a gate failure, reported per row
        row.error = _first_error_line(e)
    return row


@contextmanager
def compiling_for(capability: int):
    """Within it, Triton's JIT compiles for sm_<capability> and launches nothing."""
    from triton.runtime.driver import driver

    previous = driver._active  # None unless a driver was set: resetting would look for a real GPU
    driver.set_active(CompileOnlyDriver(capability))
    try:
        yield
    finally:
        driver._active = previous


def _first_error_line(e: Exception) -> str:
    """The informative line of a compile error (Triton appends the whole PTX to ptxas's)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in lines:
        if "fatal" in line or "Error" in line or "error" in line:
            return f"{type(e).__name__}: {line[:300]}"
    return f"{type(e).__name__}: {lines[-1][:300] if lines else ''}"


def run_gate(capabilities=(90, 80), jobs: int | None = None, every: bool = True) -> list[GateRow]:
    """Compile every configuration (or with every=False the `representative` ones) for each
    target in `jobs` worker processes; one row each."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("the compile gate needs the real compiler: unset TRITON_INTERPRET")
    jobs = jobs or os.cpu_count() or 1
    work = [(c, share, jobs, every) for c in capabilities for share in range(jobs)]
    if jobs == 1:
        return [row for args in work for row in _compile_share(*args)]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [row for part in pool.map(_compile_share, *zip(*work)) for row in part]


def summary(rows: list[GateRow]) -> list[str]:
    """One line per (target, kernel, dtype, precision, block_d): the worst registers, stack
    and shared memory over its flags and tiles, tensor cores in all of them or not, verdict."""
    lines = ["| target | kernel | inputs | dot | D | configs | max regs | max stack B | max shared KB | tensor cores | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[GateRow]] = {}
    for row in rows:
        groups.setdefault((row.target, row.kernel, row.dtype, row.precision, row.block_d), []).append(row)
    for (target, kernel, dtype, precision, block_d), group in groups.items():
        limit = TARGETS[int(target[3:])][0]
        failed = [r for r in group if r.failures(limit)]
        cores = "no dot" if kernel == "combine" else ("all" if all(r.tensor_cores for r in group) else
                                                   f"{sum(r.tensor_cores for r in group)}/{len(group)}")
        lines.append(f"| {target} | {kernel} | {dtype} | {precision} | {block_d} | {len(group)} | "
                     f"{max(r.registers for r in group)} | {max(r.stack for r in group)} | "
                     f"{max(r.shared for r in group) / 1024:.1f} | {cores} | "
                     f"{'pass' if not failed else f'FAIL {len(failed)}'} |")
    return lines


def failures(rows: list[GateRow]) -> list[str]:
    out = []
    for r in rows:
        for why in r.failures(TARGETS[int(r.target[3:])][0]):
            out.append(f"{r.target} {r.kernel} {r.dtype} {r.precision} D={r.block_d} {r.flags} {r.tile}: {why}")
    return out
