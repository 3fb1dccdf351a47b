"""The end of `ernie-m-jax train`: what the run made, how good it is, what to do next.

How good is scored where a user can check it: en<->X retrieval on the test split of the run's
parallel tasks, mean-pooled at the middle layer, raw and centred, beside bag of subwords on the
same pairs (what shared pieces alone reach; a model that does not beat it has not aligned the
languages). MMLM accuracy per language comes from the run's own last evaluation.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import seqio

from ernie_m_jax import files, run_dir
from ernie_m_jax.data import pipeline
from ernie_m_jax.evaluation.embedding import SentenceEncoder
from ernie_m_jax.evaluation.retrieval import bag_of_subwords, retrieval_accuracy, task_pairs
from ernie_m_jax.saved_run import SavedRun
from ernie_m_jax.train.config import Experiment

MAX_LANGUAGES = 8  # retrieval pairs scored at the end of a run (a few seconds each)
SPLIT = "test"  # the split they are scored on


@dataclasses.dataclass(frozen=True)
class PairScore:
    pair: str
    pairs: int
    raw: float  # mean of both directions
    centred: float
    bag_of_subwords: float


def middle_layer(num_layers: int) -> int:
    return max(1, num_layers // 2)


def _both_ways(result: Mapping[str, float]) -> float:
    return (result["source_to_target"] + result["target_to_source"]) / 2


def parallel_tasks(exp: Experiment, run: SavedRun) -> Dict[str, str]:
    """{target language: task} of the pair mixture, limited to the evaluated languages (or
    the first few): scored at the end of a run."""
    by_suffix: Dict[str, str] = {}
    mixture = exp.data.pair_mixture
    if not mixture or mixture not in (*seqio.MixtureRegistry.names(),
                                      *seqio.TaskRegistry.names()):
        return {}
    for task in pipeline.tasks_of(mixture):
        if SPLIT not in task.splits:  # e.g. a TFDS translation set with train/validation only
            continue
        suffix = task.name.rsplit(".", 1)[-1]
        for language in run.languages:
            if suffix.endswith("_" + language) and suffix != f"{language}_{language}":
                by_suffix.setdefault(language, task.name)
    wanted = [lang for lang in exp.train.eval_languages if lang in by_suffix] or \
        sorted(by_suffix)[:MAX_LANGUAGES]
    return {lang: by_suffix[lang] for lang in wanted}


def score_retrieval(run: SavedRun, tasks: Mapping[str, str], layer: int, split: str = SPLIT,
                    use_cached: bool = False) -> List[PairScore]:
    encoder = SentenceEncoder(run, pooling="mean", layer=layer)
    scores = []
    for task in tasks.values():
        pairs = task_pairs(task, split, use_cached=use_cached)
        src = encoder.embed_ids(pairs.source, pairs.source_language)
        tgt = encoder.embed_ids(pairs.target, pairs.target_language)
        bag = retrieval_accuracy(bag_of_subwords(pairs.source, run.model.vocab_size),
                                 bag_of_subwords(pairs.target, run.model.vocab_size), pairs)
        name = task.rsplit(".", 1)[-1].replace("_", "-", 1)
        scores.append(PairScore(name, len(pairs.source),
                                _both_ways(retrieval_accuracy(src, tgt, pairs)),
                                _both_ways(retrieval_accuracy(src, tgt, pairs, center=True)),
                                _both_ways(bag)))
    return scores


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def write_scores(model_dir: str, step: int, layer: int, scores: Sequence[PairScore]) -> None:
    """The summary's retrieval figures beside the checkpoints (`retrieval_test_step_<N>.json`),
    where `export-hf` finds them for the model card."""
    pairs = {s.pair: {"pairs": s.pairs, "raw": s.raw, "centred": s.centred,
                      "bag_of_subwords": s.bag_of_subwords} for s in scores}
    files.write_json_atomic(os.path.join(model_dir, run_dir.RETRIEVAL_FILE.format(step=step)),
                            {"step": step, "layer": layer, "split": SPLIT, "pooling": "mean",
                             "pairs": pairs, "mean": mean_scores(scores)})


def mean_scores(scores: Sequence[PairScore]) -> Dict[str, float]:
    """Raw, centred and bag-of-subwords accuracy averaged over the pairs."""
    return {f: float(np.mean([getattr(s, f) for s in scores]))
            for f in ("raw", "centred", "bag_of_subwords")}


def retrieval_command(model_dir: str, layer: int) -> str:
    """The command that scores what the summary scores, ready to paste."""
    return (f"ernie-m-jax eval-retrieval --model_dir={shlex.quote(model_dir)} --split={SPLIT} "
            f"--layer={layer} --center")


def skipped_retrieval_note(model_dir: str, layer: int) -> str:
    return ("retrieval not scored: the run was stopped by a signal, whose grace period is "
            f"for the checkpoint; rerun the same command to resume, or score it now with\n  "
            f"{retrieval_command(model_dir, layer)}")


def format_summary(model_dir: str, exp: Experiment, summary: Mapping[str, float],
                   scores: Sequence[PairScore], layer: int,
                   note: Optional[str] = None) -> str:
    steps = int(summary.get("session/steps", 0))
    seconds = summary.get("session/seconds", 0.0)
    tokens = summary.get("session/tokens", 0.0)
    first = summary.get("session/first_step_seconds", 0.0)
    # The first call compiles; with several steps a call it ran that many.
    in_first = int(summary.get("session/first_call_steps", 1))
    first_what = "the first step" if in_first == 1 else f"the first call ({in_first} steps)"
    rest = seconds - first
    speed = (f"{(tokens * (steps - in_first) / steps) / rest:,.0f} tokens/s after {first_what}"
             if steps > in_first and rest > 0 else
             f"{tokens / max(seconds, 1e-9):,.0f} tokens/s")
    last = int(summary.get("session/last_step", exp.train.num_steps))
    where = (f"to step {last:,}" if last == exp.train.num_steps else
             f"to step {last:,} of {exp.train.num_steps:,}"
             + (", stopped by a signal" if "preempted_at_step" in summary else ""))
    lines = [f"trained {steps:,} steps ({where}) in "
             f"{_duration(seconds)} ({_duration(first)} of it {first_what}, with "
             f"compilation); {speed}"]
    losses = [f"{o} {summary[f'train/{o}/loss']:.3f}" for o in exp.train.enabled
              if f"train/{o}/loss" in summary]
    if losses:
        lines.append("final loss: " + "  ".join(losses))
    accuracy = {k.split("/")[1]: v for k, v in summary.items()
                if k.startswith("eval/") and k.endswith("/accuracy") and k.count("/") == 2}
    if accuracy:
        lines.append(f"MMLM accuracy ({exp.train.eval_split}): " + "  ".join(
            f"{lang} {v:.3f}" for lang, v in sorted(accuracy.items())))
    if scores:
        lines.append(f"en<->X retrieval, test split, layer {layer} of {exp.model.num_layers}, "
                     "mean-pooled, both directions:")
        width = max(len("mean"), *(len(s.pair) for s in scores))
        lines.append(f"  {'pair':<{width}}  {'pairs':>5}  {'raw':>5}  {'centred':>7}  "
                     f"{'bag of subwords':>15}")
        for s in scores:
            lines.append(f"  {s.pair:<{width}}  {s.pairs:>5d}  {s.raw:>5.3f}  "
                         f"{s.centred:>7.3f}  {s.bag_of_subwords:>15.3f}")
        mean = mean_scores(scores)
        lines.append(f"  {'mean':<{width}}  {'':>5}  {mean['raw']:>5.3f}  "
                     f"{mean['centred']:>7.3f}  {mean['bag_of_subwords']:>15.3f}")
        verdict = ("beats" if mean["centred"] > mean["bag_of_subwords"] else
                   "does not yet beat")
        lines.append(f"  centred retrieval {verdict} bag of subwords "
                     f"({mean['centred']:.3f} vs {mean['bag_of_subwords']:.3f})")
    elif note:
        lines.append(note)
    fold = " --fold_language=mean" if exp.model.num_languages else ""
    quoted = shlex.quote(model_dir)
    lines += [f"checkpoints: {os.path.join(model_dir, 'checkpoints')}  TensorBoard events and "
              f"metrics.jsonl: {model_dir}",
              "next:",
              f"  tensorboard --logdir {quoted}",
              f"  ernie-m-jax export-hf --model_dir={quoted} --out={shlex.quote(model_dir + '_hf')}"
              f"{fold}",
              f"  {retrieval_command(model_dir, layer)}",
              f"  ernie-m-jax finetune --gin_file=gin/finetune/packages.gin "
              f"--init_from={quoted} --model_dir={shlex.quote(model_dir + '_packages')}"]
    return "\n".join(lines)
