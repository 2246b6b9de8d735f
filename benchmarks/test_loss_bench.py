"""pytest-benchmark of the contrastive losses, forward + backward, on whatever device is present.

    python -m pytest benchmarks/test_loss_bench.py --benchmark-enable

MoCo's InfoNCE at SCD-Net's size, and SimCLR's NT-Xent and CLIP beside the peers scdfast.nn
replaces (lightly, pytorch-metric-learning, open_clip; pip install 'scdfast[peers]'; a peer
that does not import is skipped with the reason). On a CPU the scdfast rows are the PyTorch
reference (the Triton kernels there are the interpreter, a correctness tool); on a GPU the
fused kernels run beside it. benchmarks/gpu_suite.py's loss part adds torch.compile, peak
memory and the roofline.
"""
import os
import sys

import pytest
import torch

from scdfast.losses import clip_loss, infonce, nt_xent

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_losses import clip_peers, ntxent_peers  # noqa: E402 - a sibling script, not a package

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton"] if DEVICE == "cuda" else ["torch"]
N, D, K = 64, 128, 8192  # SCD-Net's batch, width and queue
PAIRS = 1024 if DEVICE == "cuda" else 256  # in-batch losses


def _unit(rows, grad=False):
    return torch.nn.functional.normalize(torch.randn(rows, D, device=DEVICE), dim=1).requires_grad_(grad)


def _step(fn, inputs):
    def step():
        for t in inputs:
            t.grad = None
        fn(*inputs).backward()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    return step


@pytest.mark.parametrize("backend", BACKENDS)
def test_infonce_forward_backward(benchmark, backend):
    q, k, queue = _unit(N, True), _unit(N), _unit(K)
    benchmark(_step(lambda q: infonce(q, k, queue, 0.2, backend=backend, check_finite=False), [q]))


IN_BATCH = {
    "ntxent": (lambda backend: lambda a, b: nt_xent(a, b, 0.5, backend=backend, check_finite=False), ntxent_peers),
    "clip": (lambda backend: lambda a, b: clip_loss(a, b, 0.07, backend=backend, check_finite=False), clip_peers),
}
PROVIDERS = [(case, f"scdfast-{backend}") for case in IN_BATCH for backend in BACKENDS]
PROVIDERS += [("ntxent", "lightly"), ("ntxent", "pml"), ("clip", "open_clip")]


@pytest.mark.parametrize("case,provider", PROVIDERS)
def test_in_batch_forward_backward(benchmark, case, provider):
    ours, peers = IN_BATCH[case]
    fn = ours(provider.split("-", 1)[1]) if provider.startswith("scdfast-") else peers(DEVICE)[provider]
    if isinstance(fn, str):
        pytest.skip(fn)
    benchmark(_step(fn, [_unit(PAIRS, True), _unit(PAIRS, True)]))
