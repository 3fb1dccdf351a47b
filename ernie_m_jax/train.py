"""The training job: one mesh, one jit-compiled train step, one readable loop.

    state = {params, opt_state, step, rng}          (explicit, sharded, donated)
    batch = {objective: {input_ids, segment_ids, language_ids}}   (global arrays)
    state, metrics = train_step(state, batch)       # weighted sum of the enabled objectives,
                                                    # BTMLM's generation compiled inside
Everything is configured by gin (`TrainConfig`, `ModelConfig`, `DataConfig`, `MeshConfig`,
`OptimizerConfig`, `MaskingConfig`, `BTMLMConfig`); run it with
`ernie-m-jax train --gin_file=gin/runs/demo_cpu.gin --model_dir=DIR`.
"""

from __future__ import annotations

if __name__ == "__main__":
    # `python -m ernie_m_jax.train`: run the importable module instead, so that gin sees one
    # TrainConfig (ernie_m_jax.train.TrainConfig), not a second one in __main__.
    import sys

    from ernie_m_jax.train import main

    sys.exit(main())

import dataclasses
import functools
import logging
import os
import time
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio
from tqdm import tqdm

from ernie_m_jax import checkpoints, metrics as metrics_lib, partitioning, preemption, saved_run
from ernie_m_jax.configs import BTMLMConfig, MaskingConfig, ModelConfig, SpecialTokens
from ernie_m_jax.data import pipeline
from ernie_m_jax.model import ErnieM, init_params
from ernie_m_jax.objectives import OBJECTIVES, make_objectives, mmlm_loss, weighted_loss
from ernie_m_jax.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer

