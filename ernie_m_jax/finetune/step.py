"""The fine-tuning step and its state, sharded and jitted like pretraining's: the state is
placed by its logical axes (`train.state.placed`, as pretraining's is), the batch over the
batch axes, and donated to the step."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ernie_m_jax import partitioning
from ernie_m_jax.configs import ModelConfig
from ernie_m_jax.finetune.config import FinetuneConfig
from ernie_m_jax.finetune.data import FIELDS
from ernie_m_jax.finetune.model import ErnieMClassifier, init_boxed
from ernie_m_jax.finetune.optimizer import finetune_optimizer
from ernie_m_jax.train import state as state_lib
from ernie_m_jax.train.update import apply_if_finite, reported

State = Dict[str, object]


def classification_loss(model: ErnieMClassifier, params, batch, rng, deterministic: bool):
    """Mean cross entropy and accuracy of one batch."""
    logits = model.apply({"params": params}, batch["input_ids"], batch["language_ids"],
                         deterministic=deterministic, rngs=None if deterministic else
                         {"dropout": rng})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["labels"])
    return jnp.mean(loss), accuracy


def make_train_step(model: ErnieMClassifier, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule) -> Callable:
    """`(state, batch) -> (state, metrics)`: the classification loss under pretraining's
    guarded update (`train.update.apply_if_finite`): a step with a non-finite loss or
    gradient keeps the old params and optimizer state and reports `finite = 0`."""

    def train_step(state: State, batch) -> Tuple[State, Dict[str, jax.Array]]:
        params, step = state["params"], state["step"]
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
        (loss, accuracy), grads = jax.value_and_grad(
            lambda p: classification_loss(model, p, batch, rng, False), has_aux=True)(params)
        new_state, grad_norm, finite = apply_if_finite(optimizer, state, grads, loss)
        return new_state, reported({"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm,
                                    "learning_rate": schedule(step)}, finite)

    return train_step


@dataclasses.dataclass(frozen=True)
class FinetuneStep:
    """The jitted train and predict functions and the state they were built for."""

    train: Callable  # (state, batch) -> (state, metrics)
    predict: Callable  # (params, batch) -> int32 [rows] predicted labels
    model: ErnieMClassifier
    abstract_state: State
    state_shardings: State
    batch_shardings: Dict[str, jax.sharding.NamedSharding]
    init: Callable  # () -> a fresh state in its shardings


def build_finetune_step(model_config: ModelConfig, num_labels: int, cfg: FinetuneConfig,
                        num_steps: int, mesh: jax.sharding.Mesh, rules) -> FinetuneStep:
    model_config = partitioning.for_mesh(model_config, mesh)
    model = ErnieMClassifier(model_config, num_labels, cfg.classifier_dropout)
    key = jax.random.key(cfg.seed)
    boxed_params = jax.eval_shape(lambda: init_boxed(model, key))
    optimizer, schedule = finetune_optimizer(nn.unbox(boxed_params), model_config.num_layers,
                                             num_steps, cfg)

    def boxed_state():
        params = init_boxed(model, key)
        zero = jnp.zeros((), jnp.int32)
        return {"params": params, "opt_state": optimizer.init(params), "step": zero,
                "rng": jax.random.key_data(jax.random.key(cfg.seed + 1))}

    abstract, shardings = state_lib.placed(boxed_state, mesh, rules)
    rows = partitioning.data_sharding(mesh, rules)
    batch_shardings = {f: rows if f != "labels" else partitioning.data_sharding(mesh, rules, 1)
                       for f in FIELDS}
    replicated = partitioning.replicated(mesh)
    train = jax.jit(make_train_step(model, optimizer, schedule),
                    in_shardings=(shardings, batch_shardings),
                    out_shardings=(shardings, replicated), donate_argnums=(0,))

    def predict(params, batch):
        logits = model.apply({"params": params}, batch["input_ids"], batch["language_ids"],
                             deterministic=True)
        return jnp.argmax(logits, -1).astype(jnp.int32)

    predict = jax.jit(predict, in_shardings=(shardings["params"], batch_shardings),
                      out_shardings=replicated)
    return FinetuneStep(train, predict, model, abstract, shardings, batch_shardings,
                        functools.partial(state_lib.created, boxed_state, shardings))
