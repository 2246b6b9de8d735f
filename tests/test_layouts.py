"""Skeleton layouts: the built-ins are well-formed trees with involutive flips, and a custom
layout from JSON trains end to end."""
import json
import pickle

import numpy as np
import pytest
from conftest import SMALL_QUEUE

from scdfast.cli import main
from scdfast.data.layouts import BUILT_IN, NTU25, get_layout
from scdfast.errors import ScdError
from scdfast.graph import BONE_PARENT, FLIP_PERMUTATION


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_built_in_layouts_are_trees_with_involutive_flips(name):
    layout = BUILT_IN[name]
    assert len(layout.edges) == layout.num_joints - 1  # a tree: one root
    flip = layout.flip_permutation
    assert np.array_equal(flip[flip], np.arange(layout.num_joints))
    parent = layout.bone_parent
    for v in range(layout.num_joints):  # every joint reaches the root
        seen = {v}
        while parent[v] != v:
            v = parent[v]
            assert v not in seen
            seen.add(v)
    # the flip maps bones to bones
    edges = {tuple(sorted(e)) for e in layout.edges}
    assert {tuple(sorted((flip[c], flip[p]))) for c, p in layout.edges} == edges


def test_ntu25_is_the_papers_graph_and_mask_size():
    assert np.array_equal(NTU25.bone_parent, BONE_PARENT) and np.array_equal(NTU25.flip_permutation, FLIP_PERMUTATION)
    assert (NTU25.masked_joints, BUILT_IN["kinect20"].masked_joints, BUILT_IN["sbu15"].masked_joints) == (8, 6, 5)


def test_unknown_layout_is_named(tmp_path):
    with pytest.raises(ScdError, match="not one of ntu25, kinect20, sbu15"):
        get_layout("kinect30")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ScdError, match="bad.json: line 1: malformed JSON"):
        get_layout(str(tmp_path / "bad.json"))


def test_custom_layout_trains_end_to_end(tmp_path, capsys):
    layout = {"name": "arm6", "num_joints": 6, "edges": [[1, 0], [2, 1], [3, 0], [4, 3], [5, 0]],
              "flip": [0, 3, 4, 1, 2, 5], "center": 0, "align_vertical": [0, 5], "align_horizontal": [1, 3]}
    data = tmp_path / "data"
    data.mkdir()
    (data / "skeleton.json").write_text(json.dumps(layout))
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        x = rng.normal(size=(24, 3, 50, 6, 1)).astype(np.float32)
        np.save(data / f"{split}_data_joint.npy", x)
        with open(data / f"{split}_label.pkl", "wb") as f:
            pickle.dump(([f"s{i}" for i in range(24)], [i % 3 for i in range(24)]), f)
    run = tmp_path / "run"
    assert main(["pretrain", "--preset", "tiny", "--data", str(data), "--epochs", "1", "--batch-size", "8",
                 "--device", "cpu", "--run-dir", str(run), "--no-progress", *SMALL_QUEUE]) == 0
    assert main(["linear", "--preset", "tiny", "--data", str(data), "--checkpoint", str(run), "--epochs", "2",
                 "--device", "cpu", "--run-dir", str(tmp_path / "lin"), "--no-progress"]) == 0
    assert "linear evaluation (standardized), pretrained" in capsys.readouterr().out  # the tiny protocol
    config = json.loads((run / "config.json").read_text())["model"]
    assert config["layout"]["name"] == "arm6" and config["num_joints"] == 6
    # the same checkpoint on data of another layout: refused by name
    assert main(["knn", "--preset", "tiny", "--data", "synthetic", "--checkpoint", str(run), "--device", "cpu",
                 "--run-dir", str(tmp_path / "knn"), "--no-progress"]) == 2
    assert "layout arm6" in capsys.readouterr().err

