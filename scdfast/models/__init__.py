"""SCD-Net's networks: CTR-GCN backbone, clue encoder, projectors, MoCo wrapper."""
from scdfast.config import SCDConfig
from scdfast.models.ctrgcn import CTRGCN
from scdfast.models.encoder import ClueEncoder, DownstreamEncoder, PretrainingEncoder
from scdfast.models.moco import QUEUE_NAMES, SCDNet

__all__ = [
           "CTRGCN",
           "QUEUE_NAMES",
           "ClueEncoder",
           "DownstreamEncoder",
           "PretrainingEncoder",
           "SCDConfig",
           "SCDNet",
]
