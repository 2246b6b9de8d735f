"""The synthetic generator and the dataset-directory loader, including refused input."""
import pickle

import numpy as np
import pytest

from scdfast.data import generate, load_dataset, load_split, load_training_split
from scdfast.data.dataset import frames_until_last_nonzero
from scdfast.data.synthetic import NUM_CLASSES
from scdfast.errors import ScdError
from scdfast.graph import EDGES


@pytest.fixture(scope="module")
def synthetic():
    return generate(240, seed=3)


def test_layout_and_determinism(synthetic):
    s = synthetic
    assert s.data.shape == (240, 3, 300, 25, 2) and s.data.dtype == np.float32
    assert s.num_frames.min() >= 40 and s.num_frames.max() <= 300
    assert np.bincount(s.labels, minlength=NUM_CLASSES).tolist() == [20] * NUM_CLASSES
    for i in range(10):
        assert (s.data[i, :, s.num_frames[i]:] == 0).all()
        assert (np.abs(s.data[i, :, : s.num_frames[i], :, 0]).sum(axis=(0, 2)) > 0).all()
        np.testing.assert_array_equal(s.data[i, :, 0, 1, 0], 0.0)  # starts at the origin, as importers write
    again = generate(240, seed=3)
    np.testing.assert_array_equal(again.data, s.data)
    assert not np.array_equal(generate(240, seed=4).data, s.data)
    assert np.isfinite(s.data).all()


def test_bodies_are_posed_alike_whatever_the_chunk(monkeypatch):
    """The generator poses a chunk of samples' bodies in one call; the arrays must not depend on
    where the chunks fall (cached features are keyed by GENERATOR_VERSION, not by the chunk)."""
    import scdfast.data.synthetic as synthetic

    chunked = generate(70, seed=11, two_body_fraction=0.5)
    monkeypatch.setattr(synthetic, "_CHUNK", 1)
    one_at_a_time = generate(70, seed=11, two_body_fraction=0.5)
    np.testing.assert_array_equal(chunked.data, one_at_a_time.data)
    np.testing.assert_array_equal(chunked.num_frames, one_at_a_time.num_frames)


def test_bones_are_rigid_up_to_sensor_noise(synthetic):
    x = synthetic.data[0, :, : synthetic.num_frames[0], :, 0]                      # C, T, V
    lengths = np.stack([np.linalg.norm(x[:, :, c] - x[:, :, p], axis=0) for c, p in EDGES])  # E, T
    assert (lengths.std(axis=1) < 0.03).all()
    assert 0.02 < lengths.mean() < 0.5


def _nearest_centroid_accuracy(features, labels):
    half = len(labels) // 2
    centroids = np.stack([features[:half][labels[:half] == c].mean(0) for c in range(NUM_CLASSES)])
    scale = features[:half].std(0) + 1e-9
    d = (((features[half:, None] - centroids[None]) / scale) ** 2).sum(-1)
    return (d.argmin(1) == labels[half:]).mean()


def test_no_single_static_statistic_gives_the_class_away():
    s = generate(960, seed=5)
    root = s.data[:, :, 0, 0, 0]                   # first-frame hip (relative to the spine at the origin), N x 3
    bodies = (np.abs(s.data[:, :, :, :, 1]).sum(axis=(1, 2, 3)) > 0).astype(float)
    for name, feature in (("length", s.num_frames[:, None].astype(float)), ("bodies", bodies[:, None]),
                          ("first-frame hip", root)):
        acc = _nearest_centroid_accuracy(feature, s.labels)
        assert acc < 2.5 / NUM_CLASSES, f"{name} predicts the class at {acc:.2f}"


def write_dataset(root, n=6, t=40, v=25, m=2, labels=None, frames=None, data=None):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        x = data if data is not None else rng.standard_normal((n, 3, t, v, m)).astype(np.float32)
        np.save(root / f"{split}_data_joint.npy", x)
        with open(root / f"{split}_label.pkl", "wb") as f:
            pickle.dump(([f"s{i}" for i in range(len(x))], list(labels if labels is not None else range(len(x)))), f)
        if frames is not None:
            np.save(root / f"{split}_num_frame.npy", np.asarray(frames))
    return root


def test_directory_round_trip(tmp_path):
    write_dataset(tmp_path, frames=[40, 1, 20, 39, 5, 6])
    train, val = load_dataset(str(tmp_path))
    assert train.data.shape == (6, 3, 40, 25, 2) and train.num_frames.tolist() == [40, 1, 20, 39, 5, 6]
    assert val.labels.tolist() == list(range(6))


def test_the_training_split_alone_is_load_datasets_and_reads_no_test_split(tmp_path):
    """Pretraining reads only the training split: a directory without its val files, or with
    a broken one, still gives it, and the synthetic one is load_dataset's bit for bit."""
    train, _ = load_dataset("synthetic:kinect20", seed=3)
    alone = load_training_split("synthetic:kinect20", seed=3)
    np.testing.assert_array_equal(alone.data, train.data)
    np.testing.assert_array_equal(alone.labels, train.labels)
    assert alone.layout.name == "kinect20"
    x = np.ones((4, 3, 10, 25, 2), np.float32)
    write_dataset(tmp_path, data=x, labels=[0, 1, 2, 3])
    np.save(tmp_path / "val_data_joint.npy", np.full_like(x, np.nan))
    assert load_training_split(str(tmp_path)).data.shape == (4, 3, 10, 25, 2)
    with pytest.raises(ScdError, match="val_data_joint.npy: sample 0 contains NaN or Inf"):
        load_dataset(str(tmp_path))
    (tmp_path / "val_data_joint.npy").unlink()
    assert len(load_training_split(str(tmp_path))) == 4
    with pytest.raises(ScdError, match="val_data_joint.npy: no such file"):
        load_dataset(str(tmp_path))
    for bad, message in ((tmp_path / "absent", "no such file or directory"),
                         (tmp_path / "train_label.pkl", "expected a dataset directory")):
        with pytest.raises(ScdError, match=message):
            load_training_split(str(bad))


