"""The files that make a run directory describe itself: what `train` writes beside the
checkpoints so that export, embedding and evaluation need nothing else (no training data,
no task registration, no global gin state of the caller)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Mapping, Optional

from etils import epath

from ernie_m_jax import files
from ernie_m_jax.checkpoints import absolute as path

CONFIG_FILE = "config.gin"  # the full gin config it ran with (T5X's convention)
VOCAB_FILE = "ernie_m_jax_vocab.model"  # the SentencePiece model its tasks tokenize with
LANGUAGES_FILE = "languages.json"  # language code -> the id fed to the language embedding


def write_config(model_dir: os.PathLike, text: str) -> None:
    if text.strip():
        files.write_text_atomic(
            Path(os.fspath(path(model_dir) / CONFIG_FILE)),
            "# Written by ernie-m-jax train: the gin config this run was started with.\n"
            + text)


def keep_vocabulary(model_dir: os.PathLike, vocabulary: Optional[os.PathLike]) -> None:
    """Copy the vocabulary into the run (unchanged if it is already the same bytes)."""
    if vocabulary is None:
        return
    target = path(model_dir) / VOCAB_FILE
    source = epath.Path(os.fspath(vocabulary))
    if target.exists() and target.read_bytes() == source.read_bytes():
        return
    tmp = target.parent / (VOCAB_FILE + ".tmp")
    with source.open("rb") as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    tmp.rename(target)


def write_languages(model_dir: os.PathLike, ids: Mapping[str, int]) -> None:
    target = path(model_dir) / LANGUAGES_FILE
    tmp = target.parent / (LANGUAGES_FILE + ".tmp")
    tmp.write_text(json.dumps(dict(sorted(ids.items())), indent=1) + "\n")
    tmp.rename(target)


def vocabulary(model_dir: os.PathLike) -> Optional[epath.Path]:
    kept = path(model_dir) / VOCAB_FILE
    return kept if kept.exists() else None


def languages(model_dir: os.PathLike) -> Optional[Dict[str, int]]:
    kept = path(model_dir) / LANGUAGES_FILE
    return json.loads(kept.read_text()) if kept.exists() else None
