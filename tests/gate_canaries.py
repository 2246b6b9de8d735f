"""Kernels the compile gate must fail, compiled in a child process (run by test_compile_gate.py).

Prints one JSON line: each canary's failures as the gate reports them.
"""
import json
import sys

import torch
import triton
import triton.language as tl

from scdfast.kernels import compile_gate as gate
from scdfast.kernels import infonce as K

_NEG_INF = float("-inf")  # a plain global: Triton refuses it in jitted code since 3.0


@triton.jit
def _reads_a_plain_global(x_ptr):
    tl.store(x_ptr, _NEG_INF)


def main() -> int:
    capability = int(sys.argv[1])
    limit, sm_count = gate.TARGETS[capability]
    q = torch.zeros(1, 64, 256)
    c = torch.zeros(256, 256)
    canaries = {
        "plain global": K.Launch(_reads_a_plain_global, (1,), (torch.zeros(1),), {}),
        # a 128 x 128 tile of 256-wide fp32 rows on 4 warps: beyond the registers and shared memory on both
        # targets (2-21 KB of spills, 328-393 KB of shared memory), and a third of 512-wide rows' compile time
        "oversized tile": K.rows_launches(K.RowsProblem(q, q, (c,), 5.0), K.TileConfig(128, 128, 4, 3), sm_count)[0],
        # exact fp32 products labelled as the default precision: no tensor cores
        "fma dot as the default": K.rows_launches(K.RowsProblem(q[:, :, :64], q[:, :, :64], (c[:, :64],), 5.0,
                                                                precision="ieee"),
                                                  K.TileConfig(16, 32, 8, 1), sm_count)[0],
    }
    found = {}
    with gate.compiling_for(capability):
        for name, launch in canaries.items():
            row = gate.inspect(launch, gate.GateRow(f"sm_{capability}", "rows", "fp32", "tf32", name, 256, name))
            found[name] = row.failures(limit)
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
