"""`scdfast doctor`: can this installation's GPU code run on a GPU? Answered without one.

Compiles every Triton kernel configuration the loss launchers can choose and the batched
augmentation's Numba CUDA kernels for sm_90 (H100/H200) and sm_80 (A100) with the real
compilers, and prints one table: registers, stack (spills), shared memory, tensor cores,
verdict. The work runs in a child process: the compilers must not see TRITON_INTERPRET or
NUMBA_ENABLE_CUDASIM, and a fresh Triton cache keeps an old compile from hiding an error.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

INTERPRETER_SWITCHES = ("TRITON_INTERPRET", "NUMBA_ENABLE_CUDASIM")


@contextmanager
def gate_environment(triton_path: str | None = None) -> Iterator[dict[str, str]]:
    """This process's environment without the interpreters, with a fresh Triton cache (and
    `triton_path`, a folder holding another Triton, first on the import path). The cache, some
    hundreds of MiB after a whole gate, is removed on leaving: it was made for this one run."""
    env = {k: v for k, v in os.environ.items() if k not in INTERPRETER_SWITCHES}
    with tempfile.TemporaryDirectory(prefix="scdfast-gate-", ignore_cleanup_errors=True) as cache:
        env["TRITON_CACHE_DIR"] = cache
        if triton_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (os.path.abspath(triton_path), env.get("PYTHONPATH"))))
        yield env


def run_in_child(targets=(90, 80), jobs: int | None = None, timeout: float | None = None,
                 triton_path: str | None = None, numba: bool = True, every: bool = True) -> dict:
    """The gate's report (see `collect`) from a child process; every=False compiles the
    representative configurations only (`compile_gate.representative`)."""
    with tempfile.TemporaryDirectory() as tmp, gate_environment(triton_path) as env:
        out = os.path.join(tmp, "gate.json")
        command = [sys.executable, "-m", "scdfast.doctor", "--child", out, "--targets", *map(str, targets)]
        if jobs:
            command += ["--jobs", str(jobs)]
        if not numba:
            command.append("--no-numba")
        if not every:
            command.append("--representative")
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode or not os.path.exists(out):
            raise RuntimeError(f"the compile gate's process failed ({done.returncode}): {done.stderr[-2000:]}")
        with open(out) as f:
            return json.load(f)


def collect(targets, jobs, numba: bool = True, every: bool = True) -> dict:
    """{versions, triton: rows, triton_failures, numba: rows or skipped reason, numba_failures}."""
    from dataclasses import asdict

    import torch
    import triton

    from scdfast.augment import cuda_gate
    from scdfast.kernels import compile_gate

    rows = compile_gate.run_gate(tuple(targets), jobs, every)
    report = {"versions": {"torch": torch.__version__, "triton": triton.__version__},
              "triton": [asdict(r) for r in rows], "triton_table": compile_gate.summary(rows),
              "triton_failures": compile_gate.failures(rows)}
    why_not = cuda_gate.unavailable() if numba else "not asked for"
    if why_not:
        report.update(numba_skipped=why_not, numba=[], numba_table=[], numba_failures=[])
    else:
        import numba
        capabilities = [(t // 10, t % 10) for t in targets]
        numba_rows = cuda_gate.run_numba_gate(capabilities)
        report["versions"]["numba"] = numba.__version__
        report.update(numba=[asdict(r) for r in numba_rows], numba_table=cuda_gate.table(numba_rows),
                      numba_failures=[f"{r.target} numba {r.kernel}: {r.error or 'spills'}" for r in numba_rows
                                      if not r.passed])
    return report


def print_report(report: dict) -> bool:
    """Print the tables and failures; True when everything passed."""
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    print(f"compile gate ({versions}): {len(report['triton'])} Triton configurations, "
          f"{len(report['numba'])} Numba kernels")
    print("\n".join(report["triton_table"]))
    if report.get("numba_skipped"):
        print(f"\nNumba CUDA kernels: skipped: {report['numba_skipped']}")
    else:
        print()
        print("\n".join(report["numba_table"]))
    failures = report["triton_failures"] + report["numba_failures"]
    for line in failures:
        print(f"FAIL {line}")
    print(f"\n{'every configuration passed' if not failures else f'{len(failures)} configurations failed'}")
    return not failures


def main(argv=None) -> int:
    """The child process's entry point (`python -m scdfast.doctor --child OUT`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m scdfast.doctor")
    parser.add_argument("--child", metavar="OUT", required=True)
    parser.add_argument("--targets", nargs="+", type=int, default=[90, 80])
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--no-numba", action="store_true")
    parser.add_argument("--representative", action="store_true")
    args = parser.parse_args(argv)
    report = collect(args.targets, args.jobs, numba=not args.no_numba, every=not args.representative)
    with open(args.child, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
