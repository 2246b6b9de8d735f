"""`scdfast prepare utd-mhad` on the real UTD-MHAD files: arrays equal a straightforward per-joint
reorder into kinect20, subjects land in their split, damaged files are named."""
import pickle

import numpy as np
import pytest
from conftest import SHARED_DATA
from scipy.io import loadmat, savemat

from scdfast.cli import main
from scdfast.data import load_dataset
from scdfast.data.prepare_utd import prepare_utd
from scdfast.errors import ScdError

RAW = SHARED_DATA / "utd_mhad" / "Skeleton"
pytestmark = pytest.mark.skipif(not RAW.is_dir(), reason=f"the UTD-MHAD files are not at {RAW}")
UTD = ["head", "shoulder_center", "spine", "hip_center", "L_shoulder", "L_elbow", "L_wrist", "L_hand", "R_shoulder",
       "R_elbow", "R_wrist", "R_hand", "L_hip", "L_knee", "L_ankle", "L_foot", "R_hip", "R_knee", "R_ankle", "R_foot"]
KINECT = ["hip_center", "spine", "shoulder_center", "head", *UTD[4:]]


def _straightforward(name, frames):
    skel = loadmat(RAW / f"{name}.mat")["d_skel"]
    out = np.zeros((3, frames, 20, 1), np.float32)
    spine = skel[UTD.index("spine"), :, 0].astype(np.float32)
    for t in range(skel.shape[2]):
        for k, joint in enumerate(KINECT):
            out[:, t, k, 0] = skel[UTD.index(joint), :, t].astype(np.float32) - spine
    return out, skel.shape[2]


def test_arrays_and_splits_equal_the_straightforward_version(tmp_path):
    out = tmp_path / "utd"
    assert main(["prepare", "utd-mhad", "--raw", str(RAW), "--out", str(out), "--no-progress"]) == 0
    train, val = load_dataset(str(out))
    assert (len(train), len(val)) == (431, 430) and train.layout.name == "kinect20"
    for split, data in (("train", train), ("val", val)):
        with open(out / f"{split}_label.pkl", "rb") as f:
            names, labels = pickle.load(f)
        for i in range(0, len(names), 37):
            action, subject = int(names[i].split("_")[0][1:]), int(names[i].split("_")[1][1:])
            assert (subject % 2 == 1) == (split == "train") and labels[i] == action - 1
            want, frames = _straightforward(names[i], data.data.shape[2])
            assert data.num_frames[i] == frames
            np.testing.assert_allclose(np.asarray(data.data[i]), want, atol=1e-6)


def _two_good_files(raw):
    for name in ("a1_s1_t1_skeleton.mat", "a1_s2_t1_skeleton.mat"):
        (raw / name).symlink_to(RAW / name)


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes((RAW / "a2_s3_t1_skeleton.mat").read_bytes()[:300]), "not a readable MATLAB file"),
    (lambda path: savemat(path, {"other": np.zeros(3)}), "no d_skel variable"),
    (lambda path: savemat(path, {"d_skel": np.zeros((15, 3, 40))}), r"shape \(15, 3, 40\)"),
    (lambda path: savemat(path, {"d_skel": np.full((20, 3, 5), np.nan)}), "NaN or Inf"),
])
def test_damaged_files_are_named(tmp_path, damage, message):
    raw = tmp_path / "raw"
    raw.mkdir()
    _two_good_files(raw)
    victim = raw / "a2_s3_t1_skeleton.mat"
    damage(victim)
    with pytest.raises(ScdError, match=message) as error:
        prepare_utd(str(raw), str(tmp_path / "out"), progress=False)
    assert "a2_s3_t1_skeleton.mat" in str(error.value) and not (tmp_path / "out").exists()
    assert prepare_utd(str(raw), str(tmp_path / "out"), skip_bad=True, progress=False)["skipped"] == 1
