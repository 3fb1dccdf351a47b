import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ernie_m_jax.configs import MaskingConfig
from ernie_m_jax.masking import mask_tokens, maskable_tokens, sample_non_special
from tests.synthetic import TOKENS, monolingual_batch, pair_batch

VOCAB = 128


def _mask(seed, batch, config=MaskingConfig()):
    maskable = maskable_tokens(batch["input_ids"], batch["segment_ids"], TOKENS)
    return maskable, mask_tokens(jax.random.key(seed), batch["input_ids"], maskable, config,
                                 TOKENS, VOCAB)


def test_masking_statistics_match_15_80_10_10():
    batch = monolingual_batch(0, batch=512, length=64, vocab_size=VOCAB, min_words=20)
    maskable, m = _mask(1, batch)
    maskable, masked = np.asarray(maskable), np.asarray(m.masked)
    rate = masked.sum() / maskable.sum()
    assert abs(rate - 0.15) < 0.01, rate

    original = np.asarray(batch["input_ids"])[masked]
    corrupted = np.asarray(m.input_ids)[masked]
    is_mask = corrupted == TOKENS.mask_id
    kept = corrupted == original
    random = ~is_mask & ~kept
    n = masked.sum()
    assert abs(is_mask.mean() - 0.8) < 0.03, is_mask.mean()
    # A random replacement can draw the original id (1/123): a tiny excess of "kept".
    assert abs(kept.mean() - 0.1) < 0.02, kept.mean()
    assert abs(random.mean() - 0.1) < 0.02, random.mean()
    assert n > 3000
    # Unselected tokens are untouched.
    np.testing.assert_array_equal(np.asarray(m.input_ids)[~masked],
                                  np.asarray(batch["input_ids"])[~masked])


def test_masking_never_touches_special_tokens_or_padding():
    batch = pair_batch(2, batch=256, length=24, vocab_size=VOCAB)
    maskable, m = _mask(3, batch)
    assert not np.any(np.asarray(m.masked) & ~np.asarray(maskable))
    ids = np.asarray(batch["input_ids"])
    special = np.isin(ids, TOKENS.all_ids)
    np.testing.assert_array_equal(np.asarray(m.input_ids)[special], ids[special])
    # Random replacements are never special ids.
    replaced = np.asarray(m.masked) & (np.asarray(m.input_ids) != TOKENS.mask_id)
    assert not np.isin(np.asarray(m.input_ids)[replaced], TOKENS.all_ids).any()


def test_slots_targets_and_weights_describe_the_selection():
    batch = monolingual_batch(4, batch=32, length=40, vocab_size=VOCAB, min_words=6)
    maskable, m = _mask(5, batch)
    ids = np.asarray(batch["input_ids"])
    positions, targets, weights = map(np.asarray, (m.mlm_positions, m.mlm_targets, m.mlm_weights))
    np.testing.assert_array_equal(targets, np.take_along_axis(ids, positions, 1))
    expected = np.maximum(np.round(0.15 * np.asarray(maskable).sum(-1)), 1)
    np.testing.assert_array_equal(weights.sum(-1), expected)
    for row in range(ids.shape[0]):
        chosen = positions[row][weights[row] > 0]
        assert len(set(chosen)) == len(chosen)
        np.testing.assert_array_equal(np.sort(chosen), np.flatnonzero(np.asarray(m.masked)[row]))


def test_masking_is_deterministic_per_rng():
    batch = monolingual_batch(6, vocab_size=VOCAB)
    _, a = _mask(7, batch)
    _, b = _mask(7, batch)
    _, c = _mask(8, batch)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert not np.array_equal(a.mlm_positions, c.mlm_positions)


def test_rows_without_maskable_tokens_get_no_predictions():
    ids = jnp.asarray([[0, 2, 1, 1]], jnp.int32)
    segments = jnp.asarray([[1, 1, 0, 0]], jnp.int32)
    maskable = maskable_tokens(ids, segments, TOKENS)
    m = mask_tokens(jax.random.key(0), ids, maskable, MaskingConfig(), TOKENS, VOCAB)
    assert float(m.mlm_weights.sum()) == 0.0
    np.testing.assert_array_equal(m.input_ids, ids)


def test_sample_non_special_covers_exactly_the_other_ids():
    ids = np.asarray(sample_non_special(jax.random.key(0), (20000,), 12, (0, 1, 2, 3, 4, 11)))
    assert set(ids.tolist()) == set(range(5, 11))


@pytest.mark.parametrize("kwargs", [dict(rate=0.0), dict(rate=1.5),
                                    dict(mask_prob=0.9, random_prob=0.2),
                                    dict(max_predictions=0)])
def test_bad_masking_config_is_rejected(kwargs):
    with pytest.raises(ValueError, match="MaskingConfig"):
        MaskingConfig(**kwargs)
