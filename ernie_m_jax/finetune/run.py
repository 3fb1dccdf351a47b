"""A fine-tuning run on disk: what it started from, how far model selection got, and its
params, so that `evaluate` and `export-hf` need nothing but the run directory.

  <model_dir>/finetune.json    model config, special tokens, labels, task, start point
  <model_dir>/selection.json   validation accuracy at every evaluation, the best step
  <model_dir>/checkpoints/     the latest train state (resume)
  <model_dir>/best/            params of the best validation step
  <model_dir>/config.gin, ernie_m_jax_vocab.model, languages.json   as pretraining writes
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
from typing import Dict, List, Optional, Tuple

import flax.linen as nn
import gin
import jax
import numpy as np

from ernie_m_jax import checkpoints, files, gin_config, run_dir
from ernie_m_jax.configs import ModelConfig, SpecialTokens
from ernie_m_jax.finetune.config import FinetuneConfig
from ernie_m_jax.finetune.model import ErnieMClassifier, init_boxed

INFO_FILE = "finetune.json"
SELECTION_FILE = "selection.json"
CHECKPOINTS, BEST = "checkpoints", "best"


@dataclasses.dataclass(frozen=True)
class FinetuneInfo:
    init_from: str
    init_step: int
    model: ModelConfig
    tokens: SpecialTokens
    task: str
    labels: Tuple[str, ...]
    pair: bool
    languages: Dict[str, int]  # language code -> the pretrained run's language id

    def to_json(self) -> dict:
        return {"init_from": self.init_from, "init_step": self.init_step,
                "model": dataclasses.asdict(self.model),
                "special_tokens": dataclasses.asdict(self.tokens), "task": self.task,
                "labels": list(self.labels), "pair": self.pair, "languages": self.languages}

    @classmethod
    def from_json(cls, data: dict) -> "FinetuneInfo":
        model = {k: tuple(v) if isinstance(v, list) else v for k, v in data["model"].items()}
        return cls(data["init_from"], int(data["init_step"]), ModelConfig(**model),
                   SpecialTokens(**data["special_tokens"]), data["task"], tuple(data["labels"]),
                   bool(data["pair"]), dict(data["languages"]))


def path(model_dir: os.PathLike):
    """The run's folder as an epath (a gs:// URL stays one)."""
    return run_dir.path(model_dir)


def read_info(model_dir: os.PathLike) -> Optional[FinetuneInfo]:
    file = path(model_dir) / INFO_FILE
    if not file.exists():
        return None
    return FinetuneInfo.from_json(files.read_json(
        file, "it is rewritten from the fine-tuning config only at a fresh start: fine-tune "
              "into a new --model_dir"))


def write_info(model_dir: os.PathLike, info: FinetuneInfo) -> None:
    files.write_json_atomic(path(model_dir) / INFO_FILE, info.to_json())


def read_selection(model_dir: os.PathLike, up_to_step: int) -> List[dict]:
    """The evaluations recorded up to `up_to_step` (a resumed run drops later ones)."""
    file = path(model_dir) / SELECTION_FILE
    if not file.exists():
        return []
    record = files.read_json(file, "delete it to choose the best step among the evaluations "
                                   "still to come only")
    return [e for e in record.get("evaluations", []) if e["step"] <= up_to_step]


def best_of(evaluations: List[dict]) -> Optional[dict]:
    """The first evaluation with the highest validation accuracy."""
    return max(evaluations, key=lambda e: e["accuracy"], default=None)


def write_selection(model_dir: os.PathLike, evaluations: List[dict],
                    stopped_early_at: Optional[int] = None) -> None:
    best = best_of(evaluations)
    files.write_json_atomic(path(model_dir) / SELECTION_FILE, {
        "evaluations": evaluations, "best_step": best and best["step"],
        "best_accuracy": best and best["accuracy"], "stopped_early_at": stopped_early_at})


def require_finetuned(model_dir: os.PathLike) -> FinetuneInfo:
    """The run's record, or one error saying what `model_dir` is instead."""
    info = read_info(model_dir)
    if info is not None:
        return info
    if (path(model_dir) / CHECKPOINTS).is_dir():
        raise ValueError(f"{model_dir} has no classification head: it is a pretraining run, "
                         f"not a fine-tuned one; fine-tune it first (ernie-m-jax finetune "
                         f"--init_from={shlex.quote(os.fspath(model_dir))} ...)")
    raise FileNotFoundError(f"{model_dir} is not a fine-tuning run (no {INFO_FILE})")


def abstract_params(info: FinetuneInfo):
    """ShapeDtypeStructs of the classifier's params on this host's first CPU device."""
    model = ErnieMClassifier(info.model, len(info.labels))
    shapes = jax.eval_shape(lambda: nn.unbox(init_boxed(model, jax.random.key(0))))
    device = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                        shapes)


def load_params(model_dir: os.PathLike, which: str = BEST) -> Tuple[FinetuneInfo, int, dict]:
    """(record, step, NumPy params) of the best (model selection's) or the latest step."""
    info = require_finetuned(model_dir)
    if which not in (BEST, CHECKPOINTS):
        raise ValueError(f"unknown checkpoint {which!r}; choose '{BEST}' or 'latest'")
    directory = path(model_dir) / which
    step = checkpoints.latest_step(directory)
    if step is None:
        raise FileNotFoundError(f"no {'best' if which == BEST else 'latest'} checkpoint in "
                                f"{directory}: has the run evaluated yet?")
    params = checkpoints.restore_params(directory, abstract_params(info), step)
    return info, step, jax.tree.map(np.asarray, params)


def recorded_config(model_dir: os.PathLike):
    """The run's `FinetuneConfig`, read from its config.gin without touching the caller's gin
    state; its `task_setup` keeps the run's bindings."""
    require_finetuned(model_dir)
    with gin_config.isolated():
        gin_config.parse([os.fspath(path(model_dir) / run_dir.CONFIG_FILE)], [])
        cfg = FinetuneConfig()
        if cfg.task_setup is not None:
            cfg = dataclasses.replace(cfg, task_setup=functools.partial(
                cfg.task_setup, **gin.get_bindings(cfg.task_setup)))
    return cfg
