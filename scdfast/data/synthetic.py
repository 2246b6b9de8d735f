"""Procedural NTU-layout skeleton actions: the built-in dataset for a machine with no data.

A body is posed by forward kinematics on the NTU kinematic tree from a few angle
trajectories (arm elevation/azimuth/elbow, hip/knee flexion, spine bend/twist, vertical
offset). Each class is a distinct trajectory shape; every sample draws its own body
proportions, tempo, phase, amplitude, viewing angle, position, length, body count and
sensor noise. Four classes come in time-reversed pairs (slow down / fast up versus fast
down / slow up), whose single frames are distributed alike: only motion tells them apart.
Each sequence is then translated to start at the origin (body 0's spine, frame 0), as every
importer writes its sequences; the drawn position survives only as the second body's place.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scdfast.data.layouts import NTU25, SkeletonLayout, centred, get_layout
from scdfast.errors import ScdError

NUM_CLASSES = 12
GENERATOR_VERSION = 2
"""Bumped whenever the generated arrays change, so that features cached for the old ones are not reused."""
CLASS_NAMES = (
    "wave right hand", "wave left hand", "punch right", "kick right",
    "bow (slow down, quick up)", "bow (quick down, slow up)",
    "squat (slow down, quick up)", "squat (quick down, slow up)",
    "clap", "walk in place", "twist torso", "jump",
)
MAX_FRAMES = 300
NUM_JOINTS = 25
NUM_BODIES = 2

# NTU joint indices (0-based).
SPINE_BASE, SPINE_MID, NECK, HEAD = 0, 1, 2, 3
L_SHOULDER, L_ELBOW, L_WRIST, L_HAND = 4, 5, 6, 7
R_SHOULDER, R_ELBOW, R_WRIST, R_HAND = 8, 9, 10, 11
L_HIP, L_KNEE, L_ANKLE, L_FOOT = 12, 13, 14, 15
R_HIP, R_KNEE, R_ANKLE, R_FOOT = 16, 17, 18, 19
SPINE_SHOULDER, L_TIP, L_THUMB, R_TIP, R_THUMB = 20, 21, 22, 23, 24


@dataclass
class SkeletonSet:
    """Arrays in the real datasets' layout."""

    data: np.ndarray        # (N, 3, T, V, M) float32, zero past num_frames and for absent bodies
    num_frames: np.ndarray  # (N,) int64
    labels: np.ndarray      # (N,) int64, 0-based
    layout: SkeletonLayout = NTU25

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _sawtooth(phase: np.ndarray, rise: float) -> np.ndarray:
    """A 0 -> 1 -> 0 cycle that rises over the fraction `rise` of each period and falls
    over the rest: rise < 0.5 is a quick rise and a slow fall."""
    p = np.mod(phase / (2 * np.pi), 1.0)
    up = 0.5 - 0.5 * np.cos(np.pi * np.clip(p / rise, 0, 1))
    down = 0.5 + 0.5 * np.cos(np.pi * np.clip((p - rise) / (1 - rise), 0, 1))
    return np.where(p < rise, up, down)


