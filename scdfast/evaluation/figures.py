"""PNG figures of a protocol's test results: the confusion matrix and a 2-D embedding of
the test features coloured by class (PCA, or t-SNE on request)."""
from __future__ import annotations

import io

import numpy as np
import torch

from scdfast.evaluation.projection import pca, tsne
from scdfast.train.rundir import atomic_write

EMBEDDINGS = ("pca", "tsne")
TSNE_MAX_POINTS = 3000


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(true, predicted) counts."""
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(labels), np.asarray(predictions)), 1)
    return out


def confusion_png(path: str, labels: np.ndarray, predictions: np.ndarray, num_classes: int, title: str) -> None:
    counts = confusion_matrix(labels, predictions, num_classes)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    plt = _pyplot()
    size = min(4 + 0.25 * num_classes, 16)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if num_classes <= 30:
        for t in range(num_classes):
            for p in range(num_classes):
                if counts[t, p]:
                    ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=7,
                            color="white" if rates[t, p] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    _save(fig, path)


def embedding_png(path: str, features: torch.Tensor, labels: np.ndarray, method: str, title: str,
                  seed: int = 0) -> None:
    """Scatter of the test features in 2-D; t-SNE shows at most TSNE_MAX_POINTS (a seeded sample)."""
    labels = np.asarray(labels)
    x = features.double()
    if method == "tsne":
        if x.shape[0] > TSNE_MAX_POINTS:
            keep = np.sort(np.random.default_rng(seed).choice(x.shape[0], TSNE_MAX_POINTS, replace=False))
            x, labels = x[torch.from_numpy(keep)], labels[keep]
        points = tsne(x, seed=seed).numpy()
    else:
        points = pca(x, 2).numpy()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    classes = np.unique(labels)
    colours = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    for i, c in enumerate(classes):
        mine = labels == c
        ax.scatter(points[mine, 0], points[mine, 1], s=8, color=colours(i % colours.N), label=str(c))
    if len(classes) <= 20:
        ax.legend(title="class", fontsize=7, markerscale=2, loc="best")
    ax.set_title(f"{title} ({'t-SNE' if method == 'tsne' else 'PCA'})")
    ax.set_xticks([])
    ax.set_yticks([])
    _save(fig, path)
