"""Collapse readings: does the encoder still tell samples apart?

A MoCo encoder can collapse, mapping every sample to nearly one direction. The loss does not
show it reliably (random queue keys make a shared direction cost nothing at first), so
pretraining reads three things from a batch, at the log interval:

- per head, the standard deviation over the batch of the L2-normalised projections, averaged
  over dimensions and scaled by sqrt(dim): about 1 when the unit vectors spread over the
  sphere, 0 when they all point one way (SimSiam's collapse measure, Chen & He 2021);
- per head, RankMe (Garrido et al. 2023), the effective rank of the batch of projections:
  exp of the entropy of their normalised singular values, between 1 and min(batch, dim);
- the spread of the downstream feature concat(vt, vs) relative to its mean,
  ||std over the batch|| / ||mean over the batch||: the classifier of a downstream protocol
  reads this feature, and near 0 it sees nearly one input for every sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

HEADS = ("temporal", "spatial", "instance")
# Below this std * sqrt(dim) in any head the run is collapsed. Measured on tiny-preset runs
# of the four real datasets (benchmarks/ACCURACY.md), in train mode: the collapsed ones'
# smallest head read 0.002-0.025, runs with real keys in the queues 0.09-0.87, random init
# 0.18-0.24.
COLLAPSE_STD = 0.05
FIELDS = (*(f"std_{h}" for h in HEADS), *(f"rankme_{h}" for h in HEADS), "feature_spread")


def rankme(z: torch.Tensor) -> torch.Tensor:
    """Effective rank of the rows of z (N, D), as a 0-d float32 tensor on z's device."""
    s = torch.linalg.svdvals(z.float())
    p = s / s.sum().clamp_min(1e-12) + 1e-7
    return torch.exp(-(p * p.log()).sum())


def feature_spread(features: torch.Tensor) -> torch.Tensor:
    f = features.float()
    return f.std(dim=0).norm() / f.mean(dim=0).norm().clamp_min(1e-12)


def readings(units: tuple[torch.Tensor, ...], features: torch.Tensor) -> torch.Tensor:
    """(7,) float32 on the device, in FIELDS order, from the unit projections (qt, qs, qi) and
    the features of one batch. Reads nothing back to the host."""
    with torch.no_grad():
        stds = [u.float().std(dim=0).mean() * math.sqrt(u.shape[1]) for u in units]
        ranks = [rankme(u) for u in units]
        return torch.stack([*stds, *ranks, feature_spread(features)])


@dataclass
class CollapseReading:
    """One reading, on the host."""

    step: int
    std: tuple[float, float, float]        # per head, times sqrt(dim)
    rankme: tuple[float, float, float]     # per head
    feature_spread: float
    samples: int                           # the batch it was read from
    dim: int

    @classmethod
    def from_values(cls, step: int, values: list[float], samples: int, dim: int) -> CollapseReading:
        return cls(step, tuple(values[0:3]), tuple(values[3:6]), values[6], samples, dim)

    @classmethod
    def from_dict(cls, d: dict) -> CollapseReading:
        return cls.from_values(d["step"], [d[f] for f in FIELDS], d["samples"], d["dim"])

    @property
    def collapsed_heads(self) -> list[str]:
        return [h for h, s in zip(HEADS, self.std) if not s >= COLLAPSE_STD]  # NaN counts as collapsed

    @property
    def collapsed(self) -> bool:
        return bool(self.collapsed_heads)

    def row(self) -> dict[str, str]:
        return dict(zip(FIELDS, (f"{v:.4g}" for v in (*self.std, *self.rankme, self.feature_spread))))

    def short(self) -> str:
        """The progress bar's form: the smallest head std * sqrt(dim) and RankMe."""
        return f"std {min(self.std):.2f} rank {min(self.rankme):.1f}"

    def describe(self) -> str:
        heads = ", ".join(f"{h} {s:.3f}" for h, s in zip(HEADS, self.std))
        ranks = ", ".join(f"{h} {r:.1f}" for h, r in zip(HEADS, self.rankme))
        verdict = (f"COLLAPSED ({', '.join(self.collapsed_heads)} below {COLLAPSE_STD})" if self.collapsed
                   else "no collapse")
        return (f"projection std x sqrt(dim): {heads} (healthy near 1, collapse below {COLLAPSE_STD}); "
                f"RankMe: {ranks} (of at most {min(self.samples, self.dim)}); feature spread "
                f"{self.feature_spread:.3f}; {verdict}")

    def warning(self) -> str:
        return (f"warning: collapse at step {self.step}: the {', '.join(self.collapsed_heads)} projections' "
                f"std x sqrt(dim) is {', '.join(f'{s:.3f}' for s in self.std)} (below {COLLAPSE_STD}; "
                f"RankMe {min(self.rankme):.1f}): the encoder maps every sample to nearly one direction; "
                f"see docs/collapse.md")

    def as_dict(self) -> dict:
        return {"step": self.step, **dict(zip(FIELDS, (*self.std, *self.rankme, self.feature_spread))),
                "samples": self.samples, "dim": self.dim, "collapsed": self.collapsed,
                "collapsed_heads": self.collapsed_heads}
