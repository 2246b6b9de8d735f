"""Fused Triton losses (run under TRITON_INTERPRET=1 on a CPU) against float64 references.

Loss and every gradient are compared by relative error ||got - ref|| / ||ref||: below 1e-4
for fp32 inputs and 1e-2 for bf16 inputs, on shapes that are not multiples of the tiles.
"""
import pytest
import torch
import torch.nn.functional as F

from scdfast.errors import ScdError
from scdfast.losses import clip_loss, infonce, nt_xent, scd_loss
from scdfast.losses.reference import clip_ref, infonce_ref, nt_xent_ref

pytest.importorskip("triton")

TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def rel_err(got, ref):
    return ((got.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def unit(n, d, dtype=torch.float32):
    return F.normalize(torch.randn(n, d, dtype=torch.float64), dim=1).to(dtype)


def compare(fused_fn, ref_fn, inputs, dtype):
    """Run both on the same inputs (the reference in float64) and one shared grad_output."""
    grad_out = torch.rand((), dtype=torch.float64) + 0.5
    ours = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    ref = [t.double().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    loss = fused_fn(*ours)
    want = ref_fn(*ref)
    assert rel_err(loss.detach(), want.detach()) < TOL[dtype]
    (loss.double() * grad_out).backward()
    (want * grad_out).backward()
    for got, exp in zip(ours, ref):
        if got.grad is not None or exp.grad is not None:
            assert got.grad is not None and torch.isfinite(got.grad.double()).all()
            assert got.grad.dtype == got.dtype
            assert rel_err(got.grad, exp.grad) < TOL[dtype], "gradient"


@pytest.mark.parametrize("n,k,d", [(1, 1, 16), (7, 100, 16), (65, 8193, 16), (7, 100, 128), (5, 33, 256)])
def test_infonce_queue(n, k, d):
    q, pos, queue = unit(n, d), unit(n, d), unit(k, d)
    compare(lambda a, b, c: infonce(a, b, c, 0.2, backend="triton"),
            lambda a, b, c: infonce_ref(a, b, c, 0.2), (q, pos, queue), torch.float32)


def test_infonce_with_ids_masks_all_but_one_negative():
    n, k, d = 7, 100, 16
    q, pos, queue = unit(n, d), unit(n, d), unit(k, d)
    query_ids = torch.arange(n)
    queue_ids = torch.zeros(k, dtype=torch.long)
    queue_ids[-1] = 1  # query 0 keeps exactly one negative
    compare(lambda a, b, c: infonce(a, b, c, 0.1, query_ids=query_ids, queue_ids=queue_ids, backend="triton"),
            lambda a, b, c: infonce_ref(a, b, c, 0.1, query_ids, queue_ids), (q, pos, queue), torch.float32)


@pytest.mark.parametrize("t,scale", [(0.01, 1.0), (1.0, 1e4)])
def test_infonce_extreme_logits(t, scale):
    # logits up to 1/0.01 = 100 on unit vectors, and +-1e4 on unnormalised ones
    q, pos, queue = unit(7, 16) * scale ** 0.5, unit(7, 16) * scale ** 0.5, unit(100, 16)
    compare(lambda a, b, c: infonce(a, b, c, t, backend="triton"),
            lambda a, b, c: infonce_ref(a, b, c, t), (q, pos, queue), torch.float32)


def test_infonce_bf16():
    q, pos, queue = (unit(n, 128, torch.bfloat16) for n in (7, 7, 300))
    compare(lambda a, b, c: infonce(a, b, c, 0.2, backend="triton"),
            lambda a, b, c: infonce_ref(a, b, c, 0.2), (q, pos, queue), torch.bfloat16)


def test_infonce_normalize_inside():
    q, pos, queue = torch.randn(7, 16), torch.randn(7, 16), unit(50, 16)
    compare(lambda a, b, c: infonce(a, b, c, 0.2, normalize=True, backend="triton"),
            lambda a, b, c: infonce_ref(a, b, c, 0.2, normalize=True), (q, pos, queue), torch.float32)


@pytest.mark.parametrize("n,d", [(1, 16), (7, 16), (65, 128)])
def test_nt_xent(n, d):
    compare(lambda a, b: nt_xent(a, b, 0.5, backend="triton"), lambda a, b: nt_xent_ref(a, b, 0.5),
            (unit(n, d), unit(n, d)), torch.float32)


@pytest.mark.parametrize("n,d", [(1, 16), (7, 16), (65, 128)])
def test_clip(n, d):
    compare(lambda a, b: clip_loss(a, b, 0.07, backend="triton"), lambda a, b: clip_ref(a, b, 0.07),
            (unit(n, d), unit(n, d)), torch.float32)


@pytest.mark.parametrize("n,k,d,normalize", [(1, 1, 16, False), (7, 100, 16, False), (65, 257, 16, True),
                                              (5, 33, 128, True)])
def test_scd_loss_single_launch_equals_reference(n, k, d, normalize):
    """All four terms from one launch (the instance queue's tiles shared by qt and qs)."""
    make = (lambda rows: torch.randn(rows, d) * 3) if normalize else (lambda rows: unit(rows, d))
    queries, keys, queues = [make(n) for _ in range(3)], [make(n) for _ in range(3)], [unit(k, d) for _ in range(3)]
    compare(lambda *q: scd_loss(q, keys, queues, 0.2, backend="triton", normalize=normalize),
            lambda *q: scd_loss(q, [t.double() for t in keys], [t.double() for t in queues], 0.2, backend="torch",
                                normalize=normalize),
            queries, torch.float32)


@pytest.mark.parametrize("n,k,d,normalize", [(7, 100, 16, False), (65, 257, 16, True)])
def test_scd_loss_with_ids_leaves_out_the_querys_own_keys(n, k, d, normalize):
    """Sample ids shared by the three queues: a query's own older keys are no negatives; row 0's
    sample fills every queue row but one."""
    make = (lambda rows: torch.randn(rows, d) * 3) if normalize else (lambda rows: unit(rows, d))
    queries, keys, queues = [make(n) for _ in range(3)], [make(n) for _ in range(3)], [unit(k, d) for _ in range(3)]
    query_ids = torch.randperm(1000)[:n]
    queue_ids = query_ids[torch.randint(0, n, (k,))]
    queue_ids[: k - 1] = query_ids[0]
    compare(lambda *q: scd_loss(q, keys, queues, 0.1, backend="triton", normalize=normalize,
                                query_ids=query_ids, queue_ids=queue_ids),
            lambda *q: scd_loss(q, [t.double() for t in keys], [t.double() for t in queues], 0.1, backend="torch",
                                normalize=normalize, query_ids=query_ids, queue_ids=queue_ids),
            queries, torch.float32)


def test_scd_loss_ids_reference_against_a_direct_sum():
    """The reference with ids equals each term's log-softmax over the kept columns, in float64."""
    n, k, d = 5, 12, 8
    queries, keys = [unit(n, d).double() for _ in range(3)], [unit(n, d).double() for _ in range(3)]
    queues = [unit(k, d).double() for _ in range(3)]
    query_ids, queue_ids = torch.arange(n), torch.arange(k) % n
    want = 0.0
    for (q, pos, queue) in ((queries[0], keys[2], queues[2]), (queries[1], keys[2], queues[2]),
                            (queries[2], keys[0], queues[0]), (queries[2], keys[1], queues[1])):
        for i in range(n):
            kept = [queue[j] for j in range(k) if queue_ids[j] != query_ids[i]]
            logits = torch.stack([q[i] @ pos[i]] + [q[i] @ c for c in kept]) / 0.2
            want += (torch.logsumexp(logits, 0) - logits[0]) / n
    got = scd_loss(queries, keys, queues, 0.2, backend="torch", query_ids=query_ids, queue_ids=queue_ids)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_scd_pass_is_one_launch_of_four_terms():
    from scdfast.kernels.infonce import scd_pass

    from scdfast.losses.reference import scd_terms
    n, k, d = 9, 70, 32
    queries, keys, queues = [unit(n, d) for _ in range(3)], [unit(n, d) for _ in range(3)], [unit(k, d) for _ in range(3)]
    loss_rows, dq = scd_pass(queries, keys, queues, 1 / 0.2)
    for term, (q, pos, queue) in enumerate(scd_terms(queries, keys, queues)):
        q64 = q.double().requires_grad_()
        want = infonce_ref(q64, pos.double(), queue.double(), 0.2) * n
        want.backward()
        assert rel_err(loss_rows[term].sum(), want.detach()) < TOL[torch.float32]
        assert rel_err(dq[term], q64.grad) < TOL[torch.float32]


def test_scd_loss_bf16():
    n, k, d = 7, 64, 128
    queries = [unit(n, d, torch.bfloat16) for _ in range(3)]
    keys, queues = [unit(n, d, torch.bfloat16) for _ in range(3)], [unit(k, d, torch.bfloat16) for _ in range(3)]
    compare(lambda *q: scd_loss(q, keys, queues, 0.2, backend="triton"),
            lambda *q: scd_loss(q, [t.double() for t in keys], [t.double() for t in queues], 0.2, backend="torch"),
            queries, torch.bfloat16)


@pytest.mark.parametrize("which", ["nt_xent", "clip"])
def test_pair_losses_normalize_inside(which):
    fused, ref = {"nt_xent": (nt_xent, nt_xent_ref), "clip": (clip_loss, clip_ref)}[which]
    a, b = torch.randn(7, 16) * 2, torch.randn(7, 16) * 0.5
    compare(lambda x, y: fused(x, y, 0.3, backend="triton", normalize=True),
            lambda x, y: ref(x, y, 0.3, normalize=True), (a, b), torch.float32)


def test_infonce_bf16_queue_with_fp32_queries():
    # a bf16 queue halves the traffic; its values are exact in fp32, so fp32 accuracy holds
    q, pos, queue = unit(7, 128), unit(7, 128), unit(300, 128, torch.bfloat16)
    loss = infonce(q.requires_grad_(), pos, queue, 0.2, backend="triton")
    ref_q = q.detach().double().requires_grad_()
    want = infonce_ref(ref_q, pos.double(), queue.double(), 0.2)
    assert rel_err(loss.detach(), want.detach()) < TOL[torch.float32]
    loss.backward()
    want.backward()
    assert rel_err(q.grad, ref_q.grad) < TOL[torch.float32]


def test_infonce_traces_under_torch_compile_fullgraph():
    """The fused MoCo loss is a custom op: a compiled function that calls it has no graph
    break, and its loss and gradient equal the eager reference."""
    projection = torch.nn.Linear(16, 16, dtype=torch.float64)
    x, k, queue = torch.randn(7, 16, dtype=torch.float64), unit(7, 16).float(), unit(100, 16).float()

    def step(x):
        q = F.normalize(projection(x), dim=1).float()
        return infonce(q, k, queue, 0.2, backend="triton", check_finite=False)

    compiled = torch.compile(step, fullgraph=True)
    loss = compiled(x)
    loss.backward()
    got = projection.weight.grad.clone()
    projection.weight.grad = None
    want = infonce_ref(F.normalize(projection(x), dim=1), k.double(), queue.double(), 0.2)
    want.backward()
    assert rel_err(loss.detach(), want.detach()) < TOL[torch.float32]
    assert rel_err(got, projection.weight.grad) < TOL[torch.float32]


def test_too_wide_for_the_kernels_is_named():
    q = unit(2, 600)
    with pytest.raises(ScdError, match="embedding width 600"):
        infonce(q, q, q, 0.2, backend="triton")
