"""Nothing a user owns is destroyed and no data file runs code, tried through the public CLI
as a careless and as a hostile user would: each refusal is one line with exit status 2 and
every file that was there before is unchanged (compared by digest)."""
import csv
import errno
import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from cli_checks import digests, msr_raw, needs_msr, refused
from conftest import SMALL_QUEUE, write_synthetic_dataset

from scdfast.cli import main
from scdfast.train.rundir import TMP_PREFIX

def _folder(path):
    path.mkdir(parents=True)
    return path


# ---- 1. prepare writes only where it may --------------------------------------------------------

@needs_msr
@pytest.mark.parametrize("where", ["equal", "above", "inside"])
def test_prepare_refuses_an_out_that_overlaps_raw(where, tmp_path, capsys):
    top = tmp_path / "download"
    raw = msr_raw(top / "skeleton3d")
    (top / "README.txt").write_text("the user's notes")
    out = {"equal": raw, "above": top, "inside": raw / "prepared"}[where]
    before = digests(top)
    refused(capsys, ["prepare", "msr3d", "--raw", str(raw), "--out", str(out), "--no-progress"], "--out")
    assert digests(top) == before and not (raw / "prepared").exists()


@needs_msr
def test_prepare_refuses_a_folder_it_did_not_write_and_replaces_its_own(tmp_path, capsys):
    raw = msr_raw(tmp_path / "raw")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8 not a dataset")
    refused(capsys, ["prepare", "msr3d", "--raw", str(raw), "--out", str(foreign), "--no-progress"],
            "scdfast did not write")
    assert (foreign / "holiday.jpg").read_bytes() == b"\xff\xd8 not a dataset"
    out = tmp_path / "msr"
    assert main(["prepare", "msr3d", "--raw", str(raw), "--out", str(out), "--no-progress"]) == 0
    first = digests(out)
    assert ".scdfast-dataset" in first and "train_data_joint.npy" in first
    assert main(["prepare", "msr3d", "--raw", str(raw), "--out", str(out), "--no-progress"]) == 0
    assert digests(out) == first  # its own output is replaced (by the same bytes here)
    (out / "notes.txt").write_text("mine")
    refused(capsys, ["prepare", "msr3d", "--raw", str(raw), "--out", str(out), "--no-progress"],
            "holds notes.txt, which scdfast did not write")
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


@needs_msr
def test_a_killed_prepare_leaves_no_temporary_folder_behind_the_next(tmp_path):
    raw, out = msr_raw(tmp_path / "raw"), tmp_path / "msr"
    stale = tmp_path / ".msr.tmp-dead"
    stale.mkdir()
    (stale / "train_data_joint.npy").write_bytes(b"half")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (stale / ".scdfast-writing").write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
    unrelated = tmp_path / ".msr.tmp-not-ours"
    unrelated.mkdir()
    assert main(["prepare", "msr3d", "--raw", str(raw), "--out", str(out), "--no-progress"]) == 0
    assert not stale.exists() and unrelated.is_dir()


# ---- 2. label files never run code ----------------------------------------------------------------

class _RunsCode:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_a_label_pickle_that_calls_a_function_is_refused_unrun(tmp_path, capsys):
    data = write_synthetic_dataset(_folder(tmp_path / "data"), samples=16, max_frames=64)
    sentinel = tmp_path / "ran"
    with open(data / "train_label.pkl", "wb") as f:
        pickle.dump(([f"s{i}" for i in range(16)], [_RunsCode(str(sentinel))] + list(range(15))), f)
    refused(capsys, ["pretrain", "--preset", "tiny", "--data", str(data), "--run-dir", str(tmp_path / "run"),
                     "--device", "cpu", "--no-progress", "--batch-size", "8", "--epochs", "1"],
            "train_label.pkl: refused: it refers to io.open")
    assert not sentinel.exists() and not (tmp_path / "run").exists()


