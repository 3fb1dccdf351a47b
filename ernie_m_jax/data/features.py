"""Task examples -> the fixed-shape int32 rows the objectives read (see `objectives.py`).

  monolingual (MMLM, BTMLM)  [CLS] x [SEP]                segment 1
  pair (TLM, CAMLM)          [CLS] x [SEP] [SEP] y [SEP]   segment 1 then 2
Rows are right-padded with the pad id and segment 0; `language_ids` repeat each sentence's
language over its tokens. Over-long text is truncated (a pair trims its longer side first, so
both sentences survive).

Packed rows (`pack_rows`) hold several examples one after another (seqio's packer, greedy in
input order), numbered by `example_ids` (1, 2, ...; 0 on padding), with `position_ids` that
restart at each example's [CLS] (plus the model's position offset, as unpacked rows have).
"""

from __future__ import annotations

from typing import Dict, Tuple

import seqio
import tensorflow as tf

from ernie_m_jax.configs import SpecialTokens

MONO_OVERHEAD = 2  # [CLS] ... [SEP]
PAIR_OVERHEAD = 4  # [CLS] ... [SEP] [SEP] ... [SEP]
MODEL_FEATURES = ("input_ids", "segment_ids", "language_ids")
PACKED_FEATURES = MODEL_FEATURES + ("example_ids", "position_ids")


def model_features(packed: bool) -> Tuple[str, ...]:
    """The int32 [rows, length] features a batch carries."""
    return PACKED_FEATURES if packed else MODEL_FEATURES


def _pad(values: tf.Tensor, length: int, value: int) -> tf.Tensor:
    values = tf.cast(values, tf.int32)
    padded = tf.pad(values, [[0, length - tf.shape(values)[0]]], constant_values=value)
    return tf.ensure_shape(padded, [length])


def _example(ids: tf.Tensor, segments: tf.Tensor, languages: tf.Tensor
             ) -> Dict[str, tf.Tensor]:
    return {"input_ids": tf.cast(ids, tf.int32), "segment_ids": tf.cast(segments, tf.int32),
            "language_ids": tf.cast(languages, tf.int32)}


def pad_row(example: Dict[str, tf.Tensor], length: int,
            tokens: SpecialTokens) -> Dict[str, tf.Tensor]:
    """An unpadded example as one fixed-length row."""
    return {"input_ids": _pad(example["input_ids"], length, tokens.pad_id),
            "segment_ids": _pad(example["segment_ids"], length, 0),
            "language_ids": _pad(example["language_ids"], length, 0)}


def monolingual_row(example: Dict[str, tf.Tensor], length: int,
                    tokens: SpecialTokens) -> Dict[str, tf.Tensor]:
    return pad_row(monolingual_example(example, length, tokens), length, tokens)


def monolingual_example(example: Dict[str, tf.Tensor], length: int,
                        tokens: SpecialTokens) -> Dict[str, tf.Tensor]:
    """`[CLS] x [SEP]`, unpadded, at most `length` tokens."""
    if length <= MONO_OVERHEAD:
        raise ValueError(f"monolingual length must exceed {MONO_OVERHEAD}, got {length}")
    text = tf.cast(example["text"][:length - MONO_OVERHEAD], tf.int32)
    ids = tf.concat([[tokens.cls_id], text, [tokens.sep_id]], 0)
    n = tf.shape(ids)[0]
    return _example(ids, tf.ones([n], tf.int32),
                    tf.fill([n], tf.cast(example["language"], tf.int32)))


def fit_pair(source_length: tf.Tensor, target_length: tf.Tensor, budget: int
             ) -> Tuple[tf.Tensor, tf.Tensor]:
    """Lengths to keep so that both fit in `budget`, trimming the longer side first."""
    keep_source = tf.minimum(source_length,
                             tf.maximum(budget - target_length, budget // 2))
    return keep_source, tf.minimum(target_length, budget - keep_source)


def pair_row(example: Dict[str, tf.Tensor], length: int,
             tokens: SpecialTokens) -> Dict[str, tf.Tensor]:
    return pad_row(pair_example(example, length, tokens), length, tokens)


def pair_example(example: Dict[str, tf.Tensor], length: int,
                 tokens: SpecialTokens) -> Dict[str, tf.Tensor]:
    """`[CLS] x [SEP] [SEP] y [SEP]`, unpadded, at most `length` tokens."""
    if length <= PAIR_OVERHEAD + 1:
        raise ValueError(f"pair length must exceed {PAIR_OVERHEAD + 1}, got {length}")
    source, target = tf.cast(example["source"], tf.int32), tf.cast(example["target"], tf.int32)
    keep_source, keep_target = fit_pair(tf.shape(source)[0], tf.shape(target)[0],
                                        length - PAIR_OVERHEAD)
    first = tf.concat([[tokens.cls_id], source[:keep_source], [tokens.sep_id]], 0)
    second = tf.concat([[tokens.sep_id], target[:keep_target], [tokens.sep_id]], 0)
    n, m = tf.shape(first)[0], tf.shape(second)[0]
    languages = tf.concat([tf.fill([n], tf.cast(example["source_language"], tf.int32)),
                           tf.fill([m], tf.cast(example["target_language"], tf.int32))], 0)
    segments = tf.concat([tf.ones([n], tf.int32), tf.fill([m], 2)], 0)
    return _example(tf.concat([first, second], 0), segments, languages)


def pack_rows(examples: tf.data.Dataset, length: int, tokens: SpecialTokens,
              position_offset: int) -> tf.data.Dataset:
    """Unpadded examples -> packed rows of `length` (`PACKED_FEATURES`).

    seqio's packer reads 0 as padding, and 0 can be a real token or language id: both are
    shifted up by one through the packer and back after it."""
    shifted = examples.map(lambda x: {"input_ids": x["input_ids"] + 1,
                                      "segment_ids": x["segment_ids"],
                                      "language_ids": x["language_ids"] + 1})
    packed = seqio.utils.trim_and_pack_dataset(shifted, {k: length for k in MODEL_FEATURES})

    def unshift(x):
        real = x["segment_ids"] > 0
        return {"input_ids": tf.where(real, x["input_ids"] - 1, tokens.pad_id),
                "segment_ids": x["segment_ids"],
                "language_ids": tf.where(real, x["language_ids"] - 1, 0),
                "example_ids": x["input_ids_segment_ids"],
                "position_ids": x["input_ids_positions"] + position_offset}
    return packed.map(unshift, num_parallel_calls=tf.data.AUTOTUNE)
