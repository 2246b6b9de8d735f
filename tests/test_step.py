"""The pretraining step's fast paths against the plain one: torch.compile gives the same
losses (CPU, fp32), bf16 autocast stays close, and bad settings are refused by name."""
import pytest
import torch

from scdfast.config import SCDConfig
from scdfast.errors import ScdError
from scdfast.models import SCDNet
from scdfast.train.step import PretrainStep

CONFIG = SCDConfig.tiny(queue_size=64, dropout=0.0)


def _losses(compile_mode="off", precision="fp32", steps=3):
    torch.manual_seed(0)
    model = SCDNet(CONFIG)
    optimizer = torch.optim.SGD(model.query_encoder.parameters(), lr=0.05, momentum=0.9)
    step = PretrainStep(model, optimizer, torch.device("cpu"), compile_mode=compile_mode, precision=precision)
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        q, k = (torch.randn(8, 3, CONFIG.window, 25, 2, generator=g) for _ in range(2))
        out.append(step(q, k).item())
    return torch.tensor(out)


@pytest.mark.slow
def test_compiled_step_equals_eager():
    # compiling both encoders on the CPU takes about two minutes
    torch.testing.assert_close(_losses("default"), _losses("off"), rtol=1e-5, atol=1e-5)


def test_bf16_autocast_step_is_close_to_fp32():
    torch.testing.assert_close(_losses(precision="bf16", steps=2), _losses(steps=2), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("kwargs, message", [
    ({"compile_mode": "fastest"}, "compile='fastest'"),
    ({"precision": "fp8"}, "precision='fp8'"),
    ({"bn_mode": "shuffle"}, "needs several processes"),
])
def test_bad_settings_are_named(kwargs, message):
    model = SCDNet(CONFIG)
    optimizer = torch.optim.SGD(model.query_encoder.parameters(), lr=0.1)
    with pytest.raises(ScdError, match=message):
        PretrainStep(model, optimizer, torch.device("cpu"), **kwargs)