def test_float_labels_are_refused_not_truncated(tmp_path, capsys):
    data = write_synthetic_dataset(_folder(tmp_path / "data"), samples=16, max_frames=64)
    with open(data / "train_label.pkl", "wb") as f:
        pickle.dump(([f"s{i}" for i in range(16)], [0.0, 1.5] + [1] * 14), f)
    refused(capsys, ["linear", "--preset", "tiny", "--data", str(data), "--random-init", "--device", "cpu",
                     "--run-dir", str(tmp_path / "run"), "--no-progress", "--no-feature-cache"],
            "label 0 is 0.0 (float); labels are integers")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra,message", [
    ([], "the training split's go up to 1000 and the test split's to 2"),
    (["--num-classes", "3"], "the training split has label 1000, outside [0, 3) of --num-classes 3"),
])
def test_a_stray_label_cannot_size_the_classifier(extra, message, tmp_path, capsys):
    data = write_synthetic_dataset(_folder(tmp_path / "data"), samples=16, max_frames=64)
    with open(data / "train_label.pkl", "wb") as f:
        pickle.dump(([f"s{i}" for i in range(16)], [0, 1, 2] * 5 + [1000]), f)
    refused(capsys, ["linear", "--preset", "tiny", "--data", str(data), "--random-init", "--device", "cpu",
                     "--run-dir", str(tmp_path / "run"), "--no-progress", "--no-feature-cache", *extra], message)
    assert not (tmp_path / "run").exists()


def test_all_zero_data_is_warned_about(tmp_path):
    from scdfast.data import load_dataset
    data = write_synthetic_dataset(_folder(tmp_path / "data"), samples=8, max_frames=64)
    array = np.load(data / "train_data_joint.npy")
    np.save(data / "train_data_joint.npy", np.zeros_like(array))
    with pytest.warns(UserWarning, match="every coordinate of every sample is zero"):
        load_dataset(str(data))


@pytest.mark.parametrize("edges,message", [([[0, 0], [2, 1]], "joins a joint to itself"),
                                           ([[1, 2], [2, 1], [3, 0]], "cycle through joint")])
def test_a_layout_that_is_not_a_tree_is_refused(edges, message, tmp_path, capsys):
    data = write_synthetic_dataset(_folder(tmp_path / "data"), samples=16, max_frames=64)
    (data / "skeleton.json").write_text(json.dumps({
        "name": "bad", "num_joints": 25, "edges": edges, "flip": list(range(25)), "center": 0,
        "align_vertical": [0, 1], "align_horizontal": [2, 3]}))
    refused(capsys, ["pretrain", "--preset", "tiny", "--data", str(data), "--device", "cpu", "--no-progress",
                     "--run-dir", str(tmp_path / "run")], message)
    assert not (tmp_path / "run").exists()


# ---- 3, 4. run directories: no silent overwrite, one writer -----------------------------------

STEPS_PER_EPOCH = 2  # 16 samples, batch 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), samples=16, max_frames=64)


def _pretrain(dataset, run, *extra):
    return ["pretrain", "--preset", "tiny", "--data", str(dataset), "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--run-dir", str(run), "--no-progress", *SMALL_QUEUE, *extra]


