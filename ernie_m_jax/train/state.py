"""The train state: `{params, opt_state, step, rng, counters}`, explicit and sharded.

Every leaf is placed by its logical axes: the whole state is traced once with the model's
boxed (`nn.LogicallyPartitioned`) parameters, so the optimizer's moments inherit their
parameter's names and land where it does (MaxText's abstract state), and scalars are
replicated. Nothing here is initialised until `init_state`; no device holds the whole model.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ernie_m_jax import checkpoints, partitioning
from ernie_m_jax.configs import ModelConfig
from ernie_m_jax.model import init_params

State = Dict[str, object]
# Steps skipped for a non-finite loss or gradient: in total, and in a row right now.
COUNTERS = ("nonfinite_steps", "consecutive_nonfinite")


def _boxed_state(model_config: ModelConfig, optimizer: optax.GradientTransformation,
                 seed: int) -> State:
    params = init_params(model_config, jax.random.key(seed))["params"]
    zero = jnp.zeros((), jnp.int32)
    return {"params": params, "opt_state": optimizer.init(params), "step": zero,
            "rng": jax.random.key_data(jax.random.key(seed + 1)),
            **{k: zero for k in COUNTERS}}


def placed(boxed_state: Callable[[], State], mesh: jax.sharding.Mesh, rules
           ) -> Tuple[State, State]:
    """(ShapeDtypeStructs carrying their shardings, the shardings) of the state that
    `boxed_state()` builds with boxed parameters; no compute. Pretraining's and
    fine-tuning's states are both placed here."""
    boxed = jax.eval_shape(boxed_state)
    shardings = partitioning.logical_shardings(boxed, mesh, rules)
    return checkpoints.abstract_like(nn.unbox(boxed), shardings), shardings


def created(boxed_state: Callable[[], State], shardings: State) -> State:
    """A fresh state, created directly in its shardings by one compiled function.

    (Not under the mesh's logical rules: flax's DenseGeneral would constrain its flat
    pre-reshape kernel with the names of the final shape; placement comes from the shardings.)
    """
    return jax.jit(lambda: nn.unbox(boxed_state()), out_shardings=shardings)()


def abstract_state(model_config: ModelConfig, optimizer: optax.GradientTransformation,
                   seed: int, mesh: jax.sharding.Mesh, rules) -> Tuple[State, State]:
    """(ShapeDtypeStructs carrying their shardings, the shardings) of the state; no compute."""
    return placed(functools.partial(_boxed_state, model_config, optimizer, seed), mesh, rules)


def init_state(model_config: ModelConfig, optimizer: optax.GradientTransformation, seed: int,
               shardings: State) -> State:
    """A fresh pretraining state in its shardings (`created`)."""
    return created(functools.partial(_boxed_state, model_config, optimizer, seed), shardings)
