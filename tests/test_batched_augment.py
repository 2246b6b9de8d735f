"""The batched Numba view kernels against the NumPy reference.

Exactness: on the reference's own draws (`plan_from_draws`) the CPU kernels and the CUDA
kernels (run by Numba's CUDA simulator) equal `make_views` to 1e-5. Distributions: with
the kernels' counter-based generator, every drawn quantity follows the rule of SCDNET.md,
checked against the reference's draws with enough views to catch a wrong rule.
"""
import os

import numpy as np
import pytest
import torch

from scdfast.augment.batched import BatchAugmenter, plan_from_draws
from scdfast.augment.reference import (
    draw_views,
    make_views,
    masked_joints,
    rotation_matrix,
    shear_matrix,
)
from scdfast.errors import ScdError

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _batch(rng, samples, frames, bodies=2):
    x = rng.normal(size=(samples, 3, frames, 25, bodies)).astype(np.float32)
    nf = rng.integers(1, frames + 1, size=samples)
    nf[0], nf[-1] = 1, frames  # the extremes: one frame, every frame
    return x, nf


@pytest.mark.parametrize("representation", ["joint", "motion", "bone"])
@pytest.mark.parametrize("window, frames", [(32, 100), (64, 37), (16, 300)])
def test_cpu_kernels_equal_reference(rng, representation, window, frames):
    x, nf = _batch(rng, 7, frames)
    index = np.concatenate([np.arange(7), np.arange(7)])
    draws = draw_views(rng, nf[index], window)
    expected = make_views(x[index], draws, window, representation)
    augmenter = BatchAugmenter(window, representation=representation, backend="cpu")
    views = augmenter.render(x, index, plan_from_draws(draws)).numpy()
    np.testing.assert_allclose(views, expected, **TOLERANCE)


@pytest.mark.parametrize("representation", ["joint", "motion", "bone"])
def test_cuda_kernels_equal_reference_in_simulator(rng, representation):
    x, nf = _batch(rng, 3, 41, bodies=1)
    index = np.array([0, 1, 2, 2, 1], dtype=np.int64)
    draws = draw_views(rng, nf[index], 16)
    expected = make_views(x[index], draws, 16, representation)
    augmenter = BatchAugmenter(16, representation=representation, backend="cuda")
    views = augmenter.render(x, index, plan_from_draws(draws)).numpy()
    np.testing.assert_allclose(views, expected, **TOLERANCE)


@pytest.mark.gpu
@pytest.mark.parametrize("representation", ["joint", "motion", "bone"])
def test_cuda_kernels_on_the_gpu_equal_reference(rng, representation, device):
    """The GPU tier: CUDA tensors go to the compiled kernels on PyTorch's stream."""
    x, nf = _batch(rng, 9, 120)
    index = np.array([0, 1, 2, 8, 8, 3, 1], dtype=np.int64)
    draws = draw_views(rng, nf[index], 64)
    expected = make_views(x[index], draws, 64, representation)
    plan = plan_from_draws(draws)
    on_device = type(plan)(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in plan.arrays()))
    views = BatchAugmenter(64, representation=representation).render(
        torch.from_numpy(x).to(device), torch.from_numpy(index).to(device), on_device)
    np.testing.assert_allclose(views.cpu().numpy(), expected, **TOLERANCE)


def test_cuda_and_cpu_plans_agree(rng):
    nf = rng.integers(1, 300, size=24)
    index = np.arange(24)
    cpu = BatchAugmenter(64, seed=5, backend="cpu").plan(nf, index, step=11)
    gpu = BatchAugmenter(64, seed=5, backend="cuda").plan(nf, index, step=11)
    for name, a, b in zip(("start", "length", "degrees", "shear", "matrix", "flip", "seeds", "joint_mask",
                           "segment_mask"), cpu.arrays(), gpu.arrays()):
        if a.dtype.is_floating_point:  # the two compilers may round sin/cos differently
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
        else:
            assert torch.equal(a, b), name


def test_seed_and_step_reproduce_a_batch(rng):
    x, nf = _batch(rng, 5, 80)
    index = np.concatenate([np.arange(5), np.arange(5)])
    augmenter = BatchAugmenter(32, seed=3, backend="cpu")
    first = augmenter(x, nf, index, step=7)
    assert torch.equal(first, BatchAugmenter(32, seed=3, backend="cpu")(x, nf, index, step=7))
    assert not torch.equal(first, augmenter(x, nf, index, step=8))
    assert not torch.equal(first[:5], first[5:])  # a sample's two views draw independently


