"""Boolean `[batch, query, key]` attention masks for the four objectives.

Segments: 0 is padding, 1 the first sentence (source), 2 the second (target, or BTMLM's
placeholders / pseudo sentence). A True entry lets the query position read the key position.

Packed rows hold several examples, numbered 1, 2, ... by `example_ids` (0 on padding): every
rule then also requires the query and key to be of one example, so no example reads another.
Padding queries keep the rule's keys (they feed no real token and predict nothing).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array

SOURCE = 1
TARGET = 2


def _rows(query_selector: Array, if_true: Array, if_false: Array) -> Array:
    """Per-query choice between two key-visibility vectors."""
    return jnp.where(query_selector[:, :, None], if_true[:, None, :], if_false[:, None, :])


def same_example(mask: Array, example_ids: Optional[Array]) -> Array:
    """`mask` restricted to query/key pairs of one packed example (unchanged if unpacked)."""
    if example_ids is None:
        return mask
    same = example_ids[:, :, None] == example_ids[:, None, :]
    return mask & (same | (example_ids == 0)[:, :, None])


def padding_mask(segment_ids: Array, example_ids: Optional[Array] = None) -> Array:
    """MMLM and TLM: every query sees every real token of the example (both sentences)."""
    real = segment_ids > 0
    mask = jnp.broadcast_to(real[:, None, :], segment_ids.shape + segment_ids.shape[-1:])
    return same_example(mask, example_ids)


def cross_attention_mask(segment_ids: Array, masked: Array, restore: int, context: int,
                         example_ids: Optional[Array] = None) -> Array:
    """Directed CAMLM: restore the masked tokens of segment `restore` from segment `context`.

    Queries of the restore segment see the context segment and the *masked* positions of their
    own segment (which carry position and language, not content). Queries of the context
    segment (and padding) see only the context segment. No path through any number of layers
    reaches an unmasked token of the restore segment, so nothing leaks from its own side.
    """
    in_restore = segment_ids == restore
    in_context = segment_ids == context
    restore_keys = in_context | (masked & in_restore)
    return same_example(_rows(in_restore, restore_keys, in_context), example_ids)


def generation_mask(segment_ids: Array, placeholders: Array,
                    example_ids: Optional[Array] = None) -> Array:
    """BTMLM stage 1: placeholders see the source and each other; the source sees only itself.

    This is CAMLM's rule for restoring a target whose every content token is masked, so the
    generated tokens depend on the source and the placeholders alone (not on the target's
    separators), exactly as CAMLM's restored targets did in stage 1.
    """
    return cross_attention_mask(segment_ids, placeholders, restore=TARGET, context=SOURCE,
                                example_ids=example_ids)
