"""pyskl / MMAction2 annotation files: written here from the real NTU RGB+D samples in
../shared/data (3D camera coordinates, and 2D COCO-17 keypoints taken from the files' colour
image coordinates with the tracking state as the score), imported, trained on, evaluated and
exported back; and pickles that would run code are refused before anything runs."""
import os
import pickle

import numpy as np
import pytest
from cli_checks import digests, refused
from conftest import SHARED_DATA, SMALL_QUEUE
from test_prepare_ntu import _read_slowly

from scdfast.cli import main
from scdfast.data.prepare_ntu import is_training

RAW = SHARED_DATA / "ntu_rgbd_samples" / "skeleton"
pytestmark = pytest.mark.skipif(not RAW.is_dir(), reason=f"the NTU sample files are not at {RAW}")

# COCO-17 from NTU-25 (0-based): nose, eyes and ears from the head; shoulders, elbows, wrists,
# hips, knees, ankles, left before right
COCO_FROM_NTU = [3, 3, 3, 3, 3, 4, 8, 5, 9, 6, 10, 12, 16, 13, 17, 14, 18]


def _ntu_joint_lines(path):
    """(bodies, T, 25, 12): every value of every joint line (x y z, depth x y, colour x y,
    orientation w x y z, tracking state), bodies as they appear; empty slots dropped."""
    data = _read_slowly(path, values=12)
    return data[np.abs(data[..., :3]).sum(axis=(1, 2, 3)) > 0]


