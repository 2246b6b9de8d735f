"""benchmarks/accuracy.py's verdicts: semi-supervised and fine-tuning on the mean of their seeds,
the 2-point margin where a pretrained start must not be a handicap, and a strict win elsewhere;
the seeds' noise; --protocols runs only the protocols it names."""
import importlib.util
import json
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("accuracy_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(out, folder, name, pretrained, random):
    run = out / folder / name
    run.mkdir(parents=True)
    rows = [{"encoder": "pretrained", "stream": "joint", "top1": pretrained, "top5": 99.0},
            {"encoder": "random init", "stream": "joint", "top1": random, "top5": 99.0}]
    protocol = next(p for p in ("semi", "finetune", "knn", "linear") if folder.startswith(p))
    (run / "results.json").write_text(json.dumps({"protocol": protocol, "data": name, "rows": rows}))


def test_training_protocols_are_judged_on_their_seeds_mean_and_the_margin_applies_only_where_named(
        accuracy, tmp_path):
    # semi10 seeds: pretrained 50, 40, 45 (mean 45.0); random init 60, 40, 41 (mean 47.0): within 2
    for folder, pre, rand in (("semi10", 50.0, 60.0), ("semi10-seed1", 40.0, 40.0), ("semi10-seed2", 45.0, 41.0)):
        _result(tmp_path, folder, "ucla", pre, rand)
    # finetune seeds: 80, 79, 81 (mean 80.0) against 82.5, 82.5, 82.5: 2.5 behind, a handicap
    for folder, pre in (("finetune", 80.0), ("finetune-seed1", 79.0), ("finetune-seed2", 81.0)):
        _result(tmp_path, folder, "ucla", pre, 82.5)
    _result(tmp_path, "knn", "ucla", 51.0, 52.0)                 # behind, but no margin applies
    _result(tmp_path, "linear-standardized", "ucla", 60.0, 55.0)
    lines = {line.split(" | ")[1]: line for line in accuracy._verdicts(str(tmp_path), ["ucla"], 3)[2:]}
    assert "| 45.0 | 47.0 | -2.0 | within 2 points |" in lines["semi10 (mean of 3 seeds)"]
    assert "| 80.0 | 82.5 | -2.5 | **behind by more than 2** |" in lines["finetune (mean of 3 seeds)"]
    assert "**random init ahead**" in lines["knn"]
    assert "| +5.0 | pretrained beats random init |" in lines["linear-standardized"]
    # one seed asked for: the table's own run alone
    one = {line.split(" | ")[1]: line for line in accuracy._verdicts(str(tmp_path), ["ucla"], 1)[2:]}
    assert "| 50.0 | 60.0 | -10.0 | **behind by more than 2** |" in one["semi10"]
    seeds = accuracy._seeds_table(str(tmp_path), ["ucla"], 3)
    assert seeds[2:] == ["| ucla | semi10 | 3 | 45.0 (40.0-50.0) | 47.0 (40.0-60.0) |",
                         "| ucla | finetune | 3 | 80.0 (79.0-81.0) | 82.5 (82.5-82.5) |"]
    # differences -10, 0, +4 (squares about their mean 104) and -2.5, -3.5, -1.5 (2): sqrt(106 / 4)
    noise = accuracy._seed_noise(str(tmp_path), ["ucla"], 3)
    assert "standard deviation of 5.1 points" in noise and "3 seeds one of about 3.0" in noise
    assert accuracy._seed_noise(str(tmp_path), ["ucla"], 1) is None  # one seed: no spread to measure


def test_protocols_runs_only_the_named_protocols(accuracy, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(accuracy, "scdfast", lambda args: calls.append(args) or 0)
    assert accuracy.main(["--out", str(tmp_path), "--datasets", "nw_ucla,msr_action3d", "--protocols", "semi10",
                          "--seeds", "2"]) == 0
    commands = [c[0] for c in calls]
    assert commands == ["prepare", "pretrain", "semi", "semi"] * 2  # no linear, knn, finetune or transfer
    with pytest.raises(SystemExit):
        accuracy.main(["--out", str(tmp_path), "--protocols", "semi"])  # a command, not a protocol run name


def test_pretrain_set_reaches_a_new_pretraining_and_not_a_resumed_one(accuracy, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(accuracy, "scdfast", lambda args: calls.append(args) or 0)
    budget, sets = accuracy.Budget(None), ["model.gcn_channels=16", "pretrain.exclude_own_keys=true"]
    accuracy._pretrain_step(str(tmp_path), "ucla", "DATA", ["--seed", "0"], budget, None, sets)
    assert calls[-1][:2] == ["pretrain", "--preset"]
    assert calls[-1][-6:] == ["--set", sets[0], "--set", sets[1], "--seed", "0"]
    # a started run resumes with the settings it was started with, so none are given again
    (tmp_path / "pretrain" / "ucla" / "checkpoints").mkdir(parents=True)
    (tmp_path / "pretrain" / "ucla" / "checkpoints" / "last.pt").write_bytes(b"")
    accuracy._pretrain_step(str(tmp_path), "ucla", "DATA", ["--seed", "0"], budget, None, sets)
    assert calls[-1] == ["pretrain", "--resume", str(tmp_path / "pretrain" / "ucla"), "--seed", "0"]
