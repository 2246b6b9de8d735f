"""`scdfast prepare sbu` on the real SBU Kinect Interaction files: arrays equal a straightforward
per-joint conversion, folds follow the participant pairs, malformed copies are named, and a
two-person 15-joint dataset pretrains and evaluates end to end."""
import pickle
import shutil

import numpy as np
import pytest
from conftest import SHARED_DATA, SMALL_QUEUE

from scdfast.cli import main
from scdfast.data import load_dataset
from scdfast.data.prepare_sbu import FOLDS, prepare_sbu
from scdfast.errors import ScdError

RAW = SHARED_DATA / "sbu_kinect_interaction"
pytestmark = pytest.mark.skipif(not RAW.is_dir(), reason=f"the SBU files are not at {RAW}")


def _straightforward(path, frames):
    rows = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
    out = np.zeros((3, frames, 15, 2), np.float32)
    values = [[float(v) for v in row[1:]] for row in rows]
    def metres(t, person, joint):
        x, y, z = values[t][person * 45 + joint * 3: person * 45 + joint * 3 + 3]
        return np.array([(1280 - 2560 * x) / 1000, (960 - 1920 * y) / 1000, z * 10000 / 7.8125 / 1000], np.float32)
    torso = metres(0, 0, 2)  # joint 3 (torso) of person A in the first frame
    for t in range(len(values)):
        for person in range(2):
            for joint in range(15):
                out[:, t, joint, person] = metres(t, person, joint) - torso
    return out, len(values)


@pytest.fixture(scope="module")
def fold2(tmp_path_factory):
    out = tmp_path_factory.mktemp("sbu") / "fold2"
    assert main(["prepare", "sbu", "--raw", str(RAW), "--out", str(out), "--fold", "2", "--no-progress"]) == 0
    return out


def test_arrays_and_folds_equal_the_straightforward_version(fold2):
    train, val = load_dataset(str(fold2))
    assert train.layout.name == "sbu15" and train.data.shape[3:] == (15, 2)
    assert len(train) + len(val) == 282
    for split, data in (("train", train), ("val", val)):
        with open(fold2 / f"{split}_label.pkl", "rb") as f:
            names, labels = pickle.load(f)
        for i in range(0, len(names), 9):
            pair, label, run = names[i].split("_")
            assert (pair in FOLDS[1]) == (split == "val")
            want, length = _straightforward(RAW / pair / label / run / "skeleton_pos.txt", data.data.shape[2])
            assert labels[i] == int(label) - 1 and data.num_frames[i] == length
            np.testing.assert_allclose(np.asarray(data.data[i]), want, atol=2e-6)


@pytest.mark.parametrize("damage, message", [
    (lambda lines: lines[:3] + [lines[3].rsplit(",", 5)[0]] + lines[4:], "line 4: expected 91"),
    (lambda lines: lines[:2] + [lines[2].replace(",", ",x", 1)] + lines[3:], "line 3: non-numeric"),
    (lambda lines: [], "zero frames"),
])
def test_malformed_copies_are_named(tmp_path, damage, message):
    raw = tmp_path / "raw"
    for pair in ("s01s02", "s02s03"):
        shutil.copytree(RAW / pair, raw / pair)
    victim = raw / "s01s02" / "01" / "001" / "skeleton_pos.txt"
    victim.write_text("\n".join(damage(victim.read_text().splitlines())) + "\n")
    with pytest.raises(ScdError, match=message) as error:
        prepare_sbu(str(raw), str(tmp_path / "out"), fold=1, progress=False)
    assert str(victim) in str(error.value) and not (tmp_path / "out").exists()
    counts = prepare_sbu(str(raw), str(tmp_path / "out"), fold=1, skip_bad=True, progress=False)
    assert counts["skipped"] == 1


def test_bad_fold_is_named(tmp_path):
    with pytest.raises(ScdError, match="--fold 6: choose 1..5"):
        prepare_sbu(str(RAW), str(tmp_path / "out"), fold=6, progress=False)


def test_two_person_15_joint_data_trains_end_to_end(fold2, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--preset", "tiny", "--data", str(fold2), "--epochs", "1", "--batch-size", "32",
                 "--device", "cpu", "--run-dir", str(run), "--no-progress", *SMALL_QUEUE]) == 0
    assert main(["knn", "--preset", "tiny", "--data", str(fold2), "--checkpoint", str(run), "--device", "cpu",
                 "--run-dir", str(tmp_path / "knn"), "--no-progress"]) == 0
    assert "kNN retrieval, pretrained, joint: top-1" in capsys.readouterr().out