def _pyskl_files(folder):
    """(3D file, 2D file, the 2D annotations) in pyskl's format, split as NTU-60 xsub."""
    folder.mkdir(exist_ok=True)
    anns3, anns2, split = [], [], {"xsub_train": [], "xsub_val": [], "xview_train": [], "xview_val": []}
    for f in sorted(os.listdir(RAW)):
        name = f.removesuffix(".skeleton")
        a = _ntu_joint_lines(RAW / f)
        common = {"frame_dir": name, "label": int(name[-3:]) - 1, "total_frames": a.shape[1]}
        anns3.append({**common, "keypoint": a[..., :3].astype(np.float32)})
        anns2.append({**common, "img_shape": (1080, 1920), "original_shape": (1080, 1920),
                      "keypoint": a[:, :, COCO_FROM_NTU, 5:7].astype(np.float32),
                      "keypoint_score": (a[:, :, COCO_FROM_NTU, 11] / 2).astype(np.float32)})
        split["xsub_train" if is_training(name, "ntu60", "xsub") else "xsub_val"].append(name)
        split["xview_train" if is_training(name, "ntu60", "xview") else "xview_val"].append(name)
    paths = folder / "ntu_3d.pkl", folder / "ntu_2d.pkl"
    for path, anns in zip(paths, (anns3, anns2)):
        with open(path, "wb") as f:
            pickle.dump({"split": split, "annotations": anns}, f, protocol=4)
    return (*paths, anns2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _pyskl_files(tmp_path_factory.mktemp("pyskl"))


def _arrays(root, split):
    with open(root / f"{split}_label.pkl", "rb") as f:
        names, labels = pickle.load(f)
    return np.load(root / f"{split}_data_joint.npy"), names, labels, np.load(root / f"{split}_num_frame.npy")


def test_a_3d_file_prepares_equal_to_the_raw_skeleton_files(files, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in os.listdir(RAW):
        (raw / f).symlink_to(RAW / f)
    assert main(["prepare", "ntu", "--raw", str(raw), "--out", str(tmp_path / "ntu"), "--no-progress"]) == 0
    assert main(["prepare", "pyskl", "--ann", str(files[0]), "--out", str(tmp_path / "pyskl"), "--no-progress"]) == 0
    for split in ("train", "val"):
        want, got = _arrays(tmp_path / "ntu", split), _arrays(tmp_path / "pyskl", split)
        assert got[0].shape == want[0].shape == (got[0].shape[0], 3, 300, 25, 2)
        # pyskl's keypoints are float32, the raw files' text float64: equal to float32 rounding
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-5)
        assert got[1:3] == want[1:3]
        np.testing.assert_array_equal(got[3], want[3])


def test_a_2d_file_imports_pretrains_evaluates_and_exports_back_equal(files, tmp_path, capsys):
    _, two_d, anns = files
    data, run = tmp_path / "coco", tmp_path / "run"
    assert main(["prepare", "pyskl", "--ann", str(two_d), "--out", str(data), "--no-progress"]) == 0
    assert '"coco17"' in (data / "skeleton.json").read_text()
    x, names, labels, frames = _arrays(data, "train")
    assert x.shape[1:] == (3, max(a["total_frames"] for a in anns), 17, 2)
    first = anns[0]  # x and y by image size as pyskl's PreNormalize2D, then the score
    np.testing.assert_allclose(x[0, 0, :frames[0], :, 0], (first["keypoint"][0, ..., 0] - 960) / 960, atol=1e-6)
    np.testing.assert_allclose(x[0, 1, :frames[0], :, 0], (first["keypoint"][0, ..., 1] - 540) / 540, atol=1e-6)
    np.testing.assert_array_equal(x[0, 2, :frames[0], :, 0], first["keypoint_score"][0])

    assert main(["pretrain", "--preset", "tiny", "--data", str(data), "--run-dir", str(run), "--epochs", "1",
                 "--batch-size", "4", "--no-progress", *SMALL_QUEUE]) == 0
    assert main(["linear", "--preset", "tiny", "--data", str(data), "--checkpoint",
                 str(run / "checkpoints" / "last.pt"), "--run-dir", str(tmp_path / "linear"), "--epochs", "2", "--no-progress", "--no-figures",
                 "--num-classes", "60", "--no-feature-cache"]) == 0
    assert "top-1" in capsys.readouterr().out

    back = tmp_path / "back.pkl"
    assert main(["export", "pyskl", "--data", str(data), "--out", str(back), "--no-progress"]) == 0
    with open(back, "rb") as f:
        exported = pickle.load(f)
    with open(two_d, "rb") as f:
        original = pickle.load(f)
    assert exported["split"] == {k: v for k, v in original["split"].items() if k.startswith("xsub")}
    by_name = {a["frame_dir"]: a for a in exported["annotations"]}
    assert sorted(by_name) == sorted(a["frame_dir"] for a in original["annotations"])
    for a in original["annotations"]:
        b = by_name[a["frame_dir"]]
        assert (b["label"], b["total_frames"]) == (a["label"], a["total_frames"])
        assert tuple(b["img_shape"]) == a["img_shape"]
        assert b["keypoint"].shape == a["keypoint"].shape and b["keypoint"].dtype == np.float32
        np.testing.assert_allclose(b["keypoint"], a["keypoint"], rtol=0, atol=1e-3)  # pixels through float32
        np.testing.assert_array_equal(b["keypoint_score"], a["keypoint_score"])


def test_3d_stored_as_given_exports_back_equal(files, tmp_path):
    data, back = tmp_path / "d", tmp_path / "back.pkl"
    assert main(["prepare", "pyskl", "--ann", str(files[0]), "--out", str(data), "--normalise", "none",
                 "--split", "xview", "--no-progress"]) == 0
    assert main(["export", "pyskl", "--data", str(data), "--out", str(back), "--split", "xview",
                 "--no-progress"]) == 0
    with open(files[0], "rb") as f:
        original = {a["frame_dir"]: a for a in pickle.load(f)["annotations"]}
    with open(back, "rb") as f:
        exported = pickle.load(f)
    assert set(exported["split"]) == {"xview_train", "xview_val"}
    for b in exported["annotations"]:
        a = original[b["frame_dir"]]
        assert (b["label"], b["total_frames"]) == (a["label"], a["total_frames"])
        np.testing.assert_array_equal(b["keypoint"], a["keypoint"])


def test_a_layout_neither_ntu25_nor_coco17_is_refused(files, tmp_path, capsys):
    with open(files[0], "rb") as f:
        payload = pickle.load(f)
    for a in payload["annotations"]:
        a["keypoint"] = a["keypoint"][:, :, :20]
    ann = _write(tmp_path / "kinect.pkl", payload)
    refused(capsys, ["prepare", "pyskl", "--ann", str(ann), "--out", str(tmp_path / "d"), "--skip-bad"],
            "V=20, C=3 is neither NTU-25 3D (25, 3) nor COCO-17 2D (17, 2)")
    assert not (tmp_path / "d").exists()


def test_a_wrong_split_lists_what_the_file_holds(files, tmp_path, capsys):
    refused(capsys, ["prepare", "pyskl", "--ann", str(files[0]), "--out", str(tmp_path / "d"), "--split", "xset"],
            "no split 'xset_train'; the file holds xsub_train, xsub_val, xview_train, xview_val")
    assert not (tmp_path / "d").exists()


def _write(path, payload):
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=4)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(keypoint=a["keypoint"][:, :, :20]), "of shape (1, 158, 20, 3); this file's first sample "
                                                            "is (M, T, 25, 3)"),
    (lambda a: a.update(total_frames=a["total_frames"] + 1), "total_frames is"),
    (lambda a: a.update(label=-1), "label: -1 is not an integer >= 0"),
    (lambda a: a["keypoint"].__setitem__((0, 0, 0, 0), np.nan), "contains NaN or Inf"),
])
def test_bad_annotations_are_named(files, tmp_path, capsys, change, message):
    with open(files[0], "rb") as f:
        payload = pickle.load(f)
    change(payload["annotations"][1])
    ann = _write(tmp_path / "bad.pkl", payload)
    refused(capsys, ["prepare", "pyskl", "--ann", str(ann), "--out", str(tmp_path / "d")], message)
    assert not (tmp_path / "d").exists()
    assert main(["prepare", "pyskl", "--ann", str(ann), "--out", str(tmp_path / "d"), "--skip-bad",
                 "--no-progress"]) == 0
    assert message in (tmp_path / "d" / "skipped.txt").read_text()
    assert len(_arrays(tmp_path / "d", "train")[1]) == len(payload["split"]["xsub_train"]) - 1


