"""A `jax.profiler` trace of a window of train steps, written where TensorBoard's profile
plugin (`tensorboard-plugin-profile`, the `profile` extra) finds it: the run's own folder,
under `plugins/profile/<time>/<host>.xplane.pb`. Every process traces its own host."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from typing import Optional, Tuple

import jax


def check_window(steps: Tuple[int, ...], num_steps: int) -> None:
    """`()` (no profile) or `(first, last)`: 1 <= first <= last <= num_steps."""
    if not steps:
        return
    if len(steps) != 2 or not all(isinstance(s, int) for s in steps):
        raise ValueError(f"TrainConfig.profile_steps must be () or (first, last), got {steps!r}")
    first, last = steps
    if not 1 <= first <= last <= num_steps:
        raise ValueError(f"TrainConfig.profile_steps {steps}: need 1 <= first <= last <= "
                         f"num_steps={num_steps} (steps count from 1)")


class ProfileWindow:
    """Starts the trace before the window's first step (or the first step this session runs
    inside it, after a resume) and stops it once the window's last step has run."""

    def __init__(self, log_dir: str, steps: Tuple[int, ...]):
        self._log_dir = log_dir
        self._first, self._last = steps if steps else (0, -1)
        self._tracing = False

    def step(self, step: int, last: Optional[int] = None) -> contextlib.AbstractContextManager:
        """Wraps the call of train step `step` (counted from 1), or of the steps `step` to
        `last` where one call runs several."""
        last = step if last is None else last
        if not self._tracing and step <= self._last and self._first <= last:
            jax.profiler.start_trace(self._log_dir)
            self._tracing = True
        if self._tracing:
            return jax.profiler.StepTraceAnnotation("train", step_num=step)
        return contextlib.nullcontext()

    def after(self, step: int, state) -> Optional[str]:
        """After step `step` was dispatched: at the window's end, wait for it and stop.
        Returns a line for the log when a trace was written."""
        if self._tracing and step >= self._last:
            return self.stop(state)
        return None

    def stop(self, state=None) -> Optional[str]:
        if not self._tracing:
            return None
        if state is not None:
            jax.block_until_ready(state)  # the traced steps have run, not only been queued
        jax.profiler.stop_trace()
        self._tracing = False
        where = os.path.join(self._log_dir, "plugins", "profile")
        logging.info("wrote a profile of steps %d-%d to %s", self._first, self._last, where)
        return (f"profile of steps {self._first}-{self._last} written to {where} "
                f"(tensorboard --logdir {shlex.quote(self._log_dir)}, PROFILE tab)")
