"""The vectorised fp32 training BatchNorm (scdfast.models.batchnorm) against ATen's in float64."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from scdfast.models.batchnorm import BatchNorm1d, BatchNorm2d, batch_norm, batch_statistics


class _TrainingKernels(TorchDispatchMode):
    """Counts ATen's BatchNorm forwards by their training flag."""

    def __init__(self):
        super().__init__()
        self.training = self.inference = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.native_batch_norm.default:
            if args[5]:
                self.training += 1
            else:
                self.inference += 1
        elif func is torch.ops.aten._native_batch_norm_legit_no_training.default:
            self.inference += 1
        elif func in (torch.ops.aten._native_batch_norm_legit.default,
                      torch.ops.aten._native_batch_norm_legit_functional.default):
            self.training += 1
        return func(*args, **(kwargs or {}))


def _inputs(shape, offset, seed):
    g = torch.Generator().manual_seed(seed)
    channels = shape[1]
    scale = torch.rand(channels, generator=g) * 3 + 0.1
    view = (1, channels) + (1,) * (len(shape) - 2)
    x = torch.randn(shape, generator=g) * scale.view(view) + offset * scale.view(view) * torch.randn(view, generator=g)
    return (x, torch.randn(channels, generator=g), torch.randn(channels, generator=g), torch.randn(shape, generator=g),
            torch.randn(channels, generator=g), torch.rand(channels, generator=g) + 0.5)


@pytest.mark.parametrize("shape", [(5, 7, 9, 11), (3, 4, 13), (3, 3, 1, 1), (16, 6, 8, 5)])
@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_fp32_training_batch_norm_equals_float64_reference(shape, offset):
    """Output, the gradients of x, weight and bias, and both running statistics of the
    vectorised path agree with ATen's BatchNorm run in float64 on the same fp32 values to 2e-5
    relative (fp32 rounding; a wrong count, a biased running variance or a missed channel reads
    percents), and the forward is ATen's inference kernel, not its training one."""
    x, w, b, grad, running_mean, running_var = _inputs(shape, offset, seed=sum(shape) + int(offset))
    leaves32 = [t.clone().requires_grad_() for t in (x, w, b)]
    leaves64 = [t.double().requires_grad_() for t in (x, w, b)]
    rm32, rv32, rm64, rv64 = running_mean.clone(), running_var.clone(), running_mean.double(), running_var.double()
    with _TrainingKernels() as seen:
        ours = batch_norm(leaves32[0], rm32, rv32, leaves32[1], leaves32[2], True, 0.3, 1e-5)
    assert (seen.training, seen.inference) == (0, 1)
    ref = F.batch_norm(leaves64[0], rm64, rv64, leaves64[1], leaves64[2], True, 0.3, 1e-5)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    torch.testing.assert_close(ours.double(), ref, rtol=2e-5, atol=2e-5)
    for name, a, want in zip(("x", "weight", "bias"), torch.autograd.grad(ours, leaves32, grad),
                             torch.autograd.grad(ref, leaves64, grad.double())):
        torch.testing.assert_close(a.double(), want, rtol=2e-5, atol=2e-5 * float(want.abs().max()), msg=name)
    torch.testing.assert_close(rm32.double(), rm64, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(rv32.double(), rv64, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 10.0, 100.0, 1000.0])
def test_the_statistics_error_stays_within_its_stated_bound(ratio):
    """The variance is E[x^2] - E[x]^2 from fp32 sums: its relative error stays under
    2.4e-7 x (1 + mean^2 / variance), the bound the module docstring states, for channels whose
    mean is up to 1000 standard deviations from zero; the mean within 1e-6 x (|mean| + standard
    deviation)."""
    torch.manual_seed(int(ratio))
    x = torch.randn(37, 5, 23, 7) + ratio * torch.tensor([1.0, -1.0, 0.5, 2.0, 0.0]).view(1, 5, 1, 1)
    mean, var = batch_statistics(x)
    x64 = x.double()
    ref_mean, ref_var = x64.mean((0, 2, 3)), x64.var((0, 2, 3), unbiased=False)
    bound = 2.4e-7 * (1 + ref_mean.square() / ref_var)
    assert ((var - ref_var).abs() / ref_var <= bound).all(), ((var - ref_var).abs() / ref_var / bound).max()
    assert ((mean - ref_mean).abs() <= 1e-6 * (ref_mean.abs() + ref_var.sqrt())).all()


def test_modules_keep_nn_batchnorm_elsewhere():
    """Eval mode, a cumulative average (momentum None), autocast and float64 run nn.BatchNorm's
    own forward, bit for bit; training fp32 takes the vectorised path and counts its batches.
    The state dict is nn.BatchNorm2d's."""
    torch.manual_seed(0)
    ours, theirs = BatchNorm2d(6), torch.nn.BatchNorm2d(6)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(4, 6, 5, 3)
    for setup in (lambda m: m.eval(), lambda m: setattr(m, "momentum", None)):
        a, b = BatchNorm2d(6), torch.nn.BatchNorm2d(6)
        setup(a), setup(b)
        assert torch.equal(a(x), b(x)) and torch.equal(a.running_var, b.running_var)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an fp32 input under autocast, as data_bn's
        assert torch.equal(BatchNorm2d(6)(x), torch.nn.BatchNorm2d(6)(x))
    assert torch.equal(BatchNorm2d(6).double()(x.double()), torch.nn.BatchNorm2d(6).double()(x.double()))
    with _TrainingKernels() as seen:
        ours(x)
        ours(x)
    assert (seen.training, seen.inference, int(ours.num_batches_tracked)) == (0, 2, 2)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    untracked = BatchNorm1d(6, track_running_stats=False)
    torch.testing.assert_close(untracked(x[..., 0]), F.batch_norm(x[..., 0], None, None, untracked.weight,
                                                                   untracked.bias, True), rtol=1e-5, atol=1e-5)


def test_one_value_a_channel_is_still_an_error():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm2d(3)(torch.randn(1, 3, 1, 1))
