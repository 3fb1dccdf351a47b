"""AdamW as BERT/XLM-R/ERNIE-M train it: linear warmup then linear decay, clipping, and no
weight decay on LayerNorm parameters or biases."""

from __future__ import annotations

import dataclasses
from typing import Optional

import gin
import jax
import optax

NO_DECAY_LEAVES = ("bias", "scale")  # biases and LayerNorm scales/offsets


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-4
    warmup_steps: int = 1000
    # Steps of the linear decay to `end_learning_rate`; None means the rest of the run.
    decay_steps: Optional[int] = None
    end_learning_rate: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    clip_norm: Optional[float] = 1.0

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError(f"OptimizerConfig.learning_rate must be positive, "
                             f"got {self.learning_rate}")
        if self.warmup_steps < 0 or (self.decay_steps is not None and self.decay_steps < 0):
            raise ValueError("OptimizerConfig.warmup_steps and decay_steps must be >= 0")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"OptimizerConfig.clip_norm must be positive or None, "
                             f"got {self.clip_norm}")


def learning_rate_schedule(config: OptimizerConfig, num_steps: int) -> optax.Schedule:
    decay = config.decay_steps if config.decay_steps is not None else \
        max(num_steps - config.warmup_steps, 1)
    warmup = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
    cooldown = optax.linear_schedule(config.learning_rate, config.end_learning_rate, decay)
    return optax.join_schedules([warmup, cooldown], [config.warmup_steps])


def decay_mask(params):
    """True where weight decay applies: kernels and embeddings, not biases or LayerNorms."""
    def decays(path, _):
        return getattr(path[-1], "key", None) not in NO_DECAY_LEAVES
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: OptimizerConfig, num_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(config, num_steps)
    adamw = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=config.weight_decay, mask=decay_mask)
    if config.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)
