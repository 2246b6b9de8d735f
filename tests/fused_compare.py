"""What the fused-loss tests share: the tolerance rule against float64 references.

The kernel's relative error against float64 computed from the same (dtype-rounded) inputs,
||got - ref|| / ||ref||, for the loss and every gradient, may be at most twice the error of
plain PyTorch computing the same thing in the same precision (bf16 inputs; tf32 matmuls on a
GPU), plus a small floor per precision, as flash-attention's tests allow.
"""
import torch
import torch.nn.functional as F

FLOOR = {"ieee": 1e-6, "tf32": 1e-4, "bf16": 1e-3}
DTYPE = {"ieee": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def rel_err(got, ref):
    return ((got.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def unit(n, d):
    return F.normalize(torch.randn(n, d, dtype=torch.float64), dim=1)


def with_grads(fn, tensors):
    loss = fn(*tensors)
    grads = torch.autograd.grad(loss, [t for t in tensors if t.requires_grad])
    return [loss.detach()] + [g.detach() for g in grads]


def compare(fused_fn, ref_fn, inputs, precision, device, consts=(), loss_atol=0.0, grad_atol=None):
    """fused_fn(*inputs, *consts) against ref_fn on the same values: `inputs` (float64, on the
    CPU) take gradients, `consts` do not. Asserts the tolerance rule for the loss and each
    gradient and returns the kernel's errors. `loss_atol` widens the loss's bound by an absolute
    error: the resolution of the terms a loss near 0 is the difference of; `grad_atol` ({input
    index: norm of an absolute error}) likewise a gradient's, where it is formed from terms far
    larger than itself (a temperature's: per-anchor terms that cancel)."""
    dtype = DTYPE[precision]

    def cast(ts, target_dtype, target_device, grad):
        return [t.to(target_device, target_dtype).requires_grad_(grad) for t in ts]
    # the truth is computed from the very values the kernel is given (rounded to its dtype):
    # the rounding of the inputs is not the kernel's error, as flash-attention's upcast reference
    rounded = [t.to(dtype).double() for t in inputs], [t.to(dtype).double() for t in consts]
    truth = with_grads(ref_fn, cast(rounded[0], torch.float64, "cpu", True) + cast(rounded[1], torch.float64, "cpu", False))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"  # plain PyTorch in the kernels' precision
    try:
        plain = with_grads(ref_fn, cast(inputs, dtype, device, True) + cast(consts, dtype, device, False))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    ours_in = cast(inputs, dtype, device, True)
    ours = with_grads(fused_fn, ours_in + cast(consts, dtype, device, False))
    for t, g in zip(ours_in, ours[1:]):
        assert g.dtype == t.dtype and torch.isfinite(g.double()).all()
    errors = []
    atol = {"loss": loss_atol} | {f"grad {i}": a for i, a in (grad_atol or {}).items()}
    for what, got, want, base in zip(["loss"] + [f"grad {i}" for i in range(len(inputs))], ours, truth, plain):
        err, allowed = rel_err(got.cpu(), want), 2 * rel_err(base.cpu(), want) + FLOOR[precision]
        if got.numel() == 1 and precision == "bf16":
            # one value from bf16 inputs (a loss, a temperature's gradient: sums of rounded terms that
            # cancel) has no average to hide its rounding in, and one draw of plain PyTorch's error
            # can be lucky; it gets one bf16 ulp (2**-7), the resolution of what it was computed
            # from. Over 40 seeds of the SupCon case the kernel's error on the temperature's
            # gradient had median 0.0019 and largest 0.0070; plain PyTorch's 0.0028 and 0.029.
            allowed += 2.0 ** -7
        allowed += atol.get(what, 0.0) / want.double().norm().clamp_min(1e-30).item()
        assert err <= allowed, f"{what}: relative error {err:.3g} > {allowed:.3g} ({precision})"
        errors.append(err)
    return errors
