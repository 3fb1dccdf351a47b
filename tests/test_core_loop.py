"""The loop both trainers share (`train/core.py`), run with a fake trainer: which steps log,
evaluate and save, in which order, and how each kind of stop ends it. No model and no
compilation: the trainers' own parts are tested with real steps in test_train.py and
test_finetune.py."""

import os
import signal

import numpy as np
import pytest

from ernie_m_jax import metrics, preemption
from ernie_m_jax.train import core, session


class FakeTrainer:
    """Counts steps in its state and writes down every call the loop makes."""

    def __init__(self, stop_early_at=None, signal_at=None):
        self.calls, self.stop_early_at, self.signal_at = [], stop_early_at, signal_at

    def step(self, state, step, count=1):
        assert state["step"] == step - 1  # steps run in order, from the state's step
        last = step + count - 1
        if step <= (self.signal_at or 0) <= last:
            os.kill(os.getpid(), signal.SIGTERM)  # a preemption arriving during the call
        self.calls.append(("step", step))
        self.calls.extend(("step", s) for s in range(step + 1, last + 1))
        self.calls.append(("call", step, count))
        loss = sum(np.float32(1.0 / s) for s in range(step, last + 1))
        return {"step": last}, {"loss": loss, "finite": np.float32(count)}

    def log_extra(self, state, step):
        self.calls.append(("log", step))
        return {"extra": float(step)}

    def logged(self, scalars):
        return f"loss={scalars['train/loss']:.3f}"

    def evaluate(self, state, step, stopping):
        self.calls.append(("evaluate", step, stopping))
        return step == self.stop_early_at

    def save(self, state, step):
        self.calls.append(("save", step))


