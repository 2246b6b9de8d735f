"""Whole batches of pretraining views in two kernel launches, on the device that holds the data.

`BatchAugmenter(window, ...)(data, num_frames, index, step)` returns one view per entry of
`index` (pass every sample twice for a query and a key view). CUDA tensors go to the Numba
CUDA kernels on PyTorch's current stream, zero-copy through the CUDA array interface; CPU
tensors and NumPy arrays (memory-mapped ones included) go to the same kernels compiled with
`numba.njit(parallel=True)`. The views follow SCDNET.md exactly; `plan_from_draws` turns the
NumPy reference's draws into a plan, so both paths can be checked against the reference.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, fields

import numba
import numpy as np
import torch

from scdfast.augment import fused
from scdfast.augment.counter_rng import batch_key
from scdfast.augment.reference import (
    ViewDraws,
    masked_joints,
    planar_degrees,
    planar_shear,
    rotation_matrix,
    shear_matrix,
)
from scdfast.data.layouts import NTU25, SkeletonLayout, get_layout
from scdfast.errors import ScdError
from scdfast.graph import structural_mask_scores


Array = torch.Tensor | np.ndarray  # a CUDA or CPU tensor, or a NumPy array


@dataclass
class ViewPlan:
    """Every per-view parameter the render kernel needs; arrays with a leading view axis."""

    start: Array           # (B,) int32: first source frame of the crop
    length: Array          # (B,) int32: crop length L
    degrees: Array         # (B, 3) float32: rotation about x, y, z (zeros where not drawn)
    shear: Array           # (B, 6) float32: shear off-diagonals, row-major (zeros where not drawn)
    matrix: Array          # (B, 9) float32: shear @ Rz @ Ry @ Rx, row-major
    flip: Array            # (B,) uint8
    seeds: Array           # (B, 5) int32: the spatial mask's seed joints (drawn even when unused)
    joint_mask: Array      # (B, V) uint8: 1 = joint zeroed
    segment_mask: Array    # (B, 16) uint8: 1 = segment zeroed

    def arrays(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    @classmethod
    def empty(cls, views: int, num_joints: int, device: torch.device) -> ViewPlan:
        def new(shape, dtype):
            return torch.empty(shape, dtype=dtype, device=device)
        return cls(start=new(views, torch.int32), length=new(views, torch.int32),
                   degrees=new((views, 3), torch.float32), shear=new((views, 6), torch.float32),
                   matrix=new((views, 9), torch.float32), flip=new(views, torch.uint8),
                   seeds=new((views, fused.MASK_SEED_JOINTS), torch.int32),
                   joint_mask=new((views, num_joints), torch.uint8),
                   segment_mask=new((views, fused.TEMPORAL_SEGMENTS), torch.uint8))


def plan_from_draws(draws: ViewDraws, layout: SkeletonLayout = NTU25) -> ViewPlan:
    """The plan the NumPy reference's `draws` describe (NumPy arrays)."""
    views, num_joints = len(draws.crop_length), layout.num_joints
    matrix = np.tile(np.eye(3), (views, 1, 1))
    joint_mask = np.zeros((views, num_joints), np.uint8)
    segment_mask = np.zeros((views, fused.TEMPORAL_SEGMENTS), np.uint8)
    degrees, shear = draws.rotate_degrees, draws.shear_values
    if layout.planar:
        degrees = np.stack([planar_degrees(d, int(a)) for d, a in zip(degrees, draws.rotate_axis)])
        shear = np.stack([planar_shear(s) for s in shear])
    for i in range(views):
        if draws.rotate[i]:
            for axis in range(3):
                matrix[i] = rotation_matrix(axis, float(degrees[i, axis])) @ matrix[i]
        if draws.shear[i]:
            matrix[i] = shear_matrix(shear[i]) @ matrix[i]
        if draws.spatial_mask[i]:
            joint_mask[i, masked_joints(draws.mask_seeds[i], layout)] = 1
        if draws.temporal_mask[i]:
            segment_mask[i, draws.masked_segments[i]] = 1
    degrees = np.where(draws.rotate[:, None], degrees, 0.0)
    shear = np.where(draws.shear[:, None], shear, 0.0)
    return ViewPlan(start=draws.crop_start.astype(np.int32), length=draws.crop_length.astype(np.int32),
                    degrees=degrees.astype(np.float32), shear=shear.astype(np.float32),
                    matrix=matrix.reshape(views, 9).astype(np.float32), flip=draws.flip.astype(np.uint8),
                    seeds=draws.mask_seeds.astype(np.int32), joint_mask=joint_mask, segment_mask=segment_mask)


def _is_cuda(x) -> bool:
    return isinstance(x, torch.Tensor) and x.is_cuda


def _device_of(x) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def _kernel_array(x):
    """What a Numba kernel takes: a CUDA view of a CUDA tensor (no copy, no host sync), a
    NumPy view of a CPU tensor, or the NumPy array itself."""
    if isinstance(x, torch.Tensor):
        if x.is_cuda:  # imported here: numba.cuda needs a driver only when a GPU is used
            from numba import cuda
            return cuda.as_cuda_array(x.detach(), sync=False)
        return x.detach().numpy()
    return x


