"""CTR-GCN backbone (Chen et al., ICCV 2021) in the three-unit form SCD-Net uses.

Module and parameter names follow the authors' checkpoints (official_state_dict.tsv), so
their weights load without renaming. Shapes in comments: N samples, M bodies, C channels,
T frames, V joints.
"""
from __future__ import annotations

import torch
from torch import nn

from scdfast.data.layouts import NTU25, SkeletonLayout
from scdfast.errors import ScdError
from scdfast.graph import ctrgcn_adjacency


def _init_conv(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _init_bn(bn: nn.BatchNorm2d | nn.BatchNorm1d, scale: float) -> None:
    nn.init.constant_(bn.weight, scale)
    nn.init.zeros_(bn.bias)


class TemporalConv(nn.Sequential):
    """(k x 1) convolution over frames, 'same' padding, then BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        pad = (kernel_size + (kernel_size - 1) * (dilation - 1) - 1) // 2
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, (kernel_size, 1), padding=(pad, 0),
                              dilation=(dilation, 1))
        self.bn = nn.BatchNorm2d(out_channels)


class MultiScaleTemporalConv(nn.Module):
    """Four parallel branches concatenated on channels: two dilated (k=5, d=1 and 2) temporal
    convolutions, a 3-frame max-pool and a 1x1 convolution, each after a 1x1 bottleneck."""

    def __init__(self, channels: int, kernel_size: int = 5, dilations: tuple[int, ...] = (1, 2)):
        super().__init__()
        width = channels // (len(dilations) + 2)
        branches = [
            nn.Sequential(nn.Conv2d(channels, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                          TemporalConv(width, width, kernel_size, dilation))
            for dilation in dilations
        ]
        branches.append(nn.Sequential(
            nn.Conv2d(channels, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d((3, 1), stride=1, padding=(1, 0)), nn.BatchNorm2d(width)))
        branches.append(nn.Sequential(nn.Conv2d(channels, width, 1), nn.BatchNorm2d(width)))
        self.branches = nn.ModuleList(branches)
        # The authors' weights_init: Kaiming for convs, N(1, 0.02) for BatchNorm scales.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _init_conv(m)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.normal_(1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class CTRGC(nn.Module):
    """Channel-wise topology refinement: a per-sample, per-channel adjacency
    conv4(tanh(x1_u - x2_v)) * alpha + A, applied to conv3(x)."""

    def __init__(self, in_channels: int, out_channels: int, rel_reduction: int = 8):
        super().__init__()
        rel = 8 if in_channels in (3, 9) else in_channels // rel_reduction
        self.conv1 = nn.Conv2d(in_channels, rel, 1)
        self.conv2 = nn.Conv2d(in_channels, rel, 1)
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1)
        self.conv4 = nn.Conv2d(rel, out_channels, 1)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            _init_conv(conv)

    def forward(self, x: torch.Tensor, a: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x).mean(-2)                                # N, R, V
        x2 = self.conv2(x).mean(-2)                                # N, R, V
        x3 = self.conv3(x)                                         # N, C, T, V
        rel = torch.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))      # N, R, V, V
        adj = self.conv4(rel) * alpha + a                          # N, C, V, V
        return torch.einsum("ncuv,nctv->nctu", adj, x3)


class GraphConv(nn.Module):
    """Sum of three CTR-GC subsets over the learnable adjacency PA, BN, residual, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, adjacency: torch.Tensor):
        super().__init__()
        self.convs = nn.ModuleList(CTRGC(in_channels, out_channels) for _ in range(adjacency.shape[0]))
        self.down = None
        if in_channels != out_channels:
            self.down = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
            _init_conv(self.down[0])
            _init_bn(self.down[1], 1.0)
        self.PA = nn.Parameter(adjacency.clone())
        self.alpha = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm2d(out_channels)
        _init_bn(self.bn, 1e-6)  # the unit starts as (nearly) its residual path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convs[0](x, self.PA[0], self.alpha)
        for i in range(1, len(self.convs)):
            y = y + self.convs[i](x, self.PA[i], self.alpha)
        y = self.bn(y)
        y = y + (x if self.down is None else self.down(x))
        return torch.relu(y)


class UnitResidual(nn.Sequential):
    """1x1 convolution + BN on the unit's shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)
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
            y = y + self.residual(x)
        elif self.identity_residual:
            y = y + x
        return torch.relu(y)


class CTRGCN(nn.Module):
    """(N, C, T, V, M) skeletons -> (N*M, c, T, V) features; bodies become batch rows."""

    def __init__(self, base_channels: int = 64, num_joints: int = 25, num_bodies: int = 2,
                 in_channels: int = 3, layout: SkeletonLayout = NTU25):
        super().__init__()
        adjacency = torch.from_numpy(ctrgcn_adjacency(layout))
        if adjacency.shape[-1] != num_joints:
            raise ScdError(f"layout {layout.name} has {adjacency.shape[-1]} joints, config asks {num_joints}")
        self.data_bn = nn.BatchNorm1d(num_bodies * num_joints * in_channels)
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

