"""What a pretraining run reports as it goes, behind one object: the progress bar, steps.csv
(the loss and the collapse readings at every log interval), metrics.csv (one row per epoch),
TensorBoard, and curves.png when the run ends, however it ends."""
from __future__ import annotations

import csv
import os
import sys

from tqdm.auto import tqdm

from scdfast.train.collapse import FIELDS as COLLAPSE_FIELDS
from scdfast.train.collapse import HEADS, CollapseReading
from scdfast.train.plots import plot_curves
from scdfast.train.rundir import MetricsCSV, atomic_write

METRIC_FIELDS = ["epoch", "step", "loss", "lr", "samples_per_s", "data_s", "compute_s"]
STEP_FIELDS = ["step", "loss", *COLLAPSE_FIELDS]


def _tensorboard(run_dir: str):
    """A TensorBoard writer for run_dir/tensorboard, or None where tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.path.join(run_dir, "tensorboard"))


def truncate_csv(path: str, column: str, last: int) -> None:
    """Drop rows whose `column` exceeds `last`: what a killed run logged past its checkpoint."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        fields = rows[0].keys() if rows else None
    if fields is None:
        return
    kept = [r for r in rows if int(r[column]) <= last]

    def write(f):
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(kept)
    atomic_write(path, write, mode="w")


class RunLog:
    """The run's logs. On a rank other than 0 (`enabled=False`) it writes nothing; a resumed
    run first drops what the stopped one logged past its checkpoint (`resumed_at`)."""

    def __init__(self, run_dir: str, total_steps: int, step: int, enabled: bool, progress: bool,
                 resumed_at: int | None = None):
        self.run_dir, self.enabled = run_dir, enabled
        if resumed_at is not None:
            for name in ("steps.csv", "metrics.csv"):
                truncate_csv(os.path.join(run_dir, name), "step", resumed_at)
        self.metrics = MetricsCSV(os.path.join(run_dir, "metrics.csv"), METRIC_FIELDS, enabled=enabled)
        self.steps = MetricsCSV(os.path.join(run_dir, "steps.csv"), STEP_FIELDS, enabled=enabled)
        self.board = _tensorboard(run_dir) if enabled else None
        self.bar = tqdm(total=total_steps, initial=step, desc="pretrain", unit="step",
                        disable=not (progress and enabled), dynamic_ncols=True)

    def step_done(self) -> None:
        self.bar.update(1)

    def interval(self, step: int, loss: float, lr: float, epoch: int, data_s: float, compute_s: float,
                 collapse: CollapseReading) -> None:
        """The mean loss of the steps since the last interval, and the collapse readings."""
        self.steps.write(step=step, loss=repr(loss), **collapse.row())
        if self.board is not None:
            self.board.add_scalar("loss/step", loss, step)
            self.board.add_scalar("lr", lr, step)
            for head, std, rank in zip(HEADS, collapse.std, collapse.rankme):
                self.board.add_scalar(f"collapse/std_{head}", std, step)
                self.board.add_scalar(f"collapse/rankme_{head}", rank, step)
            self.board.add_scalar("collapse/feature_spread", collapse.feature_spread, step)
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}", epoch=epoch, data=f"{data_s:.1f}s",
                             compute=f"{compute_s:.1f}s", collapse=collapse.short())

    def compiling(self, mode: str) -> None:
        """Before a compiled run's first step: what the wait is."""
        self.bar.set_postfix_str(f"compiling the encoders (torch.compile mode {mode!r}; minutes on a CPU, "
                                 "far less once inductor's cache holds them)")
        self.bar.refresh()

    def compiled(self, seconds: float) -> None:
        self.bar.set_postfix_str("")
        self.warn(f"compiled the encoders and ran the first step in {seconds:.0f} s (inductor's cache keeps the "
                  "compiled code for the next run of this model)")

    def warn(self, line: str) -> None:
        """A one-line warning, above the bar (printed even without one)."""
        if self.enabled:
            tqdm.write(line, file=sys.stderr)

    def epoch(self, epoch: int, step: int, loss: float, lr: float, samples_per_s: float, data_s: float,
              compute_s: float) -> None:
        if self.board is not None:
            self.board.add_scalar("loss/epoch", loss, step)
            self.board.add_scalar("samples_per_s", samples_per_s, step)
        self.metrics.write(epoch=epoch, step=step, loss=f"{loss:.6f}", lr=f"{lr:.6g}",
                           samples_per_s=f"{samples_per_s:.1f}", data_s=f"{data_s:.3f}", compute_s=f"{compute_s:.3f}")

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()
        self.steps.close()
        if self.board is not None:
            self.board.close()
        if self.enabled:
            plot_curves(self.run_dir)  # also after a crash or a stop: the figure of what ran