def test_frames_default_to_the_last_nonzero_frame(tmp_path):
    x = np.zeros((2, 3, 30, 25, 2), dtype=np.float32)
    x[0, :, :17] = 1.0
    x[1, 0, 3, 0, 1] = 2.0
    np.testing.assert_array_equal(frames_until_last_nonzero(x), [17, 4])
    write_dataset(tmp_path, data=x, labels=[0, 1])
    assert load_split(str(tmp_path), "train").num_frames.tolist() == [17, 4]


@pytest.mark.parametrize("kwargs,message", [
    (dict(data=np.zeros((2, 3, 10, 25), np.float32)), "expected 5 axes"),
    (dict(v=20), r"expected 25 joints on axis 3 \(the skeleton layout's\), got 20"),
    (dict(frames=[0, 1, 2, 3, 4, 5]), r"num_frames\[0\] = 0 is outside \[1, 40\]"),
    (dict(frames=[41, 1, 2, 3, 4, 5]), r"num_frames\[0\] = 41 is outside \[1, 40\]"),
    (dict(labels=[0, 1, 2]), "6 samples but 6 frame counts and 3 labels"),
])
def test_bad_arrays_are_named(tmp_path, kwargs, message):
    write_dataset(tmp_path, **kwargs)
    with pytest.raises(ScdError, match=message):
        load_dataset(str(tmp_path))


def test_non_finite_sample_is_named(tmp_path):
    x = np.ones((4, 3, 10, 25, 2), np.float32)
    x[2, 1, 3, 4, 0] = np.nan
    write_dataset(tmp_path, data=x, labels=[0, 1, 2, 3])
    with pytest.raises(ScdError, match="sample 2 contains NaN or Inf"):
        load_dataset(str(tmp_path))


def test_missing_path(tmp_path):
    with pytest.raises(ScdError, match="no such file or directory"):
        load_dataset(str(tmp_path / "absent"))
    with pytest.raises(ScdError, match="train_data_joint.npy: no such file"):
        load_dataset(str(tmp_path))


def test_skeleton_json_declares_the_layout(tmp_path):
    write_dataset(tmp_path, v=20)
    (tmp_path / "skeleton.json").write_text('{"layout": "kinect20"}')
    train, val = load_dataset(str(tmp_path))
    assert train.layout.name == "kinect20" and val.data.shape[3] == 20


def test_custom_layout_file(tmp_path):
    import json
    write_dataset(tmp_path, v=5)
    layout = {"name": "hand5", "num_joints": 5, "edges": [[1, 0], [2, 1], [3, 0], [4, 0]], "flip": [0, 1, 2, 4, 3],
              "center": 0, "align_vertical": [0, 1], "align_horizontal": [3, 4]}
    (tmp_path / "skeleton.json").write_text(json.dumps(layout))
    train, _ = load_dataset(str(tmp_path))
    assert train.layout.num_joints == 5 and train.layout.masked_joints == 2
    layout["flip"] = [0, 1, 2, 3, 3]
    (tmp_path / "skeleton.json").write_text(json.dumps(layout))
    with pytest.raises(ScdError, match="flip must be a permutation"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize("name", ["kinect20", "sbu15"])
def test_synthetic_data_on_the_other_layouts_are_the_same_bodies(synthetic, name):
    """The same bodies on another layout's joints: every joint is the NTU joint the layout maps
    it to, and each of its bones that is one NTU bone keeps its length as NTU's bones do (the
    others span two NTU bones, e.g. SBU's forearm skips the wrist, so they bend)."""
    from scdfast.data.layouts import get_layout
    from scdfast.data.synthetic import LAYOUT_JOINTS
    layout = get_layout(name)
    other = generate(240, seed=3, layout=layout)
    assert other.layout == layout and other.data.shape == (240, 3, 300, layout.num_joints, 2)
    np.testing.assert_array_equal(other.data, synthetic.data[:, :, :, list(LAYOUT_JOINTS[name])])
    np.testing.assert_array_equal(other.labels, synthetic.labels)
    ntu = LAYOUT_JOINTS[name]
    single = [(c, p) for c, p in layout.edges if (ntu[c], ntu[p]) in EDGES or (ntu[p], ntu[c]) in EDGES]
    assert len(single) >= 5
    x = other.data[0, :, : other.num_frames[0], :, 0]
    lengths = np.stack([np.linalg.norm(x[:, :, c] - x[:, :, p], axis=0) for c, p in single])
    assert (lengths.std(axis=1) < 0.03).all() and (lengths.mean(axis=1) > 0.02).all()
    train, _ = load_dataset(f"synthetic:{name}")
    assert train.layout == layout


def test_synthetic_layout_names_are_checked():
    with pytest.raises(ScdError, match="synthetic data come in ntu25, kinect20, sbu15"):
        load_dataset("synthetic:hand5")
