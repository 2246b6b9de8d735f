"""`scdfast prepare ntu` on the real NTU RGB+D files in ../shared/data: parsing equals the
parsed release, body selection and normalisation equal a straightforward per-joint version
written here, files land in the split their name says, malformed copies are named."""
import os
import pickle

import numpy as np
import pytest
from conftest import SHARED_DATA, SMALL_QUEUE

from scdfast.cli import main
from scdfast.data import load_dataset
from scdfast.data.prepare_ntu import missing_skeletons, normalise, prepare_ntu, read_skeleton, select_bodies
from scdfast.errors import ScdError

RAW = SHARED_DATA / "ntu_rgbd_samples" / "skeleton"
pytestmark = pytest.mark.skipif(not RAW.is_dir(), reason=f"the NTU sample files are not at {RAW}")


def _read_slowly(path, values: int = 3):
    """Line by line, as the format description reads: (4, T, 25, values), the first `values`
    of each joint line (3: x y z; 12: every value, tracking state last)."""
    lines = iter(path.read_text().splitlines())
    frames = int(next(lines))
    data = np.zeros((4, frames, 25, values))
    for t in range(frames):
        for m in range(int(next(lines))):
            next(lines)
            for j in range(int(next(lines))):
                line = [float(v) for v in next(lines).split()]
                if m < 4:
                    data[m, t, j] = line[:values]
    return data


