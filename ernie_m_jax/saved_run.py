"""A finished (or running) training run on disk: its gin config, params and vocabulary.

`train` writes the full gin config it ran with to `<model_dir>/config.gin` (as T5X does), so
export, embedding and evaluation need nothing but the model directory. Runs written before
that file existed, or runs read with changes, take extra `--gin_file`/`--gin.X=Y` on top.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from ernie_m_jax import checkpoints, files
from ernie_m_jax.configs import ModelConfig, SpecialTokens

CONFIG_FILE = "config.gin"
TRAINING_VOCAB_FILE = "ernie_m_jax_vocab.model"


def write_config(model_dir: str) -> None:
    """Record the parsed gin config beside the checkpoints (process 0 only)."""
    text = gin.config_str()
    if jax.process_index() != 0 or not text.strip():
        return
    files.write_text_atomic(
        checkpoints.absolute(model_dir) / CONFIG_FILE,
        "# Written by ernie_m_jax.train: the gin config this run was started with.\n" + text)


@dataclasses.dataclass(frozen=True)
class SavedRun:
    model_dir: str
    step: int
    model: ModelConfig
    tokens: SpecialTokens
    params: dict  # numpy arrays, our layout
    vocabulary_path: Optional[Path]  # the SentencePiece model its tasks tokenize with
    languages: Dict[str, int]  # language code -> id, as registered by the run's data setup
    experiment: object  # train.Experiment

    def language_id(self, code: Optional[str]) -> int:
        """The id to feed for `code`; 0 for models without language embeddings."""
        if not self.model.num_languages:
            return 0
        if code is None:
            raise ValueError("this model has language embeddings "
                             f"(ModelConfig.num_languages={self.model.num_languages}): name the "
                             f"text's language (one of {sorted(self.languages)})")
        if code not in self.languages:
            raise ValueError(f"unknown language {code!r}; this run knows {sorted(self.languages)}")
        return self.languages[code]


def parse_config(model_dir: str, gin_files: Sequence[str] = (),
                 bindings: Sequence[str] = ()) -> None:
    from ernie_m_jax import gin_config

    files = []
    config = checkpoints.absolute(model_dir) / CONFIG_FILE
    if config.exists():
        files.append(os.fspath(config))
    elif not gin_files:
        raise FileNotFoundError(
            f"{config} not found: pass the run's gin files (--gin_file=...) to describe it")
    gin.clear_config()
    gin_config.parse(files + list(gin_files), bindings)


def vocabulary_of(mixture: str) -> Optional[Path]:
    """The SentencePiece model the mixture's (first) task tokenizes with."""
    import seqio

    provider = seqio.get_mixture_or_task(mixture)
    tasks = [provider] if isinstance(provider, seqio.Task) else list(provider.tasks)
    for feature in tasks[0].output_features.values():
        path = getattr(feature.vocabulary, "sentencepiece_model_file", None)
        if path:
            return Path(path)
    return None


def load(model_dir: str, step: Optional[int] = None, gin_files: Sequence[str] = (),
         bindings: Sequence[str] = (), setup_data: bool = True) -> SavedRun:
    """Params (on the host, as NumPy) and everything needed to use them."""
    from ernie_m_jax import train
    from ernie_m_jax.export.layouts import expected_shapes
    from tasks import languages

    parse_config(model_dir, gin_files, bindings)
    exp = train.Experiment.from_gin()
    vocabulary = None
    if setup_data and exp.train.data_setup is not None:
        exp.train.data_setup()
        vocabulary = vocabulary_of(exp.data.mono_mixture)
    kept = Path(os.fspath(checkpoints.absolute(model_dir))) / TRAINING_VOCAB_FILE
    if vocabulary is None and kept.is_file():  # an imported run keeps its vocabulary here
        vocabulary = kept
    directory = checkpoints.absolute(model_dir) / "checkpoints"
    found = checkpoints.latest_step(directory) if step is None else step
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    device = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    abstract: dict = {}
    for path, shape in expected_shapes(exp.model).items():
        node = abstract
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jax.ShapeDtypeStruct(shape, jnp.dtype(exp.model.param_dtype),
                                              sharding=device)
    params = checkpoints.restore_params(directory, abstract, found)
    logging.info("loaded step %d of %s", found, model_dir)
    return SavedRun(model_dir=str(model_dir), step=int(found), model=exp.model,
                    tokens=exp.tokens, params=jax.tree.map(np.asarray, params),
                    vocabulary_path=vocabulary, languages=languages.registered_languages(),
                    experiment=exp)


def checked_output_dir(out: os.PathLike, overwrite: bool) -> epath.Path:
    """Refuse to mix new files into a non-empty directory (that would lose or muddle data)."""
    out = checkpoints.absolute(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another directory or "
                              "pass --overwrite")
    return out
