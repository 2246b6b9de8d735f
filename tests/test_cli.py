"""The command line end to end on tiny settings, and its answers to bad input."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SMALL_QUEUE, write_synthetic_dataset

from scdfast.cli import main
from scdfast.train.rundir import TMP_PREFIX


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), max_frames=300)


@pytest.fixture(scope="module")
def train_only(dataset, tmp_path_factory):
    """The dataset's training files alone (links): pretrain and diagnose must not need the rest."""
    root = tmp_path_factory.mktemp("train-only")
    for name in os.listdir(dataset):
        if name.startswith("train_"):
            os.symlink(dataset / name, root / name)
    return root


@pytest.fixture(scope="module")
def pretrained(train_only, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "pre"
    code = main(["pretrain", "--preset", "tiny", "--data", str(train_only), "--epochs", "1", "--batch-size", "8",
                 "--device", "cpu", "--run-dir", str(run), "--no-progress", *SMALL_QUEUE])
    assert code == 0
    return run


def test_pretrain_writes_the_run_directory(pretrained):
    config = json.loads((pretrained / "config.json").read_text())
    assert config["model"]["d_model"] == 128 and config["pretrain"]["batch_size"] == 8
    rows = (pretrained / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,loss") and len(rows) == 2
    assert (pretrained / "checkpoints" / "last.pt").is_file()
    assert not [p for p in os.listdir(pretrained / "checkpoints") if p.startswith(TMP_PREFIX)]
    assert (pretrained / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(pretrained / "tensorboard"))
    report = json.loads((pretrained / "report.json").read_text())
    assert report["steps"] == 3 and report["samples_per_s"] > 0 and report["peak_memory_bytes"] > 0
    steps = (pretrained / "steps.csv").read_text().splitlines()
    assert steps[0].startswith("step,loss,std_temporal,std_spatial,std_instance,rankme_temporal")
    assert report["collapse"]["step"] == 3 and set(report["collapse"]) >= {"std_instance", "feature_spread"}


@pytest.mark.parametrize("command,extra", [
    ("linear", ["--epochs", "2"]),
    ("knn", ["--k", "3"]),
    ("semi", ["--labels", "10%", "--epochs", "1"]),
    ("finetune", ["--epochs", "1"]),
    ("transfer", ["--epochs", "2"]),
])
def test_every_protocol_with_pretrained_and_random(command, extra, pretrained, dataset, train_only, tmp_path, capsys):
    cache = [] if command in ("semi", "finetune") else ["--feature-cache", str(tmp_path / "cache")]
    code = main([command, "--preset", "tiny", "--data", str(dataset), "--checkpoint", str(pretrained),
                 "--random-baseline", "--device", "cpu", "--run-dir", str(tmp_path), "--no-progress", *cache, *extra])
    assert code == 0
    out = capsys.readouterr().out
    assert "pretrained, joint: top-1" in out and "random init, joint: top-1" in out
    report = json.loads((tmp_path / "results.json").read_text())
    assert [(r["encoder"], r["stream"]) for r in report["rows"]] == [("pretrained", "joint"), ("random init", "joint")]
    assert all(0.0 <= r["top1"] <= r["top5"] <= 100.0 for r in report["rows"])
    assert "| pretrained | joint |" in (tmp_path / "results.md").read_text()
    for name in ("confusion-pretrained-joint.png", "embedding-random-init-joint.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if command == "semi":  # 10% of 24 samples in 3 classes: round(0.8) = 1 of each
        assert (report["train_samples"], report["labelled_samples"]) == (24, 3)
        assert report["settings"]["label_fraction"] == 0.1
    if command in ("semi", "finetune"):
        assert (tmp_path / "checkpoints" / "pretrained-joint.pt").is_file()
    if command == "transfer":
        assert report["source"] == str(train_only)  # the pretraining's data


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "scdfast", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["pretrain", "--preset", "tiny", "--data", "/nonexistent/data"], "--data /nonexistent/data: no such file"),
    (["linear", "--preset", "tiny", "--checkpoint", "/nonexistent/ckpt.pt"], "no such file"),
    (["pretrain", "--preset", "tiny", "--device", "gpu7"], "--device 'gpu7'"),
    (["pretrain", "--preset", "huge"], "invalid choice"),
])
def test_user_errors_are_one_line_without_traceback(args, message, tmp_path):
    result = run_cli(*args, "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr


def test_bad_data_leaves_earlier_checkpoint_intact(pretrained, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    x = np.ones((4, 3, 20, 25, 2), np.float32)
    x[1, 0, 0, 0, 0] = np.inf
    for split in ("train", "val"):
        np.save(bad / f"{split}_data_joint.npy", x)
        with open(bad / f"{split}_label.pkl", "wb") as f:
            pickle.dump((["a", "b", "c", "d"], [0, 1, 0, 1]), f)
    before = (pretrained / "checkpoints" / "last.pt").read_bytes()
    result = run_cli("pretrain", "--preset", "tiny", "--data", str(bad), "--run-dir", str(pretrained),
                     "--batch-size", "2", "--no-progress")
    assert result.returncode == 2 and "sample 1 contains NaN or Inf" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (pretrained / "checkpoints" / "last.pt").read_bytes() == before


def test_help_explains_each_command():
    for command in ("pretrain", "linear", "knn", "semi", "finetune", "transfer"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "--preset" in result.stdout and "--data" in result.stdout


def test_diagnose_a_run_directory_and_its_checkpoint_file(pretrained, dataset, tmp_path, capsys):
    from test_collapse import reference

    from scdfast.compat import read_checkpoint
    from scdfast.config import SCDConfig, from_dict
    from scdfast.data import load_dataset
    from scdfast.evaluation.features import eval_batch
    from scdfast.models import SCDNet
    from scdfast.models.moco import unit_clues

    assert main(["diagnose", str(pretrained), "--json", str(tmp_path / "run.json"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "std x sqrt(dim)" in out and "verdict: " in out and "the run's monitor (1 reading in steps.csv)" in out
    assert main(["diagnose", str(pretrained / "checkpoints" / "last.pt"), "--data", str(dataset), "--samples", "16",
                 "--json", str(tmp_path / "file.json"), "--device", "cpu"]) == 0
    run, file = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("run", "file"))
    assert run["samples"] == 24 and file["samples"] == 16 and run["step"] == 3
    # the eval-mode readings are the model's own, computed here without diagnose
    payload = read_checkpoint(pretrained / "checkpoints" / "last.pt")
    model = SCDNet(from_dict(SCDConfig, payload["model_config"]))
    model.load_state_dict(payload["model"])
    train, _ = load_dataset(str(dataset))
    index = np.sort(np.random.default_rng(0).permutation(len(train))[:16])
    x = eval_batch(train, index, model.config.window, "joint")
    with torch.no_grad():
        *z, features = model.query_encoder.eval()(x, with_features=True)
    expected = reference(unit_clues(z), features)
    got = [file["eval_mode"][f] for f in ("std_temporal", "std_spatial", "std_instance", "rankme_temporal",
                                          "rankme_spatial", "rankme_instance", "feature_spread")]
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_diagnose_a_downstream_checkpoint_and_a_missing_dataset(pretrained, dataset, tmp_path, capsys):
    assert main(["finetune", "--preset", "tiny", "--data", str(dataset), "--checkpoint", str(pretrained),
                 "--epochs", "1", "--device", "cpu", "--run-dir", str(tmp_path / "ft"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["diagnose", str(tmp_path / "ft" / "checkpoints" / "pretrained-joint.pt"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "scdfast downstream checkpoint" in out and "feature spread" in out and "RankMe t" not in out
    payload = torch.load(pretrained / "checkpoints" / "last.pt", weights_only=True)
    payload["data"] = str(tmp_path / "gone")
    torch.save(payload, tmp_path / "moved.pt")
    assert main(["diagnose", str(tmp_path / "moved.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"give --data DIR (it was trained on {tmp_path / 'gone'}, which is not here)")
    assert len(err.splitlines()) == 1
