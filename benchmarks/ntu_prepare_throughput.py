"""NTU preparation throughput: scdfast's compiled conversion against a per-joint Python one.

    python benchmarks/ntu_prepare_throughput.py [--raw ../shared/data/ntu_rgbd_samples/skeleton]

The per-joint version does what the public AGCN preprocessing does, the way it does it: a dict
per joint while parsing, then Python loops over bodies, frames and joints for the padding, the
centring and both rotations. Both convert the same files, each warmed up on one file first,
then timed in --rounds alternating rounds of --repeat passes; the medians of files/s and MB/s of
raw text are reported, with the median of the rounds' ratios. A last line
times the whole `scdfast prepare ntu` (worker processes on every core, the output array written)
on --copies renamed links to the same files.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

import numpy as np

from scdfast.data.prepare_ntu import convert, missing_skeletons, prepare_ntu

KEYS = ("x", "y", "z", "depthX", "depthY", "colorX", "colorY", "oriW", "oriX", "oriY", "oriZ", "state")


def per_joint(path: str) -> np.ndarray:
    with open(path) as f:
        frames = []
        for _ in range(int(f.readline())):
            bodies = []
            for _ in range(int(f.readline())):
                f.readline()
                bodies.append([dict(zip(KEYS, map(float, f.readline().split())))
                               for _ in range(int(f.readline()))])
            frames.append(bodies)
    data = np.zeros((4, len(frames), 25, 3))
    for t, bodies in enumerate(frames):
        for m, joints in enumerate(bodies[:4]):
            for j, joint in enumerate(joints):
                data[m, t, j] = [joint["x"], joint["y"], joint["z"]]
    energy = []
    for body in data:
        live = body[body.sum(-1).sum(-1) != 0]
        energy.append(sum(live[:, :, c].std() for c in range(3)) if len(live) else 0)
    s = np.zeros((2, 300, 25, 3))
    chosen = data[np.argsort(energy)[::-1][:2]]
    s[:, : chosen.shape[1]] = chosen[:, :300]
    for person in s:
        if person.sum() == 0:
            continue
        if person[0].sum() == 0:
            live = person[person.sum(-1).sum(-1) != 0].copy()
            person *= 0
            person[: len(live)] = live
        for i, frame in enumerate(person):
            if frame.sum() == 0 and person[i:].sum() == 0:
                rest = len(person) - i
                person[i:] = np.concatenate([person[:i]] * int(np.ceil(rest / i)))[:rest]
                break
    centre = s[0][:, 1:2].copy()
    for p in range(2):
        if s[p].sum() != 0:
            s[p] = (s[p] - centre) * (s[p].sum(-1) != 0)[..., None]
    for a, b, target in ((0, 1, [0, 0, 1]), (4, 8, [1, 0, 0])):
        v = s[0, 0, b] - s[0, 0, a]
        axis = np.cross(v, target)
        if np.abs(axis).sum() < 1e-6:
            continue
        axis /= np.linalg.norm(axis)
        angle = np.arccos(np.clip(np.dot(v / np.linalg.norm(v), target), -1, 1))
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
        for p in range(2):
            for t in range(300):
                if s[p, t].sum() != 0:
                    for j in range(25):
                        s[p, t, j] = rotation @ s[p, t, j]
    return s


def _rate(fn, paths, repeat):
    start = time.perf_counter()
    for _ in range(repeat):
        for path in paths:
            fn(path)
    return len(paths) * repeat / (time.perf_counter() - start)


def _median_rates(paths: list[str], repeat: int, rounds: int) -> tuple[float, float, float]:
    """Median files/s of the per-joint script and of scdfast, and the median of each round's
    ratio. The two alternate round by round, so a slow spell of the machine (a shared CPU's
    timings vary by a quarter from run to run) falls on both sides instead of on one."""
    per_joint(paths[0])
    convert(paths[0])  # warm-up: the compiled parser loads (or compiles) on its first call
    slow, fast = [], []
    for _ in range(rounds):
        slow.append(_rate(per_joint, paths, max(1, repeat // 5)))
        fast.append(_rate(convert, paths, repeat))
    return (float(np.median(slow)), float(np.median(fast)),
            float(np.median(np.array(fast) / np.array(slow))))


def _command_rate(paths: list[str], copies: int) -> float:
    """files/s of the whole `scdfast prepare ntu` (worker processes on every core, output written
    to a memory-mapped array) on `copies` renamed links to the sample files, half of them of
    training subjects: start-up and writing included."""
    missing = missing_skeletons("ntu60")
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw")
        os.makedirs(raw)
        made = 0
        for i in itertools.count():
            setup, camera, replication = 1 + i % 17, 1 + (i // 17) % 3, 1 + i // 51
            name = f"S{setup:03d}C{camera:03d}P{1 if i % 2 else 3:03d}R{replication:03d}A{1 + i % 60:03d}"
            if name not in missing:
                os.symlink(os.path.abspath(paths[i % len(paths)]), os.path.join(raw, name + ".skeleton"))
                made += 1
            if made == copies:
                break
        start = time.perf_counter()
        prepare_ntu(raw, os.path.join(tmp, "out"), progress=False)
        return copies / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--raw", default=os.path.join(here, "..", "..", "shared", "data", "ntu_rgbd_samples", "skeleton"))
    parser.add_argument("--repeat", type=int, default=5, help="passes over the files per round (the per-joint "
                        "script makes a fifth as many)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds; medians are reported")
    parser.add_argument("--copies", type=int, default=2000,
                        help="files the whole-command measurement converts (links to the samples)")
    args = parser.parse_args(argv)
    paths = sorted(os.path.join(args.raw, f) for f in os.listdir(args.raw) if f.endswith(".skeleton"))
    if not paths:
        print(f"no .skeleton files in {args.raw}")
        return 2
    megabytes = sum(os.path.getsize(p) for p in paths) / len(paths) / 1e6
    slow, fast, ratio = _median_rates(paths, args.repeat, args.rounds)
    print(f"{len(paths)} files, {megabytes:.2f} MB each on average; one process; medians of {args.rounds} rounds")
    print(f"per-joint Python: {slow:8.2f} files/s  {slow * megabytes:7.2f} MB/s")
    print(f"scdfast:          {fast:8.2f} files/s  {fast * megabytes:7.2f} MB/s  ({ratio:.1f}x)")
    command = _command_rate(paths, args.copies)
    print(f"scdfast prepare ntu, {os.cpu_count()} worker processes, {args.copies} files written: "
          f"{command:8.2f} files/s  {command * megabytes:7.2f} MB/s  ({command / slow:.1f}x the per-joint script)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
