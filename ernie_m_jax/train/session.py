"""What every training loop holds while it runs (pretraining and fine-tuning alike): the
metrics writer, the progress bar, the interval metrics and the preemption watcher, opened
and closed in one place so that both trainers log, show and stop the same way."""

from __future__ import annotations

import contextlib
import os
from typing import Dict, Iterator, Mapping, Optional

import jax
from tqdm import tqdm

from ernie_m_jax import metrics as metrics_lib
from ernie_m_jax import preemption


class Session:
    """One session of a run, from `start` towards `total` steps. `interval` is the running
    step metrics' `metrics.IntervalMetrics` (the loop replaces it where a stage changes what
    a step holds)."""

    def __init__(self, model_dir: os.PathLike, start: int, total: int, desc: str,
                 show_progress: bool, stop_signal: preemption.SignalWatcher, log_every: int,
                 interval: Optional[metrics_lib.IntervalMetrics] = None):
        self.model_dir, self.log_every = str(model_dir), log_every
        self.stop_signal, self.interval = stop_signal, interval
        self.writer = metrics_lib.MetricsWriter(model_dir, start)
        self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True,
                        disable=not show_progress or jax.process_index() != 0)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()

    def log_interval(self, step: int, extra: Optional[Mapping[str, float]] = None
                     ) -> Dict[str, float]:
        """`train/...` means and rates of the interval that ends at `step` (and `extra`),
        written to TensorBoard and metrics.jsonl; returned for the progress line."""
        scalars = {f"train/{k}": v for k, v in {**self.interval.report(step),
                                                 **(extra or {})}.items()}
        self.writer.write(step, scalars)
        return scalars

    def step_done(self, step: int, count: int = 1) -> bool:
        """Advance the bar by the `count` steps just run; whether every process agrees to
        stop after `step` (a signal arrived). Several processes agree every `log_every`
        steps (one collective), a lone one at once."""
        self.bar.update(count)
        return self.stop_signal.agreed(
            every=1 if jax.process_count() == 1 else self.log_every, step=step)

    def say_stopping(self, step: int) -> None:
        self.bar.write(f"stopping at step {step} on {self.stop_signal.name or 'request'}: "
                       f"checkpoint written to {self.model_dir}; rerun the same command to "
                       f"resume")


@contextlib.contextmanager
def opened(*args, **kwargs) -> Iterator[Session]:
    """A `Session(*args, **kwargs)`, closed (bar, then writer) however the loop ends."""
    session = Session(*args, **kwargs)
    try:
        yield session
    finally:
        session.close()
