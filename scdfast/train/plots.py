"""The run directory's figure: loss and learning rate against the step, from its CSV logs."""
from __future__ import annotations

import csv
import os

from scdfast.train.rundir import atomic_write


def _rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(run_dir: str, name: str = "curves.png") -> str | None:
    """Write run_dir/curves.png (loss per logged step and per epoch, lr per epoch); None when
    there is nothing to plot yet."""
    steps, epochs = _rows(os.path.join(run_dir, "steps.csv")), _rows(os.path.join(run_dir, "metrics.csv"))
    if not steps and not epochs:
        return None
    import matplotlib
    matplotlib.use("Agg")  # no display: files only
    from matplotlib import pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    if steps:
        top.plot([int(r["step"]) for r in steps], [float(r["loss"]) for r in steps], lw=0.8, label="logged steps")
    if epochs:
        x = [int(r["step"]) for r in epochs]
        top.plot(x, [float(r["loss"]) for r in epochs], "o-", ms=3, label="epoch mean")
        bottom.step(x, [float(r["lr"]) for r in epochs], where="pre")
    top.set_ylabel("loss")
    top.legend()
    bottom.set_ylabel("learning rate")
    bottom.set_yscale("log")
    bottom.set_xlabel("step")
    fig.tight_layout()
    path = os.path.join(run_dir, name)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path
