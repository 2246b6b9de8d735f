"""Placing one skeleton layout's joints into another's, so that an encoder pretrained on one
layout (NTU's 25 joints: the authors' checkpoints, any NTU pretraining) reads datasets of another.

A joint map lists, for every joint of the target layout, the source joints whose mean stands
in for it: the joints both layouts share map one to one, and a joint the source lacks is
the mean of its neighbours (NTU's neck from Kinect v1's shoulder centre and head) or a copy
of the nearest one (NTU's hand tip and thumb from the hand). Built in: `kinect20` -> `ntu25`
(NW-UCLA, MSR Action3D, UTD-MHAD), `sbu15` -> `ntu25` and `coco17` -> `ntu25` (2D keypoints:
the result is a 2D NTU-25 skeleton, which only an encoder trained on 2D NTU-25 data takes). A
custom map is a JSON file:

    {"from": "kinect20", "to": "ntu25", "joints": [[0], [1], [2, 3], [3], ...]}

with one list of 0-based source joints per target joint ("from" and "to" are built-in layout
names or layouts' fields). An absent body (all zeros) stays absent.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from scdfast.data.layouts import BUILT_IN, SkeletonLayout, get_layout
from scdfast.data.synthetic import SkeletonSet
from scdfast.errors import ScdError
from scdfast.fileio import read_json

_CHUNK = 256  # samples mapped per step, to bound memory on memory-mapped sources


@dataclass(frozen=True)
class JointMap:
    name: str
    source: SkeletonLayout
    target: SkeletonLayout
    joints: tuple[tuple[int, ...], ...]
    """joints[j]: the source joints averaged into target joint j."""

    def __post_init__(self) -> None:
        where = f"joint map {self.name!r}"
        if len(self.joints) != self.target.num_joints:
            raise ScdError(f"{where}: {len(self.joints)} entries for the {self.target.num_joints} joints of "
                           f"{self.target.name}")
        for j, sources in enumerate(self.joints):
            if not sources:
                raise ScdError(f"{where}: target joint {j} has no source joint")
            bad = next((s for s in sources if not 0 <= s < self.source.num_joints), None)
            if bad is not None:
                raise ScdError(f"{where}: target joint {j} takes source joint {bad}, outside [0, "
                               f"{self.source.num_joints}) of {self.source.name}")

    @property
    def mapped_layout(self) -> SkeletonLayout:
        """The target layout with the source's channels: 2D where the source is, 3D where not."""
        if self.source.planar == self.target.planar:
            return self.target
        return replace(self.target, name=f"{self.target.name}-{'2d' if self.source.planar else '3d'}",
                       planar=self.source.planar)

    @property
    def weights(self) -> np.ndarray:
        """(V_source, V_target) float32: column j averages target joint j's sources."""
        w = np.zeros((self.source.num_joints, self.target.num_joints), dtype=np.float32)
        for j, sources in enumerate(self.joints):
            for s in sources:
                w[s, j] += 1.0 / len(sources)
        return w

    def apply(self, samples: SkeletonSet) -> SkeletonSet:
        """The samples with their joints placed into the target layout (in memory)."""
        if samples.layout != self.source:
            raise ScdError(f"--joint-map {self.name}: maps {self.source.name} skeletons, the data's are "
                           f"{samples.layout.name}")
        n, c, t, _, m = samples.data.shape
        out = np.empty((n, c, t, self.target.num_joints, m), dtype=np.float32)
        w = self.weights
        for lo in range(0, n, _CHUNK):
            chunk = np.asarray(samples.data[lo:lo + _CHUNK], dtype=np.float32)
            out[lo:lo + _CHUNK] = np.einsum("nctvm,vw->nctwm", chunk, w)
        return SkeletonSet(data=out, num_frames=samples.num_frames, labels=samples.labels, layout=self.mapped_layout)


def _zero_based(*groups) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(j - 1 for j in g) for g in groups)


# Target joints in NTU-25 order (1-based): spine base, spine mid, neck, head, left shoulder,
# elbow, wrist, hand, right shoulder, elbow, wrist, hand, left hip, knee, ankle, foot, right
# hip, knee, ankle, foot, spine at the shoulders, left hand tip, left thumb, right hand tip,
# right thumb. Sources are 1-based in the source layout's order (layouts.py).
BUILT_IN_MAPS = {
    "kinect20": JointMap("kinect20", BUILT_IN["kinect20"], BUILT_IN["ntu25"], _zero_based(
        (1,), (2,), (3, 4), (4,), (5,), (6,), (7,), (8,), (9,), (10,), (11,), (12,), (13,), (14,), (15,), (16,),
        (17,), (18,), (19,), (20,), (3,), (8,), (8,), (12,), (12,))),
    "sbu15": JointMap("sbu15", BUILT_IN["sbu15"], BUILT_IN["ntu25"], _zero_based(
        (10, 13), (3,), (2,), (1,), (4,), (5,), (6,), (6,), (7,), (8,), (9,), (9,), (10,), (11,), (12,), (12,),
        (13,), (14,), (15,), (15,), (4, 7), (6,), (6,), (9,), (9,))),
    "coco17": JointMap("coco17", BUILT_IN["coco17"], BUILT_IN["ntu25"], _zero_based(
        (12, 13), (6, 7, 12, 13), (6, 7), (1,), (6,), (8,), (10,), (10,), (7,), (9,), (11,), (11,), (12,), (14,),
        (16,), (16,), (13,), (15,), (17,), (17,), (6, 7), (10,), (10,), (11,), (11,))),
}


def get_joint_map(spec: str) -> JointMap:
    """A built-in map named by its source layout (kinect20, sbu15, coco17; each into ntu25),
    or a JSON file of one."""
    if spec in BUILT_IN_MAPS:
        return BUILT_IN_MAPS[spec]
    if not os.path.isfile(spec):
        raise ScdError(f"--joint-map {spec}: not one of {', '.join(BUILT_IN_MAPS)} (each into ntu25) "
                       "and no such file")
    values = read_json(spec, f"--joint-map {spec}")
    if not isinstance(values, dict) or set(values) != {"from", "to", "joints"}:
        raise ScdError(f"--joint-map {spec}: expected an object with exactly 'from', 'to' and 'joints'")
    joints = values["joints"]
    if not isinstance(joints, list) or not all(
            isinstance(g, list) and all(isinstance(j, int) and not isinstance(j, bool) for j in g) for g in joints):
        raise ScdError(f"--joint-map {spec}: 'joints' must be a list of lists of 0-based source joints")
    source = get_layout(values["from"])
    target = get_layout(values["to"])
    return JointMap(spec, source, target, tuple(tuple(g) for g in joints))
