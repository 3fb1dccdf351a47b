"""Boolean `[batch, query, key]` attention masks for the four objectives.

Segments: 0 is padding, 1 the first sentence (source), 2 the second (target, or BTMLM's
placeholders / pseudo sentence). A True entry lets the query position read the key position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

SOURCE = 1
TARGET = 2


def _rows(query_selector: Array, if_true: Array, if_false: Array) -> Array:
    """Per-query choice between two key-visibility vectors."""
    return jnp.where(query_selector[:, :, None], if_true[:, None, :], if_false[:, None, :])


def padding_mask(segment_ids: Array) -> Array:
    """MMLM and TLM: every query sees every real token of the example (both sentences)."""
    real = segment_ids > 0
    return jnp.broadcast_to(real[:, None, :], segment_ids.shape + segment_ids.shape[-1:])


def cross_attention_mask(segment_ids: Array, masked: Array, restore: int, context: int) -> Array:
    """Directed CAMLM: restore the masked tokens of segment `restore` from segment `context`.

    Queries of the restore segment see the context segment and the *masked* positions of their
    own segment (which carry position and language, not content). Queries of the context
    segment (and padding) see only the context segment. No path through any number of layers
    reaches an unmasked token of the restore segment, so nothing leaks from its own side.
    """
    in_restore = segment_ids == restore
    in_context = segment_ids == context
    restore_keys = in_context | (masked & in_restore)
    return _rows(in_restore, restore_keys, in_context)


def generation_mask(segment_ids: Array, placeholders: Array) -> Array:
    """BTMLM stage 1: placeholders see the source and each other; the source sees only itself.

    This is CAMLM's rule for restoring a target whose every content token is masked, so the
    generated tokens depend on the source and the placeholders alone (not on the target's
    separators), exactly as CAMLM's restored targets did in stage 1.
    """
    return cross_attention_mask(segment_ids, placeholders, restore=TARGET, context=SOURCE)
