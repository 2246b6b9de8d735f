"""Class-stratified, seeded label subsets for semi-supervised training."""
from __future__ import annotations

import numpy as np

from scdfast.errors import ScdError


def parse_fraction(text: str) -> float:
    """'10%' or '0.1' -> 0.1; anything outside (0, 1] is refused."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ScdError(f"--labels {text!r}: expected a percentage such as 10% or a fraction such as 0.1") from None
    if not 0.0 < value <= 1.0:
        raise ScdError(f"--labels {text!r}: the label fraction must be in (0, 1] (0% < labels <= 100%)")
    return value


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of round(fraction x count) samples of every class (at least one each),
    drawn without replacement by a generator seeded with `seed` alone."""
    if not 0.0 < fraction <= 1.0:
        raise ScdError(f"label fraction {fraction}: must be in (0, 1]")
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 0x5E31])
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
