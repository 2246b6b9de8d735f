"""The compile gate: every Triton kernel configuration the launchers can choose, and the Numba
CUDA kernels, compiled for sm_90 and sm_80 by the real compilers (no GPU needed), with no
compile error, no spills, shared memory within the limit and tensor cores at the default
precision; the gate itself fails on broken kernels; the launch grids fill the chip."""
import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch

pytest.importorskip("triton")

from scdfast.doctor import gate_environment, run_in_child  # noqa: E402
from scdfast.kernels import compile_gate  # noqa: E402
from scdfast.kernels import infonce as K  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# a folder holding the lowest Triton pyproject.toml admits (pip install --no-deps --target DIR)
LOWEST_TRITON = os.environ.get("SCDFAST_GATE_LOWEST_TRITON")
H100_SMS = compile_gate.TARGETS[90][1]  # the launch plans depend on the SM count


@pytest.fixture(scope="module")
def report():
    return run_in_child((90, 80), timeout=3000)


def test_every_triton_configuration_passes_on_sm90_and_sm80(report):
    assert report["triton_failures"] == []
    rows = report["triton"]
    assert {r["target"] for r in rows} == {"sm_90", "sm_80"}
    assert {r["kernel"] for r in rows} == {"rows", "columns", "combine"}
    for family, widths in K.TILE_CANDIDATES.items():
        for block_d, tiles in widths.items():
            compiled = {r["tile"] for r in rows if r["block_d"] == block_d and r["kernel"] == "rows"}
            assert {f"{t.block_n}x{t.block_k} w{t.num_warps} s{t.num_stages}" for t in tiles} <= compiled
    dots = [r for r in rows if r["kernel"] != "combine" and r["precision"] in ("tf32", "bf16")]
    assert dots and all(r["tensor_cores"] for r in dots)
    assert all(r["stack"] == 0 for r in rows)
    assert {r["dtype"] for r in rows} >= {"fp32", "bf16"}
    print("\n".join(report["triton_table"]))


def test_numba_cuda_kernels_compile_for_sm90_and_sm80(report):
    if report.get("numba_skipped"):
        pytest.skip(report["numba_skipped"])
    assert report["numba_failures"] == []
    assert {(r["target"], r["kernel"]) for r in report["numba"]} == {
        (t, k) for t in ("sm_90", "sm_80") for k in ("plan", "render")}
    print("\n".join(report["numba_table"]))


@pytest.mark.skipif(not LOWEST_TRITON, reason="SCDFAST_GATE_LOWEST_TRITON names no folder holding the lowest "
                                               "supported Triton (.ci/run installs one)")
def test_the_lowest_supported_triton_passes_on_sm90():
    import re
    with open(os.path.join(HERE, "..", "pyproject.toml")) as f:
        lowest = re.search(r'"triton>=([0-9.]+)', f.read()).group(1)
    # the representative configurations, each tile and each flag set at least once (the whole
    # gate above compiles every combination with the Triton installed)
    report = run_in_child((90,), timeout=3000, triton_path=LOWEST_TRITON, numba=False, every=False)
    assert report["versions"]["triton"].startswith(lowest)
    assert report["triton_failures"] == []
    fields = ("kernel", "dtype", "precision", "flags", "block_d", "tile")
    compiled = [tuple(row[field] for field in fields) for row in report["triton"]]
    assert _coverage(compiled) == _coverage(compile_gate.configurations(H100_SMS))


def _coverage(configs):
    """(kernel, input types, precision, width) -> (its tiles, its flag sets)."""
    groups = {}
    for kernel, dtype, precision, flags, block_d, tile, *_ in configs:
        tiles, flag_sets = groups.setdefault((kernel, dtype, precision, block_d), (set(), set()))
        tiles.add(tile)
        flag_sets.add(flags)
    return groups


def test_the_representative_configurations_cover_every_tile_and_flag_set():
    every = list(compile_gate.configurations(H100_SMS))
    chosen = list(compile_gate.representative(every))
    assert _coverage(chosen) == _coverage(every)
    assert len(chosen) < 0.7 * len(every)  # the point of the subset: fewer compiles


def test_the_gates_triton_cache_leaves_nothing_behind(tmp_path, monkeypatch):
    """Each gate compiles into a fresh cache (hundreds of MiB after a whole gate); it goes with the run."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    write = "import os; open(os.path.join(os.environ['TRITON_CACHE_DIR'], 'kernel.cubin'), 'w').write('x')"
    with gate_environment() as env:
        cache = env["TRITON_CACHE_DIR"]
        assert os.path.dirname(cache) == str(tmp_path) and os.listdir(cache) == []
        assert not any(switch in env for switch in ("TRITON_INTERPRET", "NUMBA_ENABLE_CUDASIM"))
        subprocess.run([sys.executable, "-c", write], env=env, check=True)
        assert os.listdir(cache) == ["kernel.cubin"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("capability", [90, 80])
def test_the_gate_fails_broken_kernels(capability):
    with gate_environment() as env:
        done = subprocess.run([sys.executable, os.path.join(HERE, "gate_canaries.py"), str(capability)],
                              env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert any("Cannot access global variable" in why or "NameError" in why for why in found["plain global"])
    assert any("register spills" in why for why in found["oversized tile"])
    assert any("shared memory" in why for why in found["oversized tile"])
    assert found["fma dot as the default"] == ["no tensor-core instruction at the default precision"]


def _programs(launch):
    total = 1
    for g in launch.grid:
        total *= g
    return total


def test_scd_loss_at_its_own_shape_launches_two_programs_per_h100_sm():
    """N 64, K 8192, D 128: the negatives split so that the row pass runs >= 2 programs per SM."""
    n, k, d = 64, 8192, 128
    q, c = torch.zeros(4, n, d), torch.zeros(k, d)
    for tile in K.TILE_CANDIDATES["tensor_cores"][128]:
        split, combine, _ = K.rows_launches(K.RowsProblem(q, q, (c, c, c), 5.0), tile, sm_count=132)
        assert _programs(split) >= 264, (tile, split.grid)


def test_infonce_splits_a_small_batch_down_to_single_tiles():
    """One block of 64 queries against 8192 keys: each program streams one tile of the queue."""
    q, c = torch.zeros(1, 64, 128), torch.zeros(8192, 128)
    for tile in K.TILE_CANDIDATES["tensor_cores"][128]:
        split, _, _ = K.rows_launches(K.RowsProblem(q, q, (c,), 5.0), tile, sm_count=132)
        assert split.grid == (triton_cdiv(64, tile.block_n), 8192 // tile.block_k, 1)


def test_infonce_at_n4096_k65536_fills_several_waves():
    q, c = torch.zeros(1, 4096, 128), torch.zeros(65536, 128)
    for tile in K.TILE_CANDIDATES["tensor_cores"][128]:
        split, _, _ = K.rows_launches(K.RowsProblem(q, q, (c,), 5.0), tile, sm_count=132)
        assert _programs(split) >= 3 * 132, (tile, split.grid)
        columns, _ = K.columns_launch(q[0], c, torch.zeros(4096), 5.0, 1.0 / 4096, tile, sm_count=132)
        assert _programs(columns) >= 3 * 132, (tile, columns.grid)


def triton_cdiv(a, b):
    return -(-a // b)


def test_slices_are_never_empty():
    for other, tiles in [(1, 1), (1, 7), (3, 128), (64, 1024), (1000, 5)]:
        slices, per = K.num_slices(other, tiles, sm_count=132)
        assert (slices - 1) * per < tiles <= slices * per
