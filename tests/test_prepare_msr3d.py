"""`scdfast prepare msr3d` on the real MSR Action3D files: arrays equal a straightforward
per-joint reorder into kinect20, subjects land in their split, malformed copies are named."""
import os
import pickle

import numpy as np
import pytest
from conftest import SHARED_DATA

from scdfast.cli import main
from scdfast.data import load_dataset
from scdfast.data.prepare_msr3d import prepare_msr3d
from scdfast.errors import ScdError

RAW = SHARED_DATA / "msr_action3d" / "skeleton3d"
pytestmark = pytest.mark.skipif(not RAW.is_dir(), reason=f"the MSR Action3D files are not at {RAW}")

# Joint names, in MSR Action3D's order (SOURCE.md) and in Kinect v1's (kinect20).
MSR = ["L_shoulder", "R_shoulder", "shoulder_center", "spine", "L_hip", "R_hip", "hip_center", "L_elbow",
       "R_elbow", "L_wrist", "R_wrist", "L_hand", "R_hand", "L_knee", "R_knee", "L_ankle", "R_ankle", "L_foot",
       "R_foot", "head"]
KINECT = ["hip_center", "spine", "shoulder_center", "head", "L_shoulder", "L_elbow", "L_wrist", "L_hand",
          "R_shoulder", "R_elbow", "R_wrist", "R_hand", "L_hip", "L_knee", "L_ankle", "L_foot", "R_hip", "R_knee",
          "R_ankle", "R_foot"]


def _subset(tmp_path, names):
    folder = tmp_path / "raw"
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(RAW / name)
    return folder


def _straightforward(name, frames):
    table = np.loadtxt(RAW / name).reshape(-1, 20, 4)
    out = np.zeros((3, frames, 20, 1), np.float32)
    spine = table[0, MSR.index("spine"), :3].astype(np.float32)
    for t in range(table.shape[0]):
        if not table[t, :, :3].any():
            continue  # a frame the sensor lost stays zero, as NTU's normalisation keeps zeros
        for k, joint in enumerate(KINECT):
            for c in range(3):
                out[c, t, k, 0] = np.float32(table[t, MSR.index(joint), c]) - spine[c]
    return out, table.shape[0]


def test_arrays_and_splits_equal_the_straightforward_version(tmp_path):
    names = sorted(os.listdir(RAW))[::40]
    out = tmp_path / "msr"
    assert main(["prepare", "msr3d", "--raw", str(_subset(tmp_path, names)), "--out", str(out), "--no-progress"]) == 0
    train, val = load_dataset(str(out))
    assert train.layout.name == "kinect20"
    for split, data in (("train", train), ("val", val)):
        with open(out / f"{split}_label.pkl", "rb") as f:
            sample_names, labels = pickle.load(f)
        for i, stem in enumerate(sample_names):
            want, length = _straightforward(stem + ".txt", data.data.shape[2])
            assert (int(stem[5:7]) % 2 == 1) == (split == "train")  # odd subjects train
            assert labels[i] == int(stem[1:3]) - 1 and data.num_frames[i] == length
            np.testing.assert_allclose(np.asarray(data.data[i]), want, atol=1e-6)
    assert len(train) + len(val) == len(names)


def test_the_all_zero_release_file_is_named_and_skippable(tmp_path):
    names = ["a13_s09_e02_skeleton3D.txt", "a01_s01_e01_skeleton3D.txt", "a01_s02_e01_skeleton3D.txt"]
    raw = _subset(tmp_path, names)
    with pytest.raises(ScdError, match="a13_s09_e02_skeleton3D.txt: every coordinate is zero"):
        prepare_msr3d(str(raw), str(tmp_path / "out"), progress=False)
    counts = prepare_msr3d(str(raw), str(tmp_path / "out"), skip_bad=True, progress=False)
    assert counts == {"train": 1, "val": 1, "skipped": 1, "frames": counts["frames"]}
    assert "a13_s09_e02" in (tmp_path / "out" / "skipped.txt").read_text()


@pytest.mark.parametrize("damage, message", [
    (lambda lines: lines[:-7], "not a whole number of 20-joint frames"),
    (lambda lines: lines[:5] + ["0.1 0.2 abc 1.0"] + lines[6:], "line 6: non-numeric"),
    (lambda lines: lines[:8] + ["0.1 0.2 1.0"] + lines[9:], "line 9: expected 4 values"),
])
def test_malformed_copies_are_named(tmp_path, damage, message):
    name = "a02_s03_e01_skeleton3D.txt"
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a01_s02_e01_skeleton3D.txt").symlink_to(RAW / "a01_s02_e01_skeleton3D.txt")
    lines = (RAW / name).read_text().splitlines()
    (raw / name).write_text("\n".join(damage(lines)) + "\n")
    with pytest.raises(ScdError, match=message) as error:
        prepare_msr3d(str(raw), str(tmp_path / "out"), progress=False)
    assert name in str(error.value) and not (tmp_path / "out").exists()


def test_files_list_selects_the_cvpr12_subset(tmp_path):
    listing = SHARED_DATA / "msr_action3d" / "protocol" / "files_used_in_cvpr12_paper.txt"
    counts = prepare_msr3d(str(RAW), str(tmp_path / "out"), files=str(listing), progress=False)
    assert counts["train"] + counts["val"] == 557 and counts["skipped"] == 0
