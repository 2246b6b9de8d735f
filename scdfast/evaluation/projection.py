"""2-D projections of features for the embedding figure: PCA in torch, and t-SNE (van der
Maaten and Hinton, 2008) from scikit-learn (the `figures` extra), whose Barnes-Hut solver is
far faster than an exact one at the few thousand points a figure shows."""
from __future__ import annotations

import torch


def pca(x: torch.Tensor, dims: int) -> torch.Tensor:
    """The first `dims` principal-component scores of x (n, d), signs fixed for determinism;
    zero columns where x has fewer than `dims` components (n or d below dims)."""
    centred = x - x.mean(dim=0)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    have = min(dims, s.shape[0])
    scores = u[:, :have] * s[:have]
    sign = torch.sign(scores[scores.abs().argmax(dim=0), torch.arange(have)])
    scores = scores * torch.where(sign == 0, torch.ones_like(sign), sign)
    return torch.cat([scores, scores.new_zeros(x.shape[0], dims - have)], dim=1)


def tsne(x: torch.Tensor, perplexity: float = 30.0, seed: int = 0) -> torch.Tensor:
    """(n, 2) embedding of x (n, d), deterministic for a given seed: scikit-learn's t-SNE on the
    first 50 principal components (the usual preprocessing), initialised from PCA."""
    from sklearn.manifold import TSNE

    x = x.double()
    n = x.shape[0]
    if n < 4:
        return pca(x, 2)
    reduced = pca(x, min(50, x.shape[1])).numpy()
    embedding = TSNE(n_components=2, perplexity=min(perplexity, (n - 1) / 3.0), init="pca", learning_rate="auto",
                     random_state=seed).fit_transform(reduced)
    return torch.from_numpy(embedding)
