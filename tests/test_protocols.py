"""Protocol runs end to end: the ensemble is the sum of the stream scores, reports merge into
the paper's table, bad input is refused in one line, and every protocol runs on real data
(NW-UCLA, and a transfer from NW-UCLA to MSR Action3D) with the tiny preset."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, SMALL_QUEUE, write_synthetic_dataset

from scdfast.cli import main
from scdfast.config import FinetuneConfig, LinearConfig
from scdfast.errors import ScdError
from scdfast.evaluation.protocols import ProtocolRequest, run_protocol
from scdfast.evaluation.reports import REPORT_SIGNATURE, merge_tables, read_report

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), samples=30, max_frames=120)


def _request(protocol, data, run_dir, **kw):
    defaults = {"preset": "tiny", "random_init": True, "progress": False, "log": lambda *_: None,
                "linear": LinearConfig.tiny(epochs=3), "finetune": FinetuneConfig.tiny(epochs=1)}
    return ProtocolRequest(protocol=protocol, data=str(data), run_dir=str(run_dir), device=CPU, **{**defaults, **kw})


@pytest.mark.parametrize("protocol", ["linear", "knn", "finetune"])
def test_the_ensemble_is_the_sum_of_the_stream_scores(protocol, dataset, tmp_path):
    report = run_protocol(_request(protocol, dataset, tmp_path, streams=("joint", "motion", "bone"), figures=False))
    scores = np.load(tmp_path / "scores.npz")
    streams = [scores[f"random_init__{s}"] for s in ("joint", "motion", "bone")]
    assert not np.allclose(streams[0], streams[1])  # the streams really differ
    np.testing.assert_allclose(scores["random_init__ensemble"], sum(streams), rtol=1e-6)
    ensemble = report["rows"][-1]
    assert ensemble["stream"] == "ensemble" and ensemble["streams"] == ["joint", "motion", "bone"]
    want = 100.0 * (np.argmax(sum(streams), axis=1) == scores["labels"]).mean()
    assert ensemble["top1"] == pytest.approx(want)


def test_reports_merge_into_one_table(dataset, tmp_path):
    (tmp_path / "other_data").mkdir()
    other = write_synthetic_dataset(tmp_path / "other_data", samples=12, max_frames=60)
    run_protocol(_request("knn", dataset, tmp_path / "a", figures=False))
    run_protocol(_request("knn", other, tmp_path / "b", figures=False, k=3))
    run_protocol(_request("semi", dataset, tmp_path / "c", figures=False, label_fraction=0.5))
    table = merge_tables([read_report(str(tmp_path / r)) for r in "abc"])
    lines = table.splitlines()
    assert lines[0] == f"| protocol | {dataset.name} | other_data |"
    knn = next(line for line in lines if line.startswith("| kNN retrieval, random init |"))
    semi = next(line for line in lines if line.startswith("| semi-supervised 50%, random init |"))
    assert knn.endswith(" |  |") and semi.endswith(" |  |")  # each filled in its own dataset's column only
    assert any(line.startswith("| kNN retrieval (k=3), random init |  | ") for line in lines)
    out = tmp_path / "table.md"
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert out.read_text().startswith(REPORT_SIGNATURE + "| protocol |")


def _run(command, *args):
    figures = [] if command == "pretrain" else ["--no-figures"]
    return main([command, *args, "--device", "cpu", "--no-progress", *figures])


def test_bad_input_gives_one_line_errors(dataset, tmp_path, capsys):
    # a checkpoint of another layout: pretrained on 25-joint data, evaluated on 20-joint data
    ntu_run = tmp_path / "pre"
    assert _run("pretrain", "--preset", "tiny", "--data", str(dataset), "--epochs", "1", "--batch-size", "8",
                "--run-dir", str(ntu_run), *SMALL_QUEUE) == 0
    kinect = tmp_path / "kinect"
    kinect.mkdir()
    for split in ("train", "val"):
        np.save(kinect / f"{split}_data_joint.npy", np.random.rand(6, 3, 40, 20, 1).astype(np.float32))
        with open(kinect / f"{split}_label.pkl", "wb") as f:
            pickle.dump(([f"s{i}" for i in range(6)], [0, 1, 2, 0, 1, 2]), f)
    (kinect / "skeleton.json").write_text(json.dumps({"layout": "kinect20"}))
    cases = [
        (["linear", "--data", str(kinect), "--checkpoint", str(ntu_run)], "joints x"),
        (["semi", "--data", str(dataset), "--random-init", "--labels", "0%"], "must be in (0, 1]"),
        (["semi", "--data", str(dataset), "--random-init", "--labels", "120%"], "must be in (0, 1]"),
        (["knn", "--data", str(dataset), "--random-init", "--streams", "joint,hands"], "unknown stream 'hands'"),
    ]
    # a fine-tuned checkpoint (3 classes) on a dataset of 4 classes
    assert _run("finetune", "--preset", "tiny", "--data", str(dataset), "--checkpoint", str(ntu_run), "--epochs", "1",
                "--run-dir", str(tmp_path / "ft")) == 0
    four = tmp_path / "four"
    four.mkdir()
    for name in os.listdir(dataset):
        (four / name).symlink_to(dataset / name)
    (four / "val_label.pkl").unlink()
    names, labels = pickle.loads((dataset / "val_label.pkl").read_bytes())
    with open(four / "val_label.pkl", "wb") as f:
        pickle.dump((names, [3] + labels[1:]), f)
    finetuned = tmp_path / "ft" / "checkpoints" / "pretrained-joint.pt"
    cases.append((["linear", "--data", str(four), "--checkpoint", str(finetuned), "--num-classes", "4"],
                  "its classifier has 3 classes"))
    # another architecture: weights that do not fit the config stored beside them
    payload = torch.load(ntu_run / "checkpoints" / "last.pt", weights_only=True)
    payload["model_config"]["d_model"] = 64
    torch.save(payload, tmp_path / "other_arch.pt")
    cases.append((["knn", "--data", str(dataset), "--checkpoint", str(tmp_path / "other_arch.pt")], "wrong shapes"))
    torch.save({"state_dict": {"backbone.weight": torch.zeros(2)}}, tmp_path / "foreign.pt")
    cases.append((["knn", "--data", str(dataset), "--checkpoint", str(tmp_path / "foreign.pt")], "neither"))
    capsys.readouterr()
    for args, message in cases:
        assert _run(*args, "--preset", "tiny", "--run-dir", str(tmp_path / "r")) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_transfer_needs_a_pretrained_encoder(dataset, tmp_path):
    with pytest.raises(SystemExit):  # argparse: transfer has no --random-init
        main(["transfer", "--data", str(dataset), "--random-init"])
    with pytest.raises(ScdError, match="give --checkpoint"):
        run_protocol(_request("transfer", dataset, tmp_path))


UCLA = SHARED_DATA / "nw_ucla" / "all_sqe"
MSR = SHARED_DATA / "msr_action3d" / "skeleton3d"


def _linked_subset(source, tmp_path, name, every):
    folder = tmp_path / name
    folder.mkdir()
    for file in sorted(os.listdir(source))[::every]:
        (folder / file).symlink_to(source / file)
    return folder


@pytest.mark.skipif(not (UCLA.is_dir() and MSR.is_dir()), reason=f"the real datasets are not in {SHARED_DATA}")
def test_every_protocol_on_real_data(tmp_path):
    """Prepared NW-UCLA (a tenth of the files) through every protocol, and a transfer of its
    pretrained encoder to MSR Action3D; both kinect20, one body."""
    ucla, msr = tmp_path / "nw_ucla", tmp_path / "msr_action3d"
    assert main(["prepare", "ucla", "--raw", str(_linked_subset(UCLA, tmp_path, "u", 10)), "--out", str(ucla),
                 "--no-progress"]) == 0
    assert main(["prepare", "msr3d", "--raw", str(_linked_subset(MSR, tmp_path, "m", 8)), "--out", str(msr),
                 "--skip-bad", "--no-progress"]) == 0
    pre = tmp_path / "pre"
    assert _run("pretrain", "--preset", "tiny", "--data", str(ucla), "--epochs", "1", "--batch-size", "16",
                "--run-dir", str(pre), *SMALL_QUEUE) == 0
    runs = []
    for protocol, extra in (("linear", ["--epochs", "3"]), ("knn", []), ("semi", ["--labels", "10%", "--epochs", "1"]),
                            ("finetune", ["--epochs", "1"])):
        runs.append(tmp_path / protocol)
        cache = ["--feature-cache", str(tmp_path / "cache")] if protocol in ("linear", "knn") else []
        assert _run(protocol, "--preset", "tiny", "--data", str(ucla), "--checkpoint", str(pre), "--random-baseline",
                    "--run-dir", str(runs[-1]), *cache, *extra) == 0
    runs.append(tmp_path / "transfer")
    assert _run("transfer", "--preset", "tiny", "--data", str(msr), "--checkpoint", str(pre), "--epochs", "3",
                "--run-dir", str(runs[-1]), "--feature-cache", str(tmp_path / "cache")) == 0
    reports = [read_report(str(r)) for r in runs]
    assert [r["num_classes"] for r in reports] == [10, 10, 10, 10, 20]
    semi = reports[2]
    assert semi["labelled_samples"] == 10 and reports[3]["labelled_samples"] == semi["train_samples"] == 102
    assert semi["settings"]["trained_epochs"] == 10  # the tiny preset: --epochs 1 x 102/10 labelled
    assert reports[-1]["source"] == str(ucla)
    table = merge_tables(reports)
    assert "| transfer (linear) (standardized) from nw_ucla |  | " in table  # the tiny preset standardizes


def test_a_pretrained_encoders_new_classifier_is_drawn_from_the_seed(dataset, tmp_path):
    from scdfast.config import SCDConfig, preset, to_dict
    from scdfast.data import load_dataset
    from scdfast.data.dataset import model_shape
    from scdfast.evaluation.protocols import _sources
    from scdfast.models import SCDNet

    train, _ = load_dataset(str(dataset))
    config = preset("tiny", SCDConfig, **model_shape(train))
    path = tmp_path / "pre.pt"
    torch.save({"format": "scdfast-pretrain-v1", "model_config": to_dict(config),
                "model": SCDNet(config).state_dict()}, path)

    def classifier(seed, draws):
        torch.rand(draws)  # whatever ran before must not matter
        [make] = _sources(_request("finetune", dataset, tmp_path, random_init=False, checkpoints=(str(path),),
                                   seed=seed), {"train": train}, 3)
        return make().model.fc.weight.detach().clone()
    torch.testing.assert_close(classifier(0, 1), classifier(0, 1000), rtol=0, atol=0)
    assert not torch.equal(classifier(0, 1), classifier(1, 1))
