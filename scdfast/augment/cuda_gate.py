"""Compile the batched augmentation's Numba CUDA kernels for real GPU targets, on any machine.

`numba.cuda.compile_ptx` lowers `plan` and `render` through the CUDA toolkit's NVVM (the
machine image's, or the pip `nvidia-nvvm` wheel) for each compute capability, with the
argument types the launcher passes; `ptxas` (the toolkit's, else the one in Triton's wheel)
then reports registers and spills. The stack frame that libdevice's trigonometric range
reduction keeps is not a spill. Two stand-ins make this work without a GPU: the device
functions' compute capability, which Numba otherwise asks a driver for, and
NUMBA_FORCE_CUDA_CC, which skips NVRTC's search for the nearest supported architecture.

Run it without NUMBA_ENABLE_CUDASIM (the simulator compiles nothing).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

CAPABILITIES = ((9, 0), (8, 0))
REGISTERS = re.compile(r"Used (\d+) registers")
STACK = re.compile(r"(\d+) bytes stack frame")
SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass
class NumbaGateRow:
    target: str
    kernel: str
    registers: int = 0
    stack: int = 0
    spill_bytes: int = 0
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and not self.spill_bytes


def _signatures():
    """The argument types BatchAugmenter passes (C-contiguous device arrays)."""
    from numba import types as T

    def arr(dtype, ndim):
        return T.Array(dtype, ndim, "C")
    plan = (T.uint64, arr(T.int32, 1), arr(T.int64, 1), arr(T.int64, 1), T.int64, T.float64, T.float64, T.float64,
            arr(T.float64, 2), T.int64, T.int64, arr(T.int32, 1), arr(T.int32, 1), arr(T.float32, 2), arr(T.float32, 2),
            arr(T.float32, 2), arr(T.uint8, 1), arr(T.int32, 2), arr(T.uint8, 2), arr(T.uint8, 2))
    render = (arr(T.float32, 5), arr(T.int64, 1), arr(T.int32, 1), arr(T.int32, 1), arr(T.float32, 2),
              arr(T.uint8, 1), arr(T.uint8, 2), arr(T.uint8, 2), arr(T.int32, 1), arr(T.int32, 1), T.int64, T.int64,
              arr(T.float32, 5))
    return {"plan": plan, "render": render}


def unavailable() -> str | None:
    """Why the gate cannot run here, or None."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "NUMBA_ENABLE_CUDASIM=1: the simulator compiles nothing"
    try:
        from numba import cuda
    except ImportError as e:
        return f"numba.cuda does not import: {e}"
    if "numba_cuda" not in cuda.__file__:
        return "numba-cuda is not installed (numba's built-in CUDA target is deprecated): pip install numba-cuda"
    try:
        from numba.cuda.cuda_paths import get_cuda_paths
        paths = get_cuda_paths()
        if not paths["nvvm"].info or not paths["libdevice"].info:
            return "no NVVM found: install the CUDA toolkit or the nvidia-nvvm wheel"
    except Exception as e:  # noqa: BLE001 - any failure to find the toolkit is the reason
        return f"no CUDA toolkit found ({type(e).__name__}: {str(e).splitlines()[0]}); install nvidia-cuda-nvrtc"
    if _ptxas() is None:
        return "no ptxas found (it ships with triton)"
    return None


def _ptxas() -> str | None:
    """The toolkit's own ptxas (it reads the PTX version its NVVM writes), else Triton's newest."""
    candidates = [shutil.which("ptxas")]
    candidates += [os.path.join(root, "bin", "ptxas") for root in (os.environ.get("CUDA_HOME"),
                                                                  os.environ.get("CUDA_PATH"), "/usr/local/cuda") if root]
    try:
        import triton
        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        candidates += [os.path.join(bundled, "ptxas-blackwell"), os.path.join(bundled, "ptxas")]
    except ImportError:
        pass
    return next((c for c in candidates if c and os.path.exists(c)), None)


def _ptxas_report(ptx: str, capability: tuple[int, int]) -> tuple[int, int, int]:
    """(registers, stack frame bytes, spill store + load bytes) of `ptx` for sm_XY."""
    arch = f"sm_{capability[0]}{capability[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run([_ptxas(), f"-arch={arch}", "-v", src, "-o", os.path.join(tmp, "kernel.cubin")],
                              capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "ptxas failed")
    registers = REGISTERS.search(done.stderr)
    if registers is None:
        raise RuntimeError(f"ptxas -v printed no register count: {done.stderr[-300:]!r}")
    stack = STACK.search(done.stderr)
    spills = SPILLS.search(done.stderr)
    return (int(registers.group(1)), int(stack.group(1)) if stack else 0,
            sum(int(x) for x in spills.groups()) if spills else 0)


def run_numba_gate(capabilities=CAPABILITIES) -> list[NumbaGateRow]:
    from numba import cuda
    from numba.cuda import config as cuda_config
    from numba.cuda import dispatcher

    from scdfast.augment import fused

    class TargetDevice:  # what a device function's compilation asks of the current device
        compute_capability = capabilities[0]

    asked_device, forced = dispatcher.get_current_device, cuda_config.FORCE_CUDA_CC
    dispatcher.get_current_device = lambda: TargetDevice
    rows = []
    try:
        for capability in capabilities:
            TargetDevice.compute_capability = capability
            cuda_config.FORCE_CUDA_CC = capability
            # fresh dispatchers: a device function keeps what it compiled for the last target
            kernels = dict(zip(("plan", "render"), fused._build(cuda.jit(device=True), cuda.jit, range, on_gpu=True)))
            for name, signature in _signatures().items():
                row = NumbaGateRow(f"sm_{capability[0]}{capability[1]}", name)
                try:
                    ptx, _ = cuda.compile_ptx(kernels[name].py_func, signature, cc=capability)
                    row.registers, row.stack, row.spill_bytes = _ptxas_report(ptx, capability)
                except Exception as e:  # noqa: BLE001 - a compile error is a gate failure, reported per row
                    lines = [line for line in str(e).splitlines() if line.strip()]
                    row.error = f"{type(e).__name__}: {lines[0][:300] if lines else ''}"
                rows.append(row)
    finally:
        dispatcher.get_current_device, cuda_config.FORCE_CUDA_CC = asked_device, forced
    return rows


def table(rows: list[NumbaGateRow]) -> list[str]:
    lines = ["| target | kernel | registers | stack B | spill B | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "pass" if r.passed else f"FAIL {r.error or 'spills'}"
        lines.append(f"| {r.target} | numba {r.kernel} | {r.registers} | {r.stack} | {r.spill_bytes} | {verdict} |")
    return lines