State = Dict[str, object]
# Steps skipped for a non-finite loss or gradient: in total, and in a row right now.
COUNTERS = ("nonfinite_steps", "consecutive_nonfinite")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    num_steps: int = 1000
    # Objectives with a non-zero weight run every step (stage 1: mmlm/tlm/camlm; stage 2 adds
    # btmlm). Their batch sizes are DataConfig.batch_sizes.
    objective_weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"mmlm": 1.0, "tlm": 1.0, "camlm": 1.0})
    grad_accum_steps: int = 1
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    # 0: evaluate only at the end.
    eval_every: int = 0
    eval_split: str = "validation"
    # Languages whose `<collection>.mono.<lang>` task is scored; () = every monolingual task
    # of DataConfig.mono_mixture.
    eval_languages: Tuple[str, ...] = ()
    eval_examples_per_language: int = 64
    eval_batch_size: int = 32
    # Another run's checkpoint directory to take the params from (stage 2 from stage 1).
    init_from: Optional[str] = None
    # Called once before the data is read, e.g. `@register_demo` (builds and registers tasks).
    data_setup: Optional[Callable] = None
    progress_bar: bool = True
    # A step whose loss or gradient norm is not finite leaves params and optimizer state
    # untouched and is counted. "skip" goes on; "stop" raises after that many in a row.
    nonfinite_policy: str = "skip"
    max_consecutive_nonfinite: int = 10
    # Fault injection for testing the policy: steps whose loss is made NaN.
    inject_nonfinite_steps: Tuple[int, ...] = ()

    def __post_init__(self):
        unknown = set(self.objective_weights) - set(OBJECTIVES)
        if unknown:
            raise ValueError(f"TrainConfig.objective_weights: unknown objectives "
                             f"{sorted(unknown)}; choose from {OBJECTIVES}")
        if self.nonfinite_policy not in ("skip", "stop"):
            raise ValueError(f"TrainConfig.nonfinite_policy must be 'skip' or 'stop', "
                             f"got {self.nonfinite_policy!r}")
        if not any(self.objective_weights.values()):
            raise ValueError("TrainConfig.objective_weights enables no objective")
        for name in ("num_steps", "grad_accum_steps", "log_every", "checkpoint_every",
                     "keep_checkpoints", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")

    @property
    def enabled(self) -> Tuple[str, ...]:
        return tuple(o for o in OBJECTIVES if self.objective_weights.get(o, 0))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run is made of, resolved from gin once."""

    train: TrainConfig
    model: ModelConfig
    data: pipeline.DataConfig
    mesh: partitioning.MeshConfig
    optimizer: OptimizerConfig
    masking: MaskingConfig
    btmlm: BTMLMConfig
    tokens: SpecialTokens

    @classmethod
    def from_gin(cls) -> "Experiment":
        return cls(TrainConfig(), ModelConfig(), pipeline.DataConfig(), partitioning.MeshConfig(),
                   OptimizerConfig(), MaskingConfig(), BTMLMConfig(), SpecialTokens())


# ----------------------------------------------------------------------------- state


def _param_shardings_for(tree, param_shardings, mesh):
    """Shardings for an optimizer-state tree: a leaf whose path ends with a parameter's path
    (and has its shape) is placed like that parameter; everything else is replicated."""
    by_path = {}
    jax.tree_util.tree_map_with_path(
        lambda p, s: by_path.__setitem__(tuple(p), s), param_shardings)

    def place(path, leaf):
        path = tuple(path)
        for start in range(len(path)):
            sharding = by_path.get(path[start:])
            if sharding is not None:
                return sharding
        return partitioning.replicated(mesh)

    return jax.tree_util.tree_map_with_path(place, tree)


def init_state(exp: Experiment, model_config: ModelConfig, optimizer, mesh) -> Tuple[State, State]:
    """A fresh sharded state and its shardings; no device ever holds the whole model."""
    rules = exp.mesh.rules
    rng = jax.random.key(exp.train.seed)
    init_fn = functools.partial(init_params, model_config)
    with partitioning.activate(mesh, rules):
        variables, shardings = partitioning.sharded_init(init_fn, rng, mesh, rules)
    params, param_shardings = variables["params"], shardings["params"]
    opt_shapes = jax.eval_shape(optimizer.init, params)
    opt_shardings = _param_shardings_for(opt_shapes, param_shardings, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    replicated = partitioning.replicated(mesh)
    state = {"params": params, "opt_state": opt_state,
             "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
             "rng": jax.device_put(jax.random.key_data(jax.random.key(exp.train.seed + 1)),
                                   replicated),
             **{k: jax.device_put(jnp.zeros((), jnp.int32), replicated) for k in COUNTERS}}
    state_shardings = {"params": param_shardings, "opt_state": opt_shardings,
                       "step": replicated, "rng": replicated, **{k: replicated for k in COUNTERS}}
    return state, state_shardings


# ----------------------------------------------------------------------------- step


def _split_microbatches(batches, count: int):
    def split(x):
        if x.shape[0] % count:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into "
                             f"{count} gradient-accumulation steps")
        return x.reshape(count, x.shape[0] // count, *x.shape[1:])
    return jax.tree.map(split, batches)


def make_train_step(objectives, weights: Mapping[str, float], optimizer,
                    schedule: optax.Schedule, accum_steps: int = 1,
                    inject_nonfinite_steps: Sequence[int] = ()):
    """`(state, batches) -> (state, metrics)`: pure, to be jit-compiled with shardings.

    A step with a non-finite loss or gradient norm keeps the old params and optimizer state
    and bumps the counters (`COUNTERS`); its metrics are reported with `finite = 0`.
    """

    def loss_and_grads(params, batches, rng, poison):
        def loss_fn(p):
            total, metrics = weighted_loss(p, batches, rng, objectives, weights)
            return total * poison, metrics
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return metrics, grads

    def train_step(state: State, batches) -> Tuple[State, Dict[str, jax.Array]]:
        params, step = state["params"], state["step"]
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
        poison = jnp.float32(1.0)
        if inject_nonfinite_steps:
            poison = jnp.where(jnp.isin(step + 1, jnp.asarray(inject_nonfinite_steps)),
                               jnp.nan, poison)
        if accum_steps == 1:
            metrics, grads = loss_and_grads(params, batches, rng, poison)
        else:
            micro = _split_microbatches(batches, accum_steps)

            def body(carry, inputs):
                index, microbatch = inputs
                m, g = loss_and_grads(params, microbatch, jax.random.fold_in(rng, index), poison)
                return jax.tree.map(jnp.add, carry, (m, g)), None

            zeros = jax.eval_shape(loss_and_grads, params,
                                   jax.tree.map(lambda x: x[0], micro), rng, poison)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
            (metrics, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
            metrics = jax.tree.map(lambda x: x / accum_steps, metrics)
            grads = jax.tree.map(lambda g: g / accum_steps, grads)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["loss"] * poison) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        keep_if_bad = lambda new, old: jax.tree.map(
            lambda n, o: jnp.where(finite, n, o), new, old)
        bad = 1 - finite.astype(jnp.int32)
        new_state = {"params": keep_if_bad(optax.apply_updates(params, updates), params),
                     "opt_state": keep_if_bad(opt_state, state["opt_state"]),
                     "step": step + 1, "rng": state["rng"],
                     "nonfinite_steps": state["nonfinite_steps"] + bad,
                     "consecutive_nonfinite": (state["consecutive_nonfinite"] + bad) * bad}
        # Rows are right-padded with segment 0: what is left is text, the tokens that teach.
        text_tokens = sum(jnp.sum(b["segment_ids"] != 0) for b in batches.values()
                          if "segment_ids" in b)
        metrics = {**metrics, "grad_norm": grad_norm, "learning_rate": schedule(step),
                   "text_tokens": jnp.asarray(text_tokens, jnp.float32)}
        # Bad steps contribute zeros; the loop divides by the number of finite steps.
        metrics = {k: jnp.where(finite, v, 0.0) for k, v in metrics.items()}
        metrics["finite"] = finite.astype(jnp.float32)
        return new_state, metrics

    return train_step


def make_eval_step(model: ErnieM, exp: Experiment):
    """MMLM accuracy with a fixed masking seed: comparable across steps and runs."""

    def eval_step(params, batch):
        _, m = mmlm_loss(params, batch, jax.random.key(1234), model=model, tokens=exp.tokens,
                         masking=exp.masking, deterministic=True)
        return {"correct": m["accuracy"] * m["num_predictions"], "loss_sum":
                m["loss"] * m["num_predictions"], "count": m["num_predictions"]}

    return eval_step


# ----------------------------------------------------------------------------- helpers


def global_batch(local, mesh, rules):
    """Host-local numpy sub-batches -> global jax.Arrays sharded over the batch mesh axes."""
    sharding = partitioning.data_sharding(mesh, rules)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def _btmlm_config(exp: Experiment, model_config: ModelConfig) -> BTMLMConfig:
    """BTMLM generates into the languages of the monolingual mixture, unless configured."""
    if exp.btmlm.target_languages or "btmlm" not in exp.train.enabled:
        return exp.btmlm
    from tasks import languages

    ids = tuple(sorted({languages.language_id(lang) for lang in eval_tasks(exp, all_=True)}))
    if model_config.num_languages:
        ids = tuple(i for i in ids if i < model_config.num_languages)
    return dataclasses.replace(exp.btmlm, target_languages=ids)


def _check_languages(model_config: ModelConfig) -> None:
    from tasks import languages

    registered = languages.registered_languages()
    too_big = {c: i for c, i in registered.items() if i >= model_config.num_languages}
    if model_config.num_languages and too_big:
        raise ValueError(f"ModelConfig.num_languages={model_config.num_languages} has no "
                         f"embedding for languages {too_big}; raise num_languages")


def eval_tasks(exp: Experiment, all_: bool = False) -> Dict[str, str]:
    """{language: monolingual task} to score (`all_`: every task of the mono mixture)."""
    provider = seqio.get_mixture_or_task(exp.data.mono_mixture)
    tasks = [provider] if isinstance(provider, seqio.Task) else list(provider.tasks)
    by_language = {t.name.rsplit(".", 1)[-1]: t.name for t in tasks}
    if all_ or not exp.train.eval_languages:
        return by_language
    unknown = sorted(set(exp.train.eval_languages) - set(by_language))
    if unknown:
        raise ValueError(f"TrainConfig.eval_languages {unknown} are not in "
                         f"{exp.data.mono_mixture}; it has {sorted(by_language)}")
    return {lang: by_language[lang] for lang in exp.train.eval_languages}


def evaluate(eval_fn, params, tasks: Mapping[str, str], exp: Experiment, mesh
             ) -> Dict[str, float]:
    shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
    local_batch = pipeline.host_batch_size(exp.train.eval_batch_size, jax.process_count(),
                                           "eval_batch_size")
    per_host = -(-exp.train.eval_examples_per_language // jax.process_count())
    results, total_correct, total_count = {}, 0.0, 0.0
    for language, task in tasks.items():
        sums = {"correct": 0.0, "loss_sum": 0.0, "count": 0.0}
        for batch in pipeline.evaluation_batches(task, exp.data.mono_length, local_batch,
                                                 exp.train.eval_split, per_host, shard,
                                                 exp.tokens):
            out = eval_fn(params, global_batch(batch, mesh, exp.mesh.rules))
            for k in sums:
                sums[k] += float(out[k])
        if sums["count"]:
            results[f"eval/{language}/accuracy"] = sums["correct"] / sums["count"]
            results[f"eval/{language}/loss"] = sums["loss_sum"] / sums["count"]
            total_correct += sums["correct"]
            total_count += sums["count"]
    if total_count:
        results["eval/accuracy"] = total_correct / total_count
        results["eval/mean_language_accuracy"] = float(np.mean(
            [v for k, v in results.items() if k.endswith("/accuracy") and k.count("/") == 2]))
    return results


# ----------------------------------------------------------------------------- loop


def train(model_dir: str, exp: Optional[Experiment] = None,
          stop_after: Optional[int] = None,
          input_fn: Optional[Callable[[seqio.ShardInfo], object]] = None) -> Dict[str, float]:
    """Train (or resume) in `model_dir`; returns the last logged and evaluated metrics.

    `stop_after` ends the job early at that step, as a preemption would (after its
    checkpoint, if one was due); a rerun with the same `model_dir` carries on.
    `input_fn(shard_info)` replaces the configured input (a tf.data.Dataset of this host's
    share of each batch).
    """
    # Watch for SIGTERM/SIGINT from the start: one arriving during set-up stops the run
    # after its first step, with a checkpoint.
    with preemption.SignalWatcher() as stop_signal:
        return _train(model_dir, exp, stop_after, input_fn, stop_signal)


def _train(model_dir: str, exp: Optional[Experiment], stop_after: Optional[int],
           input_fn, stop_signal: preemption.SignalWatcher) -> Dict[str, float]:
    exp = exp or Experiment.from_gin()
    cfg = exp.train
    checkpoints.absolute(model_dir).mkdir(parents=True, exist_ok=True)
    if cfg.data_setup is not None:
        cfg.data_setup()
    saved_run.write_config(model_dir)
    model_config = exp.model
    _check_languages(model_config)
    btmlm = _btmlm_config(exp, model_config)
    objectives_enabled = cfg.enabled
    sizes = exp.data.enabled(objectives_enabled)

    mesh = partitioning.make_mesh(exp.mesh)
    rules = exp.mesh.rules
    for name, size in sizes.items():
        partitioning.check_batch_divides(size, mesh, rules)
        if size % cfg.grad_accum_steps:
            raise ValueError(f"batch_sizes[{name!r}]={size} is not divisible by "
                             f"grad_accum_steps={cfg.grad_accum_steps}")
    model = ErnieM(model_config)
    objectives = make_objectives(model, exp.tokens, exp.masking,
                                 btmlm if "btmlm" in objectives_enabled else None)
    weights = {o: cfg.objective_weights[o] for o in objectives_enabled}
    optimizer = make_optimizer(exp.optimizer, cfg.num_steps)
    schedule = learning_rate_schedule(exp.optimizer, cfg.num_steps)

    shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
    input_fn = input_fn or functools.partial(pipeline.training_dataset, exp.data,
                                             objectives_enabled, tokens=exp.tokens)
    iterator = pipeline.CheckpointableIterator(input_fn(shard))

    state, state_shardings = init_state(exp, model_config, optimizer, mesh)
    mngr = checkpoints.manager(os.path.join(model_dir, "checkpoints"), cfg.keep_checkpoints,
                               cfg.async_checkpointing)
    if mngr.all_steps():
        state = checkpoints.restore_newest_intact(
            mngr, checkpoints.abstract_like(state, state_shardings), iterator)
        logging.info("resumed from step %d in %s", int(state["step"]), model_dir)
    elif cfg.init_from:
        abstract = checkpoints.abstract_like(state["params"], state_shardings["params"])
        state["params"] = checkpoints.restore_params(
            os.path.join(cfg.init_from, "checkpoints"), abstract)
        logging.info("initialised params from %s", cfg.init_from)
    start = int(state["step"])

    batch_shardings = {o: {k: partitioning.data_sharding(mesh, rules) for k in
                           ("input_ids", "segment_ids", "language_ids")}
                       for o in objectives_enabled}
    step_fn = jax.jit(
        make_train_step(objectives, weights, optimizer, schedule, cfg.grad_accum_steps,
                        cfg.inject_nonfinite_steps),
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, partitioning.replicated(mesh)),
        donate_argnums=(0,))
    eval_fn = jax.jit(make_eval_step(model, exp), out_shardings=partitioning.replicated(mesh))
    tasks_to_eval = eval_tasks(exp)

    shapes = {o: (sizes[o], exp.data.mono_length if o in pipeline.MONO_OBJECTIVES
                  else exp.data.pair_length) for o in objectives_enabled}
    flops = metrics_lib.step_flops(model_config, shapes, exp.masking, btmlm)
    peak = metrics_lib.peak_flops(jax.devices()[0])
    tokens_per_step = sum(b * l for b, l in shapes.values())
    writer = metrics_lib.MetricsWriter(model_dir)
    writer_summary = {}
    bar = tqdm(total=cfg.num_steps, initial=start, desc="train", dynamic_ncols=True,
               disable=not cfg.progress_bar or jax.process_index() != 0)
    last_time, last_step, running, checked = time.time(), start, None, None
    try:
        with partitioning.activate(mesh, rules):
            for step in range(start, cfg.num_steps):
                batch = global_batch(next(iterator), mesh, rules)
                state, step_metrics = step_fn(state, batch)
                # Summed on device (no host sync); logged as means over the interval.
                running = step_metrics if running is None else jax.tree.map(
                    jnp.add, running, step_metrics)
                done = step + 1
                if done % cfg.log_every == 0 or done == cfg.num_steps:
                    scalars = _interval_means(running, done - last_step)
                    running = None
                    scalars.update(_nonfinite_check(state, cfg, done, mngr))
                    checked = done
                    elapsed = time.time() - last_time
                    steps_done = done - last_step
                    scalars["tokens_per_second"] = tokens_per_step * steps_done / elapsed
                    if "text_tokens" in scalars:  # absent when every step was skipped
                        scalars["text_tokens_per_second"] = (
                            scalars["text_tokens"] * steps_done / elapsed)
                        scalars["padding_fraction"] = 1 - scalars["text_tokens"] / tokens_per_step
                    scalars["steps_per_second"] = steps_done / elapsed
                    if peak:
                        scalars["mfu"] = flops * steps_done / elapsed / (peak * jax.device_count())
                    last_time, last_step = time.time(), done
                    writer.write(done, {f"train/{k}": v for k, v in scalars.items()})
                    writer_summary.update({f"train/{k}": v for k, v in scalars.items()})
                    bar.set_postfix_str("  ".join(
                        [f"{o}={scalars.get(f'{o}/loss', float('nan')):.3f}"
                         for o in objectives_enabled] +
                        [f"tok/s={scalars['tokens_per_second']:.0f}"]))
                bar.update(1)
                preempted = stop_signal.agreed(every=1 if jax.process_count() == 1
                                               else cfg.log_every, step=done)
                if done % cfg.checkpoint_every == 0 or done == cfg.num_steps or preempted:
                    if checked != done:  # the counters were not read at this step's log
                        _nonfinite_check(state, cfg, done, mngr)
                    checkpoints.save(mngr, done, state, iterator)
                if preempted:
                    bar.write(f"stopping at step {done} on {stop_signal.name}: checkpoint "
                              f"written to {model_dir}; rerun the same command to resume")
                    writer_summary["preempted_at_step"] = done
                    break
                if done == stop_after:
                    break
                if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.num_steps:
                    results = evaluate(eval_fn, state["params"], tasks_to_eval, exp, mesh)
                    writer.write(done, results)
                    writer_summary.update(results)
                    if "eval/accuracy" in results:
                        bar.write(f"step {done}: eval accuracy {results['eval/accuracy']:.3f} "
                                  f"over {len(tasks_to_eval)} languages")
        if hasattr(step_fn, "_cache_size"):
            writer_summary["train_step_compilations"] = step_fn._cache_size()
    finally:
        bar.close()
        mngr.wait_until_finished()
        mngr.close()
        writer.close()
    return writer_summary


def _interval_means(running, steps: int) -> Dict[str, float]:
    """Means over the finite steps of the interval (bad steps report zeros)."""
    sums = metrics_lib.as_floats(running)
    finite = sums.pop("finite")
    means = {k: v / finite for k, v in sums.items()} if finite else {}
    means["skipped_steps_in_interval"] = steps - finite
    return means


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


# ----------------------------------------------------------------------------- entry point


def run_from_args(args, bindings: Sequence[str]) -> int:
    from ernie_m_jax import distributed, gin_config

    # Before anything touches a backend: join the other processes, if any.
    distributed.initialize(distributed.ProcessGroup(
        args.coordinator_address, args.num_processes, args.process_id), args.cpu_devices)
    gin_config.parse(args.gin_file, bindings)
    exp = Experiment.from_gin()  # every config is built (and checked) before any compute
    summary = train(args.model_dir, exp)
    if jax.process_index() != 0:
        return 0
    losses = {k: v for k, v in summary.items() if k.endswith("/loss") and k.startswith("train/")}
    print("final: " + "  ".join(f"{k[len('train/'):]}={v:.3f}" for k, v in sorted(losses.items())))
    if "eval/accuracy" in summary:
        print(f"eval accuracy: {summary['eval/accuracy']:.3f}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    import sys

    from ernie_m_jax import gin_config

    rest, bindings = gin_config.split_gin_flags(sys.argv[1:] if argv is None else argv)
    from ernie_m_jax.cli import add_train_arguments

    parser = argparse.ArgumentParser(prog="python -m ernie_m_jax.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    return run_from_args(parser.parse_args(rest), bindings)

