"""Accuracy per language of a classifier, and the table and JSON `evaluate` gives."""

from __future__ import annotations

import os
from typing import Callable, Dict, Mapping, Optional

import jax
import numpy as np

from ernie_m_jax import files
from ernie_m_jax.finetune import data as data_lib


def predictions(predict: Callable, params, examples: data_lib.Examples, batch_size: int,
                place: Callable) -> np.ndarray:
    """The predicted label of every example, in order (each counted once)."""
    out = []
    for start, batch in zip(range(0, len(examples), batch_size),
                            data_lib.eval_batches(examples, batch_size)):
        count = min(batch_size, len(examples) - start)
        out.append(np.asarray(jax.device_get(predict(params, place(batch))))[:count])
    return np.concatenate(out)


def scores(predicted: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """Accuracy, and balanced accuracy (mean recall over the classes present), which a
    classifier answering the majority class everywhere cannot inflate."""
    recalls = [float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)]
    return {"accuracy": float(np.mean(predicted == labels)),
            "balanced_accuracy": float(np.mean(recalls))}


def per_language(predict: Callable, params, sets: Mapping[str, data_lib.Examples],
                 batch_size: int, place: Callable) -> Dict[str, Dict[str, float]]:
    return {lang: scores(predictions(predict, params, examples, batch_size, place),
                         examples.labels)
            for lang, examples in sets.items()}


def summarize(per_lang: Mapping[str, Dict[str, float]], sets: Mapping[str, data_lib.Examples],
              split: str, step: int, labels) -> dict:
    """Per-language accuracy with the average over languages (the paper's figure) and, for
    transfer, the average without English; balanced accuracy beside it."""
    out = {"split": split, "step": step, "labels": list(labels),
           "examples": {k: len(v) for k, v in sorted(sets.items())}}
    for metric in ("accuracy", "balanced_accuracy"):
        values = {lang: s[metric] for lang, s in sorted(per_lang.items())}
        others = [v for k, v in values.items() if k != "en"]
        out[metric] = values
        out[f"average_{metric}"] = float(np.mean(list(values.values())))
        out[f"average_{metric}_without_en"] = float(np.mean(others)) if others else None
    return out


def format_table(result: dict) -> str:
    lines = [f"{result['split']} accuracy at step {result['step']} "
             f"({len(result['labels'])} labels: {', '.join(result['labels'])})",
             f"  {'language':10s} {'accuracy':>9s} {'balanced':>9s} {'examples':>9s}"]
    for lang, acc in result["accuracy"].items():
        lines.append(f"  {lang:10s} {acc:9.3f} {result['balanced_accuracy'][lang]:9.3f} "
                     f"{result['examples'][lang]:9d}")
    lines.append(f"  {'average':10s} {result['average_accuracy']:9.3f} "
                 f"{result['average_balanced_accuracy']:9.3f}")
    if result["average_accuracy_without_en"] is not None and "en" in result["accuracy"]:
        lines.append(f"  {'avg not en':10s} {result['average_accuracy_without_en']:9.3f} "
                     f"{result['average_balanced_accuracy_without_en']:9.3f}")
    return "\n".join(lines)


def write_json(path: os.PathLike, result: dict, settings: Optional[dict] = None) -> None:
    files.write_json_atomic(path, {**(settings or {}), **result})
