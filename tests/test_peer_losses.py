"""One-line swaps: the installed peers' losses against scdfast.nn's, loss and every gradient
(a learnable temperature's too), on the reference and on the fused path. A peer that is not
installed, or cannot be imported here, is skipped with the reason."""
import importlib
import importlib.util

import pytest
import torch

from scdfast.nn import ClipLoss, NTXentLoss, SupConLoss

BACKENDS = ["torch", "triton"]


def _peer(module: str, attribute: str):
    try:
        return getattr(importlib.import_module(module), attribute)
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to skip, shown
        pytest.skip(f"{module} is not importable here: {type(e).__name__}: {str(e).splitlines()[0][:120]}")


def _open_clip_loss():
    """open_clip's ClipLoss; when its package cannot be imported (it imports torchvision at
    the top), its loss module on its own, which needs only torch."""
    try:
        from open_clip.loss import ClipLoss as peer
        return peer
    except Exception as e:  # noqa: BLE001
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip(f"open_clip is not installed: {type(e).__name__}")
        path = f"{list(spec.submodule_search_locations)[0]}/loss.py"
        loss_spec = importlib.util.spec_from_file_location("open_clip_loss_alone", path)
        module = importlib.util.module_from_spec(loss_spec)
        loss_spec.loader.exec_module(module)
        return module.ClipLoss


def _equal(peer_fn, ours_fn, inputs, backend):
    """Loss and gradients of every input equal; fp32 inputs, the fused path at ieee precision."""
    results = []
    for fn in (peer_fn, ours_fn):
        xs = [x.detach().clone().requires_grad_() for x in inputs]
        loss = fn(*xs)
        loss.backward()
        results.append([loss.detach()] + [x.grad for x in xs])
    tol = dict(rtol=1e-5, atol=1e-6) if backend == "triton" else dict(rtol=1e-10, atol=1e-12)
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, **tol)


def _dtype(backend):
    return torch.float32 if backend == "triton" else torch.float64


def _inputs(backend, *shapes):
    return [torch.randn(*shape, dtype=_dtype(backend)) for shape in shapes]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pytorch_metric_learning_ntxent(backend):
    peer = _peer("pytorch_metric_learning.losses", "NTXentLoss")
    embeddings, = _inputs(backend, (12, 16))
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])  # SimCLR's: [z1; z2]
    theirs, ours = peer(temperature=0.07), NTXentLoss(temperature=0.07, backend=backend, precision="ieee")
    _equal(lambda e: theirs(e, labels), lambda e: ours(e, labels), [embeddings], backend)
    several = torch.tensor([0, 1, 0, 0, 2, 1, 4, 2, 2, 5, 1, 0])  # several positives per anchor
    _equal(lambda e: theirs(e, several), lambda e: ours(e, several), [embeddings], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pytorch_metric_learning_ntxent_with_a_learnable_temperature(backend):
    peer = _peer("pytorch_metric_learning.losses", "NTXentLoss")
    embeddings, = _inputs(backend, (10, 16))
    temperature = torch.tensor(0.1, dtype=_dtype(backend))
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])

    def theirs(e, t):
        loss = peer(temperature=0.1)
        loss.temperature = t  # it divides by its attribute, so a tensor there learns
        return loss(e, labels)
    _equal(theirs, lambda e, t: NTXentLoss(temperature=t, backend=backend, precision="ieee")(e, labels),
           [embeddings, temperature], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pytorch_metric_learning_supcon(backend):
    peer = _peer("pytorch_metric_learning.losses", "SupConLoss")
    embeddings, = _inputs(backend, (11, 24))
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0, 2, 4, 2])  # 3 and 4 once: no positive
    _equal(lambda e: peer(temperature=0.1)(e, labels),
           lambda e: SupConLoss(temperature=0.1, backend=backend, precision="ieee")(e, labels), [embeddings], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lightly_ntxent(backend):
    peer = _peer("lightly.loss", "NTXentLoss")
    z1, z2 = _inputs(backend, (8, 32), (8, 32))
    _equal(lambda a, b: peer(temperature=0.5)(a, b),
           lambda a, b: NTXentLoss(temperature=0.5, backend=backend, precision="ieee")(a, b), [z1, z2], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_clip_clip_loss_with_a_learnable_logit_scale(backend):
    peer = _open_clip_loss()
    a, b = (torch.nn.functional.normalize(x, dim=1) for x in _inputs(backend, (9, 32), (9, 32)))  # open_clip's models do
    scale = torch.tensor(2.3, dtype=_dtype(backend))  # open_clip learns log(1 / T) and passes its exp
    _equal(lambda x, y, s: peer()(x, y, s.exp()),
           lambda x, y, s: ClipLoss(backend=backend, precision="ieee")(x, y, s.exp()), [a, b, scale], backend)
