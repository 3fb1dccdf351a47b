"""Accuracy per language of a classifier, and the table and JSON `evaluate` gives."""

from __future__ import annotations

import os
from typing import Callable, Dict, Mapping, Optional

import jax
import numpy as np

from ernie_m_jax import files
from ernie_m_jax.finetune import data as data_lib


def accuracy(predict: Callable, params, examples: data_lib.Examples, batch_size: int,
             place: Callable) -> float:
    """Share of `examples` whose predicted label is right (every example counted once)."""
    correct = 0
    for start, batch in zip(range(0, len(examples), batch_size),
                            data_lib.eval_batches(examples, batch_size)):
        count = min(batch_size, len(examples) - start)
        predicted = np.asarray(jax.device_get(predict(params, place(batch))))[:count]
        correct += int(np.sum(predicted == batch["labels"][:count]))
    return correct / len(examples)


def per_language(predict: Callable, params, sets: Mapping[str, data_lib.Examples],
                 batch_size: int, place: Callable) -> Dict[str, float]:
    return {lang: accuracy(predict, params, examples, batch_size, place)
            for lang, examples in sets.items()}


def summarize(scores: Mapping[str, float], sets: Mapping[str, data_lib.Examples],
              split: str, step: int, labels) -> dict:
    """Per-language accuracy with the average over languages (the paper's figure) and, for
    transfer, the average without English."""
    others = [v for k, v in scores.items() if k != "en"]
    return {"split": split, "step": step, "labels": list(labels),
            "accuracy": dict(sorted(scores.items())),
            "average": float(np.mean(list(scores.values()))),
            "average_without_en": float(np.mean(others)) if others else None,
            "examples": {k: len(v) for k, v in sorted(sets.items())}}


def format_table(result: dict) -> str:
    lines = [f"{result['split']} accuracy at step {result['step']} "
             f"({len(result['labels'])} labels: {', '.join(result['labels'])})",
             f"  {'language':10s} {'accuracy':>9s} {'examples':>9s}"]
    for lang, acc in result["accuracy"].items():
        lines.append(f"  {lang:10s} {acc:9.3f} {result['examples'][lang]:9d}")
    lines.append(f"  {'average':10s} {result['average']:9.3f}")
    if result["average_without_en"] is not None and "en" in result["accuracy"]:
        lines.append(f"  {'avg not en':10s} {result['average_without_en']:9.3f}")
    return "\n".join(lines)


def write_json(path: os.PathLike, result: dict, settings: Optional[dict] = None) -> None:
    files.write_json_atomic(path, {**(settings or {}), **result})
