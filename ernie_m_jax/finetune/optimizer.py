"""AdamW with layer-wise learning-rate decay (ERNIE-M's and ELECTRA's fine-tuning recipe).

Lower layers hold more general features and move less: with L layers and decay d, the
embeddings train at lr * d^(L+1), layer i (0 = closest to the embeddings) at lr * d^(L-i),
and the pooler and classifier at lr. The factor scales the whole AdamW update, weight decay
included, as a per-parameter learning rate does.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ernie_m_jax.finetune.config import FinetuneConfig
from ernie_m_jax.finetune.model import ENCODER
from ernie_m_jax.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer


def layerwise_scales(params, num_layers: int, decay: float):
    """A tree like `params` of learning-rate factors; the scanned layers' stacked leaves get
    one factor per layer, shaped to broadcast over their leading (layer) axis."""
    layer_factors = decay ** (num_layers - np.arange(num_layers, dtype=np.float64))

    def factor(path, leaf):
        keys = tuple(getattr(p, "key", None) for p in path)
        if keys[:2] == (ENCODER, "embeddings"):
            return jnp.float32(decay ** (num_layers + 1))
        if keys[:3] == (ENCODER, "encoder", "layers"):
            shape = (num_layers,) + (1,) * (len(leaf.shape) - 1)
            return jnp.asarray(layer_factors.reshape(shape), jnp.float32)
        return jnp.float32(1.0)

    return jax.tree_util.tree_map_with_path(factor, params)


def scale_by_layer(scales) -> optax.GradientTransformation:
    """Multiply each update by its factor in `scales` (a tree like the params)."""
    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def finetune_optimizer(params, num_layers: int, num_steps: int, cfg: FinetuneConfig
                       ) -> Tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, its learning-rate schedule): linear warmup over `cfg.warmup_ratio` of the
    steps, then linear decay to 0; AdamW with Hugging Face's fine-tuning moments (b2 0.999,
    eps 1e-8) and no decay on biases or norms; layer-wise decay on top."""
    config = OptimizerConfig(learning_rate=cfg.learning_rate,
                             warmup_steps=int(round(cfg.warmup_ratio * num_steps)),
                             weight_decay=cfg.weight_decay, b1=0.9, b2=0.999, eps=1e-8,
                             clip_norm=cfg.clip_norm)
    optimizer = optax.chain(make_optimizer(config, num_steps), scale_by_layer(
        layerwise_scales(params, num_layers, cfg.layerwise_decay)))
    return optimizer, learning_rate_schedule(config, num_steps)