@pytest.fixture(scope="module")
def finished(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(_pretrain(dataset, run)) == 0
    return run


def test_a_second_pretrain_into_a_run_is_refused(dataset, finished, capsys):
    before = digests(finished)
    refused(capsys, _pretrain(dataset, finished), "holds an earlier run; continue it with --resume")
    assert digests(finished) == before


def test_overwrite_replaces_only_scdfast_files(dataset, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "my-notes.txt").write_text("keep me")
    (run / "checkpoints" / "my-weights.bin").write_bytes(b"mine")
    old_step_files = sorted(p for p in os.listdir(run / "checkpoints") if p.startswith("step-"))
    assert main(_pretrain(dataset, run, "--overwrite", "--seed", "5")) == 0
    assert (run / "my-notes.txt").read_text() == "keep me"
    assert (run / "checkpoints" / "my-weights.bin").read_bytes() == b"mine"
    assert json.loads((run / "config.json").read_text())["pretrain"]["seed"] == 5
    with open(run / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 1  # one run's rows, not two mixed
    assert old_step_files == sorted(p for p in os.listdir(run / "checkpoints") if p.startswith("step-"))


def test_a_second_writer_of_a_run_directory_is_refused(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = open(run / ".lock", "w")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.write("4242\n")
    holder.flush()
    try:
        refused(capsys, _pretrain(dataset, run), "another scdfast process (pid 4242) is writing it")
    finally:
        holder.close()
    assert sorted(os.listdir(run)) == [".lock"]


def test_a_refused_command_leaves_no_empty_run_folder(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    refused(capsys, _pretrain(dataset, run, "--batch-size", "64"), "exceeds the 16 training samples")
    assert not run.exists()
    refused(capsys, _pretrain(dataset, run, "--lr", "-0.1"), "lr=-0.1 must be a finite number > 0")
    assert not run.exists()


def test_stale_temporary_files_are_removed_at_the_next_start(dataset, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "checkpoints" / f"{TMP_PREFIX}killed").write_bytes(b"half a checkpoint")
    (run / f"{TMP_PREFIX}config").write_text("{")
    assert main(["pretrain", "--resume", str(run), "--no-progress", "--device", "cpu"]) == 0
    assert not (run / "checkpoints" / f"{TMP_PREFIX}killed").exists() and not (run / f"{TMP_PREFIX}config").exists()


# ---- 5. a full disk ----------------------------------------------------------------------------------

def test_a_full_disk_in_torch_zip_writer_is_one_line(dataset, tmp_path, monkeypatch, capsys):
    from scdfast.train import rundir

    def zip_writer_fails(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")
    monkeypatch.setattr(rundir.torch, "save", zip_writer_fails)
    run = tmp_path / "run"
    refused(capsys, _pretrain(dataset, run), "could not write")
    assert not [p for p in os.listdir(run / "checkpoints") if p.startswith(TMP_PREFIX)]


def test_a_full_disk_in_config_json_is_one_line(dataset, tmp_path, monkeypatch, capsys):
    from scdfast.train import rundir

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(rundir.json, "dump", disk_full)
    refused(capsys, _pretrain(dataset, tmp_path / "run"), "No space left on device")


def test_a_real_full_disk_on_a_small_tmpfs(dataset, tmp_path, capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        run = mount / "run"
        refused(capsys, _pretrain(dataset, run), "the disk is full")
        for name in os.listdir(run / "checkpoints"):  # every checkpoint left is whole
            torch.load(run / "checkpoints" / name, weights_only=True)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# ---- 6, 7. resume is exact; smaller promises -------------------------------------------------

def test_resuming_a_finished_run_changes_nothing(finished, capsys):
    before = digests(finished)
    assert main(["pretrain", "--resume", str(finished), "--no-progress", "--device", "cpu"]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert digests(finished) == before


def test_resuming_on_another_dataset_is_refused(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    config = json.loads((run / "config.json").read_text())
    other = write_synthetic_dataset(_folder(tmp_path / "other"), samples=24, max_frames=64)
    config["data"] = str(other)
    (run / "config.json").write_text(json.dumps(config))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["step"] = 1  # not finished, so the resume would run
    torch.save(state, run / "checkpoints" / "last.pt")
    before = digests(run)
    refused(capsys, ["pretrain", "--resume", str(run), "--no-progress", "--device", "cpu"],
            "differs from the one the run started on (samples 16 then, 24 now)")
    assert digests(run) == before


def test_an_incomplete_checkpoint_is_one_line(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    del state["optimizer"]
    torch.save(state, run / "checkpoints" / "last.pt")
    refused(capsys, ["pretrain", "--resume", str(run), "--no-progress", "--device", "cpu"],
            "without its 'optimizer' entry")
    del state["model"]
    torch.save(state, tmp_path / "broken.pt")
    refused(capsys, ["knn", "--preset", "tiny", "--checkpoint", str(tmp_path / "broken.pt"), "--device", "cpu",
                     "--run-dir", str(tmp_path / "knn"), "--no-progress", "--no-feature-cache"],
            "without its 'model' entry")


def test_report_into_a_directory_is_one_line(dataset, finished, tmp_path, capsys):
    runs = tmp_path / "linear"
    assert main(["linear", "--preset", "tiny", "--data", str(dataset), "--checkpoint", str(finished), "--device", "cpu",
                 "--epochs", "1", "--run-dir", str(runs), "--no-progress", "--no-feature-cache", "--no-figures"]) == 0
    capsys.readouterr()
    refused(capsys, ["report", str(runs), "--out", str(tmp_path)], f"could not write {tmp_path}")


def test_non_finite_before_any_checkpoint_says_so(dataset, tmp_path, monkeypatch, capsys):
    import scdfast.train.step as step_module
    real = step_module.scd_loss
    monkeypatch.setattr(step_module, "scd_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    refused(capsys, _pretrain(dataset, tmp_path / "run", "--log-every", "1"),
            "the last good checkpoint: none (none was written yet)")
