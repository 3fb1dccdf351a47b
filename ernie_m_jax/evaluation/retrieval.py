"""Tatoeba-style cross-lingual retrieval: for each sentence, is its translation the nearest
(cosine) among all the other side's sentences? Reported in both directions per pair.

A retrieved sentence counts as right when its token ids equal the gold translation's, so a
translation that occurs twice in the set (UI catalogs repeat "Save", "Delete", ...) cannot be
scored wrong for picking the other copy. `center` subtracts each side's mean vector first, a
common fix for the language-specific offset that dominates raw multilingual embeddings.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import seqio

from ernie_m_jax import files

Rows = List[List[int]]


@dataclasses.dataclass(frozen=True)
class PairSet:
    """Aligned token-id rows of a language pair (row i of each side are translations)."""

    name: str
    source: Rows
    target: Rows
    source_language: int = 0
    target_language: int = 0

    def __post_init__(self):
        if len(self.source) != len(self.target):
            raise ValueError(f"{self.name}: {len(self.source)} source vs {len(self.target)} "
                             "target sentences; the two sides must be aligned line by line")
        if not self.source:
            raise ValueError(f"{self.name}: no sentence pairs")


def _normalised(vectors: np.ndarray, center: bool) -> np.ndarray:
    vectors = np.asarray(vectors, np.float64)
    if center:
        vectors = vectors - vectors.mean(0, keepdims=True)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def nearest_accuracy(queries: np.ndarray, keys: np.ndarray, key_rows: Sequence[Sequence[int]]
                     ) -> float:
    """Share of queries i whose nearest key (cosine) is key i or an identical sentence."""
    nearest = np.argmax(queries @ keys.T, axis=1)
    gold = [tuple(r) for r in key_rows]
    return float(np.mean([gold[j] == gold[i] for i, j in enumerate(nearest)]))


def retrieval_accuracy(source_vectors: np.ndarray, target_vectors: np.ndarray, pairs: PairSet,
                       center: bool = False) -> Dict[str, float]:
    src, tgt = _normalised(source_vectors, center), _normalised(target_vectors, center)
    return {"source_to_target": nearest_accuracy(src, tgt, pairs.target),
            "target_to_source": nearest_accuracy(tgt, src, pairs.source),
            "pairs": len(pairs.source)}


def task_pairs(task: str, split: str = "test", max_examples: Optional[int] = None,
               use_cached: bool = False) -> PairSet:
    """A registered parallel task's split, in order (from seqio's offline cache if
    `use_cached`)."""
    provider = seqio.get_mixture_or_task(task)
    if set(provider.output_features) < {"source", "target"}:
        raise ValueError(f"{task} is not a parallel task (it has features "
                         f"{sorted(provider.output_features)})")
    if split not in provider.splits:
        raise ValueError(f"{task} has no split {split!r}; it has {sorted(provider.splits)}")
    # No in-memory cache: with max_examples the cache would be left partly read (a tf.data
    # warning per task), and each split is read once here anyway.
    ds = provider.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                              try_in_mem_cache=False, use_cached=use_cached)
    if max_examples:
        ds = ds.take(max_examples)
    source, target, languages = [], [], (0, 0)
    for ex in ds.as_numpy_iterator():
        source.append(ex["source"].tolist())
        target.append(ex["target"].tolist())
        languages = (int(ex["source_language"]), int(ex["target_language"]))
    return PairSet(task, source, target, *languages)


def bag_of_subwords(rows: Rows, vocab_size: int) -> np.ndarray:
    """Count vectors over the vocabulary: the baseline that shared names, numbers and
    placeholders alone reach."""
    out = np.zeros((len(rows), vocab_size), np.float32)
    for i, r in enumerate(rows):
        np.add.at(out[i], np.asarray(r, np.int64), 1.0)
    return out


def summarise(results: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    if not results:
        return {}
    keys = ("source_to_target", "target_to_source")
    return {f"mean_{k}": float(np.mean([r[k] for r in results.values()])) for k in keys}


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
    width = max([len("pair")] + [len(n) for n in results])
    lines = [f"{'pair':<{width}}  {'pairs':>6}  {'src->tgt':>8}  {'tgt->src':>8}"]
    for name, r in results.items():
        lines.append(f"{name:<{width}}  {r['pairs']:>6d}  {r['source_to_target']:>8.3f}  "
                     f"{r['target_to_source']:>8.3f}")
    mean = summarise(results)
    if len(results) > 1:
        lines.append(f"{'mean':<{width}}  {'':>6}  {mean['mean_source_to_target']:>8.3f}  "
                     f"{mean['mean_target_to_source']:>8.3f}")
    return "\n".join(lines)


def write_json(path: str, results: Mapping, settings: Mapping) -> None:
    files.write_json_atomic(path, {"settings": dict(settings), "pairs": dict(results),
                                   **summarise(results)}, indent=2)


def evaluate(encoder, sets: Sequence[PairSet], center: bool = False, progress: bool = False
             ) -> Dict[str, Dict[str, float]]:
    """Per pair: accuracy both ways with `encoder` (an `embedding.SentenceEncoder`)."""
    results = {}
    for pairs in sets:
        src = encoder.embed_ids(pairs.source, pairs.source_language, progress, pairs.name)
        tgt = encoder.embed_ids(pairs.target, pairs.target_language, progress, pairs.name)
        results[pairs.name] = retrieval_accuracy(src, tgt, pairs, center)
    return results

