"""SentencePiece vocabulary with ERNIE-M / XLM-R special ids, trained on the demo corpus.

[CLS]=0 [PAD]=1 [SEP]=2 [UNK]=3 [MASK]=4 (matching `configs.SpecialTokens()`). Training reads
only the training split, in a fixed order with one thread, so the model file is the same on
every run. Real runs point `vocabulary_path` at any SentencePiece model instead (e.g. the
250,002-piece ERNIE-M/XLM-R one, with `SpecialTokens.mask_id = 250001`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import sentencepiece as spm

from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.data import corpus

# SpecialTokens field -> the piece that must sit at that id.
SPECIAL_PIECES = {"cls_id": "[CLS]", "pad_id": "[PAD]", "sep_id": "[SEP]", "unk_id": "[UNK]",
                  "mask_id": "[MASK]"}


def training_sentences(corpus_dir: os.PathLike, languages: Sequence[str] = ()) -> list:
    """Every training-split sentence of the given (default: all) languages, in a fixed order."""
    languages = list(languages) or list(corpus.languages(corpus_dir))
    sentences = []
    for language in sorted(languages):
        rows = corpus.read_split(corpus_dir, "train", language)
        sentences.extend(rows[key] for key in sorted(rows))
    return sentences


def train_vocabulary(corpus_dir: os.PathLike, model_path: os.PathLike, vocab_size: int = 8000,
                     languages: Sequence[str] = ()) -> Path:
    """Train a unigram SentencePiece model on the training split; returns the .model path."""
    sentences = training_sentences(corpus_dir, languages)
    if not sentences:
        raise ValueError(f"no training sentences in {corpus_dir} for languages {languages}")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=0.9995,
        byte_fallback=True,  # no [UNK] for rare characters
        bos_id=0, pad_id=1, eos_id=2, unk_id=3,
        bos_piece="[CLS]", pad_piece="[PAD]", eos_piece="[SEP]", unk_piece="[UNK]",
        control_symbols=["[MASK]"],
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_suffix(".tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(model_path)
    return model_path


def load_vocabulary(model_path: os.PathLike, tokens: SpecialTokens = SpecialTokens()):
    """A `seqio.SentencePieceVocabulary`, checked against the special-token layout."""
    import seqio  # imports TensorFlow: keep it out of module import time

    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"SentencePiece model not found: {path}")
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{path} is not a valid SentencePiece model: {err}") from None
    for field, piece in SPECIAL_PIECES.items():
        token_id = getattr(tokens, field)
        if token_id >= processor.GetPieceSize() or processor.IdToPiece(token_id) != piece:
            raise ValueError(
                f"{path}: SpecialTokens.{field}={token_id} is not {piece} in this vocabulary")
    return seqio.SentencePieceVocabulary(str(path))
