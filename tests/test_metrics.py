"""Metrics on disk: a resumed run shows each step once, in metrics.jsonl and TensorBoard."""

import time

import numpy as np
import pytest

from ernie_m_jax.metrics import IntervalMetrics, MetricsWriter, read_metrics


def _tensorboard_scalars(model_dir, tag):
    from tensorboard.backend.event_processing import plugin_event_accumulator as acc
    from tensorboard.util import tensor_util

    events = acc.EventAccumulator(str(model_dir))
    events.Reload()
    return [(e.step, float(np.asarray(tensor_util.make_ndarray(e.tensor_proto))))
            for e in events.Tensors(tag)]


def test_a_run_resumed_from_an_older_step_drops_what_was_logged_after_it(tmp_path):
    first = MetricsWriter(tmp_path)
    for step in range(1, 7):
        first.write(step, {"train/loss": float(step)})
    first.close()
    assert _tensorboard_scalars(tmp_path, "train/loss") == [(s, float(s)) for s in range(1, 7)]
    time.sleep(1.1)  # a later start: the event files are ordered by their time stamps

    resumed = MetricsWriter(tmp_path, start_step=3)  # the newest intact checkpoint was 3
    for step in (4, 5):
        resumed.write(step, {"train/loss": 10.0 * step})
    resumed.close()
    assert [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path)] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
    assert _tensorboard_scalars(tmp_path, "train/loss") == [(1, 1.0), (2, 2.0), (3, 3.0),
                                                            (4, 40.0), (5, 50.0)]


def test_without_the_restart_marker_tensorboard_would_show_stale_steps(tmp_path):
    """Positive control: TensorBoard keeps both runs' steps unless it is told to purge."""
    import tensorflow as tf

    for values in ((1.0, 2.0, 3.0, 4.0), (None, None, None, 40.0)):
        writer = tf.summary.create_file_writer(str(tmp_path))
        with writer.as_default():
            for step, value in enumerate(values, 1):
                if value is not None:
                    tf.summary.scalar("train/loss", value, step=step)
        writer.close()
        time.sleep(1.1)
    shown = _tensorboard_scalars(tmp_path, "train/loss")
    assert (4, 4.0) in shown and (4, 40.0) in shown  # step 4 twice


class _StillRunning:
    """A step result that is ready only after `seconds`, as an asynchronously dispatched
    step's is when the host asks for it."""

    def __init__(self, value: float, seconds: float):
        self.value, self.seconds = value, seconds

    def __array__(self, dtype=None, copy=None):
        time.sleep(self.seconds)
        return np.asarray(self.value, dtype=dtype)


def test_interval_rates_count_the_time_the_last_steps_still_ran():
    interval = IntervalMetrics(tokens_per_step=100, flops_per_step=1.0, peak_flops_total=None,
                               start_step=0)
    interval.add({"finite": 4.0, "loss": _StillRunning(8.0, 0.5)})
    report = interval.report(4)
    assert report["loss"] == 2.0  # means over the finite steps
    # 4 steps took at least the 0.5 s the host waited for them (a clock read before the
    # wait would report thousands of steps a second).
    assert report["steps_per_second"] <= 4 / 0.5
    assert report["tokens_per_second"] == pytest.approx(report["steps_per_second"] * 100)
    # The next interval starts after the wait: a quick one is not charged for it.
    interval.add({"finite": 1.0, "loss": 1.0})
    assert interval.report(5)["steps_per_second"] > 1 / 0.5
