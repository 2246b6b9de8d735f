"""Stopping a run cleanly: SIGINT and SIGTERM become a flag read between steps."""
from __future__ import annotations

import signal
import threading

import torch

from scdfast.train.distributed import Distributed


class StopSignals:
    """SIGINT and SIGTERM set a flag the loop reads between steps, so a run stops at a step
    boundary with a checkpoint instead of dying mid-write. Restores the old handlers on exit."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.received = signum

    def agree(self, distributed: Distributed, device: torch.device) -> None:
        """Share a signal any rank received, so all ranks stop together."""
        self.received = distributed.max_int(self.received or 0, device) or None

    def __exit__(self, *_exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped the run at a step boundary, after writing a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint} "
                         f"(continue with --resume)")
        self.signum = signum