def _rotate_onto(v, target):
    """Rodrigues' rotation about v x target by the angle between them, element by element."""
    axis = np.cross(v, target)
    if np.abs(axis).sum() < 1e-6:
        return np.eye(3)
    axis = axis / np.linalg.norm(axis)
    angle = np.arccos(np.clip(v @ target / np.linalg.norm(v), -1, 1))
    x, y, z = axis
    c, s, C = np.cos(angle), np.sin(angle), 1 - np.cos(angle)
    return np.array([[c + x * x * C, x * y * C - z * s, x * z * C + y * s],
                     [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
                     [z * x * C - y * s, z * y * C + x * s, c + z * z * C]])


def _straightforward(path):
    data = _read_slowly(path)
    return normalise_slowly(select_slowly(data)), min(data.shape[1], 300)


def select_slowly(data):
    """The two bodies of largest motion energy, most energetic first."""
    energy = []
    for body in data:
        frames = [f for f in body if f.sum() != 0]
        energy.append(sum(np.std(np.array(frames)[:, :, c]) for c in range(3)) if frames else 0.0)
    return data[np.argsort(energy)[::-1][:2]]


def normalise_slowly(data):
    """(2, T, 25, 3) -> (3, 300, 25, 2): AGCN's padding, centring and alignment, joint by joint."""
    s = np.zeros((2, 300, 25, 3))
    s[:, : data.shape[1]] = data[:, :300]
    for p in range(2):                                   # pad, frame by frame
        if s[p].sum() == 0:
            continue
        if s[p, 0].sum() == 0:
            kept = [f.copy() for f in s[p] if f.sum() != 0]
            s[p] = 0
            s[p, : len(kept)] = kept
        for t in range(300):
            if s[p, t].sum() == 0 and s[p, t:].sum() == 0:
                for u in range(t, 300):
                    s[p, u] = s[p, (u - t) % t]
                break
    for t in range(300):                                 # centre, joint by joint
        centre = s[0, t, 1].copy()
        for p in range(2):
            if s[p].sum() == 0:
                continue
            for j in range(25):
                if s[p, t, j].sum() != 0:
                    s[p, t, j] = s[p, t, j] - centre
    for a, b, target in ((0, 1, np.array([0, 0, 1.0])), (4, 8, np.array([1.0, 0, 0]))):
        rotation = _rotate_onto(s[0, 0, b] - s[0, 0, a], target)
        for p in range(2):
            for t in range(300):
                if s[p, t].sum() != 0:
                    for j in range(25):
                        s[p, t, j] = rotation @ s[p, t, j]
    return s.transpose(3, 1, 2, 0).astype(np.float32)


def test_parsing_equals_the_parsed_release():
    parsed = np.load(SHARED_DATA / "ntu_rgbd_samples" / "npy" / "S001C001P001R001A001.skeleton.npy",
                     allow_pickle=True).item()
    xyz = read_skeleton(str(RAW / "S001C001P001R001A001.skeleton"))
    np.testing.assert_array_equal(xyz[0], parsed["skel_body0"])
    assert not xyz[1:].any()


@pytest.mark.parametrize("case", ["late start", "gaps", "untracked joints", "one body", "long", "empty"])
def test_padding_and_alignment_equal_the_straightforward_version_on_edge_cases(case):
    """Cases the recorded files may not hold: a body that appears after frame 0, empty frames
    inside a sequence, untracked (zero) joints, an absent second body, more than 300 frames."""
    rng = np.random.default_rng(len(case))
    frames = 340 if case == "long" else 57
    data = rng.normal(size=(4, frames, 25, 3))
    data[2:] = 0
    if case == "late start":
        data[0, :5] = 0
        data[1, :11] = 0
        data[1, 40:] = 0
    if case == "gaps":
        data[0, [3, 17, 18, 30]] = 0
        data[1, 50:] = 0
    if case == "untracked joints":
        data[0, 0, [0, 4]] = 0  # also in the frame the alignment reads
        data[0, 2:9, 1] = 0
        data[1, :, 7] = 0
    if case == "one body":
        data[1] = 0
    if case == "empty":
        data[:] = 0
    want = normalise_slowly(select_slowly(data))
    np.testing.assert_allclose(normalise(select_bodies(data)), want, atol=1e-5)


@pytest.mark.parametrize("protocol", ["xsub", "xview"])
def test_arrays_and_splits_equal_the_straightforward_version(tmp_path, protocol):
    out = tmp_path / "ntu"
    assert main(["prepare", "ntu", "--raw", str(RAW), "--out", str(out), "--benchmark", protocol, "--jobs", "2",
                 "--no-progress"]) == 0
    train, val = load_dataset(str(out))
    assert train.data.shape[1:] == (3, 300, 25, 2) and len(train) + len(val) == len(os.listdir(RAW))
    for split, data in (("train", train), ("val", val)):
        with open(out / f"{split}_label.pkl", "rb") as f:
            names, labels = pickle.load(f)
        for i, name in enumerate(names):
            performer, camera = int(name[9:12]), int(name[5:8])
            training = performer != 3 if protocol == "xsub" else camera in (2, 3)
            assert training == (split == "train")
            assert labels[i] == int(name[-3:]) - 1
            want, frames = _straightforward(RAW / f"{name}.skeleton")
            assert data.num_frames[i] == frames
            np.testing.assert_allclose(np.asarray(data.data[i]), want, atol=1e-5)
    with open(out / "train_label.pkl", "rb") as f:
        two_people = [i for i, n in enumerate(pickle.load(f)[0]) if n.endswith("A058")]
    if two_people:
        assert np.abs(np.asarray(train.data[two_people[0]])[..., 1]).sum() > 0  # the second person is kept


def test_missing_skeleton_lists_are_shipped_and_applied(tmp_path):
    assert (len(missing_skeletons("ntu60")), len(missing_skeletons("ntu120"))) == (302, 535)
    raw = tmp_path / "raw"
    raw.mkdir()
    listed = min(missing_skeletons("ntu60"))
    (raw / f"{listed}.skeleton").symlink_to(RAW / "S001C001P001R001A001.skeleton")
    for name in ("S001C001P001R001A002", "S002C001P003R001A003"):
        (raw / f"{name}.skeleton").symlink_to(RAW / f"{name}.skeleton")
    counts = prepare_ntu(str(raw), str(tmp_path / "out"), progress=False, jobs=1)
    assert counts["train"] + counts["val"] == 2  # the listed name is left out


@pytest.mark.parametrize("damage, message", [
    (lambda lines: lines[: len(lines) // 2], "the file ends where"),
    (lambda lines: lines[:10] + [lines[10].replace(lines[10].split()[1], "1.2.3")] + lines[11:], "line 11: non-numeric"),
    (lambda lines: lines[:3] + ["24"] + lines[4:], "line 4: 24 joints, expected 25"),
    (lambda lines: lines + lines[1:29], "content after the"),
    (lambda lines: ["0"], "zero frames"),
])
def test_malformed_copies_are_named(tmp_path, damage, message):
    raw = tmp_path / "raw"
    raw.mkdir()
    name = "S001C001P001R001A002.skeleton"
    for other in ("S002C001P003R001A003", "S001C001P001R001A001"):
        (raw / f"{other}.skeleton").symlink_to(RAW / f"{other}.skeleton")
    (raw / name).write_text("\n".join(damage((RAW / name).read_text().splitlines())) + "\n")
    with pytest.raises(ScdError, match=message) as error:
        prepare_ntu(str(raw), str(tmp_path / "out"), progress=False, jobs=1)
    assert name in str(error.value) and not (tmp_path / "out").exists()
    counts = prepare_ntu(str(raw), str(tmp_path / "out"), skip_bad=True, progress=False, jobs=1)
    assert counts["skipped"] == 1 and name in (tmp_path / "out" / "skipped.txt").read_text()
    train, val = load_dataset(str(tmp_path / "out"))
    assert (len(train), len(val)) == (1, 1)


def test_prepared_ntu_pretrains_and_evaluates_end_to_end(tmp_path, capsys):
    out, run = tmp_path / "ntu", tmp_path / "run"
    assert main(["prepare", "ntu", "--raw", str(RAW), "--out", str(out), "--jobs", "2", "--no-progress"]) == 0
    assert main(["pretrain", "--preset", "tiny", "--data", str(out), "--epochs", "1", "--batch-size", "4",
                 "--device", "cpu", "--run-dir", str(run), "--no-progress", *SMALL_QUEUE]) == 0
    assert main(["linear", "--preset", "tiny", "--data", str(out), "--checkpoint", str(run), "--epochs", "2",
                 "--num-classes", "60",  # eight files: the splits hold a few of NTU-60's actions
                 "--device", "cpu", "--run-dir", str(tmp_path / "linear"), "--no-progress"]) == 0
    assert "linear evaluation (standardized), pretrained, joint: top-1" in capsys.readouterr().out
