"""Sentence vectors from a trained run: rows like training's, one jit-compiled forward.

Rows are `[CLS] x [SEP]` as in `data/features.py`, tokenized by the run's own SentencePiece
model (so the ids are the ones training saw). Batches are padded to a fixed number of rows
and to a multiple of `length_multiple` positions, so a whole file compiles a handful of times.
"""

from __future__ import annotations

import functools
import logging
from typing import Iterable, List, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ernie_m_jax.configs import ModelConfig
from ernie_m_jax.data import vocab
from ernie_m_jax.model import ErnieM
from ernie_m_jax.saved_run import SavedRun

POOLINGS = ("cls", "mean")


def pool(hidden: jax.Array, keys: jax.Array, pooling: str) -> jax.Array:
    """`cls`: the first position; `mean`: the mean over real (non-pad) tokens, [CLS] and
    [SEP] included, as sentence-transformers does."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = keys.astype(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)


def framed_batch(rows: Sequence[Sequence[int]], tokens, batch_size: int,
                 length: int) -> np.ndarray:
    """[batch_size, length] ids, each row as `[CLS] row [SEP]` (the row cut to fit), padded;
    rows past len(rows) are all padding, so every batch has one static shape."""
    ids = np.full((batch_size, length), tokens.pad_id, np.int32)
    for i, row in enumerate(rows):
        framed = [tokens.cls_id, *row[:length - 2], tokens.sep_id]
        ids[i, :len(framed)] = framed
    return ids


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _pooled_hidden(config: ModelConfig, layer: Optional[int], pooling: str, params,
                   ids: jax.Array, language_ids: jax.Array) -> jax.Array:
    """Pooled vectors of one layer ([rows, hidden]) or of every layer ([rows, layers + 1,
    hidden]). One compiled program per model config, layer, pooling and batch shape, shared
    by every encoder of the process: scoring several runs of one size compiles once."""
    keys = ids != config.pad_id
    out = ErnieM(config).apply({"params": params}, ids, attention_mask=keys,
                               language_ids=language_ids, output_hidden_states=True)
    hidden = out["all_hidden_states"].astype(jnp.float32)
    if layer is not None:
        return pool(hidden[layer], keys, pooling)
    return jnp.stack([pool(h, keys, pooling) for h in hidden], axis=1)


class SentenceEncoder:
    """`layer`: 0 = the embeddings, 1..N = the layers' outputs, negative counts from the last;
    None gives every layer at once ([texts, N + 1, hidden])."""

    def __init__(self, run: SavedRun, pooling: str = "mean", layer: Optional[int] = -1,
                 batch_size: int = 64, length_multiple: int = 16):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        layers = run.model.num_layers
        if layer is not None and not -layers - 1 <= layer <= layers:
            raise ValueError(f"layer {layer} does not exist: 0 is the embeddings, 1..{layers} "
                             "the encoder layers (negative counts from the last)")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.run, self.pooling, self.batch_size = run, pooling, batch_size
        self.layer = None if layer is None else layer % (layers + 1)
        self.length_multiple = length_multiple
        self.max_length = run.model.max_length
        self._text_ids = None
        self._params = jax.device_put(run.params)

    def _forward(self, params, ids: np.ndarray, language_ids: np.ndarray) -> jax.Array:
        return _pooled_hidden(self.run.model, self.layer, self.pooling, params, ids,
                              language_ids)

    @property
    def text_ids(self) -> vocab.TextIds:
        """The run's vocabulary, in its id layout (SentencePiece's own or fairseq's)."""
        if self._text_ids is None:
            if self.run.vocabulary_path is None:
                raise ValueError(f"{self.run.model_dir}: the run's vocabulary is unknown")
            self._text_ids = vocab.TextIds(self.run.vocabulary_path)
        return self._text_ids

    def tokenize(self, texts: Iterable[str]) -> List[List[int]]:
        """Each text's ids (no special tokens); over-long texts are cut and counted."""
        rows, cut = [], 0
        for ids in self.text_ids.encode(list(texts)):
            if len(ids) > self.max_length - 2:
                cut += 1
                ids = ids[:self.max_length - 2]
            rows.append(ids)
        if cut:
            logging.warning("%d of %d texts were longer than %d tokens and were cut", cut,
                            len(rows), self.max_length - 2)
        return rows

    def embed_ids(self, rows: Sequence[Sequence[int]], language: Union[int, Sequence[int]] = 0,
                  progress: bool = False, desc: str = "embed") -> np.ndarray:
        """[len(rows), hidden] (or [len(rows), layers + 1, hidden]) float32 vectors for
        token-id rows (without special tokens)."""
        tokens = self.run.tokens
        languages = ([language] * len(rows) if isinstance(language, (int, np.integer))
                     else list(language))
        out = []
        bar = tqdm(total=len(rows), desc=desc, disable=not progress, dynamic_ncols=True)
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            longest = max(min(len(r), self.max_length - 2) for r in chunk) + 2
            length = min(-(-longest // self.length_multiple) * self.length_multiple,
                         self.max_length)
            ids = framed_batch(chunk, tokens, self.batch_size, length)
            lang = np.zeros((self.batch_size, length), np.int32)
            lang[:len(chunk)] = np.asarray(languages[start:start + len(chunk)])[:, None]
            out.append(np.asarray(self._forward(self._params, ids, lang))[:len(chunk)])
            bar.update(len(chunk))
        bar.close()
        if not out:
            shape = (0, self.run.model.hidden_size) if self.layer is not None else \
                (0, self.run.model.num_layers + 1, self.run.model.hidden_size)
            return np.zeros(shape, np.float32)
        return np.concatenate(out)

    def embed_texts(self, texts: Sequence[str], language: Optional[str] = None,
                    progress: bool = False) -> np.ndarray:
        return self.embed_ids(self.tokenize(texts), self.run.language_id(language), progress)
