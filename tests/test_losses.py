"""The reference losses against direct float64 computations written from the definitions."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from scdfast.errors import ScdError
from scdfast.losses import clip_loss, infonce, nt_xent, scd_loss


def unit(n, d):
    return F.normalize(torch.randn(n, d, dtype=torch.float64), dim=1)


def infonce_loop(q, k, queue, t, query_ids=None, queue_ids=None):
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ queue[j]) / t) for j in range(queue.shape[0])
                  if query_ids is None or int(query_ids[i]) != int(queue_ids[j]))
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


@pytest.mark.parametrize("n,k,d", [(1, 1, 4), (7, 33, 16), (5, 100, 3)])
def test_infonce_matches_loop(n, k, d):
    q, pos, queue = unit(n, d), unit(n, d), unit(k, d)
    got = infonce(q, pos, queue, temperature=0.2, backend="torch").item()
    assert got == pytest.approx(infonce_loop(q, pos, queue, 0.2), rel=1e-10)


def test_infonce_excludes_negatives_with_the_query_id():
    n, k, d = 6, 40, 8
    q, pos, queue = unit(n, d), unit(n, d), unit(k, d)
    query_ids = torch.arange(n)
    queue_ids = torch.zeros(k, dtype=torch.long)
    queue_ids[-1] = 1  # query 0 keeps exactly one negative; query 1 loses exactly one
    got = infonce(q, pos, queue, 0.1, query_ids=query_ids, queue_ids=queue_ids, backend="torch").item()
    assert got == pytest.approx(infonce_loop(q, pos, queue, 0.1, query_ids, queue_ids), rel=1e-10)
    unmasked = infonce(q, pos, queue, 0.1, backend="torch").item()
    assert got < unmasked


def test_infonce_closed_form_identical_embeddings():
    # every logit equal: loss = log(1 + K) exactly
    q = F.normalize(torch.ones(3, 5, dtype=torch.float64), dim=1)
    queue = q[:1].expand(9, 5).contiguous()
    assert infonce(q, q, queue, 0.3, backend="torch").item() == pytest.approx(math.log(10), rel=1e-12)


def test_infonce_normalize_option():
    q, k, queue = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64), unit(10, 8)
    got = infonce(q, k, queue, 0.2, normalize=True, backend="torch")
    want = infonce(F.normalize(q, dim=1), F.normalize(k, dim=1), queue, 0.2, backend="torch")
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


def nt_xent_loop(z1, z2, t):
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(math.exp(float(z[i] @ z[m]) / t) for m in range(n2) if m != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / n2


@pytest.mark.parametrize("n,d", [(1, 4), (5, 16), (9, 7)])
def test_nt_xent_matches_loop(n, d):
    z1, z2 = unit(n, d), unit(n, d)
    assert nt_xent(z1, z2, 0.5, backend="torch").item() == pytest.approx(nt_xent_loop(z1, z2, 0.5), rel=1e-10)


def test_clip_matches_loop():
    a, b = unit(6, 8), unit(6, 8)
    t = 0.07
    def one_way(x, y):
        return sum(-math.log(math.exp(float(x[i] @ y[i]) / t) / sum(math.exp(float(x[i] @ y[j]) / t) for j in range(6)))
                   for i in range(6)) / 6
    want = 0.5 * (one_way(a, b) + one_way(b, a))
    assert clip_loss(a, b, t, backend="torch").item() == pytest.approx(want, rel=1e-10)


def test_scd_loss_is_the_four_interactive_terms():
    n, k, d, t = 4, 24, 8, 0.2
    qt, qs, qi, kt, ks, ki = (unit(n, d) for _ in range(6))
    tq, sq, iq = unit(k, d), unit(k, d), unit(k, d)
    want = (infonce_loop(qt, ki, iq, t) + infonce_loop(qs, ki, iq, t)
            + infonce_loop(qi, kt, tq, t) + infonce_loop(qi, ks, sq, t))
    got = scd_loss((qt, qs, qi), (kt, ks, ki), (tq, sq, iq), t, backend="torch").item()
    assert got == pytest.approx(want, rel=1e-10)


def test_gradients_flow_to_queries_only_through_the_loss():
    q = unit(3, 8).requires_grad_()
    k, queue = unit(3, 8), unit(12, 8)
    infonce(q, k, queue, 0.2, backend="torch").backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


@pytest.mark.parametrize("call,message", [
    (lambda: infonce(unit(2, 8), unit(2, 4), unit(5, 8)), "k: embedding width 4"),
    (lambda: infonce(unit(2, 8), unit(2, 8), unit(5, 6)), "queue: embedding width 6"),
    (lambda: infonce(unit(2, 8), unit(2, 8), unit(5, 8), temperature=0.0), "temperature=0.0"),
    (lambda: infonce(unit(2, 8), unit(2, 8), unit(5, 8), temperature=-1), "temperature=-1"),
    (lambda: infonce(unit(2, 8), unit(2, 8), unit(5, 8), queue_ids=torch.zeros(5)), "query_ids is required"),
    (lambda: infonce(unit(2, 8) * float("nan"), unit(2, 8), unit(5, 8)), "q: contains NaN"),
    (lambda: infonce(unit(2, 8), unit(2, 8), unit(5, 8), backend="cuda"), "backend='cuda'"),
    (lambda: nt_xent(unit(2, 8), unit(3, 8)), "z2: 3 rows"),
    (lambda: scd_loss((unit(2, 8),) * 3, (unit(2, 8),) * 3, (unit(5, 8), unit(5, 8), unit(5, 7))),
     "instance_queue: embedding width 7"),
    (lambda: scd_loss((unit(2, 8),) * 3, (unit(2, 8),) * 3, (unit(5, 8),) * 3, query_ids=torch.arange(2)),
     "queue_ids is required"),
    (lambda: scd_loss((unit(2, 8),) * 3, (unit(2, 8),) * 3, (unit(5, 8),) * 3, query_ids=torch.arange(2),
                      queue_ids=torch.arange(4)), "queue_ids (5,)"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ScdError, match=re.escape(message)):
        call()
