"""SCD-Net's architecture: parameter counts, token layouts, outputs, queue mechanics."""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scdfast.config import SCDConfig
from scdfast.data.layouts import NTU25
from scdfast.errors import ScdError
from scdfast.models import CTRGCN, DownstreamEncoder, SCDNet


def count(module):
    return sum(p.numel() for p in module.parameters())


def _relative_error(a, b):
    """||a - b|| / ||b||, in float64."""
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


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


def _authors_ctrgc(m, x, a, alpha):
    """CTRGC.forward as the authors' CTR-GCN code writes it: each convolution on every frame,
    the adjacency (N, C, U, V) scaled by alpha, and an einsum."""
    x1, x2, x3 = m.conv1(x).mean(-2), m.conv2(x).mean(-2), m.conv3(x)
    x1 = torch.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))
    x1 = m.conv4(x1) * alpha + a.unsqueeze(0).unsqueeze(0)
    return torch.einsum("ncuv,nctv->nctu", x1, x3)


@pytest.mark.parametrize("in_channels,out_channels", [(3, 16), (16, 12)])
def test_ctrgc_equals_the_authors_computation(in_channels, out_channels):
    from scdfast.models.ctrgcn import CTRGC
    torch.manual_seed(0)
    m = CTRGC(in_channels, out_channels).double()
    x = torch.randn(3, in_channels, 7, 11, dtype=torch.float64, requires_grad=True)
    a = torch.randn(11, 11, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, out_channels, 7, 11, dtype=torch.float64)
    leaves = [x, a, alpha, *m.parameters()]
    ours = torch.autograd.grad(m(x, a, alpha), leaves, grad)
    theirs = torch.autograd.grad(_authors_ctrgc(m, x, a, alpha), leaves, grad)
    torch.testing.assert_close(m(x, a, alpha), _authors_ctrgc(m, x, a, alpha), rtol=1e-12, atol=1e-12)
    for name, g, want in zip(["x", "a", "alpha", *(n for n, _ in m.named_parameters())], ours, theirs):
        torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-10, msg=name)


def _authors_graph_conv(m, x):
    """GraphConv as the authors' unit_gcn computes it: each subset's product on its own, summed,
    BatchNorm, the shortcut added, ReLU."""
    y = sum(_authors_ctrgc(conv, x, m.PA[i], m.alpha) for i, conv in enumerate(m.convs))
    if m.down is None:
        shortcut = x
    else:
        shortcut = m.down[1](torch.nn.functional.conv2d(x, m.down[0].weight, m.down[0].bias))
    return torch.relu(m.bn(y) + shortcut)


def _authors_unit(m, x):
    """TCNGCNUnit as the authors' TCN_GCN_unit: relu(tcn(gcn(x)) + residual(x))."""
    y = m.tcn1(_authors_graph_conv(m.gcn1, x))
    if m.residual is not None:
        y = y + m.residual.bn(torch.nn.functional.conv2d(x, m.residual.conv.weight, m.residual.conv.bias))
    elif m.identity_residual:
        y = y + x
    return torch.relu(y)


def _unit_with_grads(in_channels, out_channels, residual):
    from scdfast.graph import ctrgcn_adjacency
    from scdfast.models.ctrgcn import TCNGCNUnit
    torch.manual_seed(0)
    m = TCNGCNUnit(in_channels, out_channels, torch.tensor(ctrgcn_adjacency(NTU25)), residual=residual).double()
    with torch.no_grad():
        m.gcn1.alpha.fill_(0.5)          # both start at zero: the refinement and the unit's BN
        m.gcn1.bn.weight.normal_(1.0, 0.1)
    return m, torch.randn(3, in_channels, 16, 25, dtype=torch.float64), torch.randn(3, out_channels, 16, 25,
                                                                                    dtype=torch.float64)


def _outputs_and_grads(forward, module, x, grad):
    x = x.clone().requires_grad_()
    y = forward(x)
    return y, torch.autograd.grad(y, [x, *module.parameters()], grad.to(y.dtype))


UNIT_SHAPES = [(3, 16, False), (8, 16, True), (16, 16, True)]  # shortcuts: none, 1x1 convolution, identity


