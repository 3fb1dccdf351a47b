"""The one guarded update every trainer applies (pretraining and fine-tuning alike): a step
whose loss or gradient norm is not finite changes no parameter and no optimizer moment, is
counted, and reports its metrics as zeros with `finite = 0` (the loop's interval means
divide by the finite steps only, `metrics.IntervalMetrics`)."""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

from ernie_m_jax.train.state import COUNTERS, State


def apply_if_finite(optimizer: optax.GradientTransformation, state: State, grads,
                    loss: jax.Array) -> Tuple[State, jax.Array, jax.Array]:
    """(next state, gradient norm, finite): the optimizer's update where `loss` and the
    gradient norm are finite, else the old params and optimizer state. The non-finite
    counters (`state.COUNTERS`), where the state keeps them, count such steps."""
    params = state["params"]
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    keep_if_bad = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = {**state, "params": keep_if_bad(optax.apply_updates(params, updates), params),
                 "opt_state": keep_if_bad(opt_state, state["opt_state"]),
                 "step": state["step"] + 1}
    if all(name in state for name in COUNTERS):
        bad = 1 - finite.astype(jnp.int32)
        new_state["nonfinite_steps"] = state["nonfinite_steps"] + bad
        new_state["consecutive_nonfinite"] = (state["consecutive_nonfinite"] + bad) * bad
    return new_state, grad_norm, finite


def reported(metrics: Mapping[str, jax.Array], finite: jax.Array) -> Dict[str, jax.Array]:
    """A step's metrics as the loop sums them: zeros for a skipped step, and `finite`."""
    out = {k: jnp.where(finite, v, 0.0) for k, v in metrics.items()}
    out["finite"] = finite.astype(jnp.float32)
    return out