def _run(tmp_path, trainer, cadence, start=0, stop_after=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    with preemption.SignalWatcher() as watcher, session.opened(
            tmp_path, start, cadence.num_steps, "test", False, watcher, cadence.log_every,
            metrics.IntervalMetrics(10, 0.0, None, start)) as run:
        return core.run_steps(run, trainer, {"step": start}, cadence, stop_after)


def _of(calls, kind):
    return [c[1] for c in calls if c[0] == kind]


def test_the_loop_logs_evaluates_and_saves_when_due_and_at_the_last_step(tmp_path):
    trainer = FakeTrainer()
    end = _run(tmp_path, trainer, core.Cadence(10, log_every=4, eval_every=3,
                                               checkpoint_every=5, log_at=frozenset({6})))
    assert (end.step, end.steps_run, end.stopped, end.state) == (10, 10, None, {"step": 10})
    assert _of(trainer.calls, "step") == list(range(1, 11))
    assert _of(trainer.calls, "log") == [4, 6, 8, 10]
    assert _of(trainer.calls, "evaluate") == [3, 6, 9, 10]
    assert _of(trainer.calls, "save") == [5, 10]
    # Where both are due, the evaluation comes before the save.
    assert trainer.calls.index(("evaluate", 10, False)) < trainer.calls.index(("save", 10))
    logged = [r for r in metrics.read_metrics(tmp_path) if "train/loss" in r]
    assert [r["step"] for r in logged] == [4, 6, 8, 10]
    # The interval 7..8 is the mean of its own steps' losses, and the extra is logged beside.
    assert logged[2]["train/loss"] == pytest.approx((1 / 7 + 1 / 8) / 2, rel=1e-6)
    assert logged[2]["train/extra"] == 8.0
    # Zero means never (but the last step still logs, evaluates and saves).
    quiet = FakeTrainer()
    _run(tmp_path / "quiet", quiet, core.Cadence(4, log_every=0, eval_every=0,
                                                 checkpoint_every=0))
    assert (_of(quiet.calls, "log"), _of(quiet.calls, "evaluate"),
            _of(quiet.calls, "save")) == ([4], [4], [4])


def test_stop_after_and_a_signal_save_the_step_they_stop_at_and_a_resume_carries_on(tmp_path):
    cadence = core.Cadence(10, log_every=1, eval_every=4, checkpoint_every=4)
    stopped = FakeTrainer()
    end = _run(tmp_path / "a", stopped, cadence, stop_after=6)
    assert (end.step, end.stopped) == (6, "stop_after")
    assert _of(stopped.calls, "save") == [4, 6] and _of(stopped.calls, "step")[-1] == 6
    resumed = FakeTrainer()
    end = _run(tmp_path / "a", resumed, cadence, start=6)
    assert _of(resumed.calls, "step") == [7, 8, 9, 10] and end.steps_run == 4

    # A signal during step 8 (an evaluation step): the trainer is told it is stopping, the
    # step is saved and the loop ends there.
    preempted = FakeTrainer(signal_at=8)
    end = _run(tmp_path / "b", preempted, cadence)
    assert (end.step, end.stopped) == (8, "preempted")
    assert ("evaluate", 8, True) in preempted.calls and ("evaluate", 4, False) in preempted.calls
    assert _of(preempted.calls, "save") == [4, 8]
    assert ("step", 9) not in preempted.calls


def test_an_evaluation_that_asks_to_stop_ends_the_loop_with_a_save(tmp_path):
    trainer = FakeTrainer(stop_early_at=6)
    end = _run(tmp_path, trainer, core.Cadence(12, log_every=2, eval_every=3,
                                               checkpoint_every=3))
    assert (end.step, end.stopped) == (6, "early")
    assert _of(trainer.calls, "save") == [3, 6] and _of(trainer.calls, "step")[-1] == 6
    # Asking at the last step is no early stop (positive control of the distinction).
    last = FakeTrainer(stop_early_at=12)
    assert _run(tmp_path / "last", last, core.Cadence(12, 2, 3, 3)).stopped is None


def _calls(trainer):
    return [(c[1], c[2]) for c in trainer.calls if c[0] == "call"]


def test_several_steps_a_call_end_where_something_is_due_and_log_the_steps_means(tmp_path):
    # Aligned: every call holds 4 steps; logs, evaluations and saves fall between calls.
    aligned = FakeTrainer()
    end = _run(tmp_path / "aligned", aligned, core.Cadence(
        12, log_every=4, eval_every=8, checkpoint_every=8, steps_per_call=4))
    assert _calls(aligned) == [(1, 4), (5, 4), (9, 4)]
    assert (end.step, end.steps_run) == (12, 12)
    assert _of(aligned.calls, "log") == [4, 8, 12]
    assert _of(aligned.calls, "evaluate") == [8, 12] and _of(aligned.calls, "save") == [8, 12]
    logged = [r for r in metrics.read_metrics(tmp_path / "aligned") if "train/loss" in r]
    # Steps 5..8's mean loss, though the call returned their sum.
    assert logged[1]["train/loss"] == pytest.approx(sum(1 / s for s in range(5, 9)) / 4,
                                                    rel=1e-6)
    assert logged[1]["train/steps_per_second"] > 0
    # Not aligned (the loop alone does not refuse it): a call stops short at each due step
    # and the next one realigns on the multiples of 4.
    odd = FakeTrainer()
    _run(tmp_path / "odd", odd, core.Cadence(12, log_every=3, eval_every=0, checkpoint_every=0,
                                             steps_per_call=4))
    assert _calls(odd) == [(1, 3), (4, 1), (5, 2), (7, 2), (9, 1), (10, 3)]
    assert _of(odd.calls, "log") == [3, 6, 9, 12]
    # stop_after inside a call ends it there; the resume realigns, then runs whole calls.
    cadence = core.Cadence(12, log_every=4, eval_every=0, checkpoint_every=4, steps_per_call=4)
    stopped = FakeTrainer()
    assert _run(tmp_path / "s", stopped, cadence, stop_after=6).step == 6
    assert _calls(stopped) == [(1, 4), (5, 2)] and _of(stopped.calls, "save") == [4, 6]
    resumed = FakeTrainer()
    _run(tmp_path / "s", resumed, cadence, start=6)
    assert _calls(resumed) == [(7, 2), (9, 4)]
    # A signal during a call stops the run at the call's end, with a save.
    preempted = FakeTrainer(signal_at=6)
    end = _run(tmp_path / "p", preempted, cadence)
    assert (end.step, end.stopped) == (8, "preempted") and _of(preempted.calls, "save") == [4, 8]
