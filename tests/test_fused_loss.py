"""Fused Triton losses against float64 references, per precision, on odd shapes.

On a CPU the kernels run under TRITON_INTERPRET=1; with a GPU (tests/conftest.py) the same
tests run the compiled kernels on CUDA. The tolerance rule (tests/fused_compare.py) is
flash-attention's: at most twice plain PyTorch's error in the same precision, plus a floor.
"""
import pytest
import torch
import torch.nn.functional as F

from scdfast.errors import ScdError
from scdfast.losses import clip_loss, infonce, nt_xent, reference, scd_loss
from scdfast.losses.reference import scd_terms

pytest.importorskip("triton")

from fused_compare import compare, rel_err, unit  # noqa: E402 - after the skip: it needs no triton, the tests do
from scdfast.kernels.infonce import inverse_norms  # noqa: E402

def _mean_of(rows_ref):
    """A reference's per-row losses reduced as the losses' default reduction, the mean."""
    return lambda *args, **kwargs: rows_ref(*args, **kwargs).mean()


infonce_ref, nt_xent_ref, clip_ref, scd_loss_ref = (_mean_of(f) for f in (
    reference.infonce_ref, reference.nt_xent_ref, reference.clip_ref, reference.scd_loss_ref))


PRECISIONS = ["tf32", "ieee", "bf16"]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("n,k,d", [(1, 1, 16), (7, 100, 16), (65, 1025, 16), (7, 100, 128), (5, 33, 200)])
def test_infonce_queue(n, k, d, precision, device):
    if precision == "ieee" and d > 128:
        pytest.skip("the FMA kernels take D <= 128; the wider fallback is tested below")
    kernel_precision = "tf32" if precision == "bf16" else precision
    compare(lambda q, pos, queue: infonce(q, pos, queue, 0.2, backend="triton", precision=kernel_precision),
            lambda q, pos, queue: infonce_ref(q, pos, queue, 0.2), [unit(n, d)], precision, device,
            consts=[unit(n, d), unit(k, d)])


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_infonce_gradients_reach_keys_and_queue(precision, device):
    """A trained key encoder and queue (not MoCo's case): dk from the combine, dqueue from the
    columns pass."""
    compare(lambda q, pos, queue: infonce(q, pos, queue, 0.2, backend="triton"),
            lambda q, pos, queue: infonce_ref(q, pos, queue, 0.2), [unit(9, 32), unit(9, 32), unit(130, 32)],
            precision, device)


def test_infonce_with_ids_masks_all_but_one_negative(device):
    n, k, d = 7, 100, 16
    query_ids = torch.arange(n, device=device)
    queue_ids = torch.zeros(k, dtype=torch.long, device=device)
    queue_ids[-1] = 1  # query 0 keeps exactly one negative, in the last slice
    compare(lambda q, pos, queue: infonce(q, pos, queue, 0.1, query_ids=query_ids, queue_ids=queue_ids,
                                          backend="triton"),
            lambda q, pos, queue: infonce_ref(q, pos, queue, 0.1, query_ids.to(q.device), queue_ids.to(q.device)),
            [unit(n, d)], "ieee", device, consts=[unit(n, d), unit(k, d)])


def test_a_slice_with_every_negative_masked_stays_finite(device):
    """Every key of the first slices is the query's own: their partials are empty."""
    n, k, d = 3, 300, 16
    query_ids = torch.arange(n, device=device)
    queue_ids = torch.zeros(k, dtype=torch.long, device=device)
    queue_ids[-5:] = 7
    compare(lambda q, pos, queue: infonce(q, pos, queue, 0.1, query_ids=query_ids, queue_ids=queue_ids,
                                          backend="triton"),
            lambda q, pos, queue: infonce_ref(q, pos, queue, 0.1, query_ids.to(q.device), queue_ids.to(q.device)),
            [unit(n, d)], "ieee", device, consts=[unit(n, d), unit(k, d)])


