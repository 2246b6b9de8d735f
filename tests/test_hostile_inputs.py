"""Nothing a user owns is harmed, part two: what a hostile campaign found, one test per defect,
through the public command line. A refusal is one line naming the file, field or value with
exit status 2, and every file at stake has the digest it had before."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from cli_checks import digests, msr_raw, needs_msr, refused
from conftest import SMALL_QUEUE, write_synthetic_dataset

from scdfast.cli import main
from scdfast.config import SCDConfig, preset, to_dict

CPU = ["--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), samples=16, max_frames=64)


def _copy(dataset, tmp_path):
    return shutil.copytree(dataset, tmp_path / "data")


def _pretrain(dataset, run, *extra):
    return ["pretrain", "--preset", "tiny", "--data", str(dataset), "--epochs", "1", "--batch-size", "8",
            "--run-dir", str(run), *CPU, *SMALL_QUEUE, *extra]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny pretraining checkpoint of the synthetic layout, written without pretraining."""
    from scdfast.models import SCDNet
    config = preset("tiny", SCDConfig)
    path = tmp_path_factory.mktemp("checkpoint") / "pre.pt"
    torch.save({"format": "scdfast-pretrain-v1", "model_config": to_dict(config),
                "model": SCDNet(config).state_dict(), "pretrain_config": {"representation": "joint"}}, path)
    return path


# ---- 1. a forged dataset marker deletes nothing ------------------------------------------------

@pytest.mark.parametrize("listed", ["/ABSOLUTE/victim.txt", "../../victim.txt", "notes.txt", 7])
@pytest.mark.parametrize("where", ["marker", "replaced"])
def test_a_forged_marker_is_refused_and_deletes_nothing(listed, where, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's")
    if listed == "/ABSOLUTE/victim.txt":
        listed = str(victim)
    out = tmp_path / "deep" / "er" / "d"
    folder = out / ".replaced" if where == "replaced" else out  # a swap a kill interrupted, forged
    folder.mkdir(parents=True)
    (folder / ".scdfast-dataset").write_text(json.dumps({"files": [listed]}))
    (folder / "notes.txt").write_text("also the user's")
    if where == "replaced":
        (out / ".scdfast-dataset").write_text(json.dumps({"files": []}))
    raw = tmp_path / "raw"
    raw.mkdir()
    before = digests(tmp_path)
    refused(capsys, ["prepare", "msr3d", "--raw", str(raw), "--out", str(out), "--no-progress"],
            f".scdfast-dataset lists {listed!r}, which is not a file scdfast prepare writes")
    assert digests(tmp_path) == before


def test_a_marker_nested_too_deeply_is_one_line(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / ".scdfast-dataset").write_text("[" * 100_000)
    (tmp_path / "raw").mkdir()
    refused(capsys, ["prepare", "msr3d", "--raw", str(tmp_path / "raw"), "--out", str(out), "--no-progress"],
            ".scdfast-dataset: nested too deeply to be read")


# ---- 2. a protocol writes no run into a folder it did not make ----------------------------------

def test_a_protocol_refuses_a_folder_it_did_not_make(dataset, tmp_path, capsys):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "results.md").write_text("my results")
    (project / "scores.npz").write_bytes(b"my scores")
    (project / ".tmp-draft").write_text("my draft")
    before = digests(project)
    knn = ["knn", "--preset", "tiny", "--data", str(dataset), "--random-init", "--no-feature-cache", "--no-figures",
           *CPU, "--run-dir", str(project)]
    for extra in ([], ["--overwrite"]):
        refused(capsys, knn + extra, "a folder scdfast did not make (it holds .tmp-draft and no .scdfast-run)")
        assert digests(project) == before and sorted(os.listdir(project)) == [".tmp-draft", "results.md",
                                                                               "scores.npz"]
    assert main(knn[:-1] + [str(tmp_path / "run")]) == 0  # a new folder is made, marked and written
    assert main(knn[:-1] + [str(tmp_path / "run"), "--overwrite"]) == 0  # and is scdfast's to replace


