"""BERT-style token masking with explicit prediction slots and loss weights.

seqio's EncoderFeatureConverter infers the loss from `input == mask_id`, which drops the 10%
random and 10% kept tokens; here every selected position gets an explicit slot, target and
weight, so all of them are trained on.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from ernie_m_jax.configs import MaskingConfig, SpecialTokens

Array = jax.Array


class MaskedTokens(NamedTuple):
    input_ids: Array  # [batch, length] with selected tokens replaced
    mlm_positions: Array  # [batch, slots] indices into length
    mlm_targets: Array  # [batch, slots] original ids
    mlm_weights: Array  # [batch, slots] 1.0 for real predictions, 0.0 for unused slots
    masked: Array  # [batch, length] bool: the positions selected for prediction


def maskable_tokens(input_ids: Array, segment_ids: Array, tokens: SpecialTokens) -> Array:
    """Real (non-padding) tokens that are not special: the only ones masking may touch."""
    special = jnp.isin(input_ids, jnp.asarray(tokens.all_ids, input_ids.dtype))
    return (segment_ids > 0) & ~special


def sample_non_special(rng: Array, shape, vocab_size: int, special_ids: Sequence[int]) -> Array:
    """Uniform ids over the vocabulary minus the special ids (shifting past each in order)."""
    specials = sorted({s for s in special_ids if 0 <= s < vocab_size})
    ids = jax.random.randint(rng, shape, 0, vocab_size - len(specials), dtype=jnp.int32)
    for special in specials:
        ids = ids + (ids >= special).astype(jnp.int32)
    return ids


def selection_counts(maskable: Array, config: MaskingConfig, slots: int) -> Array:
    """Tokens `mask_tokens` selects in each row: round(rate * maskable), at least one if any,
    at most `slots`. Random draws decide which, never how many, so a batch's number of
    predictions is known before masking (gradient accumulation divides by it once)."""
    num_maskable = maskable.sum(-1)
    num_selected = jnp.round(config.rate * num_maskable).astype(jnp.int32)
    num_selected = jnp.where(num_maskable > 0, jnp.maximum(num_selected, 1), 0)
    return jnp.minimum(num_selected, min(slots, maskable.shape[-1]))


def mask_tokens(
    rng: Array,
    input_ids: Array,
    maskable: Array,
    config: MaskingConfig,
    tokens: SpecialTokens,
    vocab_size: int,
    num_slots: int | None = None,
) -> MaskedTokens:
    """Select round(rate * maskable) tokens per row (at least one if any) and corrupt them.

    Each selected token becomes [MASK] with `mask_prob`, a random non-special id with
    `random_prob`, and stays itself otherwise; all selected tokens are prediction targets.
    """
    batch, length = input_ids.shape
    slots = num_slots if num_slots is not None else config.num_slots(length)
    slots = min(slots, length)
    select_rng, action_rng, random_rng = jax.random.split(rng, 3)

    num_selected = selection_counts(maskable, config, slots)

    scores = jnp.where(maskable, jax.random.uniform(select_rng, (batch, length)), -1.0)
    _, positions = jax.lax.top_k(scores, slots)
    positions = positions.astype(jnp.int32)
    selected = jnp.arange(slots)[None, :] < num_selected[:, None]

    targets = jnp.take_along_axis(input_ids, positions, axis=1)
    action = jax.random.uniform(action_rng, (batch, slots))
    random_ids = sample_non_special(random_rng, (batch, slots), vocab_size, tokens.all_ids)
    corrupted = jnp.where(
        action < config.mask_prob,
        tokens.mask_id,
        jnp.where(action < config.mask_prob + config.random_prob, random_ids, targets),
    ).astype(input_ids.dtype)
    corrupted = jnp.where(selected, corrupted, targets)

    rows = jnp.arange(batch)[:, None]
    new_ids = input_ids.at[rows, positions].set(corrupted)
    masked = jnp.zeros((batch, length), bool).at[rows, positions].max(selected)
    return MaskedTokens(new_ids, positions, targets, selected.astype(jnp.float32), masked)
