"""The NTU RGB+D 25-joint skeleton: edges, bone parents, flip permutation, adjacencies.

Every index here is 0-based. The edge list is the one SCD-Net (and CTR-GCN) use,
given in SCDNET.md as 1-based (child, parent) pairs.
"""
from __future__ import annotations

import numpy as np

NUM_JOINTS = 25

# (child, parent), 1-based, exactly as the paper's code lists them. Joint 21 (spine at
# shoulders) is the root of this tree and has no parent.
_EDGES_1_BASED = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19), (22, 23), (23, 8), (24, 25), (25, 12),
)
EDGES: tuple[tuple[int, int], ...] = tuple((c - 1, p - 1) for c, p in _EDGES_1_BASED)

ROOT = 20  # spine at shoulders: its bone is zero

# parent[v] for the bone stream; the root is its own parent so its bone is zero.
BONE_PARENT = np.arange(NUM_JOINTS, dtype=np.int64)
for _child, _parent in EDGES:
    BONE_PARENT[_child] = _parent

FLIP_PERMUTATION = np.array(
    [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 16, 17, 18, 19, 12, 13, 14, 15, 20, 23, 24, 21, 22],
    dtype=np.int64,
)


def _edge_matrix(edges, num_nodes: int = NUM_JOINTS) -> np.ndarray:
    """A[j, i] = 1 for every edge (i, j): column i sends to row j."""
    a = np.zeros((num_nodes, num_nodes))
    for i, j in edges:
        a[j, i] = 1.0
    return a


def _normalise_columns(a: np.ndarray) -> np.ndarray:
    degree = a.sum(0)
    inv = np.where(degree > 0, 1.0 / np.maximum(degree, 1e-12), 0.0)
    return a * inv[None, :]


def ctrgcn_adjacency() -> np.ndarray:
    """The (3, V, V) 'spatial' partition CTR-GCN starts from: identity, inward, outward.

    Inward edges point child -> parent; each of the two directed subsets is
    normalised by its column sums (in-degree of the source), as in ST-GCN.
    """
    identity = _edge_matrix([(v, v) for v in range(NUM_JOINTS)])
    inward = _normalise_columns(_edge_matrix(EDGES))
    outward = _normalise_columns(_edge_matrix([(p, c) for c, p in EDGES]))
    return np.stack([identity, inward, outward]).astype(np.float32)


def structural_mask_scores() -> np.ndarray:
    """B = A @ A with A = I + the symmetric adjacency: the spatial mask's score matrix."""
    a = np.eye(NUM_JOINTS)
    for c, p in EDGES:
        a[c, p] = a[p, c] = 1.0
    return a @ a
