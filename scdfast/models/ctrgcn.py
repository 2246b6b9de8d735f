"""CTR-GCN backbone (Chen et al., ICCV 2021) in the three-unit form SCD-Net uses.

Module and parameter names follow the authors' checkpoints (official_state_dict.tsv), so
their weights load without renaming. Shapes in comments: N samples, M bodies, C channels,
T frames, V joints.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from scdfast.data.layouts import NTU25, SkeletonLayout
from scdfast.errors import ScdError
from scdfast.graph import ctrgcn_adjacency
from scdfast.models.batchnorm import BatchNorm1d, BatchNorm2d, batch_norm


def _init_conv(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _init_bn(bn: nn.BatchNorm2d | nn.BatchNorm1d, scale: float) -> None:
    nn.init.constant_(bn.weight, scale)
    nn.init.zeros_(bn.bias)


class _BatchShift(torch.autograd.Function):
    """`shift` (C, L) as the (N, C, L) view every sample shares: the additive term of a batched
    GEMM. Its gradient is summed over the batch first, a contiguous outer reduction. Autograd's
    own gradient of an expand of a (C, 1) bias sums over (0, 2) at once, which for a bf16
    gradient on the CPU casts the whole tensor to float first: 16x slower, and in the tiny bf16
    step those sums took 8% of the time."""

    @staticmethod
    def forward(ctx, shift: torch.Tensor, n: int, length: int) -> torch.Tensor:
        ctx.width = shift.shape[1]
        return shift.unsqueeze(0).expand(n, -1, length)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.sum(0)
        return (grad.sum(1, keepdim=True) if ctx.width == 1 else grad), None, None


def _autocast_cpu(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`tensors` in CPU autocast's dtype where it is on: what autocast would hand the op, cast
    before a custom Function or an expand sees them."""
    if not torch.is_autocast_enabled("cpu"):
        return tensors
    dtype = torch.get_autocast_dtype("cpu")
    return tuple(t.to(dtype) for t in tensors)


def batched_affine(x: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """out[n] = weight @ x[n] + shift for (N, C, L) CPU `x`, (out, C) `weight` and an (out, 1)
    or (out, L) `shift`: one batched GEMM. Weight and shift are cast first under autocast,
    which would otherwise cast the expanded shift, writing all N x out x L of it."""
    n, _, length = x.shape
    weight, shift = _autocast_cpu(weight, shift)
    return torch.baddbmm(_BatchShift.apply(shift, n, length), weight.unsqueeze(0).expand(n, -1, -1), x)


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution of (N, C, T, V) `x`; on the CPU one batched GEMM, out[n] = W @ x[n] + b
    over the (C, T x V) view of each sample. oneDNN runs these narrow convolutions through layout
    reorders, and the GEMM, reading the NCHW tensor as it lies, made the fp32 step 13% faster
    (bf16 the same). Other devices keep the convolution."""
    if x.device.type != "cpu":
        return F.conv2d(x, weight, bias)
    n, c, t, v = x.shape
    out = weight.shape[0]
    return batched_affine(x.reshape(n, c, t * v), weight.view(out, c), bias.view(out, 1)).view(n, out, t, v)


class _FrameMean(torch.autograd.Function):
    """The mean over frames of (N, C, T, V) `x`, keeping the frame axis: (N, C, 1, V).

    Both directions avoid a slow path of bf16 on the CPU. Forward as a sum and a division:
    `mean` casts the whole tensor to float first (4x slower for a (128, 64, 32, 25) tensor;
    both accumulate in float and round once). Backward hands autograd a dense gradient: the
    broadcast one that `sum` returns is added into x's other gradients at 9 ms a (128, 64, 32,
    25) tensor, a dense one at 0.6 ms."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.sum(-2, keepdim=True) / x.shape[-2]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        n, c, t, v = ctx.shape
        return (grad / t).view(n * c, 1, v).expand(-1, t, -1).contiguous().view(n, c, t, v)


def frame_mean(x: torch.Tensor) -> torch.Tensor:
    """x.mean(-2, keepdim=True); on the CPU through `_FrameMean`, faster for bf16."""
    return _FrameMean.apply(x) if x.device.type == "cpu" else x.mean(-2, keepdim=True)


