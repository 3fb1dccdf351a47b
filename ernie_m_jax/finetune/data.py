"""Classification examples as fixed-shape NumPy rows, and the order they are trained in.

Fine-tuning sets are small enough to hold tokenized in memory (MNLI's 393k pairs at 128
tokens are 0.4 GB), which makes the input trivially resumable: epoch e is a permutation
seeded by (seed, e), so step s of any run is the same batch, with no iterator to checkpoint.
Rows are laid out as in pretraining (`data.features`): [CLS] a [SEP] or
[CLS] a [SEP] [SEP] b [SEP], the longer side of a pair trimmed first.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.data import features

FIELDS = ("input_ids", "language_ids", "labels")


@dataclasses.dataclass(frozen=True)
class Examples:
    input_ids: np.ndarray  # int32 [n, length]
    language_ids: np.ndarray  # int32 [n, length]
    labels: np.ndarray  # int32 [n]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "Examples":
        return Examples(*(getattr(self, f)[index] for f in FIELDS))

    def as_dict(self) -> Dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in FIELDS}

    @staticmethod
    def concatenate(parts: Sequence["Examples"]) -> "Examples":
        return Examples(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS))


def load_split(task_name: str, split: str, language_id: int, max_length: int,
               tokens: SpecialTokens, pair: bool, num_labels: int) -> Examples:
    """Every example of `split` of a registered classification task, in order."""
    task = seqio.get_mixture_or_task(task_name)
    if split not in task.splits:
        raise ValueError(f"task {task_name} has no {split!r} split (it has "
                         f"{sorted(task.splits)})")
    # Read once, whole: no in-memory cache (it also asks TFDS for split sizes).
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False,
                          num_epochs=1, try_in_mem_cache=False)
    missing = [k for k in ("text", "label") + (("text_pair",) if pair else ())
               if k not in ds.element_spec]
    if missing:
        raise ValueError(f"task {task_name} lacks the features {missing} a "
                         f"{'pair' if pair else 'single-sentence'} classifier reads")

    def row(ex):
        language = tf.constant(language_id, tf.int32)
        if pair:
            r = features.pair_row({"source": ex["text"], "target": ex["text_pair"],
                                   "source_language": language, "target_language": language},
                                  max_length, tokens)
        else:
            r = features.monolingual_row({"text": ex["text"], "language": language},
                                         max_length, tokens)
        return {"input_ids": r["input_ids"], "language_ids": r["language_ids"],
                "labels": tf.cast(ex["label"], tf.int32)}

    rows = ds.map(row, num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
    parts = [Examples(*(batch[f] for f in FIELDS)) for batch in rows.as_numpy_iterator()]
    if not parts:
        raise ValueError(f"task {task_name} has no examples in its {split!r} split")
    examples = Examples.concatenate(parts)
    bad = (examples.labels < 0) | (examples.labels >= num_labels)
    if bad.any():
        raise ValueError(f"{task_name} [{split}]: label id {int(examples.labels[bad][0])} is "
                         f"outside the classifier's {num_labels} labels")
    return examples


def subsample(examples: Examples, limit: Optional[int], seed: int) -> Examples:
    if limit is None or limit >= len(examples):
        return examples
    index = np.sort(np.random.default_rng(seed).permutation(len(examples))[:limit])
    return examples.take(index)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches only (fixed shapes); at least one batch must fit."""
    if num_examples < batch_size:
        raise ValueError(f"{num_examples} training examples do not fill one batch of "
                         f"{batch_size}; lower FinetuneConfig.batch_size")
    return num_examples // batch_size


def batch_at(examples: Examples, step: int, batch_size: int, seed: int) -> Dict[str, np.ndarray]:
    """The global batch of 0-based step `step`: epoch `step // steps_per_epoch`'s own seeded
    permutation, so a resumed run continues exactly where it stopped."""
    per_epoch = steps_per_epoch(len(examples), batch_size)
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    return examples.take(order[index * batch_size:(index + 1) * batch_size]).as_dict()


def eval_batches(examples: Examples, batch_size: int) -> Iterator[Dict[str, np.ndarray]]:
    """Fixed-size batches covering every example once; the last is filled up with copies of
    the final example, whose predictions the caller drops by count."""
    for start in range(0, len(examples), batch_size):
        index = np.minimum(np.arange(start, start + batch_size), len(examples) - 1)
        yield examples.take(index).as_dict()