def _read_only(x):
    """The skeleton array as the CPU render kernel reads it: a read-only NumPy view. Numba
    compiles a kernel once per argument type, and writable and read-only (memory-mapped)
    arrays are different types; one type for both means one compile, which
    `compile_cpu_kernels_ahead` can make before the data are loaded."""
    if isinstance(x, np.ndarray) and x.flags.writeable:
        x = x.view()
        x.flags.writeable = False
    return x


@contextlib.contextmanager
def cpu_launch_threads():
    """Run a CPU kernel launch on as many of Numba's threads as torch may use, then give torch
    back its own thread count.

    Numba's OpenMP threading layer shares the process's OpenMP runtime with torch, and the
    thread that starts Numba's pool (the first to compile or run a parallel kernel) gets its
    OpenMP thread count set to Numba's, where torch reads its own. Unguarded, a run with
    OMP_NUM_THREADS=1 and Numba's default pool of both cores trained torch on two threads when
    the main thread compiled the render kernel first and on one when `compile_cpu_kernels_ahead`
    did: a race, whose two outcomes rounded differently (final losses 27.6728 against 27.6725
    in 4 steps), and under torchrun oversubscribed the cores. The launch's own width follows
    torch's, so that torchrun's one thread a rank (or a user's OMP_NUM_THREADS) holds for the
    views too."""
    threads = torch.get_num_threads()  # before Numba's pool can start and change it
    numba_threads = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(numba_threads)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


_ahead: threading.Thread | None = None


def compile_cpu_kernels_ahead() -> threading.Thread:
    """Compile the CPU plan and render kernels on a background thread, once a process, and
    return it. A first launch compiles them for about 4 s; started before the data are loaded
    and the model is built, much of that runs beside them (LLVM's work holds no GIL). A
    launch that comes first waits for it under Numba's compiler lock; a failure here is left
    for that launch to report. The thread is not a daemon: a process that ends while LLVM
    compiles aborts, so one that fails early waits for it before exiting."""
    global _ahead
    if _ahead is None:
        def compile_both():
            try:
                augmenter = BatchAugmenter(fused.TEMPORAL_SEGMENTS, backend="cpu")
                augmenter._compile_only = True
                data = np.zeros((1, 3, 1, augmenter.num_joints, 1), np.float32)
                index = np.zeros(2, np.int64)
                augmenter.render(data, index, augmenter.plan(np.ones(1, np.int32), index, 0))
            except Exception:  # noqa: BLE001 - the first real launch compiles and raises it
                pass
        _ahead = threading.Thread(target=compile_both, name="scdfast-compile-ahead")
        _ahead.start()
    return _ahead


