"""The one compiled train step, and the one function that builds it with its shardings.

    state, metrics = step(state, batches)   # weighted sum of the enabled objectives,
                                            # BTMLM's generation compiled inside

With `TrainConfig.steps_per_call` = k > 1 one call runs k steps over batches stacked on a
leading axis, and returns the metrics summed over them (what the logs sum anyway).

`build_train_step` is what `train`, `benchmarks/train_step.py` and ahead-of-time compilation
all call (MaxText's single step builder), so what is benchmarked and compiled for a pod is
exactly what trains.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ernie_m_jax import partitioning
from ernie_m_jax.configs import BTMLMConfig
from ernie_m_jax.data import features
from ernie_m_jax.model import ErnieM, param_logical_names, with_gathered_weights
from ernie_m_jax.objectives import (
    make_objectives,
    make_prediction_counters,
    mmlm_loss,
    weighted_loss,
)
from ernie_m_jax.optimizer import learning_rate_schedule, make_optimizer
from ernie_m_jax.train.config import Experiment
from ernie_m_jax.train.state import State, abstract_state
from ernie_m_jax.train.update import apply_if_finite, reported


def _split_microbatches(batches, count: int):
    def split(x):
        if x.shape[0] % count:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into "
                             f"{count} gradient-accumulation steps")
        return x.reshape(count, x.shape[0] // count, *x.shape[1:])
    return jax.tree.map(split, batches)


@dataclasses.dataclass(frozen=True)
class GradientSum:
    """The batch's gradient as parts summed once a step: each index of the mesh `axes`
    computes its share of the batch's loss and gradient whole (every objective and layer
    summed on its chips), and one sum in `dtype` adds the parts. On a multislice mesh the
    axis is the data axis, one part per slice, so the data-centre network carries each
    gradient shard once a step; left to XLA, each layer's gradient of each objective
    crossed it inside the backward loops (#36)."""

    mesh: jax.sharding.Mesh
    rules: tuple
    axes: Tuple[str, ...] = ("data",)
    dtype: object = jnp.float32
    # The params' mesh PartitionSpecs: the parts are then summed straight into each weight's
    # shard (`scattered_sum`), written as one reduce-scatter per weight.
    scatter_to: Optional[object] = None


def scattered_sum(stacked, specs, mesh: jax.sharding.Mesh, axes: Tuple[str, ...]):
    """Sum `stacked` ([parts, *shape] leaves, parts laid over the mesh `axes`) over its parts,
    each result in its PartitionSpec of `specs`: a reduce-scatter over the part axes that
    split the weight (along the dimension they split) and a sum over the others, written out
    in a shard_map. (XLA's TPU compiler still runs the reduce-scatter as an all-reduce of
    the whole weight, along either axis: README, "Every weight gathered once".)"""
    manual = set(axes)

    def manual_only(spec):
        return jax.sharding.PartitionSpec(*(
            tuple(a for a in partitioning.mesh_axes(e) if a in manual) or None for e in spec))

    def one(g, spec):
        g, done = g[0], []
        for dim, entry in enumerate(spec):
            mine = tuple(a for a in partitioning.mesh_axes(entry) if a in manual)
            if mine:
                g = jax.lax.psum_scatter(g, mine, scatter_dimension=dim, tiled=True)
                done += mine
        rest = tuple(a for a in axes if a not in done)
        return jax.lax.psum(g, rest) if rest else g

    out_specs = jax.tree.map(manual_only, specs,
                             is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    body = lambda tree: jax.tree.map(one, tree, specs,  # noqa: E731
                                     is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return jax.shard_map(body, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(axes),),
                         out_specs=out_specs, axis_names=manual, check_vma=False)(stacked)


def make_train_step(objectives, weights: Mapping[str, float], optimizer,
                    schedule: optax.Schedule, accum_steps: int = 1,
                    inject_nonfinite_steps: Sequence[int] = (),
                    prediction_counters: Optional[Mapping[str, Callable]] = None,
                    shared_params: Callable = lambda params: params,
                    gradient_sum: Optional[GradientSum] = None):
    """`(state, batches) -> (state, metrics)`: pure, to be jit-compiled with shardings.

    With `accum_steps > 1` the batch is split into microbatches whose losses are summed and
    divided once by the whole batch's number of predictions per objective (counted up front
    by `prediction_counters`, see `objectives.make_prediction_counters`): the loss, gradient
    and metrics are the whole batch's, however unevenly the masked tokens fall. With
    `gradient_sum`, each mesh part's share of the batch is such a part too, summed once
    (`GradientSum`).

    A step with a non-finite loss or gradient norm keeps the old params and optimizer state
    and bumps the counters (`update.apply_if_finite`, which fine-tuning applies too).

    `shared_params(params)` runs once per (micro)batch before the objectives: the place to
    gather weights that every objective uses (`model.with_gathered_weights`).
    """
    if accum_steps > 1 or gradient_sum is not None:
        missing = sorted(o for o, w in weights.items()
                         if w and o not in (prediction_counters or {}))
        if missing:
            raise ValueError(f"gradient accumulation and cross-slice sums need the prediction "
                             f"count of every objective's whole batch; no counter for {missing}")

    def loss_and_grads(params, batches, rng, poison, normalizers=None):
        def loss_fn(p):
            total, metrics = weighted_loss(shared_params(p), batches, rng, objectives, weights,
                                           normalizers)
            return total * poison, metrics
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return metrics, grads

    def accumulated(params, batches, rng, poison, normalizers):
        micro = _split_microbatches(batches, accum_steps)

        def body(carry, inputs):
            index, microbatch = inputs
            out = loss_and_grads(params, microbatch, jax.random.fold_in(rng, index), poison,
                                 normalizers)
            return jax.tree.map(jnp.add, carry, out), None

        zeros = jax.eval_shape(loss_and_grads, params, jax.tree.map(lambda x: x[0], micro),
                               rng, poison, normalizers)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
        # Every microbatch's loss, accuracy and gradient is already divided by the whole
        # batch's count: their sums are the whole batch's (counts add up as they are).
        (metrics, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
        return metrics, grads

    def part(params, batches, rng, poison, normalizers):
        """This batch's (a slice's share's) metrics and gradients over the whole count."""
        if accum_steps == 1:
            return loss_and_grads(params, batches, rng, poison, normalizers)
        return accumulated(params, batches, rng, poison, normalizers)

    def by_parts(params, batches, rng, poison, normalizers):
        """Each part's metrics and gradient, stacked on a leading axis laid over the mesh
        axes (vmap with them as its SPMD axes), then summed once. Part i folds i into the
        key, as microbatch i of accumulation does."""
        axes = gradient_sum.axes
        parts = math.prod(gradient_sum.mesh.shape[a] for a in axes)
        stacked = _split_microbatches(batches, parts)
        keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(parts))
        inner_rules = partitioning.without_axes(gradient_sum.rules, axes)

        def one_part(batch, key):
            with nn.logical_axis_rules(inner_rules):
                metrics, grads = part(params, batch, key, poison, normalizers)
            return metrics, jax.tree.map(lambda g: g.astype(gradient_sum.dtype), grads)

        metrics, grads = jax.vmap(one_part, spmd_axis_name=axes)(stacked, keys)
        metrics = jax.tree.map(lambda m: m.sum(0), metrics)
        if gradient_sum.scatter_to is None:
            summed = jax.tree.map(lambda g: g.sum(0), grads)
        else:
            summed = scattered_sum(grads, gradient_sum.scatter_to, gradient_sum.mesh, axes)
        return metrics, jax.tree.map(lambda g: g.astype(jnp.float32), summed)

    def gradients(params, batches, rng, poison):
        if accum_steps == 1 and gradient_sum is None:
            return loss_and_grads(params, batches, rng, poison)
        normalizers = {o: prediction_counters[o](batches[o]) for o, w in weights.items() if w}
        if gradient_sum is None:
            return accumulated(params, batches, rng, poison, normalizers)
        return by_parts(params, batches, rng, poison, normalizers)

    def train_step(state: State, batches) -> Tuple[State, Dict[str, jax.Array]]:
        params, step = state["params"], state["step"]
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
        poison = jnp.float32(1.0)
        if inject_nonfinite_steps:
            poison = jnp.where(jnp.isin(step + 1, jnp.asarray(inject_nonfinite_steps)),
                               jnp.nan, poison)
        metrics, grads = gradients(params, batches, rng, poison)
        new_state, grad_norm, finite = apply_if_finite(optimizer, state, grads,
                                                       metrics["loss"] * poison)
        # Rows are right-padded with segment 0: what is left is text, the tokens that teach.
        text_tokens = sum(jnp.sum(b["segment_ids"] != 0) for b in batches.values()
                          if "segment_ids" in b)
        metrics = {**metrics, "grad_norm": grad_norm, "learning_rate": schedule(step),
                   "text_tokens": jnp.asarray(text_tokens, jnp.float32)}
        return new_state, reported(metrics, finite)

    return train_step


def in_calls(train_step: Callable) -> Callable:
    """`train_step` run once per leading index of the stacked batches, in one executable
    (`lax.scan`, the state carried in place): the temporaries are allocated once a call,
    not once a step. Metrics come back summed over the call's steps; a skipped step's are
    zero but for `finite`, as in one step's."""

    def call(state: State, stacked):
        state, per_step = jax.lax.scan(train_step, state, stacked)
        return state, jax.tree.map(lambda m: jnp.sum(m, axis=0), per_step)

    return call


def make_eval_step(model: ErnieM, exp: Experiment):
    """MMLM accuracy with a fixed masking seed: comparable across steps and runs."""

    def eval_step(params, batch):
        _, m = mmlm_loss(params, batch, jax.random.key(1234), model=model, tokens=exp.tokens,
                         masking=exp.masking, deterministic=True)
        return {"correct": m["accuracy"] * m["num_predictions"], "loss_sum":
                m["loss"] * m["num_predictions"], "count": m["num_predictions"]}

    return eval_step


def global_batch(local, mesh, rules):
    """Host-local numpy sub-batches -> global jax.Arrays sharded over the batch mesh axes."""
    return _from_process_local(local, partitioning.data_sharding(mesh, rules))


def stacked_global_batch(steps: Sequence, mesh, rules):
    """Several steps' host-local sub-batches (`global_batch`'s input, one per step) ->
    global jax.Arrays `[steps, rows, length]`, the leading axis whole on every device: one
    call's batches where a call runs several steps (`in_calls`)."""
    return _from_process_local(jax.tree.map(lambda *x: np.stack(x), *steps),
                               _stacked(partitioning.data_sharding(mesh, rules)))


def _from_process_local(local, sharding):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def _stacked(sharding: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
    """A batch sharding with a leading steps axis in front, kept whole on every device."""
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(
        None, *sharding.spec))


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The jitted step and everything it was built for: call `fn(state, batches)`, or
    `fn.lower(abstract_state, abstract_batches)` to compile it ahead of time. With
    `steps_per_call` > 1 the batches are stacked, `[steps, rows, length]` (any number of
    steps; each number compiles once), and the metrics are the steps' sums."""

    fn: Callable
    model: ErnieM
    btmlm: BTMLMConfig
    optimizer: optax.GradientTransformation
    state_shardings: State
    abstract_state: State
    batch_shardings: Dict[str, Dict[str, jax.sharding.NamedSharding]]
    batch_shapes: Mapping[str, Tuple[int, int]]
    steps_per_call: int = 1

    @property
    def tokens_per_step(self) -> int:
        """Rows x length summed over the objectives' batches (padding included)."""
        return sum(rows * length for rows, length in self.batch_shapes.values())

    def abstract_batches(self) -> Dict[str, Dict[str, jax.ShapeDtypeStruct]]:
        """One call's batches: `steps_per_call` steps' (stacked when more than one)."""
        lead = (self.steps_per_call,) if self.steps_per_call > 1 else ()
        return {o: {k: jax.ShapeDtypeStruct(lead + tuple(self.batch_shapes[o]), jnp.int32,
                                            sharding=s)
                    for k, s in shardings.items()}
                for o, shardings in self.batch_shardings.items()}


def _gradient_sum(exp: Experiment, mesh: jax.sharding.Mesh,
                  param_shardings) -> Optional[GradientSum]:
    """Where the step's gradient is summed from parts, once, in the model's compute dtype.

    With every weight gathered once (`gather_weights_once="all"`), each batch shard (every
    index of the data and FSDP axes) is a part: it computes its rows' gradient whole and
    locally, and one reduce-scatter a step sums the parts into the weights' shards (left to
    XLA, each layer's gradient of each objective was all-reduced inside the backward
    loops), each weight's sum scattered straight into its shards (`scattered_sum`).
    Otherwise, on a mesh over several TPU slices, the data axis's parts sum theirs
    once, so the data-centre network carries each gradient shard once a step (bf16 on
    pods: half the DCN bytes of f32)."""
    if exp.train.gather_weights_once == "all":
        axes = tuple(a for a in partitioning.batch_axes(mesh, exp.mesh.rules)
                     if mesh.shape[a] > 1)
        if axes:
            specs = jax.tree.map(lambda sharding: sharding.spec, param_shardings)
            return GradientSum(mesh, exp.mesh.rules, axes, exp.model.compute_dtype, specs)
    if partitioning.num_slices(mesh.devices.flat) < 2 or "data" not in mesh.shape:
        return None
    return GradientSum(mesh, exp.mesh.rules, ("data",), exp.model.compute_dtype)


def _shared_params(exp: Experiment) -> Callable:
    """The weights gathered once a step (`TrainConfig.gather_weights_once`), along the
    logical axes that the rules split over the FSDP mesh axis."""
    fsdp_axes = partitioning.logical_axes_on(exp.mesh.rules, "fsdp") - {"batch"}
    which = exp.train.gather_weights_once
    names = param_logical_names(exp.model) if which == "all" else None
    return functools.partial(with_gathered_weights, config=exp.model, which=which,
                             names=names, gathered_axes=tuple(sorted(fsdp_axes)))


def build_train_step(exp: Experiment, mesh: jax.sharding.Mesh) -> TrainStep:
    """The train step of `exp` on `mesh`, jitted with its state and batch shardings and the
    state donated. It reads no data and no gin: what comes from the mixtures (BTMLM's
    target languages and length factors) is resolved before, at the edge (`resolve`)."""
    cfg, rules = exp.train, exp.mesh.rules
    shapes = exp.batch_shapes()
    for name, (rows, _) in shapes.items():
        partitioning.check_batch_divides(rows, mesh, rules)
        if rows % cfg.grad_accum_steps:
            raise ValueError(f"batch_sizes[{name!r}]={rows} is not divisible by "
                             f"grad_accum_steps={cfg.grad_accum_steps}")
        shards, micro = partitioning.batch_shards(mesh, rules), rows // cfg.grad_accum_steps
        if micro % shards:  # a microbatch is laid over the batch shards as the batch is
            raise ValueError(
                f"batch_sizes[{name!r}]={rows} in grad_accum_steps={cfg.grad_accum_steps} "
                f"microbatches of {micro} rows does not split over the {shards} batch shards "
                f"of mesh {dict(mesh.shape)}; use a multiple of "
                f"{cfg.grad_accum_steps * shards} rows or fewer accumulation steps")
    btmlm = exp.btmlm
    model = ErnieM(partitioning.for_mesh(exp.model, mesh))
    objectives = make_objectives(model, exp.tokens, exp.masking,
                                 btmlm if "btmlm" in cfg.enabled else None)
    optimizer = make_optimizer(exp.optimizer, cfg.num_steps)
    abstract, state_shardings = abstract_state(exp.model, optimizer, cfg.seed, mesh, rules)
    data = partitioning.data_sharding(mesh, rules)
    if cfg.steps_per_call > 1:
        data = _stacked(data)
    batch_shardings = {o: {k: data for k in features.model_features(exp.data.pack)}
                       for o in cfg.enabled}
    step = make_train_step(objectives, cfg.weights, optimizer,
                           learning_rate_schedule(exp.optimizer, cfg.num_steps),
                           cfg.grad_accum_steps, cfg.inject_nonfinite_steps,
                           make_prediction_counters(exp.tokens, exp.masking),
                           _shared_params(exp),
                           _gradient_sum(exp, mesh, state_shardings["params"]))
    fn = jax.jit(in_calls(step) if cfg.steps_per_call > 1 else step,
                 in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, partitioning.replicated(mesh)),
                 donate_argnums=(0,))
    return TrainStep(fn, model, btmlm, optimizer, state_shardings, abstract, batch_shardings,
                     shapes, cfg.steps_per_call)