@pytest.mark.parametrize("t,scale", [(0.01, 1.0), (1.0, 1e4)])
def test_infonce_extreme_logits(t, scale, device):
    # logits up to 1/0.01 = 100 on unit vectors, and +-1e4 on unnormalised ones. There a row's
    # positive can take all but 1e-20 of the softmax; the kernel forms T dq_i as
    # sum_j p_ij c_j - (1 - p_ip) k_i = acc_i / l_i - k_i, resolved to an ulp of |k_i| (torch seed 68:
    # 0 against 1e-20; 1 of 200 draws failed), so each row's error may also reach an fp32 ulp of
    # every component of k_i / T, 2^-23 ||k_i|| / T in norm (over the 7 rows, and divided by the
    # mean's 7)
    grad_atol = 2.0 ** -23 * scale ** 0.5 / t * 7 ** 0.5 / 7
    compare(lambda q, pos, queue: infonce(q, pos, queue, t, backend="triton", precision="ieee"),
            lambda q, pos, queue: infonce_ref(q, pos, queue, t), [unit(7, 16) * scale ** 0.5], "ieee", device,
            consts=[unit(7, 16) * scale ** 0.5, unit(100, 16)], grad_atol={0: grad_atol})


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_infonce_normalize_inside(precision, device):
    compare(lambda q, pos, queue: infonce(q, pos, queue, 0.2, normalize=True, backend="triton"),
            lambda q, pos, queue: infonce_ref(q, pos, queue, 0.2, normalize=True),
            [torch.randn(7, 16, dtype=torch.float64) * 3, torch.randn(7, 16, dtype=torch.float64)], precision,
            device, consts=[unit(50, 16)])


def test_a_trained_queue_sees_the_queries_as_the_row_pass_normalised_them(device):
    """normalize=True with a queue that takes gradients: the columns pass recomputes
    p_ij = exp(s_ij - lse_i) against the row pass's lse, so it must see the very q_i the logits were
    made of. Normalising inside then equals, bit for bit, the same call on rows scaled beforehand
    by the inverse norms the kernels read. (With F.normalize's q_i in the columns pass instead, the
    queue's gradient at T = 0.01 read 2-8x plain PyTorch's error, over the bound in half the draws.)"""
    q, k = (torch.randn(6, 16) * 3).to(device), torch.randn(6, 16).to(device)
    queue = unit(37, 16).float().to(device)

    def loss_and_queue_grad(q, k, normalize):
        bank = queue.clone().requires_grad_(True)
        loss = infonce(q, k, bank, 0.01, normalize=normalize, backend="triton", precision="ieee")
        loss.backward()
        return loss.detach(), bank.grad
    scaled = [x * inverse_norms(x[None])[0][:, None] for x in (q, k)]
    inside, outside = loss_and_queue_grad(q, k, True), loss_and_queue_grad(*scaled, False)
    assert torch.equal(inside[0], outside[0])
    assert torch.equal(inside[1], outside[1])


def test_infonce_reads_a_transposed_queue_without_a_copy(device):
    """A (D, K) bank, MoCo's layout, passed as bank.t(): the kernels take its strides."""
    bank = unit(90, 32).t().contiguous()                                          # D, K
    compare(lambda q, pos, bank: infonce(q, pos, bank.t(), 0.2, backend="triton", precision="ieee"),
            lambda q, pos, bank: infonce_ref(q, pos, bank.t(), 0.2), [unit(6, 32)], "ieee", device,
            consts=[unit(6, 32), bank])


def test_bf16_queue_with_fp32_queries(device):
    # a bf16 queue halves the traffic; its values are exact in fp32, so fp32 accuracy holds
    q, pos, queue = unit(7, 128), unit(7, 128), unit(300, 128).bfloat16().double()
    loss = infonce(q.float().to(device).requires_grad_(), pos.float().to(device), queue.bfloat16().to(device),
                   0.2, backend="triton", precision="ieee")
    assert rel_err(loss.detach().cpu(), infonce_ref(q, pos, queue, 0.2)) < 1e-5


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("n,d", [(1, 16), (7, 16), (65, 128), (33, 40)])
def test_nt_xent(n, d, precision, device):
    compare(lambda a, b: nt_xent(a, b, 0.5, backend="triton", precision="tf32" if precision == "bf16" else precision),
            lambda a, b: nt_xent_ref(a, b, 0.5), [unit(n, d), unit(n, d)], precision, device)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("n,d", [(1, 16), (7, 16), (65, 128), (33, 40)])