class _WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # what a hostile annotation file would do on load
        return (os.system, (f"touch {self.path}",))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(files, tmp_path, capsys):
    with open(files[1], "rb") as f:
        payload = pickle.load(f)
    victim = tmp_path / "written-by-the-pickle"
    payload["annotations"][3]["label"] = _WritesAFile(victim)
    ann = _write(tmp_path / "hostile.pkl", payload)
    before = digests(tmp_path)
    refused(capsys, ["prepare", "pyskl", "--ann", str(ann), "--out", str(tmp_path / "d")],
            f"{ann}: refused: it refers to posix.system")
    assert not victim.exists() and digests(tmp_path) == before


def test_an_object_array_is_refused(files, tmp_path, capsys):
    with open(files[1], "rb") as f:
        payload = pickle.load(f)
    payload["annotations"][0]["keypoint_score"] = np.array([{"a": 1}, "text"], dtype=object)
    ann = _write(tmp_path / "objects.pkl", payload)
    refused(capsys, ["prepare", "pyskl", "--ann", str(ann), "--out", str(tmp_path / "d")],
            "refused: an array of dtype object")
    assert not (tmp_path / "d").exists()


def test_every_pickle_protocol_numpy_writes_is_read(tmp_path):
    from scdfast.data.array_pickle import read_array_pickle
    value = {"a": np.arange(12, dtype=np.int16).reshape(3, 4), "f": np.asfortranarray(np.ones((2, 3))),
             "s": np.float32(2.5), "t": (1080, 1920), "b": np.zeros(3, dtype=bool)}
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        got = read_array_pickle(_dump(tmp_path / f"p{protocol}.pkl", value, protocol))
        assert set(got) == set(value) and got["t"] == (1080, 1920) and got["s"] == np.float32(2.5)
        for key in ("a", "f", "b"):
            assert type(got[key]) is np.ndarray and got[key].dtype == value[key].dtype
            np.testing.assert_array_equal(got[key], value[key])


