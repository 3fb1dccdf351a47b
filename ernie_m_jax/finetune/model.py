"""The classifier: the ERNIE-M encoder's pooled first token, dropout, one linear layer.

Exactly `ErnieMForSequenceClassification`'s head (and, read as dense + tanh + out_proj, the
head of `XLMRobertaForSequenceClassification`), so an export gives the same logits.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ernie_m_jax.configs import ModelConfig
from ernie_m_jax.model import ErnieM, _dense

ENCODER = "ernie_m"  # the encoder's params live under this key (as in Hugging Face)
HEAD = "classifier"


class ErnieMClassifier(nn.Module):
    config: ModelConfig
    num_labels: int
    classifier_dropout: Optional[float] = None  # None: the encoder's hidden dropout

    @nn.compact
    def __call__(self, input_ids, language_ids=None, deterministic: bool = True):
        outputs = ErnieM(self.config, name=ENCODER)(
            input_ids, language_ids=language_ids, deterministic=deterministic)
        rate = (self.config.dropout_rate if self.classifier_dropout is None
                else self.classifier_dropout)
        pooled = nn.Dropout(rate)(outputs["pooled_output"], deterministic=deterministic)
        logits = _dense(self.config, self.num_labels, ("embed_out", "labels"), HEAD)(pooled)
        return logits.astype(jnp.float32)


def init_boxed(model: ErnieMClassifier, rng: jax.Array):
    """Boxed params without the encoder's MLM head, which fine-tuning never uses (nor
    Hugging Face's classifiers have)."""
    ids = jnp.full((1, 8), model.config.pad_id + 1, jnp.int32)
    params = dict(model.init(rng, ids, language_ids=jnp.zeros_like(ids))["params"])
    params[ENCODER] = {k: v for k, v in params[ENCODER].items() if k != "mlm_head"}
    return params
