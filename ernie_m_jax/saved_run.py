"""A finished (or running) training run on disk: its gin config, params and vocabulary.

`train` writes the full gin config it ran with, its vocabulary and its language ids beside
the checkpoints (`run_dir.py`), so export, embedding and evaluation need nothing but the
model directory. Runs written before config.gin existed, or runs read with changes, take
extra `--gin_file`/`--gin.X=Y` on top.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from ernie_m_jax import checkpoints, files, gin_config, run_dir
from ernie_m_jax.configs import ModelConfig, SpecialTokens
from ernie_m_jax.data import languages, pipeline
from ernie_m_jax.export.layouts import expected_shapes
from ernie_m_jax.train.config import Experiment


@dataclasses.dataclass(frozen=True)
class SavedRun:
    model_dir: str
    step: int
    model: ModelConfig
    tokens: SpecialTokens
    params: dict  # numpy arrays, our layout
    vocabulary_path: Optional[Path]  # the SentencePiece model its tasks tokenize with
    languages: Dict[str, int]  # language code -> id, as registered by the run's data setup
    experiment: Experiment

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


_CONFIG_REMEDY = (f"the run keeps every start's config in {run_dir.CONFIG_HISTORY}/: copy the "
                  f"newest over {run_dir.CONFIG_FILE}, or describe the run with --gin_file")


def load(model_dir: str, step: Optional[int] = None, gin_files: Sequence[str] = (),
         bindings: Sequence[str] = (), setup_data: bool = True) -> SavedRun:
    """Params (on the host, as NumPy) and everything needed to use them.

    Reads the run's `config.gin` (plus `gin_files` / `bindings` on top) without touching
    the caller's gin config, and the vocabulary and language ids the run keeps beside its
    checkpoints: no training data is needed. Only runs written before runs kept those
    files set their data up again to find them (`setup_data`).
    """
    config = run_dir.path(model_dir) / run_dir.CONFIG_FILE
    if not config.exists() and not gin_files:
        raise FileNotFoundError(
            f"{config} not found: pass the run's gin files (--gin_file=...) to describe it")
    with gin_config.isolated():
        if config.exists():
            try:
                gin_config.parse([os.fspath(config)])
            except ValueError as err:
                raise files.DamagedFileError(f"{err}; {_CONFIG_REMEDY}") from err
        gin_config.parse(gin_files, bindings)
        exp = Experiment.from_gin()
        setup = exp.train.data_setup
        if setup is not None:  # keep the run's bindings once its config is put away
            setup = functools.partial(setup, **gin.get_bindings(setup))
            exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train,
                                                                     data_setup=setup))
    vocabulary, language_ids = run_dir.vocabulary(model_dir), run_dir.languages(model_dir)
    if (vocabulary is None or language_ids is None) and setup_data and \
            exp.train.data_setup is not None:
        exp.train.data_setup()
        vocabulary = vocabulary or pipeline.vocabulary_of(exp.data.mono_mixture)
        language_ids = language_ids or languages.registered_languages()
    directory = run_dir.path(model_dir) / "checkpoints"
    steps = checkpoints.saved_steps(directory)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"no checkpoint of step {step} in {directory}; its steps are "
                                f"{', '.join(map(str, steps))}")
    found = steps[-1] if step is None else step
    device = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    abstract: dict = {}
    for path, shape in expected_shapes(exp.model).items():
        node = abstract
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jax.ShapeDtypeStruct(shape, jnp.dtype(exp.model.param_dtype),
                                              sharding=device)
    try:
        params = checkpoints.restore_params(directory, abstract, found)
    except checkpoints.ShapeMismatchError as err:
        if not config.exists():
            raise
        raise checkpoints.ShapeMismatchError(
            f"{err}; the model is read from {config}: if it was damaged, {_CONFIG_REMEDY}"
        ) from None
    logging.info("loaded step %d of %s", found, model_dir)
    return SavedRun(model_dir=str(model_dir), step=int(found), model=exp.model,
                    tokens=exp.tokens, params=jax.tree.map(np.asarray, params),
                    vocabulary_path=None if vocabulary is None else Path(os.fspath(vocabulary)),
                    languages=dict(language_ids or {}), experiment=exp)
