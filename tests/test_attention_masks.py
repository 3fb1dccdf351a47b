import jax.numpy as jnp
import numpy as np

from ernie_m_jax import attention_masks as am

# Positions: 0-2 source, 3-5 target, 6 padding. Source position 1 is masked.
SEGMENTS = jnp.asarray([[1, 1, 1, 2, 2, 2, 0]])
MASKED = jnp.asarray([[False, True, False, False, False, False, False]])


def test_padding_mask_hides_padding_keys_only():
    mask = np.asarray(am.padding_mask(SEGMENTS))[0]
    assert mask.shape == (7, 7)
    assert mask[:, :6].all() and not mask[:, 6].any()


def test_cross_attention_mask_follows_the_camlm_rule():
    mask = np.asarray(am.cross_attention_mask(SEGMENTS, MASKED, restore=1, context=2))[0]
    source_rows = np.array([[0, 1, 0, 1, 1, 1, 0]] * 3, bool)
    target_rows = np.array([[0, 0, 0, 1, 1, 1, 0]] * 4, bool)
    np.testing.assert_array_equal(mask, np.concatenate([source_rows, target_rows]))


def test_cross_attention_mask_is_symmetric_under_swapping_segments():
    swapped = jnp.where(SEGMENTS == 0, 0, 3 - SEGMENTS)
    a = am.cross_attention_mask(SEGMENTS, MASKED, restore=1, context=2)
    b = am.cross_attention_mask(swapped, MASKED, restore=2, context=1)
    np.testing.assert_array_equal(a, b)


def test_generation_mask_lets_placeholders_read_source_and_placeholders():
    placeholders = SEGMENTS == 2
    mask = np.asarray(am.generation_mask(SEGMENTS, placeholders))[0]
    np.testing.assert_array_equal(mask[:3], np.array([[1, 1, 1, 0, 0, 0, 0]] * 3, bool))
    np.testing.assert_array_equal(mask[3:6], np.array([[1, 1, 1, 1, 1, 1, 0]] * 3, bool))


def test_generation_mask_hides_the_pseudo_sentences_separators():
    # Positions 3 and 5 are the [SEP]s framing one placeholder at 4.
    placeholders = jnp.asarray([[False, False, False, False, True, False, False]])
    mask = np.asarray(am.generation_mask(SEGMENTS, placeholders))[0]
    np.testing.assert_array_equal(mask[4], np.array([1, 1, 1, 0, 1, 0, 0], bool))
    np.testing.assert_array_equal(mask[:3], np.array([[1, 1, 1, 0, 0, 0, 0]] * 3, bool))
