"""`scdfast prepare ucla` on the real NW-UCLA files in ../shared/data: arrays equal a
straightforward per-joint conversion, every file lands in its view's split, malformed copies
of real files give named errors, and a failed run leaves no directory behind."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
from conftest import SHARED_DATA

from scdfast.cli import main
from scdfast.data import load_dataset
from scdfast.errors import ScdError

RAW = SHARED_DATA / "nw_ucla" / "all_sqe"
pytestmark = pytest.mark.skipif(not RAW.is_dir(), reason=f"the NW-UCLA files are not at {RAW}")
ACTION_TO_LABEL = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 8: 6, 9: 7, 11: 8, 12: 9}


def _subset(tmp_path, count=24):
    """A folder of symlinks to `count` real files spread over every view and action."""
    names = sorted(os.listdir(RAW))[:: len(os.listdir(RAW)) // count][:count]
    folder = tmp_path / "raw"
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(RAW / name)
    return folder, names


def _straightforward(name, frames):
    """The conversion written out joint by joint, frame by frame."""
    with open(RAW / name) as f:
        record = json.load(f)
    skeleton = record["skeletons"]
    out = np.zeros((3, frames, 20, 1), np.float32)
    origin = skeleton[0][1]  # joint 2 (spine) of the first frame
    for t, frame in enumerate(skeleton):
        for v, joint in enumerate(frame):
            for c in range(3):
                out[c, t, v, 0] = np.float32(joint[c]) - np.float32(origin[c])
    return out, len(skeleton), ACTION_TO_LABEL[int(name[1:3])], int(name[-7:-5])


def test_arrays_labels_and_splits_equal_the_straightforward_version(tmp_path):
    raw, names = _subset(tmp_path)
    out = tmp_path / "ucla"
    assert main(["prepare", "ucla", "--raw", str(raw), "--out", str(out), "--no-progress"]) == 0
    train, val = load_dataset(str(out))
    assert train.layout.name == "kinect20" and train.data.shape[3:] == (20, 1)
    frames = train.data.shape[2]
    for split, data in (("train", train), ("val", val)):
        with open(out / f"{split}_label.pkl", "rb") as f:
            sample_names, labels = pickle.load(f)
        for i, sample in enumerate(sample_names):
            want, length, label, view = _straightforward(sample + ".json", frames)
            assert (view == 3) == (split == "val")
            assert labels[i] == label and data.num_frames[i] == length
            np.testing.assert_array_equal(np.asarray(data.data[i]), want)
    assert len(train) + len(val) == len(names)


def test_full_release_has_the_standard_split(tmp_path):
    out = tmp_path / "ucla"
    assert main(["prepare", "ucla", "--raw", str(RAW), "--out", str(out), "--no-progress"]) == 0
    train, val = load_dataset(str(out))
    assert (len(train), len(val)) == (1020, 464)
    assert sorted(set(train.labels.tolist())) == list(range(10))
    with open(SHARED_DATA / "nw_ucla" / "val_label.pkl", "rb") as f:
        reference = {d["file_name"]: d["label"] - 1 for d in pickle.load(f)}
    with open(out / "val_label.pkl", "rb") as f:
        names, labels = pickle.load(f)
    assert dict(zip(names, labels)) == reference


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2], "line 1: malformed JSON"),
    (lambda text: text.replace("[", "[\"x\", ", 3), "non-numeric value or ragged"),
    (lambda text: json.dumps({**json.loads(text), "skeletons": [f[:15] for f in json.loads(text)["skeletons"]]}),
     r"shape \(T, 20, 3\)"),
    (lambda text: json.dumps({**json.loads(text), "skeletons": []}), "zero frames"),
    (lambda text: json.dumps({**json.loads(text), "label": 7}), "disagrees with action"),
])
def test_malformed_copies_of_real_files_are_named(tmp_path, damage, message):
    raw, names = _subset(tmp_path, count=12)
    victim = raw / names[3]
    text = (RAW / names[3]).read_text()
    victim.unlink()
    victim.write_text(damage(text))
    out = tmp_path / "ucla"
    with pytest.raises(ScdError, match=message) as error:
        from scdfast.data.prepare_ucla import prepare_ucla
        prepare_ucla(str(raw), str(out), progress=False)
    assert names[3] in str(error.value)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    # --skip-bad goes on and reports the file
    assert main(["prepare", "ucla", "--raw", str(raw), "--out", str(out), "--skip-bad", "--no-progress"]) == 0
    assert names[3] in (out / "skipped.txt").read_text()


def test_rerun_replaces_its_own_output_whole(tmp_path):
    raw, _ = _subset(tmp_path, count=12)
    out = tmp_path / "ucla"
    assert main(["prepare", "ucla", "--raw", str(raw), "--out", str(out), "--no-progress"]) == 0
    (out / "train_data_joint.npy").write_bytes(b"damaged")  # scdfast's own file: replaced
    assert main(["prepare", "ucla", "--raw", str(raw), "--out", str(out), "--no-progress"]) == 0
    assert (out / "train_data_joint.npy").read_bytes() != b"damaged"
    shutil.rmtree(raw)
    raw.mkdir()
    assert main(["prepare", "ucla", "--raw", str(raw), "--out", str(out), "--no-progress"]) == 2
    assert (out / "train_data_joint.npy").exists()  # a failed rerun leaves the last good one
