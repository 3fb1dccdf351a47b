"""Stopping cleanly on SIGTERM/SIGINT: finish the step, checkpoint, exit 0.

TPU VMs and SLURM send SIGTERM before taking the machine away. The handler only sets a flag;
the loop sees it after the current step, writes a checkpoint and returns. With several
processes they must stop at the same step (a checkpoint is collective), so the flag is
combined across processes every few steps. A second signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalWatcher:
    def __init__(self):
        self.name: Optional[str] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.name is not None:  # second signal: give up waiting for the step
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    def agreed(self, every: int = 1, step: int = 0) -> bool:
        """Whether all processes should stop after this step."""
        if jax.process_count() == 1:
            return self.name is not None
        if step % every:
            return False
        flags = multihost_utils.process_allgather(np.int32(self.name is not None))
        if np.any(flags) and self.name is None:
            self.name = "a signal to another process"
        return bool(np.any(flags))
