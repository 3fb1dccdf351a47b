"""Pretraining: build the step, restore or initialise the state, then run the loop both
trainers share (`core.py`) with pretraining's part of it. Everything it runs is built
elsewhere: the step and its shardings (`step.py`), the state (`state.py`), the data
(`data/pipeline.py`)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from typing import Callable, Dict, Optional, Tuple

import gin
import jax
import seqio

from ernie_m_jax import checkpoints, partitioning, preemption, profiling, run_dir
from ernie_m_jax import metrics as metrics_lib
from ernie_m_jax.data import languages, pipeline
from ernie_m_jax.train import core, session
from ernie_m_jax.train.config import Experiment, TrainConfig
from ernie_m_jax.train.evaluate import eval_tasks, evaluate
from ernie_m_jax.train.resolve import resolve
from ernie_m_jax.train.state import COUNTERS, State, init_state
from ernie_m_jax.train.step import (
    TrainStep,
    build_train_step,
    global_batch,
    make_eval_step,
    stacked_global_batch,
)


def train(model_dir: str, exp: Optional[Experiment] = None,
          stop_after: Optional[int] = None,
          input_fn: Optional[Callable[[seqio.ShardInfo], object]] = None) -> Dict[str, float]:
    """Train (or resume) in `model_dir`; returns the last logged and evaluated metrics.

    `stop_after` ends the job early at that step with a checkpoint, as a preemption would;
    a rerun with the same `model_dir` carries on.
    `input_fn(shard_info)` replaces the configured input (a tf.data.Dataset of this host's
    share of each batch).
    """
    # Watch for SIGTERM/SIGINT from the start: one arriving during set-up stops the run
    # after its first step, with a checkpoint.
    with preemption.SignalWatcher() as stop_signal:
        checkpoints.absolute(model_dir).mkdir(parents=True, exist_ok=True)
        with run_dir.locked(model_dir) if jax.process_index() == 0 else contextlib.nullcontext():
            return _run(model_dir, exp or Experiment.from_gin(), stop_after, input_fn,
                        stop_signal)


def _describe_run(model_dir: str, exp: Experiment, start: int) -> None:
    """Config, vocabulary and language ids beside the checkpoints (process 0 only), written
    once the run is accepted: a refused start leaves the run as it was."""
    if jax.process_index() != 0:
        return
    run_dir.write_config(model_dir, gin.config_str(), start)
    run_dir.keep_vocabulary(model_dir, pipeline.vocabulary_of(exp.data.mono_mixture))
    run_dir.write_languages(model_dir, languages.registered_languages())


def _restore_or_init(exp: Experiment, train_step: TrainStep, mngr, iterator,
                     model_dir: str) -> State:
    if mngr.all_steps():
        state = checkpoints.restore_newest_intact(mngr, train_step.abstract_state, iterator)
        logging.info("resumed from step %d in %s", int(state["step"]), model_dir)
        return state
    state = init_state(exp.model, train_step.optimizer, exp.train.seed, train_step.state_shardings)
    if exp.train.init_from:
        state["params"] = checkpoints.restore_params(
            os.path.join(exp.train.init_from, "checkpoints"), train_step.abstract_state["params"])
        logging.info("initialised params from %s", exp.train.init_from)
    return state


def _run(model_dir: str, exp: Experiment, stop_after: Optional[int], input_fn,
         stop_signal: preemption.SignalWatcher) -> Dict[str, float]:
    cfg = exp.train
    mesh, rules = partitioning.make_mesh(exp.mesh), exp.mesh.rules  # before any data is read
    if cfg.data_setup is not None:
        cfg.data_setup()
    if input_fn is None:  # the configured mixtures: their ids must be the model's
        pipeline.check_vocabulary(exp.data, cfg.enabled, exp.tokens, exp.model.vocab_size)
    languages.check_fits(exp.model.num_languages)
    exp = resolve(exp)  # what the run takes from its mixtures, before anything is built
    train_step = build_train_step(exp, mesh)

    shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
    input_fn = input_fn or functools.partial(pipeline.training_dataset, exp.data,
                                             cfg.enabled, tokens=exp.tokens,
                                             position_offset=exp.model.position_offset)
    iterator = pipeline.CheckpointableIterator(input_fn(shard))
    with contextlib.ExitStack() as cleanup:  # closed in reverse: bar, writer, checkpoints
        mngr = cleanup.enter_context(checkpoints.manager(
            os.path.join(model_dir, "checkpoints"), cfg.keep_checkpoints,
            cfg.async_checkpointing))  # closing waits for the last save
        state = _restore_or_init(exp, train_step, mngr, iterator, model_dir)
        start = int(state["step"])
        if start >= cfg.num_steps:
            return {"already_at_step": start}
        _describe_run(model_dir, exp, start)
        run = cleanup.enter_context(session.opened(
            model_dir, start, cfg.num_steps, "train", cfg.progress_bar, stop_signal,
            cfg.log_every))
        stage_steps = _stage_steps(exp, mesh, train_step)
        profile = profiling.ProfileWindow(model_dir, tuple(cfg.profile_steps))
        cleanup.callback(profile.stop)  # a run stopped inside the window still writes it
        with partitioning.activate(mesh, rules):
            return _loop(run, exp, stage_steps, state, iterator, mngr, mesh, stop_after,
                         profile)


class _Pretraining:
    """Pretraining's part of the shared loop (`core.run_steps`): the step of the stage a
    step is in, fed from the input pipeline; the non-finite policy at each log and save;
    evaluation on the eval tasks; checkpoints with the input pipeline's position."""

    def __init__(self, run: session.Session, exp: Experiment,
                 stage_steps: Dict[Tuple[str, ...], TrainStep], iterator, mngr, mesh,
                 profile: profiling.ProfileWindow, start: int):
        self.run, self.exp, self.stage_steps = run, exp, stage_steps
        self.iterator, self.mngr, self.mesh, self.profile = iterator, mngr, mesh, profile
        self.eval_fn = jax.jit(make_eval_step(stage_steps[exp.train.enabled].model, exp),
                               out_shardings=partitioning.replicated(mesh))
        self.tasks_to_eval = eval_tasks(exp)
        self.peak = metrics_lib.peak_flops(jax.devices()[0])
        self.summary: Dict[str, float] = {}
        self.current: Optional[TrainStep] = None
        self.tokens, self.start, self.began = 0, start, time.perf_counter()

    def step(self, state: State, first: int, count: int = 1):
        active = self.exp.train.active(first - 1)
        if self.stage_steps[active] is not self.current:
            if self.current is not None:
                joining = [o.upper() for o in active if o not in self.current.batch_shapes]
                self.run.bar.write(f"after step {first - 1}: {', '.join(joining)} "
                                   f"join{'s' if len(joining) == 1 else ''} the run")
            self.current = self.stage_steps[active]
            self.run.interval = _interval_metrics(self.exp, self.current, self.peak, first - 1)
        last = first + count - 1
        with self.profile.step(first, last):
            state, step_metrics = self.current.fn(state, self._batches(count))
        traced = self.profile.after(last, state)
        if traced:
            self.run.bar.write(traced)
        self.tokens += self.current.tokens_per_step * count
        if first == self.start + 1:  # compilation included
            jax.block_until_ready(state["step"])
            self.summary["session/first_step_seconds"] = time.perf_counter() - self.began
            self.summary["session/first_call_steps"] = count
        return state, step_metrics

    def _batches(self, count: int):
        """The next `count` steps' global batches of the current stage's objectives,
        stacked on a leading axis where its step runs several steps a call."""
        wanted = self.current.batch_shapes
        steps = [{o: b for o, b in next(self.iterator).items() if o in wanted}
                 for _ in range(count)]
        if self.current.steps_per_call > 1:
            return stacked_global_batch(steps, self.mesh, self.exp.mesh.rules)
        return global_batch(steps[0], self.mesh, self.exp.mesh.rules)

    def log_extra(self, state: State, done: int) -> Dict[str, float]:
        return _nonfinite_check(state, self.exp.train, done, self.mngr)

    def logged(self, scalars: Dict[str, float]) -> str:
        self.summary.update(scalars)
        return _progress_line(scalars, self.exp.train)

    def evaluate(self, state: State, done: int, stopping: bool) -> bool:
        if stopping:  # a preempted job saves and goes; the rerun evaluates later
            return False
        results = evaluate(self.eval_fn, state["params"], self.tasks_to_eval, self.exp,
                           self.mesh)
        self.run.writer.write(done, results)
        self.summary.update(results)
        if "eval/accuracy" in results:
            self.run.bar.write(f"step {done}: eval accuracy {results['eval/accuracy']:.3f} "
                               f"over {len(self.tasks_to_eval)} languages")
        return False

    def save(self, state: State, done: int) -> None:
        _nonfinite_check(state, self.exp.train, done, self.mngr)  # never save past 'stop'
        checkpoints.save(self.mngr, done, state, self.iterator)