# ---- 3. report --out replaces only a report ---------------------------------------------------------

def test_report_out_replaces_only_its_own_table(dataset, tmp_path, capsys):
    run = tmp_path / "knn"
    assert main(["knn", "--preset", "tiny", "--data", str(dataset), "--random-init", "--no-feature-cache",
                 "--no-figures", *CPU, "--run-dir", str(run)]) == 0
    raw = tmp_path / "raw.csv"
    raw.write_text("1,2,3\n")
    before = digests(tmp_path)
    refused(capsys, ["report", str(run), "--out", str(raw)], f"--out {raw}: exists and is not a file this command wrote")
    assert digests(tmp_path) == before
    table = tmp_path / "table.md"
    assert main(["report", str(run), "--out", str(table)]) == 0
    assert main(["report", str(run), str(run), "--out", str(table)]) == 0  # its own table is replaced
    assert main(["report", str(run), "--out", str(raw), "--overwrite"]) == 0  # asked for
    assert raw.read_text() == table.read_text() and "| kNN retrieval" in raw.read_text()


def test_diagnose_json_refuses_a_foreign_file_before_any_work(tmp_path, capsys):
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": 1}')
    refused(capsys, ["diagnose", str(tmp_path / "no-such-run"), "--json", str(mine)],
            "exists and is not a file this command wrote")
    assert mine.read_text() == '{"mine": 1}'


# ---- 4. prepare --out through a symbolic link ---------------------------------------------------

@needs_msr
@pytest.mark.parametrize("target", ["earlier output", "empty folder"])
def test_prepare_through_a_link_writes_at_its_target_and_keeps_the_link(target, tmp_path, capsys):
    raw = msr_raw(tmp_path / "raw")
    real = tmp_path / "datasets" / "msr"
    if target == "earlier output":
        assert main(["prepare", "msr3d", "--raw", str(raw), "--out", str(real), "--no-progress"]) == 0
    else:
        real.mkdir(parents=True)
    link = tmp_path / "msr-link"
    link.symlink_to(real)
    assert main(["prepare", "msr3d", "--raw", str(raw), "--out", str(link), "--no-progress"]) == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert "train_data_joint.npy" in os.listdir(real) and ".replaced" not in os.listdir(real)
    assert not [p for p in os.listdir(tmp_path) + os.listdir(real.parent) if ".tmp-" in p or "replaced" in p]
    capsys.readouterr()


# ---- 5. sizes read from a file are bounded before anything is allocated ------------------------

def test_a_huge_joint_count_in_skeleton_json_is_refused_at_once(dataset, tmp_path, capsys):
    data = _copy(dataset, tmp_path)
    (data / "skeleton.json").write_text(json.dumps({
        "name": "huge", "num_joints": 10**9, "edges": [[1, 0]], "flip": list(range(25)), "center": 0,
        "align_vertical": [0, 1], "align_horizontal": [2, 3]}))
    refused(capsys, _pretrain(data, tmp_path / "run"), "skeleton.json: skeleton layout 'huge': flip must be a "
                                                       "permutation of 0..999999999")
    assert not (tmp_path / "run").exists()


# ---- 6. resume sees changed data and a foreign checkpoint ---------------------------------------

@pytest.fixture(scope="module")
def unfinished(dataset, tmp_path_factory):
    """A pretraining run stopped after its first epoch of two, on its own copy of the data."""
    top = tmp_path_factory.mktemp("unfinished")
    data = shutil.copytree(dataset, top / "data")
    run = top / "run"
    assert main(_pretrain(data, run, "--epochs", "2", "--set", "pretrain.checkpoint_every=1")) == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["step"] = 2  # the end of epoch one of two
    torch.save(state, run / "checkpoints" / "last.pt")
    return top


