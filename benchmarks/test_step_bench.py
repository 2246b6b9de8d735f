"""pytest-benchmark of one whole pretraining step (views included) on whatever device is present.

    python -m pytest benchmarks/test_step_bench.py --benchmark-enable

The tiny preset at batch 32: the authors-like loop and scdfast's eager step in fp32 and bf16
(compiled variants, and the phase split, roofline and profile, are step_throughput.py's: their
minutes of compiling do not fit a pytest-benchmark round).
"""
import os
import sys

import pytest
import torch

from scdfast.config import PretrainConfig, SCDConfig, preset
from scdfast.data.synthetic import generate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_throughput import AUTHORS, Variant  # noqa: E402 - a sibling script, not a package

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCH = 32


@pytest.fixture(scope="module")
def data():
    return generate(256, seed=0)


@pytest.mark.parametrize("name", [AUTHORS, "fp32 off", "bf16 off"])
def test_pretraining_step(benchmark, data, name):
    model_config, config = preset("tiny", SCDConfig), preset("tiny", PretrainConfig, batch_size=BATCH)
    precision, mode = (None, None) if name == AUTHORS else name.split()
    variant = Variant(name, model_config, config, data, DEVICE, mode, precision)
    variant.warm_up(2)
    benchmark.pedantic(variant.run_step, rounds=5, iterations=1)
