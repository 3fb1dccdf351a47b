"""BERT-style token masking with explicit prediction slots and loss weights.

seqio's EncoderFeatureConverter infers the loss from `input == mask_id`, which drops the 10%
random and 10% kept tokens; here every selected position gets an explicit slot, target and
weight, so all of them are trained on.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

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


def per_example_sums(values: Array, example_ids: Array, reduce: str = "add") -> Array:
    """[batch, length + 1]: column e reduces `values` (`add`, or `max` from 0) over packed
    example e of each row, column 0 over padding. Ids are at most the row's length, so the
    width is static."""
    batch, length = values.shape
    rows = jnp.arange(batch)[:, None]
    table = jnp.zeros((batch, length + 1), values.dtype).at[rows, example_ids]
    return getattr(table, reduce)(values)


def _share(num_maskable: Array, rate: float) -> Array:
    """round(rate * n), at least one where n > 0."""
    num_selected = jnp.round(rate * num_maskable).astype(jnp.int32)
    return jnp.where(num_maskable > 0, jnp.maximum(num_selected, 1), 0)


def selection_counts(maskable: Array, config: MaskingConfig, slots: int,
                     example_ids: Optional[Array] = None) -> Array:
    """Tokens `mask_tokens` selects in each row: round(rate * maskable), at least one if any
    (per packed example, summed over the row's examples), at most `slots`. Random draws
    decide which, never how many, so a batch's number of predictions is known before
    masking (gradient accumulation divides by it once)."""
    if example_ids is None:
        num_selected = _share(maskable.sum(-1), config.rate)
    else:
        per_example = _share(per_example_sums(maskable.astype(jnp.int32), example_ids),
                             config.rate)
        num_selected = per_example[:, 1:].sum(-1)
    return jnp.minimum(num_selected, min(slots, maskable.shape[-1]))


def _choose_per_example(scores: Array, maskable: Array, example_ids: Array,
                        rate: float) -> Array:
    """bool [batch, length]: the round(rate * n_e) highest-scored maskable tokens of each
    packed example e. One sort by (example, -score) ranks every token within its example."""
    batch, length = scores.shape
    rows = jnp.arange(batch)[:, None]
    maskable_per_example = per_example_sums(maskable.astype(jnp.int32), example_ids)
    wanted = _share(maskable_per_example, rate)
    example_key = jnp.where(maskable, example_ids, length + 1)
    index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    _, _, order = jax.lax.sort((example_key, -scores, index), dimension=1, num_keys=2)
    rank = jnp.zeros((batch, length), jnp.int32).at[rows, order].set(index)
    before = jnp.cumsum(maskable_per_example, axis=1) - maskable_per_example
    rank_in_example = rank - jnp.take_along_axis(before, example_ids, axis=1)
    return maskable & (rank_in_example < jnp.take_along_axis(wanted, example_ids, axis=1))


def mask_tokens(
    rng: Array,
    input_ids: Array,
    maskable: Array,
    config: MaskingConfig,
    tokens: SpecialTokens,
    vocab_size: int,
    num_slots: int | None = None,
    example_ids: Optional[Array] = None,
) -> MaskedTokens:
    """Select round(rate * maskable) tokens per row (per packed example with `example_ids`;
    at least one if any) and corrupt them.

    Each selected token becomes [MASK] with `mask_prob`, a random non-special id with
    `random_prob`, and stays itself otherwise; all selected tokens are prediction targets.
    """
    batch, length = input_ids.shape
    slots = num_slots if num_slots is not None else config.num_slots(length)
    slots = min(slots, length)
    select_rng, action_rng, random_rng = jax.random.split(rng, 3)

    scores = jnp.where(maskable, jax.random.uniform(select_rng, (batch, length)), -1.0)
    if example_ids is None:
        num_selected = selection_counts(maskable, config, slots)
    else:  # the chosen tokens of every example take the first slots
        chosen = _choose_per_example(scores, maskable, example_ids, config.rate)
        num_selected = jnp.minimum(chosen.sum(-1), slots)
        scores = jnp.where(chosen, scores, -1.0)
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
