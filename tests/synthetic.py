"""Synthetic batches in the layouts the objectives expect (see `ernie_m_jax.objectives`)."""

import jax.numpy as jnp
import numpy as np

from ernie_m_jax.configs import SpecialTokens

TOKENS = SpecialTokens()  # [CLS]=0 [PAD]=1 [SEP]=2 [UNK]=3 [MASK]=4
FIRST_WORD_ID = 5


def _as_jax(arrays):
    return {k: jnp.asarray(v, jnp.int32) for k, v in arrays.items()}


def monolingual_batch(seed, batch=4, length=16, vocab_size=128, language=1, min_words=4):
    """`[CLS] x [SEP]` rows of random lengths, right-padded."""
    rs = np.random.RandomState(seed)
    ids = np.full((batch, length), TOKENS.pad_id)
    segments = np.zeros((batch, length))
    for row in range(batch):
        words = rs.randint(min_words, length - 1)
        ids[row, 0] = TOKENS.cls_id
        ids[row, 1:words + 1] = rs.randint(FIRST_WORD_ID, vocab_size, words)
        ids[row, words + 1] = TOKENS.sep_id
        segments[row, :words + 2] = 1
    return _as_jax(dict(input_ids=ids, segment_ids=segments,
                        language_ids=np.full((batch, length), language)))


def pair_batch(seed, batch=4, length=24, vocab_size=128, languages=(1, 2), max_words=8):
    """`[CLS] x [SEP] [SEP] y [SEP]` rows (segments 1 and 2), right-padded."""
    rs = np.random.RandomState(seed)
    ids = np.full((batch, length), TOKENS.pad_id)
    segments = np.zeros((batch, length))
    langs = np.zeros((batch, length))
    for row in range(batch):
        n, m = rs.randint(3, max_words + 1, size=2)
        source = [TOKENS.cls_id, *rs.randint(FIRST_WORD_ID, vocab_size, n), TOKENS.sep_id]
        target = [TOKENS.sep_id, *rs.randint(FIRST_WORD_ID, vocab_size, m), TOKENS.sep_id]
        assert len(source) + len(target) <= length
        ids[row, :len(source) + len(target)] = source + target
        segments[row, :len(source)] = 1
        segments[row, len(source):len(source) + len(target)] = 2
        langs[row, :len(source)] = languages[0]
        langs[row, len(source):] = languages[1]
    return _as_jax(dict(input_ids=ids, segment_ids=segments, language_ids=langs))


def monolingual_rows(word_counts, length=16, vocab_size=128, language=1, seed=0):
    """`[CLS] x [SEP]` rows with exactly these numbers of words, right-padded."""
    rs = np.random.RandomState(seed)
    ids = np.full((len(word_counts), length), TOKENS.pad_id)
    segments = np.zeros((len(word_counts), length))
    for row, words in enumerate(word_counts):
        assert words + 2 <= length
        ids[row, :words + 2] = [TOKENS.cls_id, *rs.randint(FIRST_WORD_ID, vocab_size, words),
                                TOKENS.sep_id]
        segments[row, :words + 2] = 1
    return _as_jax(dict(input_ids=ids, segment_ids=segments,
                        language_ids=np.full(ids.shape, language)))
