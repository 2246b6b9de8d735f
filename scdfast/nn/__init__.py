"""Drop-in modules: the fused contrastive losses in the conventions of lightly,
pytorch-metric-learning, open_clip and SupContrast, and MoCo's memory bank.

    from scdfast.nn import NTXentLoss
    loss = NTXentLoss(temperature=0.5)(z1, z2)      # was: lightly.loss.NTXentLoss
"""
from scdfast.nn.losses import ClipLoss, InfoNCELoss, NTXentLoss, SCDLoss, SupConLoss
from scdfast.nn.memory_bank import MemoryBank

__all__ = ["ClipLoss", "InfoNCELoss", "MemoryBank", "NTXentLoss", "SCDLoss", "SupConLoss"]