@pytest.mark.parametrize("sample", [0, 5])
def test_resume_refuses_data_changed_in_any_sample(unfinished, sample, tmp_path, capsys):
    top = shutil.copytree(unfinished, tmp_path / "copy", symlinks=True)
    config = json.loads((top / "run" / "config.json").read_text())
    config["data"] = str(top / "data")
    (top / "run" / "config.json").write_text(json.dumps(config))
    array = np.load(top / "data" / "train_data_joint.npy")
    array[sample] *= 1.01
    np.save(top / "data" / "train_data_joint.npy", array)
    before = digests(top / "run")
    refused(capsys, ["pretrain", "--resume", str(top / "run"), *CPU], "differs from the one the run started on")
    assert digests(top / "run") == before


def test_resume_refuses_a_checkpoint_of_another_run(unfinished, dataset, tmp_path, capsys):
    top = shutil.copytree(unfinished, tmp_path / "copy", symlinks=True)
    other = tmp_path / "other"
    assert main(_pretrain(dataset, other, "--set", "model.d_model=64")) == 0
    shutil.copy(other / "checkpoints" / "last.pt", top / "run" / "checkpoints" / "last.pt")
    capsys.readouterr()
    before = digests(top / "run")
    refused(capsys, ["pretrain", "--resume", str(top / "run"), *CPU],
            "is not this run's checkpoint: its model.d_model is 64, config.json's 128")
    assert digests(top / "run") == before


# ---- 7. NaN weights are refused at loading -------------------------------------------------------

def _loading(command, checkpoint, dataset, run_dir) -> list[str]:
    """The command line of `command` reading `checkpoint`'s encoder."""
    if command == "diagnose":
        return ["diagnose", str(checkpoint), "--data", str(dataset), "--device", "cpu"]
    args = [command, "--preset", "tiny", "--data", str(dataset), "--checkpoint", str(checkpoint), "--no-figures",
            *CPU, "--run-dir", str(run_dir)]
    if command in ("semi", "finetune"):
        return args + ["--epochs", "1"] + (["--labels", "50%"] if command == "semi" else [])
    return args + ["--no-feature-cache"]


@pytest.mark.parametrize("command", ["knn", "linear", "transfer", "semi", "finetune", "diagnose"])
def test_nan_weights_are_refused_when_loaded(command, checkpoint, dataset, tmp_path, capsys):
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["query_encoder.encoder.channel_t.0.weight"][3, 4] = float("nan")
    broken = tmp_path / "nan.pt"
    torch.save(state, broken)
    refused(capsys, _loading(command, broken, dataset, tmp_path / "run"),
            "query_encoder.encoder.channel_t.0.weight hold NaN or Inf values")
    assert not (tmp_path / "run").exists()


# ---- 8. tracebacks that are one line now ---------------------------------------------------------

def _frames_file(kind):
    return {"objects": np.array([{"a": 1}] * 16, dtype=object), "strings": np.array(["64"] * 16),
            "2-D": np.full((16, 2), 64)}[kind]


@pytest.mark.parametrize("kind", ["objects", "strings", "2-D"])
def test_a_bad_frame_count_file_is_one_line(kind, dataset, tmp_path, capsys):
    data = _copy(dataset, tmp_path)
    path = data / "train_num_frame.npy"
    np.save(path, _frames_file(kind), allow_pickle=kind == "objects")
    refused(capsys, _pretrain(data, tmp_path / "run"), f"{path}: ")


def test_data_with_zero_frames_is_one_line(dataset, tmp_path, capsys):
    data = _copy(dataset, tmp_path)
    np.save(data / "train_data_joint.npy", np.zeros((16, 3, 0, 25, 2), np.float32))
    os.unlink(data / "train_num_frame.npy")
    refused(capsys, _pretrain(data, tmp_path / "run"), "the array holds no frames (axis 2 is empty)")


@pytest.mark.parametrize("where", ["skeleton.json", "--config", "results.json"])
def test_json_nested_too_deeply_is_one_line(where, dataset, tmp_path, capsys):
    deep = "[" * 100_000
    if where == "skeleton.json":
        data = _copy(dataset, tmp_path)
        (data / "skeleton.json").write_text(deep)
        args = _pretrain(data, tmp_path / "run")
    elif where == "--config":
        (tmp_path / "c.json").write_text(deep)
        args = _pretrain(dataset, tmp_path / "run", "--config", str(tmp_path / "c.json"))
    else:
        (tmp_path / "results.json").write_text(deep)
        args = ["report", str(tmp_path / "results.json")]
    refused(capsys, args, "nested too deeply to be read")