def _loop(run: session.Session, exp: Experiment,
          stage_steps: Dict[Tuple[str, ...], TrainStep], state: State, iterator, mngr, mesh,
          stop_after: Optional[int], profile: profiling.ProfileWindow) -> Dict[str, float]:
    """The shared loop with pretraining's part; returns the last metrics and the session's
    totals."""
    cfg, start = exp.train, int(state["step"])
    trainer = _Pretraining(run, exp, stage_steps, iterator, mngr, mesh, profile, start)
    cadence = core.Cadence(cfg.num_steps, cfg.log_every, cfg.eval_every, cfg.checkpoint_every,
                           frozenset(cfg.stage_boundaries()), cfg.steps_per_call)
    end = core.run_steps(run, trainer, state, cadence, stop_after)
    summary = trainer.summary
    if end.stopped == "preempted":
        summary["preempted_at_step"] = end.step
    compiled = [s.fn._cache_size() for s in stage_steps.values() if hasattr(s.fn, "_cache_size")]
    if compiled:
        summary["train_step_compilations"] = sum(compiled)
    # This session's totals (compilation, checkpoints and evaluations included).
    summary.update({"session/steps": end.steps_run, "session/last_step": end.step,
                    "session/tokens": trainer.tokens,
                    "session/seconds": time.perf_counter() - trainer.began})
    return summary


