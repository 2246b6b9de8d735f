"""`scdfast prepare pku` on the real PKU-MMD sequence in ../shared/data. The release's label and
split files are not there, so the test writes its own intervals for that recording: samples
equal a straightforward per-joint cut and NTU normalisation, land in the split the split file
names, and malformed label, split and skeleton files are named."""
import pickle

import numpy as np
import pytest
from conftest import SHARED_DATA
from test_prepare_ntu import normalise_slowly, select_slowly

from scdfast.cli import main
from scdfast.data import load_dataset
from scdfast.data.prepare_pku import prepare_pku, read_split
from scdfast.errors import ScdError

SEQUENCE = SHARED_DATA / "pku_mmd_sample" / "A10N08-L.txt"
pytestmark = pytest.mark.skipif(not SEQUENCE.is_file(), reason=f"the PKU-MMD sample is not at {SEQUENCE}")

# (action id, first frame, last frame, confidence); 1040 frames in the recording. The last
# interval is longer than 300 frames; the first starts at frame 0; one holds two persons.
TRAIN_LABELS = "3,0,99,1\n41,120,179,2\n7,400,999,1\n"
VAL_LABELS = "51,650,730,1\n3,1000,1039,2\n"
SPLIT = "Training videos: \nA10N08-L, \nValidataion videos: \nA10N09-R, \n"


@pytest.fixture
def dataset(tmp_path):
    """raw/ holds the recording under a training and a validation name; labels/ and split.txt
    are written here."""
    raw, labels = tmp_path / "raw", tmp_path / "labels"
    raw.mkdir()
    labels.mkdir()
    text = SEQUENCE.read_text()
    (raw / "A10N08-L.txt").write_text(text)
    (raw / "A10N09-R.txt").write_text(text)
    (labels / "A10N08-L.txt").write_text(TRAIN_LABELS)
    (labels / "A10N09-R.txt").write_text(VAL_LABELS)
    (tmp_path / "split.txt").write_text(SPLIT)
    return tmp_path


def _straightforward(first, last):
    rows = [line.split() for line in SEQUENCE.read_text().splitlines() if line.strip()]
    clip = np.zeros((2, last + 1 - first, 25, 3))
    for t in range(first, last + 1):
        for person in range(2):
            for joint in range(25):
                at = person * 75 + joint * 3
                clip[person, t - first, joint] = [float(v) for v in rows[t][at:at + 3]]
    return normalise_slowly(select_slowly(clip)), min(last + 1 - first, 300)


def _run(root, *extra):
    return main(["prepare", "pku", "--raw", str(root / "raw"), "--labels", str(root / "labels"),
                 "--split", str(root / "split.txt"), "--out", str(root / "out"), "--no-progress", *extra])


def test_samples_equal_the_straightforward_cut(dataset):
    assert _run(dataset) == 0
    train, val = load_dataset(str(dataset / "out"))
    assert train.layout.name == "ntu25" and train.data.shape[1:] == (3, 300, 25, 2)
    for split, data, labels in (("train", train, TRAIN_LABELS), ("val", val, VAL_LABELS)):
        intervals = [[int(v) for v in line.split(",")] for line in labels.split()]
        with open(dataset / "out" / f"{split}_label.pkl", "rb") as f:
            names, classes = pickle.load(f)
        assert classes == [action - 1 for action, *_ in intervals]
        assert names == [f"{'A10N08-L' if split == 'train' else 'A10N09-R'}_{i:03d}" for i in range(len(intervals))]
        for i, (_, first, last, _) in enumerate(intervals):
            want, frames = _straightforward(first, last)
            assert data.num_frames[i] == frames
            np.testing.assert_allclose(np.asarray(data.data[i]), want, atol=1e-5)
    assert np.abs(np.asarray(train.data[2, :, :, :, 1])).sum() > 0, "the long interval holds the second person"


def test_split_file_forms(tmp_path):
    path = tmp_path / "split.txt"
    path.write_text("Training videos: 0002-L, 0002-M\n0003-R,\nValidation videos:\n0291-L, 0291-M,\n")
    assert read_split(str(path)) == {"train": {"0002-L", "0002-M", "0003-R"}, "val": {"0291-L", "0291-M"}}
    path.write_text("0002-L, 0002-M\n")
    with pytest.raises(ScdError, match="line 1: sequence names before"):
        read_split(str(path))
    path.write_text("Training videos: 0002-L\nValidation videos: 0002-L\n")
    with pytest.raises(ScdError, match="0002-L is listed for both"):
        read_split(str(path))
    path.write_text("Training videos: 0002-L\n")
    with pytest.raises(ScdError, match="no val sequence names"):
        read_split(str(path))


@pytest.mark.parametrize("labels, message", [
    ("3,0,99,1\n4,x,20,1\n", "A10N08-L.txt: line 2: non-integer"),
    ("3,50,20,1\n", "line 1: interval 50..20 is empty"),
    ("3,1000,1040,1\n", "interval 1000..1040 ends past the 1040 frames"),
    ("0,1,20,1\n", "line 1: action id 0"),
    ("3\n", "line 1: expected 'action, start, end, confidence'"),
])
def test_malformed_labels_are_named(dataset, labels, message, capsys):
    (dataset / "labels" / "A10N08-L.txt").write_text(labels)
    assert _run(dataset) == 2
    assert message in capsys.readouterr().err
    assert not (dataset / "out").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda lines: lines[:4] + [lines[4].rsplit(" ", 3)[0]] + lines[5:], "line 5: expected 150 values"),
    (lambda lines: lines[:6] + [lines[6].replace(" ", " abc ", 1)] + lines[7:], "line 7: expected 150 values"),
    (lambda lines: lines[:6] + [lines[6].replace("0", "o", 1)] + lines[7:], "line 7: non-numeric"),
])
def test_malformed_skeletons_are_named_or_skipped(dataset, damage, message, capsys):
    path = dataset / "raw" / "A10N09-R.txt"
    path.write_text("\n".join(damage(path.read_text().splitlines())) + "\n")
    assert _run(dataset) == 2
    assert message in capsys.readouterr().err
    assert _run(dataset, "--skip-bad") == 2, "the only validation sequence is bad: nothing to write"
    (dataset / "raw" / "A10N10-R.txt").write_text(SEQUENCE.read_text())
    (dataset / "labels" / "A10N10-R.txt").write_text(VAL_LABELS)
    (dataset / "split.txt").write_text(SPLIT + "A10N10-R\n")
    assert _run(dataset, "--skip-bad") == 0
    assert message in (dataset / "out" / "skipped.txt").read_text()
    _, val = load_dataset(str(dataset / "out"))
    assert len(val) == 2


def test_missing_inputs_are_named(dataset, capsys):
    (dataset / "labels" / "A10N09-R.txt").unlink()
    assert _run(dataset) == 2
    assert "A10N09-R.txt: no label file" in capsys.readouterr().err
    with pytest.raises(ScdError, match="--split .*nope.txt: no such file"):
        prepare_pku(str(dataset / "raw"), str(dataset / "labels"), str(dataset / "nope.txt"), str(dataset / "o"))
    with pytest.raises(ScdError, match="none of the 2 sequences"):
        prepare_pku(str(dataset / "labels" / ".."), str(dataset / "labels"), str(dataset / "split.txt"),
                    str(dataset / "o"))
