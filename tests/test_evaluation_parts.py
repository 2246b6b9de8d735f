"""The downstream protocols' parts against straightforward references: stratified label
subsets, chunked kNN, cached against exact linear evaluation, the feature cache, t-SNE."""
import numpy as np
import pytest
import torch

from scdfast.config import FinetuneConfig, LinearConfig, SCDConfig
from scdfast.data import generate
from scdfast.errors import ScdError
from scdfast.evaluation import (
    FeatureCache,
    extract_features,
    knn_classify,
    linear_probe,
    linear_probe_exact,
    parse_fraction,
    random_encoder,
    stratified_subset,
)
from scdfast.evaluation import features
from scdfast.evaluation.finetune import epoch_batches, finetune
from scdfast.evaluation.projection import pca, tsne


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 1.0])
def test_label_subsets_are_stratified_and_reproducible(fraction, rng):
    labels = rng.integers(0, 7, size=int(rng.integers(50, 400)))
    chosen = stratified_subset(labels, fraction, seed=3)
    for c in np.unique(labels):
        members = int((labels == c).sum())
        assert int((labels[chosen] == c).sum()) == max(1, round(fraction * members))
    assert len(np.unique(chosen)) == len(chosen)
    assert np.array_equal(chosen, stratified_subset(labels, fraction, seed=3))
    if fraction < 1.0:
        assert not np.array_equal(chosen, stratified_subset(labels, fraction, seed=4))


@pytest.mark.parametrize("text,value", [("1%", 0.01), ("10%", 0.1), ("0.25", 0.25), ("100%", 1.0)])
def test_label_fractions_parse(text, value):
    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "0%", "150%", "-0.1", "1.5", "ten"])
def test_label_fractions_outside_the_unit_interval_are_refused(text):
    with pytest.raises(ScdError, match="--labels"):
        parse_fraction(text)


def _knn_reference(train_x, train_y, test_x, k, classes):
    """Full float64 similarity matrix, votes counted one by one, ties by best similarity."""
    a = train_x.double() / train_x.double().norm(dim=1, keepdim=True)
    b = test_x.double() / test_x.double().norm(dim=1, keepdim=True)
    sim = b @ a.t()
    out = np.zeros((len(test_x), classes))
    for i in range(len(test_x)):
        order = torch.argsort(sim[i], descending=True)[:k]
        for j in order:
            out[i, int(train_y[j])] += 1.0
        for c in range(classes):
            mine = sim[i][train_y == c]
            best = mine.max().item() if len(mine) else -1.0
            out[i, c] += (best + 1.0) / 2.001
    return out


@pytest.mark.parametrize("k", [1, 3, 5])
def test_knn_equals_the_full_matrix_reference(k, rng):
    n_train, n_test, dim, classes = int(rng.integers(20, 90)), int(rng.integers(5, 60)), 13, 6
    train_x = torch.from_numpy(rng.normal(size=(n_train, dim))).float()
    test_x = torch.from_numpy(rng.normal(size=(n_test, dim))).float()
    train_y = torch.from_numpy(rng.integers(0, classes, n_train))
    test_y = torch.from_numpy(rng.integers(0, classes, n_test))
    got = knn_classify(train_x, train_y, test_x, test_y, classes, k=k, chunk=7)
    want = _knn_reference(train_x, train_y, test_x, k, classes)
    np.testing.assert_allclose(got.scores.numpy(), want, atol=1e-5)
    top = np.argsort(-want, axis=1)
    assert got.top1 == pytest.approx(100.0 * (top[:, 0] == test_y.numpy()).mean())
    assert got.top5 == pytest.approx(100.0 * (top[:, :5] == test_y.numpy()[:, None]).any(axis=1).mean())


def test_knn_refuses_k_beyond_the_training_set():
    x, y = torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ScdError, match="--k 5"):
        knn_classify(x, y, x, y, 2, k=5)


@pytest.fixture(scope="module")
def small_sets():
    return generate(40, seed=0, num_classes=4, max_frames=80), generate(20, seed=1, num_classes=4, max_frames=80)


def test_the_classifier_starts_as_the_authors_does():
    """N(0, 0.01) weights and zero bias (the authors' action_classification.py), read back
    through test features that pick the bias (a zero row) and each weight column (one-hots)."""
    dim, classes = 2048, 10
    train_x, train_y = torch.randn(16, dim), torch.arange(16) % classes
    test_x = torch.cat([torch.zeros(1, dim), torch.eye(dim)])
    config = LinearConfig(epochs=1, lr=1e-30, batch_size=16, seed=4)
    logits = linear_probe(train_x, train_y, test_x, torch.zeros(dim + 1, dtype=torch.long), classes, config,
                          torch.device("cpu")).logits
    bias, weight = logits[0], logits[1:]
    assert bias.abs().max() < 1e-20
    assert abs(weight.std().item() - 0.01) < 2e-4 and abs(weight.mean().item()) < 2e-4
    kurtosis = ((weight - weight.mean()) ** 4).mean() / weight.var() ** 2
    assert abs(kurtosis.item() - 3.0) < 0.15, "normal, not PyTorch's default uniform (kurtosis 1.8)"