def _stage_steps(exp: Experiment, mesh, full: TrainStep) -> Dict[Tuple[str, ...], TrainStep]:
    """{objectives: step} of each stage (`TrainConfig.objective_start_steps`), built before
    the mesh is activated; the last stage, with every objective, is `full`."""
    steps = {exp.train.enabled: full}
    for boundary in (0, *exp.train.stage_boundaries()):
        stage = exp.stage(boundary)
        if stage.train.enabled not in steps:
            steps[stage.train.enabled] = build_train_step(stage, mesh)
    return steps


def _interval_metrics(exp: Experiment, train_step: TrainStep, peak: Optional[float],
                      since: int) -> metrics_lib.IntervalMetrics:
    """Throughput and MFU of one stage's step, whose tokens and FLOPs are its own."""
    return metrics_lib.IntervalMetrics(
        train_step.tokens_per_step,
        metrics_lib.step_flops(exp.model, train_step.batch_shapes, exp.masking, train_step.btmlm),
        peak and peak * jax.device_count(), since)


def _progress_line(scalars: Dict[str, float], cfg: TrainConfig) -> str:
    losses = [f"{o}={scalars[f'train/{o}/loss']:.3f}" for o in cfg.enabled
              if f"train/{o}/loss" in scalars]
    return "  ".join(losses + [f"tok/s={scalars['train/tokens_per_second']:.0f}"])


def _nonfinite_check(state: State, cfg: TrainConfig, step: int, mngr) -> Dict[str, float]:
    """Apply the non-finite policy; returns the counters for logging."""
    total, in_a_row = (int(state[k]) for k in COUNTERS)
    if cfg.nonfinite_policy == "stop" and in_a_row >= cfg.max_consecutive_nonfinite:
        raise FloatingPointError(
            f"{in_a_row} consecutive steps up to step {step} had a non-finite loss or "
            f"gradient (policy 'stop', max_consecutive_nonfinite="
            f"{cfg.max_consecutive_nonfinite}); their updates were skipped and the last "
            f"checkpoint (step {mngr.latest_step()}) is intact")
    return {"nonfinite_steps": total}