def _angles(label: int, phase: np.ndarray, amp: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Joint-angle trajectories (radians) for one sample of class `label`."""
    t = phase
    zero = np.zeros_like(t)
    s = np.sin(t)
    rad = np.radians
    a = dict(
        # per arm: elevation from hanging (0) to overhead (pi), azimuth (0 lateral, pi/2 forward), elbow flexion
        l_elev=zero + rad(12) * amp, l_azim=zero + rad(40), l_elbow=zero + rad(15),
        r_elev=zero + rad(12) * amp, r_azim=zero + rad(40), r_elbow=zero + rad(15),
        # per leg: hip flexion (forward), hip abduction, knee flexion
        l_hip=zero, l_abd=zero + rad(4), l_knee=zero, r_hip=zero, r_abd=zero + rad(4), r_knee=zero,
        bend=zero, lean=zero, twist=zero, lift=zero,
    )
    if label in (0, 1):  # wave: arm up, forearm swinging side to side
        side = "r" if label == 0 else "l"
        a[f"{side}_elev"] = zero + rad(140)
        a[f"{side}_azim"] = zero + rad(20)
        a[f"{side}_elbow"] = rad(35) + rad(30) * amp * s
    elif label == 2:  # punch right: forward extension, left arm guarding
        ext = _sawtooth(t, 0.3)
        a["r_elev"], a["r_azim"] = rad(60) + rad(30) * ext, zero + rad(85)
        a["r_elbow"] = rad(110) * (1 - amp * 0.8 * ext)
        a["l_elev"], a["l_azim"], a["l_elbow"] = zero + rad(55), zero + rad(80), zero + rad(110)
    elif label == 3:  # kick right
        k = _sawtooth(t, 0.4)
        a["r_hip"] = rad(70) * amp * k
        a["r_knee"] = rad(60) * np.sin(np.pi * k) * (k < 0.999)
        a["l_elev"] = a["r_elev"] = zero + rad(30)
    elif label in (4, 5):  # bow, two speed profiles
        k = _sawtooth(t, 0.75 if label == 4 else 0.25)
        a["bend"] = rad(65) * amp * k
        a["l_elev"] = a["r_elev"] = rad(10) + rad(20) * k
    elif label in (6, 7):  # squat, two speed profiles
        k = _sawtooth(t, 0.75 if label == 6 else 0.25)
        a["l_hip"] = a["r_hip"] = rad(75) * amp * k
        a["l_knee"] = a["r_knee"] = rad(120) * amp * k
        a["bend"] = rad(25) * k
        a["l_elev"] = a["r_elev"] = rad(15) + rad(60) * k
        a["l_azim"] = a["r_azim"] = zero + rad(80)
    elif label == 8:  # clap: arms forward, opening and closing
        k = 0.5 + 0.5 * s
        a["l_elev"] = a["r_elev"] = zero + rad(75)
        a["l_azim"] = a["r_azim"] = rad(35) + rad(55) * amp * k
        a["l_elbow"] = a["r_elbow"] = zero + rad(25)
    elif label == 9:  # walk in place: alternating legs, counter-swinging arms
        a["l_hip"], a["r_hip"] = rad(35) * amp * np.maximum(s, 0), rad(35) * amp * np.maximum(-s, 0)
        a["l_knee"], a["r_knee"] = 2 * a["l_hip"], 2 * a["r_hip"]
        a["l_elev"], a["r_elev"] = rad(8) + rad(25) * amp * np.abs(s), rad(8) + rad(25) * amp * np.abs(s)
        a["l_azim"] = np.where(s < 0, rad(90), rad(-90))
        a["r_azim"] = np.where(s > 0, rad(90), rad(-90))
        a["l_elbow"] = a["r_elbow"] = zero + rad(30)
    elif label == 10:  # twist torso with arms out
        a["twist"] = rad(45) * amp * s
        a["l_elev"] = a["r_elev"] = zero + rad(85)
        a["l_azim"] = a["r_azim"] = zero + rad(5)
    elif label == 11:  # jump: crouch, take off, land
        k = _sawtooth(t, 0.5)
        crouch = np.clip(1 - 4 * k, 0, 1) + np.clip(4 * k - 3, 0, 1)
        a["lift"] = 0.25 * amp * np.sin(np.pi * np.clip((k - 0.25) * 2, 0, 1))
        a["l_hip"] = a["r_hip"] = rad(40) * crouch
        a["l_knee"] = a["r_knee"] = rad(80) * crouch
        a["l_elev"] = a["r_elev"] = rad(20) + rad(130) * np.clip((k - 0.2) * 2, 0, 1) * (k < 0.8)
        a["l_azim"] = a["r_azim"] = zero + rad(70)
    a["lean"] = a["lean"] + rad(3) * rng.standard_normal()
    return a


def _rot_y(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    o, z = np.ones_like(c), np.zeros_like(c)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rot_x(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    o, z = np.ones_like(c), np.zeros_like(c)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _rot_z(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    o, z = np.ones_like(c), np.zeros_like(c)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _pose(a: dict[str, np.ndarray], size: np.ndarray) -> np.ndarray:
    """Forward kinematics: (F, 25, 3) joint positions in the body frame (x left, y up, z forward)
    of F frames, from (F,) angle trajectories and (F, 11) body proportions. Every operation is
    per frame, so the frames of many bodies are posed in one call."""
    t = a["bend"].shape[0]
    (torso, neck, head, shoulder_w, upper_arm, forearm, hand, hip_w, thigh, shank, foot) = np.split(size, 11, axis=1)
    zero = np.zeros_like(torso)
    pos = np.zeros((t, NUM_JOINTS, 3))
    # upper body rotates about the pelvis: twist (y), bend forward (x), lean sideways (z)
    upper = _rot_y(a["twist"]) @ _rot_x(-a["bend"]) @ _rot_z(a["lean"])                   # F, 3, 3
    up = upper[..., 1]
    pos[:, SPINE_MID] = 0.5 * torso * up
    pos[:, SPINE_SHOULDER] = torso * up
    pos[:, NECK] = pos[:, SPINE_SHOULDER] + neck * up
    pos[:, HEAD] = pos[:, NECK] + head * up
    for side, sign, joints in (("l", 1.0, (L_SHOULDER, L_ELBOW, L_WRIST, L_HAND, L_TIP, L_THUMB)),
                               ("r", -1.0, (R_SHOULDER, R_ELBOW, R_WRIST, R_HAND, R_TIP, R_THUMB))):
        sh, el, wr, hd, tip, th = joints
        offset = np.concatenate([sign * shoulder_w, zero - 0.03, zero], 1)
        pos[:, sh] = pos[:, SPINE_SHOULDER] + (upper @ offset[:, :, None])[..., 0]
        elev, azim = a[f"{side}_elev"], a[f"{side}_azim"]
        local = np.stack([sign * np.sin(elev) * np.cos(azim), -np.cos(elev), np.sin(elev) * np.sin(azim)], -1)
        arm_dir = np.einsum("tij,tj->ti", upper, local)
        # the elbow bends the forearm towards the body's forward-up direction
        bend_to = _unit(np.cross(np.cross(arm_dir, upper[..., 2] + 0.3 * up), arm_dir) + 1e-6)
        fl = a[f"{side}_elbow"][:, None]
        fore_dir = np.cos(fl) * arm_dir + np.sin(fl) * bend_to
        pos[:, el] = pos[:, sh] + upper_arm * arm_dir
        pos[:, wr] = pos[:, el] + forearm * fore_dir
        pos[:, hd] = pos[:, wr] + hand * fore_dir
        pos[:, tip] = pos[:, hd] + 0.8 * hand * fore_dir
        pos[:, th] = pos[:, hd] + 0.6 * hand * _unit(fore_dir + 0.8 * bend_to)
    for side, sign, joints in (("l", 1.0, (L_HIP, L_KNEE, L_ANKLE, L_FOOT)),
                               ("r", -1.0, (R_HIP, R_KNEE, R_ANKLE, R_FOOT))):
        hp, kn, an, ft = joints
        pos[:, hp] = np.concatenate([sign * hip_w, zero - 0.06, zero], 1)
        flex, abd, knee = a[f"{side}_hip"], a[f"{side}_abd"], a[f"{side}_knee"]
        thigh_dir = _unit(np.stack([sign * np.sin(abd), -np.cos(flex), np.sin(flex)], -1))
        shank_dir = _unit(np.stack([sign * np.sin(abd), -np.cos(flex - knee), np.sin(flex - knee)], -1))
        pos[:, kn] = pos[:, hp] + thigh * thigh_dir
        pos[:, an] = pos[:, kn] + shank * shank_dir
        pos[:, ft] = pos[:, an] + foot * _unit(np.stack([0 * flex, -0.3 + 0 * flex, 1 + 0 * flex], -1))
    # stand on the ground: the lowest ankle at y = 0, then add the jump lift
    ground = np.minimum(pos[:, L_ANKLE, 1], pos[:, R_ANKLE, 1])
    pos[:, :, 1] -= ground[:, None]
    pos[:, :, 1] += a["lift"][:, None]
    return pos


_CHUNK = 64
_REST_SIZE = np.array([0.45, 0.1, 0.15, 0.18, 0.28, 0.25, 0.08, 0.1, 0.42, 0.40, 0.12])


def _draw_body(label: int, num_frames: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One body performing `label` (or idling when label < 0): its (T,) angle trajectories and
    (11,) proportions."""
    size = _REST_SIZE * rng.uniform(0.85, 1.15) * rng.uniform(0.93, 1.07, size=_REST_SIZE.shape)
    cycles = rng.uniform(1.0, 3.0) * max(num_frames, 40) / 120.0
    phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * cycles * np.arange(num_frames) / num_frames
    amp = rng.uniform(0.7, 1.2)
    if label < 0:  # a bystander: rest pose with a slow sway, no class information
        a = _angles(9, phase, 0.0, rng)
        a["twist"] = np.radians(10) * np.sin(0.3 * phase)
    else:
        a = _angles(label, phase, amp, rng)
    return a, size


@dataclass
class _Placement:
    """Body frame -> camera frame (x right, y up, z away): facing the camera, turned by a
    random viewpoint angle, at a random position, with sensor noise."""

    rotation: np.ndarray   # (3, 3)
    shift: np.ndarray      # (3,)
    noise: np.ndarray      # (T, 25, 3)

    @classmethod
    def draw(cls, num_frames: int, rng: np.random.Generator, offset_x: float) -> _Placement:
        rotation = _rot_y(np.array(np.pi + rng.uniform(-np.pi / 4, np.pi / 4)))
        shift = np.array([offset_x + rng.uniform(-0.4, 0.4), rng.uniform(-0.9, -0.6), rng.uniform(2.5, 3.8)])
        return cls(rotation, shift, rng.normal(0.0, 0.01, size=(num_frames, NUM_JOINTS, 3)))

    def apply(self, body: np.ndarray) -> np.ndarray:
        return body @ self.rotation.T + self.shift + self.noise


# The bodies are posed on NTU's 25 joints; the other built-in layouts take the NTU joints at
# their places: Kinect v1's shoulder centre is NTU's spine-at-shoulders (20), SBU's torso is
# NTU's spine middle (1) and its hands NTU's hands (7, 11).
LAYOUT_JOINTS = {
    "ntu25": tuple(range(NUM_JOINTS)),
    "kinect20": (0, 1, 20, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19),
    "sbu15": (3, 2, 1, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16, 17, 19),
}


def synthetic_layout(source: str) -> SkeletonLayout:
    """The layout `--data synthetic` (ntu25) or `--data synthetic:NAME` asks for."""
    name = source.partition(":")[2] or "ntu25"
    if name not in LAYOUT_JOINTS:
        raise ScdError(f"--data {source}: synthetic data come in {', '.join(LAYOUT_JOINTS)}")
    return get_layout(name)


def is_synthetic(source: str) -> bool:
    return source == "synthetic" or source.startswith("synthetic:")


def generate(num_samples: int, seed: int = 0, num_classes: int = NUM_CLASSES,
             min_frames: int = 40, max_frames: int = MAX_FRAMES, two_body_fraction: float = 0.3,
             layout: SkeletonLayout = NTU25) -> SkeletonSet:
    """`num_samples` sequences with balanced labels, deterministic in `seed`, on a built-in
    layout's joints (the same bodies whatever the layout)."""
    if not 1 <= num_classes <= NUM_CLASSES:
        raise ValueError(f"num_classes={num_classes}: the generator defines {NUM_CLASSES}")
    if layout.name not in LAYOUT_JOINTS or get_layout(layout.name) != layout:
        raise ScdError(f"layout {layout.name!r}: synthetic data come in {', '.join(LAYOUT_JOINTS)}")
    rng = np.random.default_rng(seed)
    labels = np.arange(num_samples) % num_classes
    rng.shuffle(labels)
    data = np.zeros((num_samples, 3, MAX_FRAMES, NUM_JOINTS, NUM_BODIES), dtype=np.float32)
    num_frames = rng.integers(min_frames, max_frames + 1, size=num_samples)
    # Draw every random number in sample order, a chunk of samples at a time; then pose the
    # chunk's bodies in one call (the per-frame kinematics of many small arrays were 40% of the time).
    for first in range(0, num_samples, _CHUNK):
        bodies = []  # (sample, body slot, angles, proportions, placement)
        for i in range(first, min(first + _CHUNK, num_samples)):
            t = int(num_frames[i])
            two = rng.random() < two_body_fraction
            actor_x = rng.uniform(-0.5, -0.2) if two else 0.0
            bodies.append((i, 0, *_draw_body(int(labels[i]), t, rng), _Placement.draw(t, rng, actor_x)))
            if two:
                bodies.append((i, 1, *_draw_body(-1, t, rng), _Placement.draw(t, rng, -actor_x + 0.5)))
        samples, slots, angles, sizes, placements = zip(*bodies)
        frames = [len(placement.noise) for placement in placements]
        poses = _pose({key: np.concatenate([a[key] for a in angles]) for key in angles[0]},
                      np.concatenate([np.broadcast_to(size, (f, len(size))) for size, f in zip(sizes, frames)]))
        sequences = {i: np.zeros((int(num_frames[i]), NUM_BODIES, NUM_JOINTS, 3), np.float32)
                     for i in range(first, min(first + _CHUNK, num_samples))}
        for i, slot, placement, pose in zip(samples, slots, placements, np.split(poses, np.cumsum(frames)[:-1])):
            sequences[i][:, slot] = placement.apply(pose)
        for i, sequence in sequences.items():
            # Start at the origin, as every importer writes its sequences: the augmentations rotate
            # and shear about the origin, so a body left 3 m away would be swung across the room.
            data[i, :, :len(sequence)] = centred(sequence, NTU25).transpose(3, 0, 2, 1)
    if layout.name != "ntu25":
        data = np.ascontiguousarray(data[:, :, :, list(LAYOUT_JOINTS[layout.name])])
    return SkeletonSet(data=data, num_frames=num_frames.astype(np.int64), labels=labels.astype(np.int64),
                       layout=layout)


def synthetic_train(train_per_class: int = 80, seed: int = 0, num_classes: int = NUM_CLASSES,
                    layout: SkeletonLayout = NTU25) -> SkeletonSet:
    """The training set of `synthetic_splits`, without drawing its test set."""
    return generate(train_per_class * num_classes, seed=2 * seed, num_classes=num_classes, layout=layout)


def synthetic_splits(train_per_class: int = 80, test_per_class: int = 40, seed: int = 0,
                     num_classes: int = NUM_CLASSES, layout: SkeletonLayout = NTU25) -> tuple[SkeletonSet, SkeletonSet]:
    """Train and test sets drawn with different seeds (no sample shared)."""
    train = synthetic_train(train_per_class, seed, num_classes, layout)
    test = generate(test_per_class * num_classes, seed=2 * seed + 1, num_classes=num_classes, layout=layout)
    return train, test