@pytest.mark.parametrize("in_channels,out_channels,residual", UNIT_SHAPES)
def test_units_equal_the_authors_sum_of_subsets(in_channels, out_channels, residual):
    """A unit's three subsets accumulate in place on the CPU, and its ReLUs run in place; in
    float64 its output and every gradient equal the authors' order of operations to 1e-10. The
    biases before a BatchNorm have a zero gradient in exact arithmetic: theirs must be ~0 too."""
    m, x, grad = _unit_with_grads(in_channels, out_channels, residual)
    ours, ours_grads = _outputs_and_grads(m, m, x, grad)
    ref, ref_grads = _outputs_and_grads(lambda t: _authors_unit(m, t), m, x, grad)
    assert _relative_error(ours, ref) < 1e-12
    scale = float(ref_grads[0].norm())
    for name, a, b in zip(["x", *(n for n, _ in m.named_parameters())], ours_grads, ref_grads):
        if float(b.norm()) < 1e-9 * scale:
            assert float(a.norm()) < 1e-9 * scale, name
        else:
            assert _relative_error(a, b) < 1e-10, f"{name}: {_relative_error(a, b):.3g}"


@pytest.mark.parametrize("in_channels,out_channels,residual", UNIT_SHAPES)
def test_units_under_bf16_autocast_match_the_authors_order(in_channels, out_channels, residual):
    """Under bf16 autocast the in-place sums keep autocast's dtypes: against the float64
    reference the output is within 2% and x's gradient no further off than the authors' order
    of operations under the same autocast, with 25% to spare (both read 7-9% here: BatchNorm
    over 3 samples amplifies bf16's rounding; a dropped subset or shortcut reads tens of %)."""
    m, x, grad = _unit_with_grads(in_channels, out_channels, residual)
    ref, ref_grads = _outputs_and_grads(lambda t: _authors_unit(m, t), m, x, grad)
    m32 = copy.deepcopy(m).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ours_grads = _outputs_and_grads(m32, m32, x.float(), grad)
        theirs, their_grads = _outputs_and_grads(lambda t: _authors_unit(m32, t), m32, x.float(), grad)
    assert _relative_error(ours, ref) < 2e-2
    assert _relative_error(ours_grads[0], ref_grads[0]) < 1.25 * _relative_error(their_grads[0], ref_grads[0])


def test_pointwise_conv_is_the_convolution():
    from scdfast.models.ctrgcn import PointwiseConv
    torch.manual_seed(0)
    conv = PointwiseConv(5, 7).double()
    x = torch.randn(3, 5, 9, 11, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 7, 9, 11, dtype=torch.float64)
    leaves = [x, conv.weight, conv.bias]
    ours = torch.autograd.grad(conv(x), leaves, grad)
    reference = torch.nn.functional.conv2d(x, conv.weight, conv.bias)
    torch.testing.assert_close(conv(x), reference, rtol=1e-12, atol=1e-12)
    for g, want in zip(ours, torch.autograd.grad(reference, leaves, grad)):
        torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_narrow_frame_conv_is_the_convolution(dilation, dtype):
    """FrameConv's written-out backward (at most NARROW input channels, on the CPU) against
    conv2d's own in float64: 1e-12 in float64, 2% relative (Frobenius) under bf16 autocast.
    Odd frame and joint counts, unequal channel counts, and a gradient that is a strided slice."""
    from scdfast.models.ctrgcn import FrameConv
    torch.manual_seed(0)
    conv = FrameConv(3, 5, 5, dilation)
    assert conv.in_channels <= FrameConv.NARROW
    x = torch.randn(4, 3, 11, 7)
    grad = torch.randn(4, 10, 11, 7)[:, ::2]
    ours_in, ref_in = x.clone().requires_grad_(), x.double().requires_grad_()
    weight, bias = conv.weight.detach().double().requires_grad_(), conv.bias.detach().double().requires_grad_()
    reference = torch.nn.functional.conv2d(ref_in, weight, bias, padding=(2 * dilation, 0), dilation=(dilation, 1))
    want = torch.autograd.grad(reference, [ref_in, weight, bias], grad.double())
    if dtype == torch.float64:
        conv, ours_in = conv.double(), ours_in.detach().double().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        ours = conv(ours_in)
    assert ours.dtype == dtype
    got = torch.autograd.grad(ours, [ours_in, conv.weight, conv.bias], grad.to(dtype))
    tol = 1e-12 if dtype == torch.float64 else 2e-2
    for name, a, b in zip(("output", "x", "weight", "bias"), [ours, *got], [reference, *want]):
        assert a.shape == b.shape, name
        assert _relative_error(a, b) < tol, f"{name}: {_relative_error(a, b):.3g}"


