"""Invariants of the NumPy reference augmentations (SCDNET.md, 'Pretraining views')."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scdfast.augment import reference as aug
from scdfast.graph import BONE_PARENT, EDGES, FLIP_PERMUTATION, ROOT


def sample(rng, t=70, v=25, m=2):
    return rng.standard_normal((3, t, v, m)).astype(np.float32)


@pytest.mark.parametrize("length,window", [(37, 64), (64, 64), (171, 64), (5, 32), (300, 32)])
def test_resize_equals_torch_linear_align_corners_false(rng, length, window):
    x = sample(rng, t=length + 9)
    start = int(rng.integers(0, 10))
    got = aug.resize_frames(x, start, length, window)
    crop = torch.from_numpy(x[:, start:start + length]).permute(0, 2, 3, 1).reshape(1, -1, length, 1)
    want = F.interpolate(crop, size=(window, 1), mode="bilinear", align_corners=False)
    want = want.reshape(3, 25, 2, window).permute(0, 3, 1, 2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_crop_draws_follow_the_rule(rng):
    nf = rng.integers(1, 301, size=20000)
    d = aug.draw_views(rng, nf, window=64)
    assert (d.crop_length <= nf).all() and (d.crop_length >= np.minimum(64, nf)).all()
    assert (d.crop_start >= 0).all() and (d.crop_start + d.crop_length <= nf).all()
    # with nf = 300, L = floor(300 r) for r ~ U[0.1, 1]; where no clamp acts (L > 64) the
    # ratio L / 300 is uniform on (64/300, 1], less the floor's half frame on average
    full = aug.draw_views(rng, np.full(20000, 300), window=64)
    ratio = full.crop_length[full.crop_length > 64] / 300
    assert abs(np.mean(ratio) - ((65 / 300 + 1) / 2 - 0.5 / 300)) < 0.01
    assert abs(np.mean(full.crop_length == 64) - (65 / 300 - 0.1) / 0.9) < 0.01
    # every start in [0, nf - L] is possible: check the extremes occur for short slack
    slack = nf - d.crop_length
    assert (d.crop_start[slack > 0] == 0).any() and (d.crop_start[slack > 0] == slack[slack > 0]).any()


def test_flag_and_angle_draws(rng):
    d = aug.draw_views(rng, np.full(40000, 100), window=64)
    for flag in (d.rotate, d.flip, d.shear, d.spatial_mask, d.temporal_mask):
        assert abs(flag.mean() - 0.5) < 0.02
    main = d.rotate_degrees.max(axis=1)
    minor = np.sort(d.rotate_degrees, axis=1)[:, :2]
    assert (minor <= 1.0).all() and (main <= 30.0).all()
    assert abs(np.mean(np.argmax(d.rotate_degrees, axis=1) == 0) - 1 / 3) < 0.02
    assert (np.abs(d.shear_values) <= 1).all() and abs(d.shear_values.mean()) < 0.02
    assert all(len(set(row)) == aug.MASKED_SEGMENTS for row in d.masked_segments[:1000])
    assert np.bincount(d.masked_segments.ravel(), minlength=16).min() > 0.9 * 40000 * 6 / 16


def test_spatial_mask_zeroes_the_top8_of_the_a2_rule(rng):
    # B = (I + A)^2 written out from the edge list, independently of scdfast.graph's helper
    adj = np.eye(25)
    for c, p in EDGES:
        adj[c, p] = adj[p, c] = 1
    b = adj @ adj
    for _ in range(50):
        seeds = rng.integers(0, 25, size=5)
        x = sample(rng) + 10.0  # no coordinate is zero before masking
        out = aug.spatial_mask(x, seeds)
        zeroed = np.flatnonzero((out == 0).all(axis=(0, 1, 3)))
        assert len(zeroed) == 8
        score = b[seeds].sum(0)
        # every masked joint scores at least as high as every kept joint
        kept = np.setdiff1d(np.arange(25), zeroed)
        assert score[zeroed].min() >= score[kept].max()
        np.testing.assert_array_equal(out[:, :, kept], x[:, :, kept])


def test_temporal_mask_zeroes_6_of_16_segments(rng):
    for window in (64, 32):
        x = sample(rng, t=window) + 10.0
        segments = rng.permutation(16)[:6]
        out = aug.temporal_mask(x, segments)
        zero_frames = np.flatnonzero((out == 0).all(axis=(0, 2, 3)))
        seg = window // 16
        assert len(zero_frames) == 6 * seg
        assert sorted(set(zero_frames // seg)) == sorted(segments)


def test_rotation_preserves_bone_lengths_and_flip_twice_is_identity(rng):
    x = sample(rng)
    degrees = rng.uniform(0, 30, size=3)
    r = aug.rotate(x, degrees)
    np.testing.assert_allclose(np.linalg.norm(aug.to_bone(r), axis=0), np.linalg.norm(aug.to_bone(x), axis=0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(aug.flip(aug.flip(x)), x)
    assert sorted(FLIP_PERMUTATION) == list(range(25))


def test_rotation_matrix_convention():
    # about z by 90 degrees, the matrix [[c, s, 0], [-s, c, 0], [0, 0, 1]] sends x to -y
    np.testing.assert_allclose(aug.rotation_matrix(2, 90.0) @ np.array([1.0, 0, 0]), [0, -1, 0], atol=1e-12)


def test_shear_is_identity_on_zero_values_and_linear(rng):
    x = sample(rng)
    np.testing.assert_allclose(aug.apply_linear(x, aug.shear_matrix(np.zeros(6))), x, rtol=1e-6)
    v = rng.uniform(-1, 1, size=6)
    m = aug.shear_matrix(v)
    assert np.allclose(np.diag(m), 1) and m[0, 1] == v[0] and m[2, 1] == v[5]


def test_motion_and_bone_definitions(rng):
    x = sample(rng, t=12)
    motion = aug.to_motion(x)
    np.testing.assert_allclose(motion[:, 3], x[:, 4] - x[:, 3])
    assert (motion[:, -1] == 0).all()
    bone = aug.to_bone(x)
    assert (bone[:, :, ROOT] == 0).all()
    for c, p in EDGES:
        np.testing.assert_allclose(bone[:, :, c], x[:, :, c] - x[:, :, p])
    assert BONE_PARENT[ROOT] == ROOT


def test_center_crop_keeps_the_middle_95_percent(rng):
    x = sample(rng, t=200)
    got = aug.center_crop(x, 200, 64)
    np.testing.assert_allclose(got, aug.resize_frames(x, 5, 190, 64))


def test_make_view_applies_draws_in_order(rng):
    x = sample(rng, t=120)
    d = aug.draw_views(rng, np.array([120]), window=64)
    d.rotate[:], d.flip[:], d.shear[:], d.spatial_mask[:], d.temporal_mask[:] = True, True, False, False, False
    got = aug.make_view(x, d, 0, 64, "bone")
    want = aug.flip(aug.rotate(aug.to_bone(aug.resize_frames(x, int(d.crop_start[0]), int(d.crop_length[0]), 64)),
                               d.rotate_degrees[0]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.shape == (3, 64, 25, 2) and got.dtype == np.float32
