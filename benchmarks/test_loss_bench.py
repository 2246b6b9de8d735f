"""pytest-benchmark of the MoCo loss, forward + backward, on whatever device is present.

    python -m pytest benchmarks/test_loss_bench.py --benchmark-enable

On a CPU only the PyTorch reference runs (the Triton kernels there are the interpreter, a
correctness tool); on a GPU the fused kernels run beside it. The GPU script
benchmarks/gpu_suite.py's loss part adds torch.compile, peak memory and the roofline.
"""
import pytest
import torch

from scdfast.losses import infonce

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton"] if DEVICE == "cuda" else ["torch"]
N, D, K = 64, 128, 8192  # SCD-Net's batch, width and queue


@pytest.mark.parametrize("backend", BACKENDS)
def test_infonce_forward_backward(benchmark, backend):
    q = torch.nn.functional.normalize(torch.randn(N, D, device=DEVICE), dim=1).requires_grad_()
    k = torch.nn.functional.normalize(torch.randn(N, D, device=DEVICE), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(K, D, device=DEVICE), dim=1)

    def step():
        q.grad = None
        infonce(q, k, queue, 0.2, backend=backend, check_finite=False).backward()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    benchmark(step)