def test_generated_views_follow_their_plan(rng):
    """The kernel's own draws, rendered, equal the reference transforms applied by hand."""
    x, nf = _batch(rng, 6, 90)
    index = np.concatenate([np.arange(6), np.arange(6)])
    augmenter = BatchAugmenter(32, seed=int(rng.integers(1 << 30)), backend="cpu")
    plan = augmenter.plan(nf, index, step=0)
    views = augmenter.render(x, index, plan).numpy()
    from scdfast.augment import reference as ref
    for i, n in enumerate(index):
        v = ref.resize_frames(x[n], int(plan.start[i]), int(plan.length[i]), 32)
        v = ref.apply_linear(v, plan.matrix[i].numpy().reshape(3, 3).astype(np.float64))
        if plan.flip[i]:
            v = ref.flip(v)
        v[:, :, plan.joint_mask[i].numpy().astype(bool)] = 0
        for s in np.flatnonzero(plan.segment_mask[i].numpy()):
            v[:, 2 * s:2 * s + 2] = 0
        np.testing.assert_allclose(views[i], v, **TOLERANCE)


# ---- distributions -------------------------------------------------------------------------

VIEWS = 20000


def _ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


# KS threshold for two samples of VIEWS each at a false-alarm rate of about 1e-5.
KS_LIMIT = np.sqrt(-np.log(0.5e-5) / 2) * np.sqrt(2 / VIEWS)


@pytest.fixture(scope="module")
def generated():
    """VIEWS views of the kernel generator and of the reference, same num_frames."""
    rng = np.random.default_rng(20240214)
    nf = rng.integers(1, 301, size=VIEWS)
    plan = BatchAugmenter(64, seed=int(rng.integers(1 << 30)), backend="cpu").plan(nf, np.arange(VIEWS), step=0)
    return nf, plan, draw_views(rng, nf, 64)


def test_crop_distribution(generated):
    nf, plan, ref = generated
    length, start = plan.length.numpy(), plan.start.numpy()
    assert np.all(length == np.minimum(np.maximum(length, 64), nf)) and np.all(length <= nf)
    assert np.all((start >= 0) & (start + length <= nf))
    assert _ks(length / nf, ref.crop_length / nf) < KS_LIMIT
    free = nf > length
    free_ref = nf > ref.crop_length
    position = start[free] / (nf - length)[free]
    position_ref = ref.crop_start[free_ref] / (nf - ref.crop_length)[free_ref]
    assert _ks(position, position_ref) < KS_LIMIT * 1.5
    # both ends of the range occur: start ~ U{0 .. nf - L} includes nf - L
    assert np.any(start[free] == (nf - length)[free]) and np.any(start[free] == 0)


def test_rotation_distribution(generated):
    _, plan, ref = generated
    degrees = plan.degrees.numpy().astype(np.float64)
    drawn = degrees.any(axis=1)
    assert abs(drawn.mean() - 0.5) < 0.02
    main = degrees[drawn].argmax(axis=1)
    assert np.all(np.bincount(main, minlength=3) / drawn.sum() > 0.3)
    main_ref = ref.rotate_degrees[ref.rotate].argmax(axis=1)
    big = degrees[drawn][np.arange(drawn.sum()), main]
    assert _ks(big, ref.rotate_degrees[ref.rotate][np.arange(ref.rotate.sum()), main_ref]) < KS_LIMIT * 1.5
    small = np.sort(degrees[drawn], axis=1)[:, :2].ravel()
    assert small.max() <= 1.0 and big.max() <= 30.0
    for i in np.flatnonzero(drawn)[:50]:  # the matrix is Rz Ry Rx of these angles (shear aside)
        if not plan.shear[i].any():
            expected = np.eye(3)
            for axis in range(3):
                expected = rotation_matrix(axis, degrees[i, axis]) @ expected
            np.testing.assert_allclose(plan.matrix[i].numpy().reshape(3, 3), expected, atol=1e-6)


def test_shear_and_flip_distribution(generated):
    _, plan, ref = generated
    shear = plan.shear.numpy().astype(np.float64)
    drawn = shear.any(axis=1)
    assert abs(drawn.mean() - 0.5) < 0.02 and abs(plan.flip.numpy().mean() - 0.5) < 0.02
    assert _ks(shear[drawn].ravel(), ref.shear_values[ref.shear].ravel()) < KS_LIMIT
    for i in np.flatnonzero(drawn & ~plan.degrees.numpy().any(axis=1))[:50]:
        np.testing.assert_allclose(plan.matrix[i].numpy().reshape(3, 3), shear_matrix(shear[i]), atol=1e-6)