def test_clip(n, d, precision, device):
    compare(lambda a, b: clip_loss(a, b, 0.07, backend="triton", precision="tf32" if precision == "bf16" else precision),
            lambda a, b: clip_ref(a, b, 0.07), [unit(n, d), unit(n, d)], precision, device)


@pytest.mark.parametrize("which", ["nt_xent", "clip"])
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_pair_losses_normalize_inside(which, precision, device):
    fused, ref = {"nt_xent": (nt_xent, nt_xent_ref), "clip": (clip_loss, clip_ref)}[which]
    compare(lambda x, y: fused(x, y, 0.3, backend="triton", normalize=True),
            lambda x, y: ref(x, y, 0.3, normalize=True),
            [torch.randn(7, 16, dtype=torch.float64) * 2, torch.randn(7, 16, dtype=torch.float64) * 0.5],
            precision, device)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("n,k,d,normalize", [(1, 1, 16, False), (7, 100, 16, False), (65, 257, 16, True),
                                              (5, 33, 128, True)])
def test_scd_loss_one_pass_equals_reference(n, k, d, normalize, precision, device):
    """All four terms from one row pass, each streaming its own queue."""
    make = (lambda rows: torch.randn(rows, d, dtype=torch.float64) * 3) if normalize else (lambda rows: unit(rows, d))
    consts = [make(n) for _ in range(3)] + [unit(k, d) for _ in range(3)]
    kernel_precision = "tf32" if precision == "bf16" else precision
    compare(lambda *t: scd_loss(t[:3], t[3:6], t[6:], 0.2, backend="triton", normalize=normalize,
                                precision=kernel_precision),
            lambda *t: scd_loss_ref(t[:3], t[3:6], t[6:], 0.2, normalize=normalize),
            [make(n) for _ in range(3)], precision, device, consts=consts)


@pytest.mark.parametrize("n,k,d,normalize", [(7, 100, 16, False), (65, 257, 16, True)])
def test_scd_loss_with_ids_leaves_out_the_querys_own_keys(n, k, d, normalize, device):
    """Sample ids shared by the three queues: a query's own older keys are no negatives; row 0's
    sample fills every queue row but one."""
    make = (lambda rows: torch.randn(rows, d, dtype=torch.float64) * 3) if normalize else (lambda rows: unit(rows, d))
    query_ids = torch.randperm(1000)[:n]
    queue_ids = query_ids[torch.randint(0, n, (k,))]
    queue_ids[: k - 1] = query_ids[0]
    ids = query_ids.to(device), queue_ids.to(device)
    compare(lambda *t: scd_loss(t[:3], t[3:6], t[6:], 0.1, backend="triton", normalize=normalize,
                                query_ids=ids[0], queue_ids=ids[1]),
            lambda *t: scd_loss_ref(t[:3], t[3:6], t[6:], 0.1, normalize, query_ids.to(t[0].device),
                                   queue_ids.to(t[0].device)),
            [make(n) for _ in range(3)], "ieee", device,
            consts=[make(n) for _ in range(3)] + [unit(k, d) for _ in range(3)])


def test_scd_loss_with_trained_keys_runs_per_term(device):
    """Keys that take gradients leave SCD-Net's case: four InfoNCE ops, gradients everywhere."""
    n, k, d = 5, 40, 16
    compare(lambda *t: scd_loss(t[:3], t[3:6], t[6:], 0.2, backend="triton", precision="ieee"),
            lambda *t: scd_loss_ref(t[:3], t[3:6], t[6:], 0.2),
            [unit(n, d) for _ in range(6)], "ieee", device, consts=[unit(k, d) for _ in range(3)])