@pytest.mark.parametrize("values", ["random", "ties"])
def test_temporal_max_pool_is_the_2d_pool(values):
    from scdfast.models.ctrgcn import TemporalMaxPool
    shape = (2, 3, 7, 5)
    x = torch.randn(shape, dtype=torch.float64) if values == "random" else \
        torch.randint(0, 3, shape).double()  # equal neighbours: the gradient goes where the 2-D pool sends it
    x.requires_grad_()
    grad = torch.randn(shape, dtype=torch.float64)
    ours, reference = TemporalMaxPool()(x), torch.nn.functional.max_pool2d(x, (3, 1), stride=1, padding=(1, 0))
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(reference, x, grad)[0],
                               rtol=0, atol=0)


@pytest.mark.parametrize("train", [True, False])
def test_temporal_branches_merged_equal_each_branch_on_its_own(train):
    """MultiScaleTemporalConv computes its four bottlenecks as one convolution and one BatchNorm;
    the branches run one by one, as the authors' module does, give the same outputs, gradients
    and running statistics."""
    import copy

    from scdfast.models.ctrgcn import MultiScaleTemporalConv
    torch.manual_seed(0)
    merged = MultiScaleTemporalConv(12).double().train(train)
    for m in merged.modules():  # non-trivial statistics, so that a mixed-up channel shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    separate = copy.deepcopy(merged)
    x = torch.randn(4, 12, 9, 7, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, 12, 9, 7, dtype=torch.float64)
    ours = merged(x)
    theirs = torch.cat([branch(x.clone()) for branch in separate.branches], dim=1)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    g_ours = torch.autograd.grad(ours, [x, *merged.parameters()], grad)
    g_theirs = torch.autograd.grad(theirs, [x, *separate.parameters()], grad)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for (name, a), b in zip(merged.named_buffers(), separate.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


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


def test_the_key_encoders_attention_projects_with_one_gemm():
    """The key encoder's weights need no grad. Fed batch-first, its attention's input projection
    reached torch.matmul transposed, which under bf16 autocast then ran a batched GEMM against
    the weight copied once per sequence position (44x slower at d 2048). Fed sequence-first,
    no batched GEMM takes any of the transformers' weight matrices."""
    model = SCDNet(SCDConfig.tiny(d_model=64, num_heads=4, queue_size=16))
    encoder = model.key_encoder.encoder
    weights = {tuple(p.shape[::-1]) for part in (encoder.t_encoder, encoder.s_encoder)
               for p in part.parameters() if p.dim() == 2}
    # only inside the transformers: CTR-GCN's 1x1 convolutions are batched GEMMs by design
    operands, inside = [], []
    for part in (encoder.t_encoder, encoder.s_encoder):
        part.register_forward_pre_hook(lambda module, args: inside.append(module))
        part.register_forward_hook(lambda module, args, out: inside.remove(module))

    class BatchedGemms(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if inside and func in (torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default):
                operands.extend(tuple(a.shape[1:]) for a in args if isinstance(a, torch.Tensor) and a.dim() == 3)
            return func(*args, **(kwargs or {}))

    x = torch.randn(2, 3, model.config.window, 25, 2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), BatchedGemms():
        model.encode_keys(x)
    assert operands, "the attention's score GEMMs were not seen"
    assert not weights & set(operands), f"a weight matrix went into a batched GEMM: {weights & set(operands)}"



@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_cpu_reductions_equal_plain_autograd(dtype):
    """frame_mean and batched_affine reduce bf16 on the CPU their own way, forward and backward
    (their docstrings say why); against x.mean and an einsum in float64 they agree to rounding:
    1e-12 in float64, 2% relative in bf16 (bf16 rounds at 0.4%; a dropped or doubled term reads
    far more). Odd sizes, and both shift shapes, (out, 1) and (out, L)."""
    from scdfast.models.ctrgcn import batched_affine, frame_mean
    torch.manual_seed(0)
    tol = 1e-12 if dtype == torch.float64 else 2e-2
    x = torch.randn(5, 6, 7, 11)
    grad = torch.randn(5, 6, 1, 11)
    ours_in, ref_in = x.to(dtype).requires_grad_(), x.double().requires_grad_()
    ours, ref = frame_mean(ours_in), ref_in.mean(-2, keepdim=True)
    assert ours.shape == ref.shape and ours.dtype == dtype
    assert _relative_error(ours, ref) < tol
    assert _relative_error(torch.autograd.grad(ours, ours_in, grad.to(dtype))[0],
                           torch.autograd.grad(ref, ref_in, grad.double())[0]) < tol
    for width in (1, 13):
        leaves = [torch.randn(5, 6, 13), torch.randn(4, 6), torch.randn(4, width)]
        grad = torch.randn(5, 4, 13)
        ours_in = [t.to(dtype).requires_grad_() for t in leaves]
        ref_in = [t.double().requires_grad_() for t in leaves]
        ours = batched_affine(*ours_in)
        ref = torch.einsum("oc,ncl->nol", ref_in[1], ref_in[0]) + ref_in[2]
        assert _relative_error(ours, ref) < tol
        for name, a, b in zip(("x", "weight", "shift"), torch.autograd.grad(ours, ours_in, grad.to(dtype)),
                              torch.autograd.grad(ref, ref_in, grad.double())):
            assert a.shape == b.shape, name
            assert _relative_error(a, b) < tol, f"{name} (shift width {width}): {_relative_error(a, b):.3g}"


def test_pairwise_difference_is_the_broadcast_subtraction_bit_for_bit():
    """The topology's bf16 difference, subtracted in float on the CPU: the plain broadcast
    subtraction's values and both gradients bit for bit, at odd shapes and over six decades."""
    from scdfast.models.ctrgcn import pairwise_difference
    torch.manual_seed(0)
    for shape in ((5, 3, 7), (2, 8, 25), (1, 1, 1)):
        for scale in (1e-3, 1.0, 1e3):
            leaves = [(torch.randn(shape) * scale).bfloat16() for _ in range(2)]
            grad = (torch.randn(*shape, shape[-1]) * scale).bfloat16()
            ours_in = [t.clone().requires_grad_() for t in leaves]
            ref_in = [t.clone().requires_grad_() for t in leaves]
            ours = pairwise_difference(*ours_in)
            ref = ref_in[0].unsqueeze(-2) - ref_in[1].unsqueeze(-1)
            assert type(ours.grad_fn).__name__ == "_PairwiseDifferenceBackward", "the fast path was not taken"
            assert ours.dtype == torch.bfloat16 and torch.equal(ours, ref)
            for a, b in zip(torch.autograd.grad(ours, ours_in, grad), torch.autograd.grad(ref, ref_in, grad)):
                assert torch.equal(a, b)


def _two_bf16_steps(batch: int = 4) -> dict:
    """The state after two bf16 pretraining steps of a tiny SCDNet whose graph convolutions'
    alpha is 0.4: at its initial 0 no gradient reaches the topology's relation convolutions."""
    import scdfast.models.ctrgcn as ctrgcn
    from scdfast.train.step import PretrainStep

    torch.manual_seed(0)
    model = SCDNet(SCDConfig.tiny(queue_size=256))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ctrgcn.GraphConv):
                m.alpha.fill_(0.4)
    optimizer = torch.optim.SGD(model.query_encoder.parameters(), lr=0.05, momentum=0.9)
    step = PretrainStep(model, optimizer, torch.device("cpu"), compile_mode="off", precision="bf16")
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        step(*(torch.randn(batch, 3, model.config.window, 25, 2, generator=g) for _ in range(2)))
    return model.state_dict()


def _differing(a: dict, b: dict) -> list[str]:
    return [k for k in b if not torch.equal(a[k], b[k])]


def test_the_bf16_step_is_bit_for_bit_the_plain_subtractions(monkeypatch):
    """Two bf16 pretraining steps with the CPU's pairwise difference and with the plain
    subtraction leave every weight, buffer and queue the same, bit for bit."""
    import scdfast.models.ctrgcn as ctrgcn

    # the comparison means nothing unless every difference of the step takes the float path
    real, real_forward, calls, floats = ctrgcn.pairwise_difference, ctrgcn._PairwiseDifference.forward, [], []
    monkeypatch.setattr(ctrgcn, "pairwise_difference", lambda x1, x2: calls.append(1) or real(x1, x2))
    monkeypatch.setattr(ctrgcn._PairwiseDifference, "forward",
                        staticmethod(lambda ctx, x1, x2: floats.append(1) or real_forward(ctx, x1, x2)))
    fast = _two_bf16_steps()
    assert calls and len(floats) == len(calls), f"{len(floats)} of {len(calls)} differences took the float path"
    monkeypatch.setattr(ctrgcn, "pairwise_difference", lambda x1, x2: x1.unsqueeze(-2) - x2.unsqueeze(-1))
    plain = _two_bf16_steps()
    assert not _differing(fast, plain), _differing(fast, plain)


@pytest.mark.parametrize("batch", [4, 64])
def test_the_bf16_step_is_bit_for_bit_the_separate_relation_convolutions(monkeypatch, batch):
    """Two bf16 pretraining steps with every graph convolution's conv1 and conv2 as one GEMM
    and with the six convolutions apart leave every weight, buffer and queue the same, bit for
    bit, at the quick start's batch and a small one."""
    import scdfast.models.ctrgcn as ctrgcn

    real, merged = ctrgcn.shared_input_convs, []

    def counted(x, convs):
        out = real(x, convs)
        merged.append(out is not None)
        return out

    monkeypatch.setattr(ctrgcn, "shared_input_convs", counted)
    fast = _two_bf16_steps(batch)
    monkeypatch.setattr(ctrgcn, "shared_input_convs", lambda x, convs: None)
    plain = _two_bf16_steps(batch)
    assert not _differing(fast, plain), _differing(fast, plain)
    # 2 backbones x 3 units, in the query's forward and the key's, 2 steps
    assert len(merged) == 24
    if not any(merged):
        pytest.skip("merge_is_exact declined every shape: this CPU's kernels round otherwise, or "
                    "_SharedInputConvs no longer computes the separate convolutions' bits")
    assert all(merged), f"{sum(merged)} of {len(merged)} graph convolutions took one GEMM"


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_shared_input_convs_are_the_separate_convolutions_bit_for_bit(x_dtype):
    """Under bf16 autocast, `shared_input_convs` gives each 1x1 convolution's output and the
    input, weight and bias gradients of the convolutions run apart, bit for bit, at odd shapes
    and at the tiny encoder's; in fp32 it declines (None) where gradients are recorded."""
    from scdfast.models.ctrgcn import shared_input_convs
    torch.manual_seed(0)
    shapes, apart = ((5, 3, 11, 3, 4), (128, 3, 25, 8, 6), (128, 16, 25, 2, 6), (64, 64, 25, 8, 6)), 0
    for n, c, v, width, pieces in shapes:
        convs = [torch.nn.Conv2d(c, width, 1) for _ in range(pieces)]
        copies = copy.deepcopy(convs)
        x = torch.randn(n, c, 1, v).to(x_dtype)
        grads = [torch.randn(n, width, v).bfloat16() for _ in range(pieces)]
        ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        assert shared_input_convs(ours_x, convs) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            # through a copy, as a layer's input arrives: autocast casts a leaf once for all six
            ours = shared_input_convs(ours_x.clone(), convs)
            ref_input = ref_x.clone()
            ref = [conv(ref_input).squeeze(-2) for conv in copies]
        if ours is None:  # this CPU's kernels round otherwise at this shape: the caller runs them apart
            apart += 1
            continue
        assert type(ours[0].grad_fn).__name__ == "SplitBackward0", "the one-GEMM path was not taken"
        for a, b in zip(ours, ref):
            assert a.dtype == torch.bfloat16 and torch.equal(a, b)
        torch.autograd.backward(ours, grads)
        torch.autograd.backward(ref, grads)
        assert ours_x.grad.dtype == x_dtype and torch.equal(ours_x.grad, ref_x.grad), (n, c, width)
        for a, b in zip(convs, copies):
            assert torch.equal(a.weight.grad, b.weight.grad) and torch.equal(a.bias.grad, b.bias.grad), (n, c, width)
    if apart == len(shapes):
        pytest.skip("merge_is_exact declined every shape: this CPU's kernels round otherwise, or "
                    "_SharedInputConvs no longer computes the separate convolutions' bits")


def test_a_merge_that_rounds_otherwise_is_not_taken(monkeypatch):
    """Where the one-GEMM path's bits differ from the separate convolutions' (here made to by
    a bf16 ulp in its forward), the check finds it and `shared_input_convs` declines."""
    import scdfast.models.ctrgcn as ctrgcn
    real = ctrgcn._SharedInputConvs.forward
    monkeypatch.setattr(ctrgcn._SharedInputConvs, "forward",
                        staticmethod(lambda ctx, *a: real(ctx, *a) * (1 + 2.0**-7)))
    ctrgcn.merge_is_exact.cache_clear()
    try:
        convs = [torch.nn.Conv2d(16, 2, 1) for _ in range(6)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert ctrgcn.shared_input_convs(torch.randn(8, 16, 1, 25).requires_grad_().clone(), convs) is None
    finally:
        ctrgcn.merge_is_exact.cache_clear()


def test_shared_input_convs_without_gradients_are_the_separate_fp32_convolutions():
    """In fp32 without gradients (evaluation features, the key encoder) every output is the
    separate convolution's, bit for bit, at odd shapes, the evaluation batch and the step's."""
    from scdfast.models.ctrgcn import shared_input_convs
    torch.manual_seed(0)
    shapes, apart = ((5, 3, 11, 3, 4), (64, 3, 25, 8, 6), (64, 32, 25, 4, 6), (128, 64, 25, 8, 6)), 0
    for n, c, v, width, pieces in shapes:
        convs = [torch.nn.Conv2d(c, width, 1) for _ in range(pieces)]
        x = torch.randn(n, c, 1, v)
        with torch.no_grad():
            ours = shared_input_convs(x, convs)
            ref = [conv(x).squeeze(-2) for conv in convs]
        if ours is None:  # this CPU's merged convolution rounds otherwise at this shape
            apart += 1
            continue
        assert len(ours) == pieces
        for a, b in zip(ours, ref):
            assert torch.equal(a, b), (n, c, width)
    if apart == len(shapes):
        pytest.skip("this CPU's merged convolution does not give the separate ones' bits at any of these shapes")


def test_shared_input_convs_values_against_float64():
    """The GEMM and its three gradients against plain float64 arithmetic (1e-12)."""
    from scdfast.models.ctrgcn import _SharedInputConvs
    torch.manual_seed(0)
    n, c, v, width, pieces = 6, 5, 9, 3, 4
    leaves = [torch.randn(n, c, v), torch.randn(pieces * width, c), torch.randn(pieces * width)]
    ours_in = [t.double().requires_grad_() for t in leaves]
    ref_in = [t.double().requires_grad_() for t in leaves]
    ours = _SharedInputConvs.apply(*ours_in, width)
    ref = torch.einsum("kc,ncv->nkv", ref_in[1], ref_in[0]) + ref_in[2].view(1, -1, 1)
    grad = torch.randn(n, pieces * width, v, dtype=torch.float64)
    assert _relative_error(ours, ref) < 1e-12
    for name, a, b in zip(("x", "weight", "bias"), torch.autograd.grad(ours, ours_in, grad),
                          torch.autograd.grad(ref, ref_in, grad)):
        assert a.shape == b.shape and _relative_error(a, b) < 1e-12, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uniform_dropout_is_dropout(dtype):
    """The transformers' dropouts draw their CPU masks as rand >= p: each element kept with
    probability 1 - p (within 5 standard errors over 2e5 draws), kept ones scaled by 1/(1-p),
    the gradient through the same mask, the same mask for the same seed, identity in eval."""
    from scdfast.models.encoder import UniformDropout
    p, n = 0.3, 200_000
    drop = UniformDropout(p)
    x = (torch.rand(n) + 0.5).to(dtype).requires_grad_()
    torch.manual_seed(5)
    y = drop(x)
    kept = y != 0
    assert y.dtype == dtype
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    torch.testing.assert_close(y[kept].double(), (x[kept] / (1 - p)).double(), rtol=1e-2, atol=0)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    torch.testing.assert_close(grad.double(), kept.double() / (1 - p), rtol=1e-2, atol=0)
    torch.manual_seed(5)
    assert torch.equal(drop(x), y)
    assert torch.equal(drop.eval()(x), x)
    layers = SCDNet(SCDConfig.tiny()).query_encoder.encoder.t_encoder.layers
    assert all(isinstance(m, UniformDropout) for layer in layers for m in (layer.dropout, layer.dropout1, layer.dropout2))
