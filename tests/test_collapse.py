"""The collapse monitor: its readings against a float64 NumPy reference, its verdicts on
collapsed and spread batches, and how a pretraining run reports it (steps.csv, report.json,
one warning on entering collapse)."""
import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_QUEUE, write_synthetic_dataset

from scdfast.cli import main
from scdfast.errors import ScdError
from scdfast.train import collapse
from scdfast.train.collapse import COLLAPSE_STD, FIELDS, CollapseReading
from scdfast.train.rundir import MetricsCSV
from scdfast.train.run_log import STEP_FIELDS
from scdfast.train.step import PretrainStep


def reference(units, features):
    """float64 NumPy: std x sqrt(dim) and RankMe per head, ||std|| / ||mean|| of the features."""
    out = []
    for u in units:
        u = u.double().numpy()
        out.append(u.std(axis=0, ddof=1).mean() * math.sqrt(u.shape[1]))
    for u in units:
        s = np.linalg.svd(u.double().numpy(), compute_uv=False)
        p = s / s.sum() + 1e-7
        out.append(math.exp(-(p * np.log(p)).sum()))
    f = features.double().numpy()
    out.append(np.linalg.norm(f.std(axis=0, ddof=1)) / np.linalg.norm(f.mean(axis=0)))
    return np.array(out)


@pytest.mark.parametrize("n,d,f", [(37, 19, 23), (64, 64, 256), (5, 128, 2)])
def test_readings_equal_the_float64_reference(n, d, f):
    g = torch.Generator().manual_seed(n * d)
    units = tuple(F.normalize(torch.randn(n, d, generator=g) + 0.5 * torch.randn(d, generator=g), dim=1)
                  for _ in range(3))
    features = torch.randn(n, f, generator=g).abs() + 0.3
    got = collapse.readings(units, features).double().numpy()
    np.testing.assert_allclose(got, reference(units, features), rtol=2e-5, atol=1e-6)


def test_a_collapsed_batch_is_flagged_and_a_spread_one_is_not():
    g = torch.Generator().manual_seed(0)
    d = 64
    direction = torch.randn(d, generator=g)
    collapsed = F.normalize(direction + 1e-3 * torch.randn(128, d, generator=g), dim=1)
    spread = F.normalize(torch.randn(128, d, generator=g), dim=1)
    features = torch.rand(128, 32, generator=g)
    reading = CollapseReading.from_values(7, collapse.readings((spread, spread, collapsed), features).tolist(), 128, d)
    assert reading.collapsed and reading.collapsed_heads == ["instance"]
    assert reading.std[2] < 0.01 and reading.rankme[2] < 1.5
    # unit vectors spread over the sphere: std about 1/sqrt(dim) per dimension, rank near dim
    assert abs(reading.std[0] - 1.0) < 0.05 and reading.rankme[0] > 0.8 * d
    assert "instance" in reading.warning() and "step 7" in reading.warning()
    healthy = CollapseReading.from_values(7, collapse.readings((spread,) * 3, features).tolist(), 128, d)
    assert not healthy.collapsed and "no collapse" in healthy.describe()


def test_nan_reads_as_collapse_and_the_dict_round_trips():
    values = [0.5, float("nan"), 0.6, 10.0, 11.0, 12.0, 0.3]
    reading = CollapseReading.from_values(3, values, 64, 128)
    assert reading.collapsed_heads == ["spatial"]
    again = CollapseReading.from_dict(json.loads(json.dumps(reading.as_dict())))
    assert again.step == 3 and again.rankme == reading.rankme and again.samples == 64


def test_an_older_runs_csv_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("step,loss\n10,27.5\n")
    log = MetricsCSV(str(path), STEP_FIELDS)
    log.write(step=20, loss="27.0", **dict.fromkeys(FIELDS, "0.5"))
    log.close()
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == STEP_FIELDS
    assert (rows[0]["step"], rows[0]["loss"], rows[0]["std_temporal"]) == ("10", "27.5", "")
    assert rows[1]["rankme_instance"] == "0.5"
    (tmp_path / "other.csv").write_text("step,accuracy\n1,2\n")
    with pytest.raises(ScdError, match="other.csv: column 'accuracy'"):
        MetricsCSV(str(tmp_path / "other.csv"), STEP_FIELDS)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), max_frames=120)


def _pretrain(dataset, run_dir, *extra):
    return main(["pretrain", "--preset", "tiny", "--data", str(dataset), "--epochs", "2", "--batch-size", "8",
                 "--device", "cpu", "--run-dir", str(run_dir), "--no-progress", "--log-every", "1", *SMALL_QUEUE,
                 *extra])


def test_every_log_interval_records_the_readings(dataset, tmp_path, capsys):
    assert _pretrain(dataset, tmp_path / "run") == 0
    rows = list(csv.DictReader((tmp_path / "run" / "steps.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert all(math.isfinite(float(r[f])) for r in rows for f in FIELDS)
    report = json.loads((tmp_path / "run" / "report.json").read_text())["collapse"]
    assert report["step"] == 6 and report["samples"] == 8 and report["dim"] == 64
    assert [report[f] for f in FIELDS] == pytest.approx([float(rows[-1][f]) for f in FIELDS], rel=1e-3)
    assert "collapse monitor at step 6: projection std x sqrt(dim)" in capsys.readouterr().out


def test_a_run_warns_once_on_entering_collapse(dataset, tmp_path, monkeypatch, capsys):
    # readings forced per step: healthy, collapsed twice, healthy, collapsed again
    script = iter([0.5, 0.01, 0.01, 0.5, 0.02, 0.5])

    def forced(self):
        std = next(script)
        return torch.tensor([std, 0.5, 0.5, 10.0, 10.0, 10.0, 0.3])
    monkeypatch.setattr(PretrainStep, "collapse_readings", forced)
    assert _pretrain(dataset, tmp_path / "run") == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: collapse")]
    assert [w.split(":")[1] for w in warnings] == [" collapse at step 2", " collapse at step 5"]
    assert f"below {COLLAPSE_STD}" in warnings[0] and "temporal" in warnings[0]
