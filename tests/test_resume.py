"""Crash safety of pretraining: SIGKILL mid-epoch then --resume gives the uninterrupted run's
step losses, weights, metrics.csv and best.pt bitwise (CPU, the default precision); SIGTERM
stops at a step boundary with a checkpoint; a non-finite loss and a full disk leave the last
good checkpoint intact."""
import csv
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import SMALL_QUEUE, write_synthetic_dataset

from scdfast.cli import main
from scdfast.train.rundir import TMP_PREFIX

STEPS_PER_EPOCH, EPOCHS = 3, 3  # 24 samples, batch 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), max_frames=120)


def _args(dataset, run_dir):
    return ["pretrain", "--preset", "tiny", "--data", str(dataset), "--epochs", str(EPOCHS), "--batch-size", "8",
            "--device", "cpu", "--run-dir", str(run_dir), "--no-progress", "--log-every", "1",
            "--checkpoint-steps", "1", "--keep-last", "2", "--seed", "3",
            # the queues filled before the first step, and their sample ids, must survive a kill too
            "--queue-init", "keys", "--exclude-own-keys", *SMALL_QUEUE]


def _losses(run_dir) -> dict[int, str]:
    with open(run_dir / "steps.csv", newline="") as f:
        return {int(r["step"]): r["loss"] for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("whole") / "run"
    assert main(_args(dataset, run)) == 0
    return run


def _start(dataset, run_dir):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "scdfast", *_args(dataset, run_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, process, timeout=240):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_uninterrupted_run_keeps_last_n_best_and_last(uninterrupted):
    files = sorted(os.listdir(uninterrupted / "checkpoints"))
    total = STEPS_PER_EPOCH * EPOCHS
    assert files == ["best.pt", "last.pt", f"step-{total - 1:08d}.pt", f"step-{total:08d}.pt"]
    assert sorted(_losses(uninterrupted)) == list(range(1, total + 1))
    last = torch.load(uninterrupted / "checkpoints" / "last.pt", weights_only=False)
    assert last["step"] == total and "torch" in last["random"]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(dataset, uninterrupted, tmp_path):
    run = tmp_path / "run"
    process = _start(dataset, run)
    _wait_for(run / "checkpoints" / "step-00000004.pt", process)  # step 4 is inside epoch 1
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed_from = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"]
    assert 4 <= resumed_from < STEPS_PER_EPOCH * EPOCHS
    assert main(["pretrain", "--resume", str(run), "--no-progress", "--device", "cpu"]) == 0
    want, got = _losses(uninterrupted), _losses(run)
    assert sorted(got) == sorted(want)  # rows a killed run wrote past its checkpoint are gone
    assert got == want  # bitwise: the losses are stored as repr() of the float
    a = torch.load(uninterrupted / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the epoch the kill cut counts every one of its steps: metrics.csv and the best.pt choice agree
    assert _epoch_rows(run) == _epoch_rows(uninterrupted)
    best_a = torch.load(uninterrupted / "checkpoints" / "best.pt", weights_only=False)
    best_b = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert (best_a["step"], best_a["epoch_loss"]) == (best_b["step"], best_b["epoch_loss"])
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"])


def _epoch_rows(run_dir) -> list[tuple]:
    """metrics.csv without its timing columns."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(r["epoch"], r["step"], r["loss"], r["lr"]) for r in csv.DictReader(f)]


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(dataset, tmp_path):
    run = tmp_path / "run"
    process = _start(dataset, run)
    _wait_for(run / "checkpoints" / "step-00000002.pt", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"]
    assert max(_losses(run)) == step  # the checkpoint is at the step where it stopped
    assert not [p for p in os.listdir(run / "checkpoints") if p.startswith(TMP_PREFIX)]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(dataset, tmp_path, monkeypatch, capsys):
    import scdfast.train.step as step_module
    real, calls = step_module.scd_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 5 else loss
    monkeypatch.setattr(step_module, "scd_loss", poisoned)
    run = tmp_path / "run"
    assert main(_args(dataset, run)) == 2
    err = capsys.readouterr().err
    assert "non-finite by step 5" in err and f"the last good checkpoint: {run / 'checkpoints' / 'last.pt'}" in err
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert last["step"] == 4 and all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_full_disk_while_saving_loses_no_checkpoint(dataset, tmp_path, monkeypatch, capsys):
    from scdfast.train import rundir
    real_save, saves = torch.save, []

    def disk_fills(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 4:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(rundir.torch, "save", disk_fills)
    run = tmp_path / "run"
    assert main(_args(dataset, run)) == 2
    assert "No space left on device" in capsys.readouterr().err
    checkpoints = run / "checkpoints"
    assert not [p for p in os.listdir(checkpoints) if p.startswith(TMP_PREFIX)]
    for name in os.listdir(checkpoints):  # every file left is a whole checkpoint
        assert torch.load(checkpoints / name, weights_only=False)["format"] == "scdfast-pretrain-v1"
