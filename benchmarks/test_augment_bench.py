"""pytest-benchmark of view generation on this machine's CPU (GPU: augment_throughput.py).

    python -m pytest benchmarks/test_augment_bench.py --benchmark-enable
"""
import numpy as np
import pytest

from scdfast.augment import draw_views, make_views
from scdfast.augment.batched import BatchAugmenter
from scdfast.data.synthetic import generate

BATCH, WINDOW = 256, 64


@pytest.fixture(scope="module")
def samples():
    data = generate(BATCH, seed=0)
    return np.ascontiguousarray(data.data), data.num_frames


def test_reference_per_sample(benchmark, samples):
    x, nf = samples
    rng = np.random.default_rng(0)
    benchmark(lambda: make_views(x, draw_views(rng, nf, WINDOW), WINDOW))


def test_batched_numba_cpu(benchmark, samples):
    x, nf = samples
    augmenter = BatchAugmenter(WINDOW, backend="cpu")
    index = np.arange(BATCH)
    augmenter(x, nf, index, 0)  # compile outside the timing
    benchmark(lambda: augmenter(x, nf, index, 1, validate=False))