def test_spatial_mask_distribution(generated):
    _, plan, ref = generated
    mask = plan.joint_mask.numpy().astype(bool)
    drawn = mask.any(axis=1)
    assert abs(drawn.mean() - 0.5) < 0.02
    assert np.all(mask[drawn].sum(axis=1) == 8)
    seeds = plan.seeds.numpy()
    for i in np.flatnonzero(drawn)[:2000]:  # the exact A^2 top-8 rule for the drawn seeds
        assert set(np.flatnonzero(mask[i])) == set(masked_joints(seeds[i]).tolist())
    assert np.all(np.abs(np.bincount(seeds.ravel(), minlength=25) / seeds.size - 1 / 25) < 0.006)
    # how often each joint is masked, against the reference's draws
    frequency = mask[drawn].mean(axis=0)
    frequency_ref = np.array([np.isin(np.arange(25), masked_joints(s)) for s in ref.mask_seeds[ref.spatial_mask]]).mean(0)
    assert np.abs(frequency - frequency_ref).max() < 0.03


def test_temporal_mask_distribution(generated):
    _, plan, _ = generated
    mask = plan.segment_mask.numpy().astype(bool)
    drawn = mask.any(axis=1)
    assert abs(drawn.mean() - 0.5) < 0.02
    assert np.all(mask[drawn].sum(axis=1) == 6)
    m = mask[drawn].astype(np.float64)
    assert np.abs(m.mean(axis=0) - 6 / 16).max() < 0.03          # each segment equally likely
    pairs = (m.T @ m) / len(m)
    off = pairs[~np.eye(16, dtype=bool)]
    assert np.abs(off - 6 * 5 / (16 * 15)).max() < 0.03          # pairs too: a uniform 6-subset


# ---- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda x, nf, i: (x[0], nf, i), "shape"),
    (lambda x, nf, i: (x[:, :, :, :20], nf, i), "shape"),
    (lambda x, nf, i: (x.astype(np.float64), nf, i), "dtype"),
    (lambda x, nf, i: (x, np.where(np.arange(len(nf)) == 1, 0, nf), i), "num_frames=0"),
    (lambda x, nf, i: (x, nf + 1000, i), "outside"),
    (lambda x, nf, i: (x, nf, i + 100), "index"),
    (lambda x, nf, i: (x, nf.astype(np.float32), i), "num_frames"),
])
def test_bad_input_is_refused_before_launch(rng, change, message):
    x, nf = _batch(rng, 4, 50)
    index = np.arange(4)
    with pytest.raises(ScdError, match=message):
        BatchAugmenter(32, backend="cpu")(*change(x, nf, index), step=0)


@pytest.mark.parametrize("layout", ["kinect20", "sbu15", "coco17"])
@pytest.mark.parametrize("representation", ["joint", "bone", "motion"])
def test_other_layouts_equal_reference(rng, layout, representation):
    from scdfast.data.layouts import get_layout
    skeleton = get_layout(layout)
    x = rng.normal(size=(5, 3, 60, skeleton.num_joints, 1)).astype(np.float32)
    nf = rng.integers(1, 61, size=5)
    index = np.concatenate([np.arange(5), np.arange(5)])
    draws = draw_views(rng, nf[index], 32, num_joints=skeleton.num_joints)
    expected = make_views(x[index], draws, 32, representation, skeleton)
    for backend in ("cpu", "cuda"):
        augmenter = BatchAugmenter(32, representation=representation, backend=backend, layout=layout)
        views = augmenter.render(x, index, plan_from_draws(draws, skeleton)).numpy()
        np.testing.assert_allclose(views, expected, **TOLERANCE)
    plan = BatchAugmenter(32, backend="cpu", layout=layout).plan(nf, np.arange(5), step=0)
    masked = plan.joint_mask.numpy().sum(axis=1)
    assert set(masked.tolist()) <= {0, skeleton.masked_joints}  # 6 of 20, 5 of 15


