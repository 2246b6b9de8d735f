"""SCD-Net's architecture: parameter counts, token layouts, outputs, queue mechanics."""
import pytest
import torch

from scdfast.config import SCDConfig
from scdfast.errors import ScdError
from scdfast.models import CTRGCN, DownstreamEncoder, SCDNet


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_model():
    return SCDNet(SCDConfig.paper())


def test_paper_parameter_counts(paper_model):
    enc = paper_model.query_encoder
    assert count(enc) == 92_017_840
    parts = {"gcn_t": 363_928, "gcn_s": 363_928, "channel_t": 10_756_096, "channel_s": 12_591_104,
             "t_encoder": 25_186_304, "s_encoder": 25_186_304}
    for name, n in parts.items():
        assert count(getattr(enc.encoder, name)) == n, name
    assert (count(enc.t_proj), count(enc.s_proj), count(enc.i_proj)) == (4_458_624, 4_458_624, 8_652_928)
    assert all(not p.requires_grad for p in paper_model.key_encoder.parameters())
    for queue in paper_model.queues:
        assert queue.shape == (8192, 128)
        torch.testing.assert_close(queue.norm(dim=1), torch.ones(8192))


def test_paper_config_values():
    c = SCDConfig.paper()
    assert (c.d_model, c.num_heads, c.num_layers, c.proj_dim, c.queue_size, c.temperature, c.momentum) == \
        (2048, 8, 1, 128, 8192, 0.2, 0.999)


def test_query_encoder_outputs(rng):
    config = SCDConfig.tiny()
    model = SCDNet(config)
    x = torch.from_numpy(rng.standard_normal((3, 3, config.window, 25, 2)).astype("float32"))
    zt, zs, zi = model.query_encoder(x)
    assert zt.shape == zs.shape == zi.shape == (3, config.proj_dim)
    assert not torch.allclose(zt, zs)


def test_token_layouts_match_the_papers_rearrangement():
    """The temporal token of frame t holds (body, joint, channel) in that order and the
    spatial token of (body m, joint v) holds (frame, channel): checked element by element."""
    config = SCDConfig.tiny(d_model=8, num_heads=2)
    model = DownstreamEncoder(config, 5).eval()
    captured = {}
    model.encoder.channel_t.register_forward_hook(lambda m, i, o: captured.__setitem__("t", i[0]))
    model.encoder.channel_s.register_forward_hook(lambda m, i, o: captured.__setitem__("s", i[0]))
    x = torch.randn(2, 3, config.window, 25, 2)
    model.features(x)
    ft, fs = model.encoder.gcn_t(x), model.encoder.gcn_s(x)                        # (B M), C, T, V
    c, t, v, m = config.gcn_channels, config.window, 25, 2
    for b, tt, mm, vv, cc in [(0, 0, 0, 0, 0), (1, 5, 1, 17, 3), (1, t - 1, 0, 24, c - 1)]:
        assert captured["t"][b, tt, (mm * v + vv) * c + cc] == ft[b * m + mm, cc, tt, vv]
        assert captured["s"][b, mm * v + vv, tt * c + cc] == fs[b * m + mm, cc, tt, vv]


def test_downstream_feature_is_concat_of_clues():
    config = SCDConfig.tiny()
    model = DownstreamEncoder(config, 7).eval()
    x = torch.randn(2, 3, config.window, 25, 2)
    with torch.no_grad():
        vt, vs = model.encoder(x)
        torch.testing.assert_close(model.features(x), torch.cat([vt, vs], 1))
        assert model(x).shape == (2, 7)


def test_ctrgcn_keeps_frames_and_joints():
    out = CTRGCN(8)(torch.randn(2, 3, 16, 25, 2))
    assert out.shape == (4, 8, 16, 25)


def test_enqueue_wraps_and_pointer_stays_on_device():
    config = SCDConfig.tiny(queue_size=12)
    model = SCDNet(config)
    for step in range(4):
        keys = tuple(torch.full((4, config.proj_dim), float(step * 10 + i)) for i in range(3))
        model.enqueue(keys)
    # 4 batches of 4 into 12 rows: rows 0-3 hold step 3, rows 4-7 step 1, rows 8-11 step 2
    temporal, spatial, instance = model.queues
    assert temporal[0, 0] == 30 and spatial[5, 0] == 11 and instance[9, 0] == 22
    assert int(model.banks["temporal"].ptr) == 4 and model.banks["temporal"].ptr.dtype == torch.long


def test_momentum_update_is_an_ema():
    config = SCDConfig.tiny(momentum=0.9)
    model = SCDNet(config)
    q = next(model.query_encoder.parameters())
    k = next(model.key_encoder.parameters())
    with torch.no_grad():
        q.add_(1.0)
    before = k.clone()
    model.momentum_update()
    torch.testing.assert_close(k, 0.9 * before + 0.1 * q)


@pytest.mark.parametrize("field,value", [("window", 50), ("gcn_channels", 6), ("temperature", 0.0),
                                         ("momentum", 1.0), ("num_heads", 3)])
def test_bad_config_is_named(field, value):
    with pytest.raises(ScdError, match=field):
        SCDConfig.tiny(**{field: value})


def test_a_backbone_for_the_wrong_joint_count_is_a_user_error():
    with pytest.raises(ScdError, match="layout ntu25 has 25 joints, config asks 20"):
        CTRGCN(base_channels=8, num_joints=20)


def test_clues_are_fp32_unit_vectors_under_bf16_autocast():
    """The model's encoders and the training step normalise the same way (one helper)."""
    model = SCDNet(SCDConfig.tiny(queue_size=16))
    x = torch.randn(2, 3, model.config.window, 25, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        clues = model.encode_queries(x) + model.encode_keys(x)
    for z in clues:
        assert z.dtype == torch.float32
        torch.testing.assert_close(z.norm(dim=1), torch.ones(2))
