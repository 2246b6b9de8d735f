"""SCD-Net's encoder: two CTR-GCN backbones feeding a temporal and a spatial transformer branch.

The temporal branch sees one token per frame, the spatial branch one token per (body, joint);
each is max-pooled over its tokens into a clue (vt, vs). Module names match the authors'
checkpoints (`encoder.gcn_t`, `encoder.channel_t`, `t_proj`, ...).
"""
from __future__ import annotations

import torch
from torch import nn

from scdfast.config import SCDConfig
from scdfast.models.ctrgcn import CTRGCN
from scdfast.models.footprint import require_host_memory


def _token_embedding(in_features: int, d_model: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, d_model), nn.LayerNorm(d_model), nn.ReLU(inplace=True),
                         nn.Linear(d_model, d_model))


class UniformDropout(nn.Dropout):
    """nn.Dropout whose mask, on the CPU, is torch.rand >= p: the same distribution and the same
    generator, drawn faster. On AMD CPUs `bernoulli_` draws element by element: forward and
    backward of a (50, 64, 128) bf16 dropout took 2.6 ms against 1.6 ms this way, and the tiny
    bf16 step spends 12 of its dropouts on such tensors. Other devices keep nn.Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0.0 < self.p < 1.0:
            return super().forward(x)
        scaled_keep = (torch.rand(x.shape, device=x.device) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * scaled_keep


def _transformer(config: SCDConfig) -> nn.TransformerEncoder:
    # Sequence-first, fed contiguous: the attention's input projections then fold into one GEMM.
    # Batch-first inputs reach them transposed, and for weights without grad (the key encoder)
    # torch.matmul then runs a batched GEMM over the weight expanded per sequence position, which
    # the CPU's bf16 kernel copies first: 44x slower at d 2048 (fp32: 1.8x).
    layer = nn.TransformerEncoderLayer(config.d_model, config.num_heads, config.feedforward,
                                       dropout=config.dropout, batch_first=False)
    layer.dropout, layer.dropout1, layer.dropout2 = (UniformDropout(config.dropout) for _ in range(3))
    # No nested tensors: every token is real, and the nested path breaks torch.compile.
    return nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)


def _projector(in_features: int, d_model: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, d_model), nn.ReLU(inplace=True),
                         nn.Linear(d_model, out_features))


class ClueEncoder(nn.Module):
    """(N, C, T, V, M) views -> temporal clue vt (N, d) and spatial clue vs (N, d)."""

    def __init__(self, config: SCDConfig):
        super().__init__()
        require_host_memory(config)
        c, t, v, m = config.gcn_channels, config.window, config.num_joints, config.num_bodies
        self.num_bodies = m
        self.gcn_t = CTRGCN(c, v, m, config.in_channels, config.skeleton)
        self.gcn_s = CTRGCN(c, v, m, config.in_channels, config.skeleton)
        self.channel_t = _token_embedding(m * v * c, config.d_model)   # a frame token: (M V C)
        self.channel_s = _token_embedding(t * c, config.d_model)       # a joint token: (T C)
        self.t_encoder = _transformer(config)
        self.s_encoder = _transformer(config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.num_bodies
        ft = self.gcn_t(x)                                            # (N M), C, T, V
        nm, c, t, v = ft.shape
        # '(B M) C T V -> B T (M V C)'
        ft = ft.view(nm // m, m, c, t, v).permute(0, 3, 1, 4, 2).reshape(nm // m, t, m * v * c)
        fs = self.gcn_s(x)
        # '(B M) C T V -> B (M V) (T C)'
        fs = fs.view(nm // m, m, c, t, v).permute(0, 1, 4, 3, 2).reshape(nm // m, m * v, t * c)
        vt = self.t_encoder(self.channel_t(ft).transpose(0, 1).contiguous())  # T, N, d
        vs = self.s_encoder(self.channel_s(fs).transpose(0, 1).contiguous())  # (M V), N, d
        return vt.amax(dim=0), vs.amax(dim=0)


class PretrainingEncoder(nn.Module):
    """Clue encoder plus the three projectors; returns unnormalised (zt, zs, zi), and with
    `with_features` the downstream feature concat(vt, vs) fourth (the collapse monitor reads it)."""

    def __init__(self, config: SCDConfig):
        super().__init__()
        d = config.d_model
        self.encoder = ClueEncoder(config)
        self.t_proj = _projector(d, d, config.proj_dim)
        self.s_proj = _projector(d, d, config.proj_dim)
        self.i_proj = _projector(2 * d, d, config.proj_dim)
        xavier_init_matrices(self)

    def forward(self, x: torch.Tensor, with_features: bool = False) -> tuple[torch.Tensor, ...]:
        vt, vs = self.encoder(x)
        features = torch.cat([vt, vs], dim=1)
        projections = (self.t_proj(vt), self.s_proj(vs), self.i_proj(features))
        return (*projections, features) if with_features else projections


class DownstreamEncoder(nn.Module):
    """Clue encoder and a Linear classifier on the feature concat(vt, vs)."""

    def __init__(self, config: SCDConfig, num_classes: int):
        super().__init__()
        self.encoder = ClueEncoder(config)
        self.fc = nn.Linear(config.feature_dim, num_classes)
        xavier_init_matrices(self.encoder)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        vt, vs = self.encoder(x)
        return torch.cat([vt, vs], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@torch.no_grad()
def xavier_init_matrices(module: nn.Module) -> None:
    """Xavier-uniform for every 2-D parameter (all Linear and attention weights), as the
    authors initialise; the CTR-GCN convolutions and norms keep their own init."""
    for param in module.parameters():
        if param.dim() == 2:
            nn.init.xavier_uniform_(param)
