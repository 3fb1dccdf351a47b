"""seqio vocabularies for both id layouts (see `vocab.py`); imports TensorFlow.

The `sentencepiece` layout is seqio's own `SentencePieceVocabulary` (so tasks a user registers
with `seqio.SentencePieceVocabulary(path)` mix with ours); the `fairseq` layout shifts its ids
in Python and in TensorFlow alike, so in-memory and TFDS tasks tokenize the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

import seqio
import tensorflow as tf

from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.data import vocab


class FairseqSentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """A released XLM-R / ERNIE-M `sentencepiece.bpe.model` with fairseq's ids: <s>=0
    <pad>=1 </s>=2 <unk>=3, SentencePiece id + 1 for every other piece, <mask> last."""

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.GetPieceSize() + 2

    @property
    def bos_id(self) -> int:
        return 0

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return vocab.FAIRSEQ_UNK

    @property
    def mask_id(self) -> int:
        return self.tokenizer.GetPieceSize() + vocab.FAIRSEQ_OFFSET

    def _encode(self, s: str) -> Sequence[int]:
        return vocab.fairseq_ids(self.tokenizer.EncodeAsIds(s))

    def encode_batch(self, lines: Sequence[str]) -> List[List[int]]:
        return [vocab.fairseq_ids(row) for row in self.tokenizer.EncodeAsIds(list(lines))]

    def _decode(self, ids) -> str:
        return self.tokenizer.DecodeIds(vocab.sentencepiece_ids_of_fairseq(
            [int(i) for i in ids], self.tokenizer.GetPieceSize()))

    def _encode_tf(self, s):
        ids = self.tf_tokenizer.tokenize(s)
        shift = lambda t: tf.where(t == 0, tf.constant(vocab.FAIRSEQ_UNK, t.dtype),
                                   t + vocab.FAIRSEQ_OFFSET)
        return tf.ragged.map_flat_values(shift, ids) if isinstance(ids, tf.RaggedTensor) \
            else shift(ids)

    def _decode_tf(self, ids):
        # Specials (<s> <pad> </s> <mask>) become SentencePiece's </s>, a control piece that
        # decodes to nothing; <unk> becomes SentencePiece's <unk>.
        def unshift(t):
            t = tf.cast(t, tf.int32)
            special = (t < vocab.FAIRSEQ_UNK) | (t >= self.mask_id)
            return tf.where(special, 2, tf.where(t == vocab.FAIRSEQ_UNK, 0,
                                                 t - vocab.FAIRSEQ_OFFSET))
        mapped = tf.ragged.map_flat_values(unshift, ids) if isinstance(ids, tf.RaggedTensor) \
            else unshift(ids)
        return self.tf_tokenizer.detokenize(mapped)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and super().__eq__(other)

    def __str__(self) -> str:
        return f"Fairseq{super().__str__()}"


def load_vocabulary(model_path: os.PathLike, tokens: Optional[SpecialTokens] = None):
    """The `seqio.Vocabulary` for a SentencePiece model in either layout, checked against
    `tokens` when given (default: the ids its layout implies)."""
    path = Path(model_path)
    info = vocab.inspect(path)
    if tokens is not None:
        vocab.check_special_tokens(info, tokens)
    return for_layout(str(path), info.layout)


def for_layout(model_path: str, layout: str) -> seqio.SentencePieceVocabulary:
    if layout == vocab.FAIRSEQ:
        return FairseqSentencePieceVocabulary(model_path)
    if layout == vocab.SENTENCEPIECE:
        return seqio.SentencePieceVocabulary(model_path)
    raise ValueError(f"unknown vocabulary layout {layout!r}; one of {vocab.LAYOUTS}")


def encode_batch(vocabulary: seqio.Vocabulary, lines: Sequence[str]) -> List[List[int]]:
    """Model ids of many lines, with one batched C++ call for SentencePiece vocabularies."""
    if isinstance(vocabulary, FairseqSentencePieceVocabulary):
        return vocabulary.encode_batch(lines)
    if type(vocabulary) is seqio.SentencePieceVocabulary:
        return vocabulary.tokenizer.EncodeAsIds(list(lines))
    return [list(vocabulary.encode(line)) for line in lines]
