"""Joint maps: each built-in places every joint where its name says (left stays left: the map
commutes with the two layouts' flips), a custom JSON map is read and checked, and an NTU-25
encoder in the authors' checkpoint format runs on a Kinect v1 dataset end to end."""
import json

import numpy as np
import pytest
from cli_checks import msr_raw, needs_msr, refused
from test_compat import TSV, official_state

from scdfast.cli import main
from scdfast.data.joint_maps import BUILT_IN_MAPS, get_joint_map
from scdfast.data.layouts import NTU25
from scdfast.data.synthetic import SkeletonSet
from scdfast.errors import ScdError


def _samples(rng, layout, n=3):
    data = rng.normal(size=(n, 3, 8, layout.num_joints, 2)).astype(np.float32)
    data[0, :, :, :, 1] = 0  # an absent second person
    return SkeletonSet(data=data, num_frames=np.full(n, 8), labels=np.arange(n), layout=layout)


@pytest.mark.parametrize("name", sorted(BUILT_IN_MAPS))
def test_a_built_in_map_keeps_left_and_right(rng, name):
    joint_map = BUILT_IN_MAPS[name]
    samples = _samples(rng, joint_map.source)
    mirrored = SkeletonSet(samples.data[:, :, :, joint_map.source.flip_permutation], samples.num_frames,
                           samples.labels, joint_map.source)
    mapped, mapped_mirror = joint_map.apply(samples), joint_map.apply(mirrored)
    np.testing.assert_allclose(mapped.data[:, :, :, NTU25.flip_permutation], mapped_mirror.data, atol=1e-6)
    assert not mapped.data[0, :, :, :, 1].any()  # an absent person stays absent
    assert mapped.layout.num_joints == 25 and mapped.layout.planar == joint_map.source.planar


def test_kinect_v1_joints_land_on_their_ntu_namesakes(rng):
    samples = _samples(rng, BUILT_IN_MAPS["kinect20"].source)
    mapped = BUILT_IN_MAPS["kinect20"].apply(samples).data
    x = samples.data
    # hip centre -> spine base, spine -> spine mid, shoulder centre -> spine at the shoulders, head -> head
    for kinect, ntu in ((0, 0), (1, 1), (2, 20), (3, 3)):
        np.testing.assert_array_equal(mapped[..., ntu, :], x[..., kinect, :])
    np.testing.assert_array_equal(mapped[..., 4:20, :], x[..., 4:20, :])  # the limbs share NTU's order
    np.testing.assert_allclose(mapped[..., 2, :], (x[..., 2, :] + x[..., 3, :]) / 2, atol=1e-6)  # neck
    np.testing.assert_array_equal(mapped[..., 21, :], x[..., 7, :])  # left hand tip from the left hand


def test_a_custom_map_is_read_and_checked(rng, tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"from": "sbu15", "to": "kinect20", "joints": [[2]] * 19 + [[0, 1]]}))
    joint_map = get_joint_map(str(path))
    samples = _samples(rng, joint_map.source)
    out = joint_map.apply(samples).data
    np.testing.assert_allclose(out[..., 19, :], samples.data[..., :2, :].mean(axis=-2), atol=1e-6)
    path.write_text(json.dumps({"from": "sbu15", "to": "kinect20", "joints": [[2]] * 19 + [[15]]}))
    with pytest.raises(ScdError, match=r"target joint 19 takes source joint 15, outside \[0, 15\)"):
        get_joint_map(str(path))
    path.write_text(json.dumps({"from": "sbu15", "to": "kinect20", "joints": [[2]] * 18}))
    with pytest.raises(ScdError, match="18 entries for the 20 joints of kinect20"):
        get_joint_map(str(path))
    with pytest.raises(ScdError, match="maps sbu15 skeletons, the data's are kinect20"):
        BUILT_IN_MAPS["sbu15"].apply(_samples(rng, BUILT_IN_MAPS["kinect20"].source))


@needs_msr
@pytest.mark.skipif(not TSV.exists(), reason=f"{TSV} is absent (../shared not beside the checkout)")
def test_an_authors_ntu_checkpoint_transfers_to_a_kinect_v1_dataset(tmp_path, capsys):
    import torch
    state = official_state(torch.Generator().manual_seed(7))
    for name in ("t", "s", "i"):
        state[f"{name}_queue_ptr"] = torch.tensor([0])
    checkpoint = tmp_path / "checkpoint_0450.pth.tar"
    torch.save({"epoch": 451, "state_dict": state}, checkpoint)
    data = tmp_path / "msr"
    assert main(["prepare", "msr3d", "--raw", str(msr_raw(tmp_path / "raw")), "--out", str(data),
                 "--no-progress"]) == 0
    refused(capsys, ["transfer", "--data", str(data), "--checkpoint", str(checkpoint), "--num-classes", "20",
                     "--run-dir", str(tmp_path / "unmapped")],
            "--joint-map places a dataset's joints into another layout")
    assert main(["transfer", "--data", str(data), "--checkpoint", str(checkpoint), "--joint-map", "kinect20",
                 "--run-dir", str(tmp_path / "run"), "--epochs", "2", "--no-progress", "--no-figures",
                 "--no-feature-cache", "--random-baseline", "--num-classes", "20"]) == 0
    out = capsys.readouterr().out
    assert "kinect20 joints placed into ntu25" in out and "padded to the encoder's 2" in out
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert report["settings"]["joint_map"] == "kinect20"
    assert {row["encoder"] for row in report["rows"]} == {"pretrained", "random init"}


def test_a_joint_map_needs_a_checkpoint(tmp_path, capsys):
    refused(capsys, ["linear", "--random-init", "--data", "synthetic", "--joint-map", "kinect20", "--run-dir",
                     str(tmp_path / "r")], "--joint-map places the data into a pretrained encoder's layout")
    refused(capsys, ["linear", "--random-init", "--data", "synthetic", "--joint-map", "kinect21", "--run-dir",
                     str(tmp_path / "r")], "--joint-map kinect21: not one of kinect20, sbu15, coco17")
    assert not (tmp_path / "r").exists()
