"""The losses as a library: SupCon against the paper's equation, a learnable temperature's
gradient from the fused pass, every reduction, pytorch-metric-learning's per-pair NT-Xent,
the modules' conventions, the memory bank, and bad input refused before any compute."""
import math

import pytest
import torch
import torch.nn.functional as F

from scdfast import losses
from scdfast.errors import ScdError
from scdfast.losses import clip_loss, infonce, nt_xent, nt_xent_pairs, positive_pairs, reference, scd_loss, supcon
from scdfast.nn import ClipLoss, InfoNCELoss, MemoryBank, NTXentLoss, SCDLoss, SupConLoss

pytest.importorskip("triton")

from fused_compare import compare, unit  # noqa: E402 - after the skip: the tests need triton

PRECISIONS = ["ieee", "bf16"]


def kernel_precision(precision):
    return "tf32" if precision == "bf16" else precision


def supcon_from_the_equation(features, labels, temperature):
    """Khosla et al. 2020, eq. 2, term by term: for each anchor i of the N * V views,
    -1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p / T) / sum_{a in A(i)} exp(z_i.z_a / T)), with
    A(i) every view but i and P(i) the views of i's label in A(i); the mean over the anchors
    that have a positive."""
    n, views, _ = features.shape
    z = [F.normalize(features[s, v], dim=0) for v in range(views) for s in range(n)]
    label = [int(labels[s]) for v in range(views) for s in range(n)]
    total, anchors = 0.0, 0
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if label[p] == label[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(z[i] @ z[a] / temperature) for a in others)
        total = total - sum(torch.log(torch.exp(z[i] @ z[p] / temperature) / denominator) for p in positives) / len(positives)
        anchors += 1
    return total / anchors


def ntxent_pairs_from_the_formula(embeddings, labels, temperature):
    """pytorch-metric-learning's NT-Xent, pair by pair: for (a, p) of one label,
    -log(exp(s_ap) / (exp(s_ap) + sum over rows n of other labels exp(s_an))), s = cos / T."""
    z = F.normalize(embeddings, dim=1)
    m = len(z)
    terms = []
    for a in range(m):
        for p in range(m):
            if a == p or labels[a] != labels[p]:
                continue
            s_ap = z[a] @ z[p] / temperature
            negatives = [torch.exp(z[a] @ z[j] / temperature) for j in range(m) if labels[j] != labels[a]]
            terms.append(-torch.log(torch.exp(s_ap) / (torch.exp(s_ap) + sum(negatives, torch.zeros(())))))
    return torch.stack(terms).mean()


# ---- SupCon ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("views", [1, 2, 3])
def test_supcon_reference_is_the_papers_equation(views):
    n, d = 7, 12
    features = torch.randn(n, views, d, dtype=torch.float64)
    labels = torch.tensor([0, 3, 0, 3, 3, 5, 9])  # 5 and 9 once: with one view, no positive
    want = supcon_from_the_equation(features, labels, 0.3)
    got = supcon(features, labels, 0.3, backend="torch", normalize=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("views,n,d", [(1, 9, 20), (2, 7, 33), (3, 5, 16)])
def test_fused_supcon_equals_the_reference(views, n, d, precision, device):
    labels = torch.randint(0, 3, (n,)).to(device)
    labels[-1] = 99  # a label seen once
    temperature = 0.2
    # the temperature's gradient is a mean over anchors of terms up to 2 / T^2 (unit features)
    # that cancel: in fp32 it is resolved to an ulp of that scale, not of itself. Seed 2453194339
    # read 0.347 with the kernel's relative error 1.29e-6 (4.5e-7 absolute) where plain PyTorch's
    # draw was 9e-8 and the bound 1.19e-6; over 600 draws of the three shapes the kernel's
    # absolute error reached 0.29 of the one ulp (2**-23 * 2 / T^2) now allowed
    atol = 2.0 ** -23 * 2 / temperature**2 if precision == "ieee" else 0.0
    compare(lambda f, t: supcon(f, labels, t, backend="triton", precision=kernel_precision(precision), normalize=True),
            lambda f, t: supcon(f, labels.cpu().to(f.device), t, backend="torch", normalize=True),
            [torch.randn(n, views, d, dtype=torch.float64), torch.tensor(temperature, dtype=torch.float64)], precision,
            device, grad_atol={1: atol})


@pytest.mark.parametrize("precision", PRECISIONS)
def test_nt_xent_with_labels_is_supcon_over_two_views(precision, device):
    n, d = 8, 24
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0], device=device)
    compare(lambda a, b: nt_xent(a, b, 0.4, backend="triton", labels=labels, normalize=True,
                                 precision=kernel_precision(precision)),
            lambda a, b: supcon(torch.stack([F.normalize(a, dim=1), F.normalize(b, dim=1)], 1), labels.cpu().to(a.device),
                                0.4, backend="torch"),
            [unit(n, d), unit(n, d)], precision, device)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_clip_with_labels_counts_every_same_label_pair(precision, device):
    n, d = 9, 16
    labels = torch.tensor([4, 4, 1, 2, 4, 1, 0, 3, 2], device=device)
    compare(lambda a, b: clip_loss(a, b, 0.1, backend="triton", labels=labels, precision=kernel_precision(precision)),
            lambda a, b: clip_loss(a, b, 0.1, backend="torch", labels=labels.cpu().to(a.device)),
            [unit(n, d), unit(n, d)], precision, device)


