"""Held-out MMLM accuracy per language, the number a pretraining run is watched by."""

from __future__ import annotations

from typing import Callable, Dict, Mapping

import jax
import numpy as np
import seqio

from ernie_m_jax.data import pipeline
from ernie_m_jax.train.config import Experiment
from ernie_m_jax.train.resolve import mixture_languages
from ernie_m_jax.train.step import global_batch


def eval_tasks(exp: Experiment) -> Dict[str, str]:
    """{language: monolingual task} to score: `TrainConfig.eval_languages`, or every one."""
    by_language = mixture_languages(exp.data.mono_mixture)
    if not exp.train.eval_languages:
        return by_language
    unknown = sorted(set(exp.train.eval_languages) - set(by_language))
    if unknown:
        raise ValueError(f"TrainConfig.eval_languages {unknown} are not in "
                         f"{exp.data.mono_mixture}; it has {sorted(by_language)}")
    return {lang: by_language[lang] for lang in exp.train.eval_languages}


def evaluate(eval_fn: Callable, params, tasks: Mapping[str, str], exp: Experiment, mesh
             ) -> Dict[str, float]:
    """`eval/<lang>/accuracy` and `/loss` per language, pooled `eval/accuracy`, and the
    unweighted `eval/mean_language_accuracy`."""
    shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
    local_batch = pipeline.host_batch_size(exp.train.eval_batch_size, jax.process_count(),
                                           "eval_batch_size")
    per_host = -(-exp.train.eval_examples_per_language // jax.process_count())
    results, total_correct, total_count = {}, 0.0, 0.0
    for language, task in tasks.items():
        sums = {"correct": 0.0, "loss_sum": 0.0, "count": 0.0}
        for batch in pipeline.evaluation_batches(task, exp.data.mono_length, local_batch,
                                                 exp.train.eval_split, per_host, shard,
                                                 tokens=exp.tokens,
                                                 use_cached=exp.data.use_cached):
            out = eval_fn(params, global_batch(batch, mesh, exp.mesh.rules))
            for k in sums:
                sums[k] += float(out[k])
        if sums["count"]:
            results[f"eval/{language}/accuracy"] = sums["correct"] / sums["count"]
            results[f"eval/{language}/loss"] = sums["loss_sum"] / sums["count"]
            total_correct += sums["correct"]
            total_count += sums["count"]
    if total_count:
        results["eval/accuracy"] = total_correct / total_count
        results["eval/mean_language_accuracy"] = float(np.mean(
            [v for k, v in results.items() if k.endswith("/accuracy") and k.count("/") == 2]))
    return results
