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
    protocol = next(p for p in ("semi", "finetune", "knn", "linear", "transfer") if folder.startswith(p))
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


def test_frozen_seeds_pretrain_again_and_probe_each_pretraining(accuracy, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(accuracy, "scdfast", lambda args: calls.append(args) or 0)
    assert accuracy.main(["--out", str(tmp_path), "--datasets", "nw_ucla,msr_action3d",
                          "--protocols", "knn,transfer", "--frozen-seeds", "2", "--seed", "5"]) == 0
    assert [c[0] for c in calls] == ["prepare", "pretrain", "knn", "pretrain", "knn"] * 2 + ["transfer"] * 2
    option = lambda args, name: args[args.index(name) + 1]  # noqa: E731
    second_pretraining = str(tmp_path / "pretrain-seed1" / "nw_ucla")
    assert option(calls[3], "--run-dir") == second_pretraining and option(calls[3], "--seed") == "6"
    assert option(calls[4], "--checkpoint") == second_pretraining and option(calls[4], "--seed") == "6"
    assert option(calls[4], "--run-dir") == str(tmp_path / "knn-seed1" / "nw_ucla")
    assert option(calls[-1], "--checkpoint") == second_pretraining
    assert option(calls[-1], "--run-dir") == str(tmp_path / "transfer-seed1" / "nw_ucla-to-msr_action3d")
    assert option(calls[-2], "--seed") == "5" and option(calls[-1], "--seed") == "6"
    # without a frozen protocol or a transfer from it, a dataset gets no second pretraining
    calls.clear()
    accuracy.main(["--out", str(tmp_path / "b"), "--datasets", "msr_action3d", "--protocols", "semi10",
                   "--seeds", "1", "--frozen-seeds", "3"])
    assert [c[0] for c in calls] == ["prepare", "pretrain", "semi"]
    calls.clear()  # a transfer whose target is not run: no second pretraining of its source either
    accuracy.main(["--out", str(tmp_path / "c"), "--datasets", "nw_ucla", "--protocols", "transfer",
                   "--frozen-seeds", "2"])
    assert [c[0] for c in calls] == ["prepare", "pretrain"]


def test_frozen_probes_and_transfers_are_judged_on_their_pretraining_seeds_mean(accuracy, tmp_path):
    # knn: 50 / 60 at the table's seed, 58 / 52 and 60 / 50 at two more pretrainings (mean 56.0 / 54.0)
    for folder, pre, rand in (("knn", 50.0, 60.0), ("knn-seed1", 58.0, 52.0), ("knn-seed2", 60.0, 50.0)):
        _result(tmp_path, folder, "nw_ucla", pre, rand)
    for folder, pre, rand in (("transfer", 70.0, 71.0), ("transfer-seed1", 69.0, 72.0)):
        _result(tmp_path, folder, "nw_ucla-to-msr_action3d", pre, rand)
    names = ["nw_ucla", "msr_action3d"]
    verdicts = accuracy._verdicts(str(tmp_path), names, 3, 3)[2:]
    lines = {line.split(" | ")[1] + line.split(" | ")[0]: line for line in verdicts}
    assert "| 56.0 | 54.0 | +2.0 | pretrained beats random init |" in lines["knn (mean of 3 seeds)| nw_ucla"]
    transfer = lines["transfer (mean of 2 seeds)| nw_ucla-to-msr_action3d"]
    assert "| 69.5 | 71.5 | -2.0 | **random init ahead** |" in transfer
    # the table's own seed alone reads the other way
    one = {line.split(" | ")[1]: line for line in accuracy._verdicts(str(tmp_path), names, 3, 1)[2:]}
    assert "| 50.0 | 60.0 | -10.0 | **random init ahead** |" in one["knn"]
    section = accuracy._frozen_seeds_section(str(tmp_path), names, 3)
    assert "| nw_ucla | knn | 3 | 56.0 (50.0-60.0) | 54.0 (50.0-60.0) |" in section
    assert "| nw_ucla-to-msr_action3d | transfer | 2 | 69.5 (69.0-70.0) | 71.5 (71.0-72.0) |" in section
    assert accuracy._frozen_seeds_section(str(tmp_path), names, 1) == []