def test_scd_loss_ids_reference_against_a_direct_sum():
    """The reference with ids equals each term's log-softmax over the kept columns, in float64."""
    n, k, d = 5, 12, 8
    queries, keys = [unit(n, d) for _ in range(3)], [unit(n, d) for _ in range(3)]
    queues = [unit(k, d) for _ in range(3)]
    query_ids, queue_ids = torch.arange(n), torch.arange(k) % n
    want = 0.0
    for (q, pos, queue) in scd_terms(queries, keys, queues):
        for i in range(n):
            kept = [queue[j] for j in range(k) if queue_ids[j] != query_ids[i]]
            logits = torch.stack([q[i] @ pos[i]] + [q[i] @ c for c in kept]) / 0.2
            want += (torch.logsumexp(logits, 0) - logits[0]) / n
    got = scd_loss(queries, keys, queues, 0.2, backend="torch", query_ids=query_ids, queue_ids=queue_ids)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_scd_row_pass_gives_each_terms_gradient(device):
    from scdfast.kernels.infonce import RowsProblem, rows_pass
    n, k, d = 9, 70, 32
    queries, keys, queues = [unit(n, d) for _ in range(3)], [unit(n, d) for _ in range(3)], [unit(k, d) for _ in range(3)]
    on = [[t.float().to(device) for t in group] for group in (queries, keys, queues)]
    qt, qs, qi = on[0]
    kt, ks, ki = on[1]
    out = rows_pass(RowsProblem(torch.stack([qt, qs, qi, qi]), torch.stack([ki, ki, kt, ks]),
                                (on[2][2], on[2][0], on[2][1]), 1 / 0.2, precision="ieee"))
    for term, (q, pos, queue) in enumerate(scd_terms(queries, keys, queues)):
        q64 = q.clone().requires_grad_()
        want = infonce_ref(q64, pos, queue, 0.2) * n
        want.backward()
        assert rel_err(out["loss"][term].sum().cpu(), want.detach()) < 1e-5
        assert rel_err(out["dq"][term].cpu(), q64.grad) < 1e-5


def test_infonce_traces_under_torch_compile_fullgraph(device):
    """The fused MoCo loss is a custom op: a compiled function that calls it has no graph
    break, and its loss and gradient equal the eager reference."""
    projection = torch.nn.Linear(16, 16).to(device)
    x, k, queue = torch.randn(7, 16, device=device), unit(7, 16).float().to(device), unit(100, 16).float().to(device)

    def step(x):
        q = F.normalize(projection(x), dim=1)
        return infonce(q, k, queue, 0.2, backend="triton", check_finite=False, precision="ieee")

    compiled = torch.compile(step, fullgraph=True)
    loss = compiled(x)
    loss.backward()
    got = projection.weight.grad.clone()
    projection.weight.grad = None
    want = infonce_ref(F.normalize(projection(x), dim=1), k, queue, 0.2)
    want.backward()
    assert rel_err(loss.detach(), want.detach()) < 1e-5
    assert rel_err(got, projection.weight.grad) < 1e-4


def test_wider_than_the_kernels_runs_the_reference_with_one_warning(device):
    from scdfast.kernels import infonce as kernels
    q = unit(2, 600).float().to(device)
    kernels._WIDE_WARNED = False
    with pytest.warns(UserWarning, match="embedding width 600 > 512"):
        got = infonce(q, q, q, 0.2, backend="triton")
    assert rel_err(got.cpu(), infonce_ref(q.double(), q.double(), q.double(), 0.2).cpu()) < 1e-5


def test_unsupported_dtype_and_precision_are_named(device):
    q = unit(3, 16).to(device)
    with pytest.raises(ScdError, match="float32 or bfloat16 inputs, got torch.float64"):
        infonce(q, q, q, 0.2, backend="triton")
    with pytest.raises(ScdError, match="precision='fp64'"):
        infonce(q, q, q, 0.2, precision="fp64")


def test_auto_never_sends_float64_to_the_kernels(device):
    q = unit(3, 16).to(device)
    got = infonce(q, q, q, 0.2)                             # float64: the reference, in float64
    assert got.dtype == torch.float64


def test_check_finite_names_the_tensor():
    q = unit(3, 16).float()
    bad = q.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ScdError, match="queue: contains NaN"):
        infonce(q, q, bad, 0.2, backend="torch")


@pytest.mark.gpu
def test_a_fused_loss_call_never_waits_for_the_gpu(device):
    """With check_finite=False nothing in a call or its backward reads the device back (after
    the first call, which may autotune)."""
    q = F.normalize(torch.randn(64, 128, device=device), dim=1).requires_grad_()
    keys, queues = [F.normalize(torch.randn(64, 128, device=device), dim=1) for _ in range(3)], \
        [F.normalize(torch.randn(8192, 128, device=device), dim=1) for _ in range(3)]

    def step():
        scd_loss((q, q, q), keys, queues, 0.2, backend="triton", check_finite=False).backward()
        infonce(q, keys[0], queues[0], 0.2, backend="triton", check_finite=False).backward()
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
