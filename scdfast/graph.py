"""Graph matrices of a skeleton layout: CTR-GCN's adjacency subsets and the spatial mask's scores.

Every index is 0-based. The module-level constants are those of the paper's NTU layout, whose
edge list SCDNET.md gives as 1-based (child, parent) pairs.
"""
from __future__ import annotations

import numpy as np

from scdfast.data.layouts import NTU25, SkeletonLayout

NUM_JOINTS = NTU25.num_joints
EDGES: tuple[tuple[int, int], ...] = NTU25.edges
ROOT = 20  # spine at shoulders: no edge's child, so its bone is zero
BONE_PARENT = NTU25.bone_parent
FLIP_PERMUTATION = NTU25.flip_permutation


def _edge_matrix(edges, num_nodes: int) -> np.ndarray:
    """A[j, i] = 1 for every edge (i, j): column i sends to row j."""
    a = np.zeros((num_nodes, num_nodes))
    for i, j in edges:
        a[j, i] = 1.0
    return a


def _normalise_columns(a: np.ndarray) -> np.ndarray:
    degree = a.sum(0)
    inv = np.where(degree > 0, 1.0 / np.maximum(degree, 1e-12), 0.0)
    return a * inv[None, :]


def ctrgcn_adjacency(layout: SkeletonLayout = NTU25) -> np.ndarray:
    """The (3, V, V) 'spatial' partition CTR-GCN starts from: identity, inward, outward.

    Inward edges point child -> parent; each of the two directed subsets is
    normalised by its column sums (in-degree of the source), as in ST-GCN.
    """
    v = layout.num_joints
    identity = _edge_matrix([(j, j) for j in range(v)], v)
    inward = _normalise_columns(_edge_matrix(layout.edges, v))
    outward = _normalise_columns(_edge_matrix([(p, c) for c, p in layout.edges], v))
    return np.stack([identity, inward, outward]).astype(np.float32)


def structural_mask_scores(layout: SkeletonLayout = NTU25) -> np.ndarray:
    """B = A @ A with A = I + the symmetric adjacency: the spatial mask's score matrix."""
    a = np.eye(layout.num_joints)
    for c, p in layout.edges:
        a[c, p] = a[p, c] = 1.0
    return a @ a
