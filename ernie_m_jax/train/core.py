"""The loop both trainers run: step, log, evaluate, checkpoint and stop, each when due.

Pretraining and fine-tuning differ only in what a step feeds and what evaluating and
saving mean (`Trainer`); when each happens, how a stop is agreed and in which order
evaluation, checkpoint and stop come is decided here, once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, FrozenSet, Mapping, Optional, Protocol, Tuple

from ernie_m_jax.train.session import Session

State = Any  # a trainer's state pytree, with an integer "step"


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When the loop logs, evaluates and saves: every `*_every` steps (0: never) and at the
    last step; `log_at` adds steps to log at (stage boundaries, so that no logged interval
    spans two stages). Steps run `steps_per_call` to a call, each call ending at the next
    multiple of it or earlier, at the first step where something is due."""

    num_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    log_at: FrozenSet[int] = frozenset()
    steps_per_call: int = 1

    def due(self, step: int, every: int) -> bool:
        return step == self.num_steps or bool(every) and step % every == 0

    def logs(self, step: int) -> bool:
        return self.due(step, self.log_every) or step in self.log_at

    def call_end(self, done: int, stop_after: Optional[int] = None) -> int:
        """The last step of the call that follows `done` finished steps."""
        end = min(self.num_steps, (done // self.steps_per_call + 1) * self.steps_per_call)
        if stop_after is not None and done < stop_after < end:
            end = stop_after
        for step in range(done + 1, end):
            if self.logs(step) or self.due(step, self.eval_every) or \
                    self.due(step, self.checkpoint_every):
                return step
        return end


class Trainer(Protocol):
    """What a trainer brings to `run_steps`."""

    def step(self, state: State, step: int, count: int = 1) -> Tuple[State, Mapping[str, Any]]:
        """Run steps `step` (1-based) to `step + count - 1` in one call: the new state and
        the metrics summed over those steps."""

    def log_extra(self, state: State, step: int) -> Mapping[str, float]:
        """Scalars logged beside the interval's means (may raise to stop the run)."""

    def logged(self, scalars: Mapping[str, float]) -> str:
        """Told what was just logged; returns the progress bar's postfix ("": unchanged)."""

    def evaluate(self, state: State, step: int, stopping: bool) -> bool:
        """Evaluate at `step` (`stopping`: the job stops after this step); True stops early."""

    def save(self, state: State, step: int) -> None:
        """Checkpoint `state` as step `step`."""


@dataclasses.dataclass(frozen=True)
class LoopEnd:
    """Where a session's loop ended: the state, its step, and why it stopped before the last
    step (None: it reached it). `stopped`: "preempted" (a signal every process agreed on),
    "stop_after" (the caller's step) or "early" (the trainer's evaluation)."""

    state: State
    step: int
    steps_run: int
    stopped: Optional[str] = None


def run_steps(run: Session, trainer: Trainer, state: State, cadence: Cadence,
              stop_after: Optional[int] = None) -> LoopEnd:
    """Step from the state's step to `cadence.num_steps`, a call at a time
    (`Cadence.call_end`). After each call: log when due; agree on a stop (a signal, or
    `stop_after`); evaluate when due; save when due, when stopping and when stopping
    early, so that a rerun resumes where this one stopped; then stop if asked. Evaluation
    comes before the save: a fine-tuning save records the selection the evaluation made."""
    start = int(state["step"])
    done, stopped = start, None
    while done < cadence.num_steps:
        first, done = done + 1, cadence.call_end(done, stop_after)
        state, step_metrics = trainer.step(state, first, done - first + 1)
        run.interval.add(step_metrics)
        if cadence.logs(done):
            scalars = run.log_interval(done, trainer.log_extra(state, done))
            postfix = trainer.logged(scalars)
            if postfix:
                run.bar.set_postfix_str(postfix)
        if run.step_done(done, done - first + 1):
            stopped = "preempted"
        elif done == stop_after:
            stopped = "stop_after"
        if cadence.due(done, cadence.eval_every) and trainer.evaluate(
                state, done, stopping=stopped is not None) and done < cadence.num_steps:
            stopped = stopped or "early"
        if cadence.due(done, cadence.checkpoint_every) or stopped:
            trainer.save(state, done)
        if stopped:
            if stopped != "early":
                run.say_stopping(done)
            break
    return LoopEnd(state, done, done - start, stopped)