def test_cached_and_exact_linear_evaluation_agree(small_sets):
    train, test = small_sets
    config = SCDConfig.tiny(window=16)
    source = random_encoder(config, 4, seed=0, representation="motion")
    linear = LinearConfig.tiny(epochs=4, batch_size=16, lr=0.5, standardize=False)
    cpu = torch.device("cpu")
    train_x = extract_features(source.model, train, config.window, cpu, "motion", batch_size=7)
    test_x = extract_features(source.model, test, config.window, cpu, "motion")
    cached = linear_probe(train_x, torch.from_numpy(train.labels), test_x, torch.from_numpy(test.labels), 4, linear, cpu)
    exact = linear_probe_exact(source.model, train, test, config.window, "motion", 4, linear, cpu)
    torch.testing.assert_close(cached.logits, exact.logits, atol=1e-4, rtol=1e-4)
    assert (cached.top1, cached.top5, cached.best_top1) == (exact.top1, exact.top5, exact.best_top1)


def test_diverging_finetuning_stops_with_a_named_error(small_sets):
    train, test = small_sets
    source = random_encoder(SCDConfig.tiny(window=16), 4, seed=0, representation="joint")
    config = FinetuneConfig.tiny(epochs=2, batch_size=16, lr=1e12, eval_every=1)
    with pytest.raises(ScdError, match="fine-tuning diverged.*lower --lr"):
        finetune(source, train, test, config, torch.device("cpu"))


def test_finetuning_never_steps_on_a_sliver(small_sets):
    """17 labelled samples at batch 16: one step of 17 an epoch, not 16 and then 1."""
    train, test = small_sets
    source = random_encoder(SCDConfig.tiny(window=16), 4, seed=0, representation="joint")
    sizes = []
    source.model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])) if m.training else None)
    config = FinetuneConfig.tiny(epochs=3, batch_size=16, eval_every=3)
    result = finetune(source, train, test, config, torch.device("cpu"), train_index=np.arange(3, 20))
    assert sizes == [17, 17, 17] and result.train_samples == 17


@pytest.mark.parametrize("n, batch", [(1, 32), (16, 32), (33, 32), (47, 32), (48, 32), (54, 32),
                                      (102, 32), (227, 32), (284, 32), (7, 1), (130, 128)])
def test_epoch_batches_are_slices_of_the_order_with_a_short_tail_folded_in(n, batch, rng):
    order = rng.permutation(n) + 1000  # indices are values, not positions
    batches = epoch_batches(order, batch)
    sizes = [len(b) for b in batches]
    assert sum(sizes) == n and sizes[:-1] == [batch] * (len(sizes) - 1)
    assert sizes[-1] == n if n < batch else batch / 2 <= sizes[-1] < 1.5 * batch
    for got, lo, size in zip(batches, np.cumsum([0] + sizes[:-1]), sizes):
        np.testing.assert_array_equal(got, np.sort(order[lo:lo + size]))


def test_feature_cache_reuses_and_repairs_entries(tmp_path):
    cache, calls = FeatureCache(str(tmp_path)), []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(2, 3)

    first, hit1 = cache.get(compute, encoder="a", stream="joint")
    second, hit2 = cache.get(compute, encoder="a", stream="joint")
    assert (hit1, hit2, len(calls)) == (False, True, 1) and torch.equal(first, second)
    cache.get(compute, encoder="a", stream="bone")  # another key: computed again
    assert len(calls) == 2
    entry = tmp_path / (cache.key(encoder="a", stream="joint") + ".pt")
    entry.write_bytes(b"damaged")
    repaired, hit = cache.get(compute, encoder="a", stream="joint")
    assert not hit and torch.equal(repaired, first) and len(calls) == 3


def test_synthetic_features_are_keyed_by_the_generator_version(monkeypatch):
    """A changed generator must not reuse features cached for its old arrays."""
    before = features.dataset_identity("synthetic", "train")
    monkeypatch.setattr(features, "GENERATOR_VERSION", features.GENERATOR_VERSION + 1)
    assert features.dataset_identity("synthetic", "train") != before
    assert features.dataset_identity("synthetic", "val") != features.dataset_identity("synthetic", "train")


def test_tsne_keeps_separated_clusters_apart(rng):
    centres = rng.normal(scale=10.0, size=(3, 12))
    labels = np.repeat(np.arange(3), 30)
    x = torch.from_numpy(centres[labels] + rng.normal(size=(90, 12)))
    y = tsne(x, perplexity=10.0, seed=int(rng.integers(1 << 30))).numpy()
    distance = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    assert (labels[distance.argmin(axis=1)] == labels).mean() == 1.0


@pytest.mark.parametrize("n,d", [(1, 5), (2, 1), (7, 3)])
def test_pca_gives_two_columns_for_any_shape(n, d):
    assert pca(torch.randn(n, d, dtype=torch.float64), 2).shape == (n, 2)