def test_clip_labels_reference_from_its_definition():
    a, b = unit(5, 8), unit(5, 8)
    labels = torch.tensor([0, 1, 0, 2, 1])
    logits = a @ b.t() / 0.1
    want = 0.0
    for logits_ in (logits, logits.t()):
        for i in range(5):
            same = [j for j in range(5) if labels[j] == labels[i]]
            want += (torch.logsumexp(logits_[i], 0) - logits_[i, same].mean()) / 10
    torch.testing.assert_close(clip_loss(a, b, 0.1, backend="torch", labels=labels), want)


# ---- a learnable temperature ---------------------------------------------------------------------

TEMPERATURE_CASES = {
    "infonce": (lambda t, q, k, queue, **kw: infonce(q, k, queue, t, normalize=True, **kw), [(6, 16), (6, 16), (37, 16)]),
    "nt_xent": (lambda t, a, b, **kw: nt_xent(a, b, t, **kw), [(7, 20), (7, 20)]),
    "supcon": (lambda t, f, **kw: supcon(f.reshape(5, 2, 12), torch.tensor([0, 1, 0, 1, 2], device=f.device), t, **kw),
               [(10, 12)]),
    "clip": (lambda t, a, b, **kw: clip_loss(a, b, logit_scale=1 / t, **kw), [(6, 16), (6, 16)]),
    "scd": (lambda t, *x, **kw: scd_loss(x[:3], x[3:6], x[6:], t, normalize=True, **kw),
            [(5, 16)] * 6 + [(40, 16)] * 3),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", sorted(TEMPERATURE_CASES))
def test_a_tensor_temperature_takes_its_gradient_from_the_fused_pass(case, precision, device):
    loss, shapes = TEMPERATURE_CASES[case]
    inputs = [torch.randn(*shape, dtype=torch.float64) for shape in shapes]
    frozen = case == "scd"  # SCD-Net's keys and queues come from the momentum encoder
    grads, consts = (inputs[:3], inputs[3:]) if frozen else (inputs, [])
    temperature = torch.tensor(0.3, dtype=torch.float64)

    def order(fn):
        if frozen:
            return lambda *x: fn(x[3], *x[:3], *x[4:])
        return lambda *x: fn(x[-1], *x[:-1])
    compare(order(lambda t, *x: loss(t, *x, backend="triton", precision=kernel_precision(precision))),
            order(lambda t, *x: loss(t, *x, backend="torch")), [*grads, temperature], precision, device, consts=consts)


def test_a_learnable_temperature_trains_on_the_fused_path(device):
    """The temperature is an nn.Parameter of the module; one SGD step moves it as on the reference."""
    z1, z2 = unit(6, 16).float().to(device), unit(6, 16).float().to(device)
    moved = []
    for backend in ("triton", "torch"):
        module = NTXentLoss(temperature=torch.nn.Parameter(torch.tensor(0.5, device=device)), backend=backend,
                            precision="ieee")
        assert [name for name, _ in module.named_parameters()] == ["temperature"]
        module(z1, z2).backward()
        assert module.temperature.grad is not None
        moved.append(module.temperature.grad.item())
    assert moved[0] == pytest.approx(moved[1], rel=1e-4)


# ---- reductions ------------------------------------------------------------------------------------

SUPCON_LABELS = [0, 0, 1, 2, 1, 9]  # 2 and 9 have no positive: the mean is over the other four anchors
REDUCTION_CASES = {  # loss, input shapes, rows of reduction="none", temperature
    "infonce": (lambda x, **kw: infonce(x[0], x[1], x[2], 0.2, **kw), [(6, 16), (6, 16), (21, 16)], 6, 0.2),
    "nt_xent": (lambda x, **kw: nt_xent(x[0], x[1], 0.5, **kw), [(5, 16), (5, 16)], 10, 0.5),
    "clip": (lambda x, **kw: clip_loss(x[0], x[1], 0.1, **kw), [(7, 16), (7, 16)], 7, 0.1),
    "supcon": (lambda x, **kw: supcon(x[0], torch.tensor(SUPCON_LABELS, device=x[0].device), 0.2, **kw),
               [(6, 16)], 6, 0.2),
}


@pytest.mark.parametrize("case", sorted(REDUCTION_CASES))
def test_reduction_none_weights_each_row_exactly(case, device):
    """Per-row losses with uneven incoming gradients: the columns pass weighs each row by
    its own gradient. The inputs are not unit vectors (as a user who skips normalize= passes)
    but near their scale: at randn's norm 4, logits reach 100 and a draw whose every positive
    dominates has losses and gradients ~1e-12, below what fp32 resolves at that logit."""
    loss, shapes, rows, temperature = REDUCTION_CASES[case]
    # uneven but positive: signed weights let the summed loss cancel to near 0, where a scalar's
    # relative error measures the cancellation, not the kernel (a CLIP draw failed so in CI)
    weights = torch.linspace(0.25, 2.0, rows, dtype=torch.float64)
    inputs = [torch.randn(*shape, dtype=torch.float64) / 16 ** 0.5 for shape in shapes]
    # each row's loss is a log-sum-exp less a positive's logit, both up to the largest logit L:
    # fp32 resolves each to eps * L, and a row whose positive dominates is ~0 with that error
    # left (plain PyTorch cancels its own rounding there, the same rounded logit on both sides)
    largest_logit = max(t.norm(dim=1).max().item() for t in inputs) ** 2 / temperature
    compare(lambda *x: (loss(x, backend="triton", precision="ieee", reduction="none") * weights.to(x[0])).sum(),
            lambda *x: (loss(x, backend="torch", reduction="none") * weights.to(x[0])).sum(),
            inputs, "ieee", device, loss_atol=4 * 2.0 ** -23 * largest_logit * weights.sum().item())


@pytest.mark.parametrize("case", sorted(REDUCTION_CASES))
def test_mean_sum_and_none_agree(case):
    loss, shapes, rows, _ = REDUCTION_CASES[case]
    x = [torch.randn(*shape, dtype=torch.float64) for shape in shapes]
    none = loss(x, backend="torch", reduction="none")
    assert none.shape == (rows,)
    torch.testing.assert_close(loss(x, backend="torch", reduction="sum"), none.sum())
    # supcon averages over the anchors with a positive; counting the nonzero rows instead failed
    # in CI: unnormalised randn inputs make logits near 80, where a dominant positive's loss is 0.0
    counted = sum(SUPCON_LABELS.count(label) > 1 for label in SUPCON_LABELS) if case == "supcon" else rows
    torch.testing.assert_close(loss(x, backend="torch"), none.sum() / counted)


# ---- pytorch-metric-learning's per-pair NT-Xent ---------------------------------------------------

def test_positive_pairs_are_every_ordered_same_label_pair():
    labels = torch.tensor([3, 1, 3, 3, 1, 7])
    got = set(zip(*(t.tolist() for t in positive_pairs(labels))))
    assert got == {(a, p) for a in range(6) for p in range(6) if a != p and labels[a] == labels[p]}


def test_nt_xent_pairs_reference_is_the_formula():
    x = torch.randn(8, 10, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0, 2, 1, 4, 2])
    torch.testing.assert_close(nt_xent_pairs(x, labels, 0.3, backend="torch"), ntxent_pairs_from_the_formula(x, labels, 0.3))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_fused_nt_xent_pairs_equals_the_reference(precision, device):
    labels = torch.tensor([0, 1, 0, 0, 2, 1, 4, 2, 2], device=device)
    compare(lambda x, t: nt_xent_pairs(x, labels, t, backend="triton", precision=kernel_precision(precision)),
            lambda x, t: nt_xent_pairs(x, labels.cpu().to(x.device), t, backend="torch"),
            [torch.randn(9, 24, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64)], precision, device)