def _dump(path, value, protocol):
    with open(path, "wb") as f:
        pickle.dump(value, f, protocol=protocol)
    return path


def test_export_never_replaces_a_file_unasked(files, tmp_path, capsys):
    data = tmp_path / "d"
    assert main(["prepare", "pyskl", "--ann", str(files[1]), "--out", str(data), "--no-progress"]) == 0
    mine = tmp_path / "mine.pkl"
    mine.write_bytes(b"a user's file")
    refused(capsys, ["export", "pyskl", "--data", str(data), "--out", str(mine)], "exists; choose another name")
    assert mine.read_bytes() == b"a user's file"


def test_mmaction2_reads_the_export_with_its_own_pipeline(files, tmp_path):
    """MMAction2's PoseDataset and skeleton transforms load what export pyskl writes (runs where
    mmaction2 is installed; it is no dependency of scdfast)."""
    pytest.importorskip("mmaction.datasets")
    from mmaction.datasets import PoseDataset
    from mmengine.registry import init_default_scope
    init_default_scope("mmaction")
    for ann, dataset, normalise, joints in ((files[1], "coco", "PreNormalize2D", 17),
                                            (files[0], "nturgb+d", "PreNormalize3D", 25)):
        data, back = tmp_path / dataset, tmp_path / f"{dataset}.pkl"
        assert main(["prepare", "pyskl", "--ann", str(ann), "--out", str(data), "--no-progress"]) == 0
        assert main(["export", "pyskl", "--data", str(data), "--out", str(back), "--no-progress"]) == 0
        pipeline = [dict(type=normalise), dict(type="GenSkeFeat", dataset=dataset, feats=["j"]),
                    dict(type="UniformSampleFrames", clip_len=32), dict(type="PoseDecode"),
                    dict(type="FormatGCNInput", num_person=2), dict(type="PackActionInputs")]
        with open(back, "rb") as f:
            exported = pickle.load(f)
        for split in ("xsub_train", "xsub_val"):
            samples = PoseDataset(ann_file=str(back), pipeline=pipeline, split=split, test_mode=True)
            assert len(samples) == len(exported["split"][split])
            item = samples[0]
            assert tuple(item["inputs"].shape) == (1, 2, 32, joints, 3)
            assert np.isfinite(item["inputs"].numpy()).all()


def test_export_of_a_dataset_whose_splits_share_names(tmp_path, capsys):
    from conftest import write_synthetic_dataset
    (tmp_path / "d").mkdir()
    data = write_synthetic_dataset(tmp_path / "d", samples=4, max_frames=40)  # s0..s3 in both splits
    back = tmp_path / "back.pkl"
    assert main(["export", "pyskl", "--data", str(data), "--out", str(back), "--split", "train,val"]) == 0
    assert "each frame_dir is its split_name" in capsys.readouterr().out
    with open(back, "rb") as f:
        exported = pickle.load(f)
    assert exported["split"] == {"train": [f"train_s{i}" for i in range(4)], "val": [f"val_s{i}" for i in range(4)]}
    assert [a["keypoint"].shape[-1] for a in exported["annotations"]] == [3] * 8
    refused(capsys, ["export", "pyskl", "--data", str(data), "--out", str(data / "inside.pkl")],
            "lies inside --data")


def test_numpys_own_names_cannot_build_arrays_around_the_rebuild(tmp_path):
    """numpy.ndarray is admitted as the rebuild's class only: called directly (any shape, an
    object dtype), or given as a memmap subclass, the file is refused."""
    from scdfast.data.array_pickle import read_array_pickle
    from scdfast.errors import ScdError

    class CallsNdarray:
        def __reduce__(self):
            return (np.ndarray, ((3,), "O"))
    for value, message in ((CallsNdarray(), "a call of numpy.ndarray"),
                           (np.memmap(tmp_path / "m.bin", mode="w+", shape=(2,)), "refused")):
        path = _dump(tmp_path / "p.pkl", {"x": value}, 4)
        with pytest.raises(ScdError, match=message):
            read_array_pickle(str(path))