@pytest.mark.parametrize("setting,message", [
    ("model.dropout=2", "dropout=2.0: must be in [0, 1)"),
    ("pretrain.weight_decay=-1", "weight_decay=-1.0: must be >= 0"),
    ("pretrain.seed=-1", "seed=-1: must be in [0, 4294967295]"),
    ("pretrain.seed=99999999999999999999", "seed=99999999999999999999: must be in [0, 4294967295]"),
    ("pretrain.lr_drop_epochs=-5", "lr_drop_epochs=-5: epochs are counted from 1"),
    ("model.num_heads=0", "num_heads=0"),
    ("model.d_model=100000000", "one encoder would hold over"),
])
def test_a_bad_setting_is_one_line(setting, message, dataset, tmp_path, capsys):
    refused(capsys, _pretrain(dataset, tmp_path / "run", "--set", setting), message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,message", [
    ('[pretrain]\nbatch_size = "eight"\n', "batch_size='eight': expected an integer"),
    ("[pretrain]\nbatch_size = true\n", "batch_size=True: expected an integer"),
    ("[pretrain]\nbatch_size = 8.7\n", "batch_size=8.7: expected an integer"),
    ("[pretrain]\nbatch_size = 8\n[model]\nd_model = 100000000\n", "one encoder would hold over"),
    ("[pretrian]\nlr = 0.1\n", "unknown section 'pretrian'"),
    ("lr = 0.1\n", "unknown section 'lr'"),
])
def test_a_bad_config_file_is_one_line(text, message, dataset, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(text)
    args = _pretrain(dataset, tmp_path / "run", "--config", str(tmp_path / "c.toml"))
    args.remove("--batch-size")
    args.remove("8")  # the file's batch size is the one read
    refused(capsys, args, message)
    assert not (tmp_path / "run").exists()


# ---- 9. what was accepted without a word -------------------------------------------------------------

def test_a_fractional_edge_index_is_refused(dataset, tmp_path, capsys):
    from scdfast.data.layouts import NTU25
    data = _copy(dataset, tmp_path)
    spec = json.loads(json.dumps(NTU25.to_dict()))
    spec["edges"][0] = [1.5, 0]
    (data / "skeleton.json").write_text(json.dumps(spec))
    refused(capsys, _pretrain(data, tmp_path / "run"), "edges[0]=[1.5, 0]: expected 2 joint indices")


@pytest.mark.parametrize("command", ["knn", "linear", "diagnose"])
def test_extra_state_dict_keys_are_refused_by_every_command(command, checkpoint, dataset, tmp_path, capsys):
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["query_encoder.extra.weight"] = torch.zeros(2)
    extra = tmp_path / "extra.pt"
    torch.save(state, extra)
    refused(capsys, _loading(command, extra, dataset, tmp_path / "run"), "unexpected keys: query_encoder.extra.weight")


# ---- 10. one seed ------------------------------------------------------------------------------------

def test_a_schedule_seed_is_the_runs_one_seed(dataset, tmp_path):
    def semi(run, *seed):
        assert main(["semi", "--preset", "tiny", "--data", str(dataset), "--random-init", "--labels", "50%",
                     "--epochs", "1", "--no-figures", *CPU, "--run-dir", str(tmp_path / run), *seed]) == 0
        scores = np.load(tmp_path / run / "scores.npz")["random_init__joint"]
        return json.loads((tmp_path / run / "results.json").read_text())["settings"]["seed"], scores
    by_set, by_flag, default = (semi("set", "--set", "finetune.seed=3"), semi("flag", "--seed", "3"), semi("zero"))
    assert by_set[0] == by_flag[0] == 3 and default[0] == 0
    np.testing.assert_array_equal(by_set[1], by_flag[1])  # the same subset, weights and order
    assert not np.array_equal(by_set[1], default[1])