# ---- the modules' conventions ------------------------------------------------------------------------

def test_modules_normalise_where_the_losses_they_replace_do():
    z1, z2 = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    torch.testing.assert_close(NTXentLoss()(z1, z2), nt_xent(z1, z2, 0.5, normalize=True))
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    torch.testing.assert_close(SupConLoss()(z1, labels), supcon(z1, labels, 0.1, normalize=True))
    torch.testing.assert_close(ClipLoss()(z1, z2, 10.0), clip_loss(z1, z2, 0.1))  # open_clip: no normalisation
    torch.testing.assert_close(ClipLoss()(z1, z2, 10.0, output_dict=True)["contrastive_loss"], clip_loss(z1, z2, 0.1))
    torch.testing.assert_close(NTXentLoss(0.07)(z1, labels), nt_xent_pairs(z1, labels, 0.07))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_infonce_module_reads_the_bank_then_enqueues(backend, monkeypatch):
    """The fused path streams the bank's own buffer; the reference (which keeps its operands
    for the backward) a copy, since the enqueue then writes the buffer in place."""
    bank = MemoryBank(12, 8, dtype=torch.float32)
    seen = {}
    real = losses.infonce

    def spy(q, k, queue, *args, **kwargs):
        seen["queue"] = queue
        return real(q, k, queue, *args, **kwargs)
    monkeypatch.setattr(losses, "infonce", spy)
    q = torch.randn(4, 8, requires_grad=True)
    k = torch.randn(4, 8)
    before = bank.keys.clone()
    InfoNCELoss(memory_bank=bank, backend=backend, precision="ieee")(q, k).backward()
    assert (seen["queue"] is bank.keys) == (backend == "triton")
    assert torch.equal(bank.keys[:4], F.normalize(k, dim=1)) and torch.equal(bank.keys[4:], before[4:])
    assert int(bank.ptr) == 4


