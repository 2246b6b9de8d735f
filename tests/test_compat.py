"""Loading the authors' checkpoints: a state dict built from official_state_dict.tsv."""
import pathlib

import pytest
import torch

from scdfast.compat import load_official_checkpoint, load_official_downstream
from scdfast.errors import ScdError

TSV = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official_state_dict.tsv"
pytestmark = pytest.mark.skipif(not TSV.exists(), reason=f"{TSV} is absent (../shared not beside the checkout)")

_DTYPES = {"float32": torch.float32, "int64": torch.int64}
_QUEUES = {"t": "temporal", "s": "spatial", "i": "instance"}


def official_state(generator):
    state = {}
    for line in TSV.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        if _DTYPES[dtype] == torch.int64:
            state[key] = torch.randint(0, 64, shape, generator=generator)
        elif key.endswith("running_var"):  # a variance is positive
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.02
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    g = torch.Generator().manual_seed(1234)
    state = official_state(g)
    for name in ("t", "s", "i"):
        state[f"{name}_queue_ptr"] = torch.tensor([128])
    path = tmp_path_factory.mktemp("official") / "checkpoint_0450.pth.tar"
    torch.save({"epoch": 451, "state_dict": state, "optimizer": {}}, path)
    return path, state


def test_every_tensor_lands_where_the_authors_had_it(checkpoint):
    path, state = checkpoint
    model = load_official_checkpoint(path)
    ours = model.state_dict()
    for key, value in state.items():
        if key.endswith("_queue"):
            torch.testing.assert_close(ours[f"{_QUEUES[key[0]]}_queue"], value.t(), rtol=0, atol=0)
        elif key.endswith("_queue_ptr"):
            assert int(ours[f"{_QUEUES[key[0]]}_queue_ptr"]) == 128
        else:
            target = key.replace("encoder_q.", "query_encoder.", 1).replace("encoder_k.", "key_encoder.", 1)
            torch.testing.assert_close(ours[target], value, rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 25, 2)
        outputs = model.query_encoder(x)
    assert all(o.shape == (2, 128) and torch.isfinite(o).all() for o in outputs)


def test_pretraining_checkpoint_loads_as_downstream_encoder(checkpoint):
    path, state = checkpoint
    model = load_official_downstream(path, num_classes=60)
    torch.testing.assert_close(model.encoder.channel_t[0].weight, state["encoder_q.encoder.channel_t.0.weight"])
    assert model.fc.out_features == 60


def test_missing_unexpected_and_misshapen_keys_are_named(checkpoint, tmp_path):
    _, state = checkpoint
    broken = dict(state)
    del broken["encoder_q.encoder.gcn_t.l1.gcn1.PA"]
    broken["encoder_q.extra.weight"] = torch.zeros(1)
    broken["encoder_k.t_proj.2.bias"] = torch.zeros(64)
    path = tmp_path / "broken.pth.tar"
    torch.save({"state_dict": broken}, path)
    with pytest.raises(ScdError) as err:
        load_official_checkpoint(path)
    message = str(err.value)
    assert "missing keys: query_encoder.encoder.gcn_t.l1.gcn1.PA" in message
    assert "unexpected keys: query_encoder.extra.weight" in message
    assert "key_encoder.t_proj.2.bias (64,) (expected (128,))" in message
    assert "\n" not in message


def test_absent_or_foreign_file(tmp_path):
    with pytest.raises(ScdError, match="no such file"):
        load_official_checkpoint(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ScdError, match="cannot be read"):
        load_official_checkpoint(junk)


def test_diagnose_reads_the_authors_pretraining_checkpoint(checkpoint, capsys):
    from scdfast.cli import main

    path, _ = checkpoint
    assert main(["diagnose", str(path), "--data", "synthetic", "--samples", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "the authors' pretraining checkpoint; 4 samples of synthetic" in out and "verdict: " in out
