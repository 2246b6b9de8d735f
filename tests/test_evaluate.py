"""Linear evaluation on cached features: the standardize option is a frozen z-score."""
import torch

from scdfast.config import LinearConfig
from scdfast.evaluation import linear_probe


def _features(n, centres, offset, scale, generator):
    labels = torch.arange(n) % centres.shape[0]
    x = offset + scale * (centres[labels] + 0.1 * torch.randn(n, centres.shape[1], generator=generator))
    return x, labels


def test_standardize_equals_probing_z_scored_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g)
    train_x, train_y = _features(120, centres, 5.0, 0.01, g)
    test_x, test_y = _features(60, centres, 5.0, 0.01, g)
    config = LinearConfig.tiny(epochs=10, lr=0.1)
    got = linear_probe(train_x, train_y, test_x, test_y, 4, LinearConfig.tiny(epochs=10, lr=0.1, standardize=True),
                       torch.device("cpu"))
    mean, std = train_x.mean(0), train_x.std(0)
    want = linear_probe((train_x - mean) / std, train_y, (test_x - mean) / std, test_y, 4, config, torch.device("cpu"))
    assert (got.top1, got.best_top1) == (want.top1, want.best_top1)
    assert got.top1 > 90.0  # tiny-variance features separate once standardised
