"""Batched view generation in two Numba kernels, compiled from one source for the CPU and the GPU.

`plan` runs one thread per view (on the CPU, one loop over them) and turns the counter-based
random numbers into a compact ViewPlan: crop start and length, one 3x3 matrix (shear @ Rz @ Ry
@ Rx, identity where a transform was not drawn), the flip flag, the masked joints and the
masked segments. `render` runs one GPU thread per output point (view, frame, joint, body), or
one CPU iteration per output frame: it interpolates the cropped source frames, forms the
joint/motion/bone stream, applies the flip and the matrix and the two masks, and writes the
three coordinates once. Each source frame is read by the points that need it and nothing is
written twice: crop-resize, affine, flip and masks are one pass.

The draws consume slots of the counter-based generator (`counter_rng`); the slot map below
is part of the reproducibility contract: changing it changes every batch.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from scdfast.augment.counter_rng import make_uniform

# Representation codes (the kernels take ints, not strings).
JOINT, MOTION, BONE = 0, 1, 2
REPRESENTATIONS = {"joint": JOINT, "motion": MOTION, "bone": BONE}

TEMPORAL_SEGMENTS = 16
MASKED_SEGMENTS = 6
MASK_SEED_JOINTS = 5

# Slots of the counter-based generator, per view. NumPy integers, not Python ints: Numba types a
# Python int constant as a literal and compiles a helper once for each distinct literal it is
# passed (`uniform` was compiled 9 times; `lerp` and `rotate_rows`, which took channel and row
# numbers, 6 and 3 times: 0.7 s of every process).
SLOT_RATIO, SLOT_START = np.int64(0), np.int64(1)
SLOT_ROTATE, SLOT_AXIS, SLOT_DEGREES = np.int64(2), np.int64(3), np.int64(4)       # 3 angle slots: 4, 5, 6
SLOT_FLIP = np.int64(7)
SLOT_SHEAR, SLOT_SHEAR_VALUES = np.int64(8), np.int64(9)                            # 6 value slots: 9..14
SLOT_SPATIAL, SLOT_SEEDS = np.int64(15), np.int64(16)                               # 5 seed slots: 16..20
SLOT_TEMPORAL, SLOT_SEGMENTS = np.int64(21), np.int64(22)                           # 16 segment slots: 22..37

THREADS_PER_BLOCK = 256


def _build(device_jit, kernel_jit, parallel_range, on_gpu):
    """Compile the plan and render kernels for one target. `device_jit` compiles helpers,
    `kernel_jit` the entry points; on the CPU render loops over `parallel_range` (prange) and
    plan is a serial loop, on the GPU each thread takes its index from cuda.grid (named
    through the module, where the CUDA simulator finds and replaces it)."""
    uniform = make_uniform(device_jit)

    @device_jit
    def rotate_rows(mat, b, i, j, c, s):
        # rows (i, j) of mat[b] (row-major 3x3) <- [[c, s], [-s, c]] @ rows (i, j)
        for k in range(3):
            ri = mat[b, 3 * i + k]
            rj = mat[b, 3 * j + k]
            mat[b, 3 * i + k] = c * ri + s * rj
            mat[b, 3 * j + k] = -s * ri + c * rj

    @device_jit
    def plan_one(key, b, vid, nf, window, ratio_lo, ratio_hi, probability, scores, num_masked, planar,
                 start, length, degrees, shear, matrix, flip, seeds, joint_mask, segment_mask):
        # temporal crop: L = min(max(floor(nf * r), window), nf), start ~ U{0 .. nf - L}
        r = ratio_lo + (ratio_hi - ratio_lo) * uniform(key, vid, SLOT_RATIO)
        crop = min(max(math.floor(nf * r), window), nf)
        first = min(int(uniform(key, vid, SLOT_START) * (nf - crop + 1)), nf - crop)
        start[b] = first
        length[b] = crop
        for k in range(9):
            matrix[b, k] = 1.0 if k % 4 == 0 else 0.0
        for axis in range(3):
            degrees[b, axis] = 0.0
        for k in range(6):
            shear[b, k] = 0.0
        if uniform(key, vid, SLOT_ROTATE) < probability:
            # one main axis gets U[0, 30] degrees, the other two U[0, 1]; about x, then y, then z.
            # Planar: the main axis's angle turns the image plane (about z), nothing else.
            main = min(int(uniform(key, vid, SLOT_AXIS) * 3.0), 2)
            for axis in range(3):
                top = 30.0 if axis == main else 1.0
                degrees[b, axis] = top * uniform(key, vid, SLOT_DEGREES + axis)
            if planar != 0:
                degrees[b, 2] = degrees[b, main]
                degrees[b, 0] = 0.0
                degrees[b, 1] = 0.0
            for axis in range(3):
                angle = math.pi / 180.0 * degrees[b, axis]
                c = math.cos(angle)
                s = math.sin(angle)
                # about x: rows (1, 2); about y: rows (0, 2), the angle's sign turned; about z: rows (0, 1)
                rotate_rows(matrix, b, 1 if axis == 0 else 0, 1 if axis == 2 else 2, c, -s if axis == 1 else s)
        flip[b] = 1 if uniform(key, vid, SLOT_FLIP) < probability else 0
        if uniform(key, vid, SLOT_SHEAR) < probability:
            # ones on the diagonal, the six off-diagonals U[-1, 1] in row-major order
            for k in range(6):
                shear[b, k] = 2.0 * uniform(key, vid, SLOT_SHEAR_VALUES + k) - 1.0
                if planar != 0 and k != 0 and k != 2:  # planar: only x by y and y by x
                    shear[b, k] = 0.0
            s01 = shear[b, 0]
            s02 = shear[b, 1]
            s10 = shear[b, 2]
            s12 = shear[b, 3]
            s20 = shear[b, 4]
            s21 = shear[b, 5]
            for k in range(3):
                r0 = matrix[b, k]
                r1 = matrix[b, 3 + k]
                r2 = matrix[b, 6 + k]
                matrix[b, k] = r0 + s01 * r1 + s02 * r2
                matrix[b, 3 + k] = s10 * r0 + r1 + s12 * r2
                matrix[b, 6 + k] = s20 * r0 + s21 * r1 + r2
        num_joints = joint_mask.shape[1]
        for v in range(num_joints):
            joint_mask[b, v] = 0
        spatial = uniform(key, vid, SLOT_SPATIAL) < probability
        for k in range(MASK_SEED_JOINTS):
            seeds[b, k] = min(int(uniform(key, vid, SLOT_SEEDS + k) * num_joints), num_joints - 1)
        if spatial:
            # the num_masked joints of highest summed score; ties go to the higher index
            for v in range(num_joints):
                score_v = 0.0
                for k in range(MASK_SEED_JOINTS):
                    score_v += scores[seeds[b, k], v]
                above = 0
                for u in range(num_joints):
                    score_u = 0.0
                    for k in range(MASK_SEED_JOINTS):
                        score_u += scores[seeds[b, k], u]
                    if score_u > score_v or (score_u == score_v and u > v):
                        above += 1
                if above < num_masked:
                    joint_mask[b, v] = 1
        # temporal mask: a uniform 6-subset of the 16 segments by selection sampling
        needed = MASKED_SEGMENTS if uniform(key, vid, SLOT_TEMPORAL) < probability else 0
        for s in range(TEMPORAL_SEGMENTS):
            pick = needed > 0 and uniform(key, vid, SLOT_SEGMENTS + s) * (TEMPORAL_SEGMENTS - s) < needed
            segment_mask[b, s] = 1 if pick else 0
            if pick:
                needed -= 1

    @device_jit
    def lerp(x, n, f0, f1, w, u, m):
        # the three channels of joint u between source frames f0 and f1
        return ((1.0 - w) * x[n, 0, f0, u, m] + w * x[n, 0, f1, u, m],
                (1.0 - w) * x[n, 1, f0, u, m] + w * x[n, 1, f1, u, m],
                (1.0 - w) * x[n, 2, f0, u, m] + w * x[n, 2, f1, u, m])

    @device_jit
    def render_span(x, index, start, length, matrix, flip, joint_mask, segment_mask, perm, parent,
                    representation, planar, b, t, v_lo, v_hi, m_lo, m_hi, out):
        # Output frame t of view b for joints [v_lo, v_hi) and bodies [m_lo, m_hi): the CPU
        # renders a whole frame per call (per-frame work hoisted), a GPU thread one point.
        window = out.shape[2]
        if segment_mask[b, t // (window // TEMPORAL_SEGMENTS)] != 0 or (representation == MOTION and t == window - 1):
            for v in range(v_lo, v_hi):
                for m in range(m_lo, m_hi):
                    for c in range(3):
                        out[b, c, t, v, m] = 0.0
            return
        n = index[b]
        first = start[b]
        crop = length[b]
        scale = crop / window
        # linear interpolation, align_corners=False: source position of output frame t
        src = max((t + 0.5) * scale - 0.5, 0.0)
        i0 = int(src)
        w = src - i0
        f0 = first + i0
        f1 = first + min(i0 + 1, crop - 1)
        # motion also needs frame t + 1 (zero beyond the window, handled above)
        src_next = max((t + 1.5) * scale - 0.5, 0.0)
        j0 = int(src_next)
        w_next = src_next - j0
        g0 = first + j0
        g1 = first + min(j0 + 1, crop - 1)
        m00, m01, m02 = matrix[b, 0], matrix[b, 1], matrix[b, 2]
        m10, m11, m12 = matrix[b, 3], matrix[b, 4], matrix[b, 5]
        m20, m21, m22 = matrix[b, 6], matrix[b, 7], matrix[b, 8]
        flipped = flip[b] != 0
        for v in range(v_lo, v_hi):
            if joint_mask[b, v] != 0:
                for m in range(m_lo, m_hi):
                    for c in range(3):
                        out[b, c, t, v, m] = 0.0
                continue
            u = perm[v] if flipped else v
            p = parent[u]
            for m in range(m_lo, m_hi):
                a0, a1, a2 = lerp(x, n, f0, f1, w, u, m)
                # planar: channel 2 is the score, which the streams carry as the joint's own
                if representation == MOTION:
                    b0, b1, b2 = lerp(x, n, g0, g1, w_next, u, m)
                    a0 = b0 - a0
                    a1 = b1 - a1
                    if planar == 0:
                        a2 = b2 - a2
                elif representation == BONE:
                    b0, b1, b2 = lerp(x, n, f0, f1, w, p, m)
                    a0 -= b0
                    a1 -= b1
                    if planar == 0:
                        a2 -= b2
                out[b, 0, t, v, m] = m00 * a0 + m01 * a1 + m02 * a2
                out[b, 1, t, v, m] = m10 * a0 + m11 * a1 + m12 * a2
                out[b, 2, t, v, m] = m20 * a0 + m21 * a1 + m22 * a2

    if not on_gpu:
        # serial, compiled as the helpers are: a batch has few views (0.1 ms for 64 either way),
        # and a parallel loop took 1.5 s longer to compile in every process
        @device_jit
        def plan(key, num_frames, index, view_ids, window, ratio_lo, ratio_hi, probability, scores, num_masked, planar,
                 start, length, degrees, shear, matrix, flip, seeds, joint_mask, segment_mask):
            for b in range(index.shape[0]):
                plan_one(key, b, view_ids[b], num_frames[index[b]], window, ratio_lo, ratio_hi, probability, scores,
                         num_masked, planar, start, length, degrees, shear, matrix, flip, seeds, joint_mask,
                         segment_mask)

        @kernel_jit
        def render(x, index, start, length, matrix, flip, joint_mask, segment_mask, perm, parent,
                   representation, planar, out):
            views, _, window, num_joints, bodies = out.shape
            for job in parallel_range(views * window):
                b = job // window
                render_span(x, index, start, length, matrix, flip, joint_mask, segment_mask, perm, parent,
                            representation, planar, b, job - b * window, 0, num_joints, 0, bodies, out)
    else:
        @kernel_jit
        def plan(key, num_frames, index, view_ids, window, ratio_lo, ratio_hi, probability, scores, num_masked, planar,
                 start, length, degrees, shear, matrix, flip, seeds, joint_mask, segment_mask):
            b = cuda.grid(1)
            if b < index.shape[0]:
                plan_one(key, b, view_ids[b], num_frames[index[b]], window, ratio_lo, ratio_hi, probability, scores,
                         num_masked, planar, start, length, degrees, shear, matrix, flip, seeds, joint_mask,
                         segment_mask)

        @kernel_jit
        def render(x, index, start, length, matrix, flip, joint_mask, segment_mask, perm, parent,
                   representation, planar, out):
            views, _, window, num_joints, bodies = out.shape
            i = cuda.grid(1)
            if i < views * window * num_joints * bodies:
                # thread order (view, frame, joint, body): neighbouring threads write neighbouring floats
                m = i % bodies
                rest = i // bodies
                v = rest % num_joints
                rest = rest // num_joints
                t = rest % window
                b = rest // window
                render_span(x, index, start, length, matrix, flip, joint_mask, segment_mask, perm, parent,
                            representation, planar, b, t, v, v + 1, m, m + 1, out)

    return plan, render


plan_cpu, render_cpu = _build(numba.njit, numba.njit(parallel=True), numba.prange, on_gpu=False)
plan_cuda, render_cuda = _build(cuda.jit(device=True), cuda.jit, range, on_gpu=True)


def blocks_for(total: int) -> int:
    return max(1, (total + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK)