def test_scd_loss_module_is_the_functional():
    x = [unit(4, 8) for _ in range(6)] + [unit(16, 8) for _ in range(3)]
    torch.testing.assert_close(SCDLoss(0.2)(x[:3], x[3:6], x[6:]), scd_loss(x[:3], x[3:6], x[6:], 0.2))
    torch.testing.assert_close(SCDLoss(0.2, reduction="none")(x[:3], x[3:6], x[6:]).mean(), scd_loss(x[:3], x[3:6], x[6:]))


# ---- the memory bank ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_memory_bank_wraps_around_with_ids(dtype):
    bank = MemoryBank(5, 3, dtype=dtype, track_ids=True)
    for step in range(3):
        bank.enqueue(torch.full((2, 3), float(step)), torch.tensor([10 * step, 10 * step + 1]))
    assert bank.keys.dtype == dtype
    assert bank.keys[:, 0].tolist() == [2.0, 0.0, 1.0, 1.0, 2.0]
    assert bank.ids.tolist() == [21, 1, 10, 11, 20]
    assert int(bank.ptr) == 1
    bank.enqueue(torch.zeros(2, 3))  # keys without ids: their rows' samples are unknown
    assert bank.ids.tolist() == [21, -1, -1, 11, 20]


def test_memory_bank_resumes_bitwise_from_its_state_dict():
    def fresh():
        torch.manual_seed(5)
        return MemoryBank(7, 4, track_ids=True)
    keys = [torch.randn(3, 4) for _ in range(5)]
    straight = fresh()
    for i, k in enumerate(keys):
        straight.enqueue(k, torch.arange(3) + 3 * i)
    first = fresh()
    for i, k in enumerate(keys[:2]):
        first.enqueue(k, torch.arange(3) + 3 * i)
    state = {name: t.clone() for name, t in first.state_dict().items()}
    assert sorted(state) == ["ids", "keys", "ptr"]
    resumed = MemoryBank(7, 4, track_ids=True)
    resumed.load_state_dict(state)
    for i, k in enumerate(keys[2:], start=2):
        resumed.enqueue(k, torch.arange(3) + 3 * i)
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


# ---- bad input: one-line errors before any compute ------------------------------------------------------

