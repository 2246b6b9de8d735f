"""scdfast: a performance-engineered training engine for SCD-Net (Wu et al., AAAI 2024)."""
from scdfast.config import FinetuneConfig, LinearConfig, PretrainConfig, SCDConfig
from scdfast.errors import ScdError

__version__ = "0.1.0"
__all__ = ["FinetuneConfig", "LinearConfig", "PretrainConfig", "SCDConfig", "ScdError", "__version__"]