class _PairwiseDifference(torch.autograd.Function):
    """x1[..., u] - x2[..., v] at [..., v, u] for two (..., V) bf16 tensors, subtracted in float
    and rounded to bf16: element by element what ATen's bf16 subtraction computes, but ATen's
    broadcast bf16 kernel is slow on the CPU (0.47 against 0.13 ms at (128, 8, 25); 36 calls a
    tiny step). The backward is autograd's for the broadcast subtraction, the same operations in
    the same order, so a step's every bit is unchanged."""

    @staticmethod
    def forward(ctx, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return (x1.float().unsqueeze(-2) - x2.float().unsqueeze(-1)).to(x1.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.sum(-2), (-grad).sum(-1)


def pairwise_difference(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """x1.unsqueeze(-2) - x2.unsqueeze(-1); for bf16 on the CPU through `_PairwiseDifference`."""
    if x1.device.type == "cpu" and x1.dtype == x2.dtype == torch.bfloat16:
        return _PairwiseDifference.apply(x1, x2)
    return x1.unsqueeze(-2) - x2.unsqueeze(-1)


class _SharedInputConvs(torch.autograd.Function):
    """Equal-width 1x1 convolutions of one (N, C, V) input as one batched GEMM (N, K, V), K the
    sum of their widths, computed to give their separate bf16 convolutions' bits in both
    directions (`merge_is_exact` checks it on the CPU at hand): the forward is a batched GEMM;
    the weight and bias gradients are oneDNN's own convolution backward, one call over all K
    channels (per channel the reduction of a call per convolution); the input gradient is each
    convolution's, rounded to the input's dtype, summed in the order autograd adds them (the
    last convolution's first). GraphConv's six relation convolutions (conv1 and conv2 of three
    subsets) took six oneDNN calls each way: 0.37-0.55 ms forward and 0.88-1.27 ms backward
    together, against 0.05-0.13 and 0.13-0.27 ms for the GEMM and the one backward call."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, width: int) -> torch.Tensor:
        n, _, v = x.shape
        ctx.x_dtype, ctx.width = x.dtype, width
        x = x.to(weight.dtype)
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.view(1, -1, 1).expand(n, -1, v), weight.unsqueeze(0).expand(n, -1, -1), x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        (n, c, v), k = x.shape, weight.shape[0]
        grad = grad.contiguous()
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_w or need_b:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad.view(n, k, 1, v), x.view(n, c, 1, v), weight.view(k, c, 1, 1), [k], [1, 1], [0, 0], [1, 1],
                False, [0, 0], 1, [False, need_w, need_b])
            grad_w = grad_w.view(k, c) if need_w else None
        if need_x:
            pieces = k // ctx.width
            parts = torch.matmul(weight.view(pieces, ctx.width, c).transpose(1, 2),
                                 grad.view(n, pieces, ctx.width, v)).to(ctx.x_dtype)      # N, pieces, C, V
            grad_x = parts[:, -1]
            for i in reversed(range(pieces - 1)):
                grad_x = grad_x + parts[:, i]
        return grad_x, grad_w, grad_b, None


def shared_input_convs(x: torch.Tensor, convs: list[nn.Conv2d]) -> tuple[torch.Tensor, ...] | None:
    """conv(x).squeeze(-2) for each of `convs`, 1x1 convolutions of equal width, of an (N, C, 1,
    V) CPU `x`: (N, width, V) each, computed together with the bits of the convolutions apart.
    Under bf16 autocast through one `_SharedInputConvs`; in fp32 without gradients (evaluation
    features, the key encoder) as one oneDNN convolution, which gives each output channel the
    bits a convolution of its own gives. None where neither holds (fp32 with gradients: the
    GEMM and a merged backward round otherwise than oneDNN's fp32 convolutions), or where this
    CPU's kernels do not give those bits at this shape (`merge_is_exact`): the caller runs the
    convolutions."""
    if torch.compiler.is_compiling():  # inductor fuses its own graph; the check below is eager code
        return None
    autocast = torch.is_autocast_enabled("cpu")
    if autocast and torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return None
    if not autocast and torch.is_grad_enabled() and (x.requires_grad or convs[0].weight.requires_grad):
        return None
    width = convs[0].out_channels
    if not merge_is_exact(tuple(x.shape), x.dtype, width, len(convs), autocast):
        return None
    return _merged_convs(x, [conv.weight for conv in convs], [conv.bias for conv in convs], autocast)


def _merged_convs(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                  bf16: bool) -> tuple[torch.Tensor, ...]:
    """`shared_input_convs`'s computation for (width, C, 1, 1) `weights` and (width,) `biases`."""
    n, c, _, v = x.shape
    width = weights[0].shape[0]
    weight, bias = torch.cat(weights).view(-1, c), torch.cat(biases)
    if bf16:
        weight, bias = _autocast_cpu(weight, bias)
        return _SharedInputConvs.apply(x.view(n, c, v), weight, bias, width).split(width, dim=1)
    return F.conv2d(x, weight.view(-1, c, 1, 1), bias).squeeze(-2).split(width, dim=1)


@functools.cache
def merge_is_exact(shape: tuple[int, ...], dtype: torch.dtype, width: int, pieces: int, bf16: bool) -> bool:
    """Whether this CPU's kernels give `shared_input_convs` the separate convolutions' bits for
    an input of `shape` and `dtype`: under bf16 autocast (`bf16`) the outputs and the input's,
    weights' and biases' gradients, otherwise the outputs. Both ways run as the model runs them,
    once a process per shape, on random values from a generator of their own (the global one is
    left as it was). The kernels that decide it (oneDNN's convolutions, the batched GEMM)
    choose their loops by CPU and shape; the bits were measured equal on a 2-core AMD EPYC
    with AVX-512-BF16, and where they differ the convolutions run apart. A few milliseconds."""
    n, c, _, v = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(dtype)
    params = [torch.randn(width, c, 1, 1, generator=gen) / c**0.5 for _ in range(pieces)]
    params += [torch.randn(width, generator=gen) for _ in range(pieces)]
    grads = [torch.randn(n, width, v, generator=gen).to(torch.bfloat16 if bf16 else dtype) for _ in range(pieces)]

    def run(convs):
        leaves = [t.clone().requires_grad_(bf16) for t in (x, *params)]
        # a layer's input is no leaf: autocast casts a leaf once for every convolution reading it
        outs = convs(leaves[0].clone(), leaves[1:1 + pieces], leaves[1 + pieces:])
        return list(outs) + (list(torch.autograd.grad(outs, leaves, grads)) if bf16 else [])

    def apart(x, weights, biases):
        return [F.conv2d(x, w, b).squeeze(-2) for w, b in zip(weights, biases)]

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(bf16):
        merged = run(lambda x, weights, biases: _merged_convs(x, weights, biases, bf16))
        separate = run(apart)
    return all(torch.equal(a, b) for a, b in zip(merged, separate))


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose gradient is made contiguous. A branch concatenated on channels gets
    a strided slice of the concatenation's gradient, and BatchNorm's backward runs 4-5x slower
    on a strided gradient than it does on a copy."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution computed by `pointwise`; parameters and state dict are Conv2d's."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise(x, self.weight, self.bias)


class TemporalMaxPool(nn.Module):
    """Max over frames t-1, t, t+1 (stride 1, the edges padded), as nn.MaxPool2d((3, 1), 1, (1, 0))
    computes it. On the CPU as a 1-D pool over the frames of each (sample, channel, joint): the
    2-D kernel walks the (3 x 1) window slowly (15 ms for a (128, 16, 32, 25) tensor, against 3 ms
    this way; the same values, the same gradients)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return F.max_pool2d(x, (3, 1), stride=1, padding=(1, 0))
        n, c, t, v = x.shape
        frames_last = x.reshape(n * c, t, v).transpose(1, 2)                   # (N C), V, T
        return F.max_pool1d(frames_last, 3, stride=1, padding=1).transpose(1, 2).reshape(n, c, t, v)


class _NarrowFrameConvGrad(torch.autograd.Function):
    """A (k x 1) convolution over frames ('same' padding) whose backward is written out: the
    input's gradient is the forward convolution of the gradient with the flipped kernel, the
    weight's one batched GEMM against the k shifted inputs. For 4 channels in bf16 oneDNN's
    backward took 2.9-7.6 ms of a (128, 4, 32, 25) tensor against 0.35 ms for its forward; this
    one takes 0.8 ms. At 16 channels oneDNN's is the faster (2.4 against 11 ms)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pad: int, dilation: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.pad, ctx.dilation = pad, dilation
        return F.conv2d(x, weight, bias, padding=(pad, 0), dilation=(dilation, 1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        pad, d = ctx.pad, ctx.dilation
        n, c, t, v = x.shape
        out, _, k, _ = weight.shape
        grad = grad.contiguous()
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(2).transpose(0, 1), padding=(pad, 0), dilation=(d, 1))
        padded = F.pad(x, (0, 0, pad, pad))
        shifted = torch.stack([padded[:, :, i * d:i * d + t] for i in range(k)], 2)     # N, C, k, T, V
        grad_w = torch.bmm(grad.view(n, out, t * v), shifted.view(n, c * k, t * v).transpose(1, 2)).sum(0)
        grad_b = grad.view(n, out, t * v).sum(2).sum(0)
        return grad_x, grad_w.view(weight.shape), grad_b, None, None


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size + (kernel_size - 1) * (dilation - 1) - 1) // 2


class FrameConv(nn.Conv2d):
    """(k x 1) convolution over frames, 'same' padding; parameters and state dict are Conv2d's.
    On the CPU, at most NARROW input channels take `_NarrowFrameConvGrad`'s backward."""

    NARROW = 8

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, (kernel_size, 1), padding=(_same_padding(kernel_size, dilation), 0),
                         dilation=(dilation, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or self.in_channels > self.NARROW:
            return super().forward(x)
        x, weight, bias = _autocast_cpu(x, self.weight, self.bias)
        return _NarrowFrameConvGrad.apply(x, weight, bias, self.padding[0], self.dilation[0])


class TemporalConv(nn.Sequential):
    """(k x 1) convolution over frames, 'same' padding, then BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        self.conv = FrameConv(in_channels, out_channels, kernel_size, dilation)
        self.bn = BatchNorm2d(out_channels)


class MultiScaleTemporalConv(nn.Module):
    """Four parallel branches concatenated on channels: two dilated (k=5, d=1 and 2) temporal
    convolutions, a 3-frame max-pool and a 1x1 convolution, each after a 1x1 bottleneck."""

    def __init__(self, channels: int, kernel_size: int = 5, dilations: tuple[int, ...] = (1, 2)):
        super().__init__()
        width = channels // (len(dilations) + 2)
        branches = [
            nn.Sequential(PointwiseConv(channels, width), BatchNorm2d(width), nn.ReLU(inplace=True),
                          TemporalConv(width, width, kernel_size, dilation))
            for dilation in dilations
        ]
        branches.append(nn.Sequential(
            PointwiseConv(channels, width), BatchNorm2d(width), nn.ReLU(inplace=True),
            TemporalMaxPool(), BatchNorm2d(width)))
        branches.append(nn.Sequential(PointwiseConv(channels, width), BatchNorm2d(width)))
        self.branches = nn.ModuleList(branches)
        # The authors' weights_init: Kaiming for convs, N(1, 0.02) for BatchNorm scales.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _init_conv(m)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.normal_(1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each branch as `branches` defines it, with the four bottlenecks (1x1 convolution and
        BatchNorm on the same input) computed as one convolution and one BatchNorm over their
        concatenated channels: a channel's values and statistics are its own either way, and
        the input is read once instead of four times."""
        (_, bn0, _, temporal0), (_, bn1, _, temporal1), (_, bn2, _, pool, pool_bn), (_, bn3) = self.branches
        bottlenecks = [branch[0] for branch in self.branches]
        h = pointwise(x, torch.cat([c.weight for c in bottlenecks]), torch.cat([c.bias for c in bottlenecks]))
        h0, h1, h2, h3 = _batch_norms(h, [bn0, bn1, bn2, bn3]).split(bn0.num_features, dim=1)
        # not the branches' in-place ReLUs: h0..h2 are views of one tensor
        branches = [temporal0(F.relu(h0)), temporal1(F.relu(h1)), pool_bn(pool(F.relu(h2)))]
        if x.device.type == "cpu":
            branches = [_ContiguousGrad.apply(b) for b in branches]
        return torch.cat([*branches, h3], dim=1)


def _batch_norms(x: torch.Tensor, norms: list[nn.BatchNorm2d]) -> torch.Tensor:
    """`norms` applied to consecutive channel groups of `x`, as one batch_norm call over their
    concatenated parameters; in training the running statistics each norm would have kept are
    written back to it."""
    first = norms[0]
    running_mean = torch.cat([bn.running_mean for bn in norms])
    running_var = torch.cat([bn.running_var for bn in norms])
    out = batch_norm(x, running_mean, running_var, torch.cat([bn.weight for bn in norms]),
                     torch.cat([bn.bias for bn in norms]), first.training, first.momentum, first.eps)
    if first.training:
        with torch.no_grad():
            widths = [bn.num_features for bn in norms]
            torch._foreach_copy_([t for bn in norms for t in (bn.running_mean, bn.running_var)],
                                 [t for pair in zip(running_mean.split(widths), running_var.split(widths)) for t in pair])
            torch._foreach_add_([bn.num_batches_tracked for bn in norms], 1)
    return out


class CTRGC(nn.Module):
    """Channel-wise topology refinement: a per-sample, per-channel adjacency
    conv4(tanh(x1_u - x2_v)) * alpha + A, applied to conv3(x).

    Computed as the authors' module computes it, in fewer passes over memory (the same values
    up to float rounding; tests/test_model.py compares it with a transcription of theirs):
    conv1 and conv2 are 1x1 convolutions and so commute with the mean over frames, which is
    taken first (a pass over V joints instead of T x V); alpha scales conv4's weights and bias
    rather than its (N, C, V, V) output; and the adjacency is built transposed, (N, C, V, U),
    so that the aggregation is a plain batched matmul of contiguous operands, which eager and
    compiled code alike hand to one batched GEMM. On the CPU, conv4, its bias and A are one
    batched GEMM too (`batched_affine`)."""

    def __init__(self, in_channels: int, out_channels: int, rel_reduction: int = 8):
        super().__init__()
        rel = 8 if in_channels in (3, 9) else in_channels // rel_reduction
        self.conv1 = nn.Conv2d(in_channels, rel, 1)
        self.conv2 = nn.Conv2d(in_channels, rel, 1)
        self.conv3 = PointwiseConv(in_channels, out_channels)
        self.conv4 = nn.Conv2d(rel, out_channels, 1)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            _init_conv(conv)

    def forward(self, x: torch.Tensor, a: torch.Tensor, alpha: torch.Tensor,
                x_mean: torch.Tensor | None = None) -> torch.Tensor:
        """`x_mean`: x.mean over frames (keepdim), when the caller has it for several subsets."""
        return torch.matmul(*self.operands(x, a, alpha, x_mean))                # N, C, T, U

    def operands(self, x: torch.Tensor, a: torch.Tensor, alpha: torch.Tensor,
                 x_mean: torch.Tensor | None = None,
                 relations: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """conv3(x) (N, C, T, V) and the transposed adjacency (N, C, V, U) whose product is the
        output; GraphConv sums the products of its subsets. `relations`: conv1 and conv2 of the
        frame mean, (N, R, V) each, when the caller computed them (`shared_input_convs`)."""
        if relations is None:
            if x_mean is None:
                x_mean = frame_mean(x)                                         # N, C, 1, V
            relations = self.conv1(x_mean).squeeze(-2), self.conv2(x_mean).squeeze(-2)
        x1, x2 = relations                                                     # N, R, V each
        rel_t = torch.tanh(pairwise_difference(x1, x2))                       # N, R, V, U: x1[u] - x2[v]
        n, r, v, _ = rel_t.shape
        weight, bias = self.conv4.weight * alpha, self.conv4.bias * alpha
        if x.device.type == "cpu":
            # conv4, its bias and + A^T as one batched GEMM whose additive term is bias + A^T
            # (C, V x U); the sum with a transposed A alone took 3 ms of a (128, 64, 25, 25) bf16 step
            shift = bias.unsqueeze(1) + a.t().reshape(1, v * v)
            adj_t = batched_affine(rel_t.reshape(n, r, v * v), weight.view(-1, r), shift).view(n, -1, v, v)
        else:
            adj_t = F.conv2d(rel_t, weight, bias)                              # N, C, V, U
            adj_t = adj_t + a.t().to(adj_t.dtype)  # under autocast the sum stays bf16, as the matmul takes it
        return self.conv3(x), adj_t


def aggregate(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The sum of x @ adj_t over (x (N, C, T, V), adj_t (N, C, V, U)) `pairs`, for the CPU: the
    first product is one batched GEMM and the others accumulate into it in place, where a
    product and a sum apiece would each write a fresh (N, C, T, U) tensor. Fresh memory is
    page-faulted in on the CPU: 3 subsets' products and sums took 8.7-30 ms of a (128, 64, 32,
    25) bf16 forward, the accumulation 8.2-8.3 ms."""
    (x, adj_t), *rest = pairs
    n, c, t, v = x.shape
    u = adj_t.shape[-1]
    y = torch.bmm(x.reshape(n * c, t, v), adj_t.reshape(n * c, v, u))  # autocast casts for bmm, not for baddbmm_
    for x, adj_t in rest:
        y.baddbmm_(x.reshape(n * c, t, v).to(y.dtype), adj_t.reshape(n * c, v, u).to(y.dtype))
    return y.view(n, c, t, u)


def add_relu(y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """relu(y + residual). On the CPU in place in `y`, an output that no backward reads (of a
    BatchNorm or a concatenation), where the dtypes agree: two fresh tensors fewer."""
    if y.device.type != "cpu" or y.dtype != residual.dtype:
        return torch.relu(y + residual)
    return y.add_(residual).relu_()


class GraphConv(nn.Module):
    """Sum of three CTR-GC subsets over the learnable adjacency PA, BN, residual, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, adjacency: torch.Tensor):
        super().__init__()
        self.convs = nn.ModuleList(CTRGC(in_channels, out_channels) for _ in range(adjacency.shape[0]))
        self.down = None
        if in_channels != out_channels:
            self.down = nn.Sequential(PointwiseConv(in_channels, out_channels), BatchNorm2d(out_channels))
            _init_conv(self.down[0])
            _init_bn(self.down[1], 1.0)
        self.PA = nn.Parameter(adjacency.clone())
        self.alpha = nn.Parameter(torch.zeros(1))
        self.bn = BatchNorm2d(out_channels)
        _init_bn(self.bn, 1e-6)  # the unit starts as (nearly) its residual path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_mean = frame_mean(x)  # every subset's conv1 and conv2 read it
        if x.device.type == "cpu":
            relations = shared_input_convs(x_mean, [c for conv in self.convs for c in (conv.conv1, conv.conv2)])
            y = aggregate([conv.operands(x, self.PA[i], self.alpha, x_mean, relations and relations[2 * i:2 * i + 2])
                           for i, conv in enumerate(self.convs)])
        else:
            y = self.convs[0](x, self.PA[0], self.alpha, x_mean)
            for i in range(1, len(self.convs)):
                y = y + self.convs[i](x, self.PA[i], self.alpha, x_mean)
        return add_relu(self.bn(y), x if self.down is None else self.down(x))


class UnitResidual(nn.Sequential):
    """1x1 convolution + BN on the unit's shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = PointwiseConv(in_channels, out_channels)
        self.bn = BatchNorm2d(out_channels)
        _init_conv(self.conv)
        _init_bn(self.bn, 1.0)


class TCNGCNUnit(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, adjacency: torch.Tensor, residual: bool = True):
        super().__init__()
        self.gcn1 = GraphConv(in_channels, out_channels, adjacency)
        self.tcn1 = MultiScaleTemporalConv(out_channels)
        self.residual = None
        self.identity_residual = residual and in_channels == out_channels
        if residual and in_channels != out_channels:
            self.residual = UnitResidual(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tcn1(self.gcn1(x))
        if self.residual is not None:
            return add_relu(y, self.residual(x))
        if self.identity_residual:
            return add_relu(y, x)
        return torch.relu(y)


class CTRGCN(nn.Module):
    """(N, C, T, V, M) skeletons -> (N*M, c, T, V) features; bodies become batch rows."""

    def __init__(self, base_channels: int = 64, num_joints: int = 25, num_bodies: int = 2,
                 in_channels: int = 3, layout: SkeletonLayout = NTU25):
        super().__init__()
        adjacency = torch.tensor(ctrgcn_adjacency(layout))  # a factory: made on the default device (meta too)
        if adjacency.shape[-1] != num_joints:
            raise ScdError(f"layout {layout.name} has {adjacency.shape[-1]} joints, config asks {num_joints}")
        self.data_bn = BatchNorm1d(num_bodies * num_joints * in_channels)
        _init_bn(self.data_bn, 1.0)
        self.l1 = TCNGCNUnit(in_channels, base_channels, adjacency, residual=False)
        self.l2 = TCNGCNUnit(base_channels, base_channels * 4, adjacency)
        self.l3 = TCNGCNUnit(base_channels * 4, base_channels, adjacency)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t)    # N, (M V C), T
        x = self.data_bn(x)
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        return self.l3(self.l2(self.l1(x)))                      # N*M, c, T, V