@pytest.mark.parametrize("representation", ["joint", "bone", "motion"])
def test_planar_views_turn_the_image_plane_and_keep_the_score(rng, representation):
    """coco17 (x, y, score): the kernels' own plans rotate and shear x and y only, and every
    stream's third channel is the joint's score, resized, flipped and masked like the rest."""
    from scdfast.augment import reference as ref
    from scdfast.data.layouts import COCO17
    x = rng.normal(size=(6, 3, 70, 17, 2)).astype(np.float32)
    x[:, 2] = rng.uniform(0.0, 1.0, size=(6, 70, 17, 2))
    nf = rng.integers(16, 71, size=6)
    index = np.concatenate([np.arange(6), np.arange(6)])
    augmenter = BatchAugmenter(32, representation=representation, probability=1.0, backend="cpu",
                               seed=int(rng.integers(1 << 30)), layout="coco17")
    plan = augmenter.plan(nf, index, step=0)
    matrix = plan.matrix.numpy().reshape(-1, 3, 3)
    np.testing.assert_array_equal(matrix[:, 2], np.tile([0.0, 0.0, 1.0], (12, 1)))
    np.testing.assert_array_equal(matrix[:, :, 2], np.tile([0.0, 0.0, 1.0], (12, 1)))
    top = matrix[:, :2, :2]
    assert np.abs(top - np.eye(2)).max() > 0.1  # something in the plane did turn or shear
    views = augmenter.render(x, index, plan).numpy()
    for i, n in enumerate(index):
        score = ref.resize_frames(x[n], int(plan.start[i]), int(plan.length[i]), 32)[2]
        if plan.flip[i]:
            score = score[:, COCO17.flip_permutation]
        score[:, plan.joint_mask[i].numpy().astype(bool)] = 0
        for s in np.flatnonzero(plan.segment_mask[i].numpy()):
            score[2 * s:2 * s + 2] = 0
        if representation == "motion":
            score[-1] = 0
        np.testing.assert_allclose(views[i, 2], score, **TOLERANCE)


_AHEAD_SCRIPT = """
import numpy as np, torch
from scdfast.augment import batched, fused
from scdfast.data.synthetic import generate
batched.compile_cpu_kernels_ahead().join()
compiled = (len(fused.plan_cpu.overloads), len(fused.render_cpu.overloads))
data = generate(6, seed=0)
np.save("data.npy", data.data)
index = np.array([0, 3, 5, 0, 3, 5])
nf = data.num_frames.astype(np.int32)
cases = [("ntu25", data.data), ("ntu25", np.load("data.npy", mmap_mode="r")), ("ntu25", torch.from_numpy(data.data)),
         ("kinect20", np.ascontiguousarray(data.data[:, :, :, :20]))]
for layout, x in cases:
    batched.BatchAugmenter(32, representation="bone", layout=layout)(x, nf, index, 7)
print(*compiled, len(fused.plan_cpu.overloads), len(fused.render_cpu.overloads))
"""


def test_kernels_compiled_ahead_are_the_ones_launches_use(tmp_path):
    """`compile_cpu_kernels_ahead` is only worth its thread if the launches that follow find
    their kernels compiled: in a fresh process, views of a writable array, a memory-mapped
    (read-only) one, a CPU tensor and another layout compile nothing more."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", _AHEAD_SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1", "1", "1"], out.stdout  # plan and render compiled ahead, then after


_THREADS_SCRIPT = """
import numba, numpy as np, torch
from scdfast.augment import batched
from scdfast.data.synthetic import generate
data = generate(4, seed=0)
before = torch.get_num_threads()
batched.BatchAugmenter(32)(data.data, data.num_frames.astype(np.int32), np.arange(4), 0)
print(before, torch.get_num_threads(), numba.get_num_threads(), numba.threading_layer())
"""


def test_a_cpu_launch_leaves_torch_its_thread_count(tmp_path):
    """Numba's OpenMP pool, started by the main thread's first launch (which compiles the
    render kernel here), set that thread's OpenMP thread count to Numba's, and torch reads its
    own from there: OMP_NUM_THREADS=1 with a Numba pool of 2 left torch on 2 threads. A fresh
    process, as only the pool's start does it; under another threading layer (TBB) there is
    nothing to change. The launch runs on torch's one thread and leaves Numba's own setting (2)
    as it was."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after, numba_threads, layer = out.stdout.split()
    assert (before, after) == ("1", "1"), f"torch threads {before} -> {after} ({layer} threading layer)"
    assert numba_threads == "2", f"Numba's threads left at {numba_threads}"