@pytest.fixture
def no_compute(monkeypatch):
    """Any loss computation fails the test: the errors must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("computed before refusing the input")
    for name in ("infonce_ref", "supcon_rows_ref", "nt_xent_ref", "clip_ref", "scd_loss_ref", "contrastive_rows"):
        monkeypatch.setattr(reference, name, refuse)


BAD_INPUT = [
    (lambda: nt_xent(unit(4, 8), unit(4, 8), labels=torch.zeros(3, dtype=torch.long)), "labels: expected one per pair (4,)"),
    (lambda: nt_xent(unit(4, 8), unit(4, 8), labels=torch.zeros(4)), "labels: expected an integer tensor"),
    (lambda: supcon(unit(4, 8), torch.zeros(5, dtype=torch.long)), "labels: expected one per sample (4,)"),
    (lambda: clip_loss(unit(4, 8), unit(4, 8), labels=torch.zeros(4, dtype=torch.bool)), "integer tensor"),
    (lambda: InfoNCELoss(memory_bank=MemoryBank(8, 6))(unit(4, 8), unit(4, 8)), "width 8 differs from the memory bank's 6"),
    (lambda: MemoryBank(8, 6).enqueue(unit(4, 5)), "width 5 differs from the memory bank's 6"),
    (lambda: MemoryBank(8, 6).enqueue(unit(4, 6), torch.arange(4)), "track_ids=False"),
    (lambda: infonce(unit(2, 8), unit(2, 8), unit(5, 8), 0.0), "temperature=0.0: must be finite and > 0"),
    (lambda: infonce(unit(2, 8), unit(2, 8), unit(5, 8), -0.1), "must be finite and > 0"),
    (lambda: nt_xent(unit(2, 8), unit(2, 8), math.nan), "temperature=nan"),
    (lambda: nt_xent(unit(2, 8), unit(2, 8), math.inf), "temperature=inf"),
    (lambda: nt_xent(unit(2, 8), unit(2, 8), torch.tensor(-1.0)), "temperature: must be finite and > 0"),
    (lambda: supcon(unit(4, 8), torch.arange(4), torch.tensor(math.inf)), "temperature: must be finite and > 0"),
    (lambda: clip_loss(unit(2, 8), unit(2, 8), logit_scale=torch.tensor(0.0)), "logit_scale: must be finite and > 0"),
    (lambda: nt_xent(unit(2, 8), unit(2, 8), torch.ones(2)), "one-element floating-point tensor"),
    (lambda: nt_xent(unit(2, 8), unit(2, 8), gather_distributed=True), "gather_distributed=True needs an initialised"),
    (lambda: NTXentLoss(gather_distributed=True)(unit(2, 8), unit(2, 8)), "torch.distributed process group"),
    (lambda: clip_loss(unit(2, 8), unit(2, 8), gather_with_grad=True), "gather_with_grad=True needs an initialised"),
    (lambda: clip_loss(unit(2, 8), unit(2, 8), local_loss=True), "needs gather_with_grad=True"),
    (lambda: MemoryBank(8, 6, gather_distributed=True).enqueue(unit(2, 6)), "gather_distributed=True needs"),
    (lambda: infonce(unit(2, 8), unit(2, 8), unit(5, 8), reduction="avg"), "reduction='avg': choose one of"),
    (lambda: NTXentLoss(reduction="avg"), "reduction='avg'"),
]


@pytest.mark.parametrize("call,message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_is_refused_in_one_line_before_any_compute(call, message, no_compute):
    with pytest.raises(ScdError, match=None) as raised:
        call()
    text = str(raised.value)
    assert message in text and "\n" not in text, text


def test_bf16_queries_against_an_fp32_bank_run_as_fp32_rows(device):
    """A mix the compile gate does not compile (bf16 rows, fp32 negatives) reads the rows as fp32."""
    q = unit(6, 32).to(device, torch.bfloat16).requires_grad_()
    k, queue = unit(6, 32).to(device, torch.bfloat16), unit(50, 32).float().to(device)
    loss = infonce(q, k, queue, 0.2, backend="triton", precision="ieee")
    loss.backward()
    want = reference.infonce_ref(q.detach().double(), k.double(), queue.double(), 0.2).mean()
    assert q.grad.dtype == torch.bfloat16
    assert abs(loss.item() - want.item()) < 1e-5 * abs(want.item())