class BatchAugmenter:
    """SCD-Net's pretraining views for whole batches, from a counter-based generator.

    Every view i of step s draws from (seed, s, i) alone, so a (seed, step) reproduces a batch
    exactly on any device. `backend`: "auto" (CUDA kernels for CUDA tensors, parallel CPU
    kernels otherwise), "cpu", or "cuda" (forced; under NUMBA_ENABLE_CUDASIM it runs the
    simulator on NumPy arrays, which is how the tests exercise the GPU kernels).
    """

    def __init__(self, window: int, crop_ratio: tuple[float, float] = (0.1, 1.0), representation: str = "joint",
                 probability: float = 0.5, seed: int = 0, backend: str = "auto",
                 layout: SkeletonLayout | str = "ntu25"):
        if representation not in fused.REPRESENTATIONS:
            raise ScdError(f"representation={representation!r}: use joint, motion or bone")
        if window < fused.TEMPORAL_SEGMENTS or window % fused.TEMPORAL_SEGMENTS:
            raise ScdError(f"window={window}: must be a positive multiple of {fused.TEMPORAL_SEGMENTS}")
        lo, hi = crop_ratio
        if not 0.0 < lo <= hi <= 1.0:
            raise ScdError(f"crop_ratio={crop_ratio}: need 0 < low <= high <= 1")
        if not 0.0 <= probability <= 1.0:
            raise ScdError(f"probability={probability}: must be in [0, 1]")
        if backend not in ("auto", "cpu", "cuda"):
            raise ScdError(f"backend={backend!r}: use auto, cpu or cuda")
        self.window, self.crop_ratio, self.probability = window, (float(lo), float(hi)), float(probability)
        self.representation = fused.REPRESENTATIONS[representation]
        self.seed, self.backend = seed, backend
        self.layout = get_layout(layout)
        self.num_joints = self.layout.num_joints
        self._constants_by_device: dict[str, tuple] = {}
        self._compile_only = False  # launches compile the CPU kernels for their arguments and run nothing

    # ---- layout constants, one copy per device --------------------------------------------
    def _constants(self, device: torch.device) -> tuple:
        key = str(device)
        if key not in self._constants_by_device:
            self._constants_by_device[key] = tuple(torch.from_numpy(a).to(device) for a in (
                self.layout.flip_permutation.astype(np.int32), self.layout.bone_parent.astype(np.int32),
                structural_mask_scores(self.layout).astype(np.float64)))
        return self._constants_by_device[key]                                    # perm, parent, scores

    # ---- validation, before any launch ------------------------------------------------------
    def check(self, data, num_frames, index, validate_values: bool = True) -> None:
        """Shapes, dtypes and devices always; values (num_frames in [1, T], index in
        [0, N)) when validate_values, which reads a CUDA tensor back once."""
        shape = tuple(data.shape)
        if len(shape) != 5 or shape[1] != 3 or shape[3] != self.num_joints:
            raise ScdError(f"augment: data has shape {shape}; expected (N, 3, T, {self.num_joints}, M)")
        if str(data.dtype).removeprefix("torch.") != "float32":
            raise ScdError(f"augment: data dtype is {data.dtype}; expected float32")
        contiguous = data.is_contiguous() if isinstance(data, torch.Tensor) else data.flags.c_contiguous
        if not contiguous:
            raise ScdError("augment: data must be C-contiguous")
        for name, arr in (("num_frames", num_frames), ("index", index)):
            if arr.ndim != 1 or "int" not in str(arr.dtype):
                raise ScdError(f"augment: {name} must be a 1-D integer array, got {arr.dtype} of shape {tuple(arr.shape)}")
            if _is_cuda(arr) != _is_cuda(data):
                raise ScdError(f"augment: {name} and data are on different devices")
        if num_frames.shape[0] != shape[0]:
            raise ScdError(f"augment: num_frames has {num_frames.shape[0]} entries for {shape[0]} samples")
        if validate_values and len(index):
            idx = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
            if idx.min() < 0 or idx.max() >= shape[0]:
                raise ScdError(f"augment: index values must be in [0, {shape[0]}), got [{idx.min()}, {idx.max()}]")
            nf = num_frames.cpu().numpy() if isinstance(num_frames, torch.Tensor) else np.asarray(num_frames)
            nf = nf[idx]
            bad = (nf < 1) | (nf > shape[2])
            if bad.any():
                raise ScdError(f"augment: num_frames={int(nf[bad][0])} of sample {int(idx[bad][0])} "
                               f"is outside [1, {shape[2]}]")

    # ---- the two launches -----------------------------------------------------------------
    def plan(self, num_frames, index, step: int, view_ids=None) -> ViewPlan:
        """Draw every view's parameters for batch `step` (one thread per view). View i draws
        from the generator's stream view_ids[i] (default i): a rank of a multi-process run
        passes the ids its views have in the global batch."""
        device = _device_of(index)
        views = index.shape[0]
        out = ViewPlan.empty(views, self.num_joints, device)
        _, _, scores = self._constants(device)
        if view_ids is None:
            view_ids = torch.arange(views, dtype=torch.int64, device=device)
        elif view_ids.shape != (views,):
            raise ScdError(f"augment: view_ids has shape {tuple(view_ids.shape)}, expected ({views},)")
        self._launch(fused.plan_cuda, fused.plan_cpu, views, device,
                     (batch_key(self.seed, step), num_frames, index, view_ids, self.window, *self.crop_ratio,
                      self.probability, scores, self.layout.masked_joints, int(self.layout.planar), *out.arrays()))
        return out

    def render(self, data, index, plan: ViewPlan) -> torch.Tensor:
        """Views (B, 3, window, V, M) float32 for `plan` (one thread per output point)."""
        device = _device_of(data)
        out = torch.empty((index.shape[0], 3, self.window, data.shape[3], data.shape[4]), dtype=torch.float32,
                          device=device)
        perm, parent, _ = self._constants(device)
        source = _read_only(_kernel_array(data)) if self._on_cpu(device) else data
        self._launch(fused.render_cuda, fused.render_cpu, out[:, 0].numel(), device,
                     (source, index, plan.start, plan.length, plan.matrix, plan.flip, plan.joint_mask,
                      plan.segment_mask, perm, parent, self.representation, int(self.layout.planar), out))
        return out

    def __call__(self, data, num_frames, index, step: int, validate: bool = True, view_ids=None) -> torch.Tensor:
        self.check(data, num_frames, index, validate_values=validate)
        return self.render(data, index, self.plan(num_frames, index, step, view_ids))

    def _on_cpu(self, device: torch.device) -> bool:
        return self.backend == "cpu" or (self.backend == "auto" and device.type != "cuda")

    def _launch(self, cuda_kernel, cpu_kernel, threads: int, device: torch.device, args: tuple) -> None:
        args = tuple(_kernel_array(a) for a in args)
        if self._on_cpu(device):
            if self._compile_only:
                cpu_kernel.compile(tuple(cpu_kernel.typeof_pyval(a) for a in args))
            else:
                with cpu_launch_threads():
                    cpu_kernel(*args)
            return
        config = (fused.blocks_for(threads), fused.THREADS_PER_BLOCK)
        if device.type == "cuda":
            from numba import cuda
            config += (cuda.external_stream(torch.cuda.current_stream(device).cuda_stream),)
        cuda_kernel[config](*args)
