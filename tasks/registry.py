"""Registering monolingual and parallel text as seqio Tasks, and mixtures over them.

Every task emits the same features, so any set of them can be mixed:
  monolingual  {"text": int32 ids, "language": int32 scalar}
  parallel     {"source": ids, "target": ids, "source_language": id, "target_language": id}
Ids carry no special tokens; `ernie_m_jax.data.features` lays them out per objective.
Names are `<collection>.mono.<lang>` and `<collection>.para.<src>_<tgt>` (collection
`ernie_m` for the demo corpus), so a mixture can gather every task of a collection at the
moment it is registered: register languages first, then the mixtures.
Tokenized, cleaned examples are what seqio's offline cache stores (`ernie-m-jax cache-tasks`,
Apache Beam); the language ids are added after it, so a cache outlives a renumbering.
"""

from __future__ import annotations

import functools
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import seqio
import tensorflow as tf

from ernie_m_jax.data import seqio_vocab, sources
from ernie_m_jax.data.languages import register_language

DEFAULT_COLLECTION = "ernie_m"
DEFAULT_ALPHA = 0.3  # XLM-R's exponential smoothing of language sampling rates
MONO, PARA = "mono", "para"
PairTexts = Mapping[str, Union[Sequence[Tuple[str, str]], Tuple[str, str]]]


def mono_task_name(language: str, collection: str = DEFAULT_COLLECTION) -> str:
    return f"{collection}.{MONO}.{sources.check_language_code(language)}"


def para_task_name(source_language: str, target_language: str,
                   collection: str = DEFAULT_COLLECTION) -> str:
    sources.check_language_code(source_language)
    sources.check_language_code(target_language)
    return f"{collection}.{PARA}.{source_language}_{target_language}"


def _language_feature() -> seqio.Feature:
    return seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, rank=0, dtype=tf.int32)


def mono_features(vocabulary: seqio.Vocabulary) -> Dict[str, seqio.Feature]:
    return {"text": seqio.Feature(vocabulary, add_eos=False), "language": _language_feature()}


def para_features(vocabulary: seqio.Vocabulary) -> Dict[str, seqio.Feature]:
    text = seqio.Feature(vocabulary, add_eos=False)
    return {"source": text, "target": text, "source_language": _language_feature(),
            "target_language": _language_feature()}


def _add_constants(ds: tf.data.Dataset, **constants: int) -> tf.data.Dataset:
    return ds.map(lambda ex: {**ex, **{k: tf.constant(v, tf.int32) for k, v in constants.items()}},
                  num_parallel_calls=tf.data.AUTOTUNE)


def _select_and_clean(ds: tf.data.Dataset, keys: Mapping[str, str]) -> tf.data.Dataset:
    """TFDS rows -> {our name: cleaned text}, dropping rows where any text is empty."""
    ds = ds.map(lambda ex: {ours: sources.tf_clean_text(ex[theirs])
                            for ours, theirs in keys.items()},
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.filter(lambda ex: sources.tf_keep_nonempty(*ex.values()))


def _drop_empty_ids(ds: tf.data.Dataset, keys: Sequence[str]) -> tf.data.Dataset:
    return ds.filter(lambda ex: tf.reduce_all([tf.size(ex[k]) > 0 for k in keys]))


def _encode_all(vocabulary: seqio.Vocabulary, lines: Sequence[str]) -> tf.RaggedTensor:
    ids = seqio_vocab.encode_batch(vocabulary, lines)
    lengths = [len(row) for row in ids]
    flat = np.fromiter((i for row in ids for i in row), np.int32, sum(lengths))
    return tf.RaggedTensor.from_row_lengths(flat, np.asarray(lengths, np.int64))


# Examples each task shuffles at a time when it is read in a mixture. Every checkpoint saves
# every task's buffer with the input position (on every host): with seqio's default of 1,000
# the demo's 203 tasks made that 76 MB a host; at 256 it is about a quarter. Sources that
# shuffle their files (TFDS) need less; one big task alone uses DataConfig.shuffle_buffer_size.
TASK_SHUFFLE_BUFFER = 256


def _column(vocabulary: seqio.Vocabulary, values: list):
    """Text is tokenized; integers (labels) are kept as they are."""
    if values and isinstance(values[0], (int, np.integer)):
        return np.asarray(values, np.int32)
    return _encode_all(vocabulary, values)


def tensor_source(columns: Mapping[str, Dict[str, list]], vocabulary: seqio.Vocabulary
                  ) -> seqio.FunctionDataSource:
    """A source over in-memory, already checked text (and integer columns such as labels):
    {split: {feature: [str or int, ...]}}.

    The text is tokenized once here, so a mixture of many small tasks does not re-tokenize
    every example into every task's shuffle buffer.
    """
    encoded = {split: {k: _column(vocabulary, v) for k, v in cols.items()}
               for split, cols in columns.items()}

    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
        del shuffle_files, seed  # seqio shuffles examples after preprocessing
        return tf.data.Dataset.from_tensor_slices(encoded[split])

    counts = {split: len(next(iter(cols.values()))) for split, cols in columns.items()}
    return seqio.FunctionDataSource(dataset_fn, splits=list(columns), num_input_examples=counts)


def replace_registered(name: str, registry) -> None:
    """Drop `name` from a seqio registry if it is there, so that it can be added again."""
    if name in registry.names():
        registry.remove(name)


def add_monolingual(language: str, texts: Union[sources.SplitTexts, seqio.DataSource],
                    vocabulary: seqio.Vocabulary, *, collection: str = DEFAULT_COLLECTION,
                    text_key: str = "text", max_chars: int = sources.DEFAULT_MAX_CHARS,
                    language_id: Optional[int] = None,
                    shuffle_buffer_size: int = TASK_SHUFFLE_BUFFER) -> seqio.Task:
    """Register `<collection>.mono.<language>`.

    `texts` is {split: list of lines or a one-sentence-per-line file}, checked here (bad
    lines skipped and counted), or any seqio DataSource whose `text_key` holds the text.
    `shuffle_buffer_size` examples of it are shuffled at a time (see `TASK_SHUFFLE_BUFFER`).
    """
    name = mono_task_name(language, collection)
    lang_id = register_language(language, language_id)
    if isinstance(texts, seqio.DataSource):
        source = texts
        first = [functools.partial(_select_and_clean, keys={"text": text_key}),
                 seqio.preprocessors.tokenize]
    else:
        checked = sources.load_split_texts(texts, max_chars, name)
        source = tensor_source({split: {"text": lines} for split, lines in checked.items()},
                                vocabulary)
        first = []  # tokenized by the source
    replace_registered(name, seqio.TaskRegistry)
    return seqio.TaskRegistry.add(
        name, source=source, output_features=mono_features(vocabulary),
        shuffle_buffer_size=shuffle_buffer_size,
        preprocessors=[*first, functools.partial(_drop_empty_ids, keys=("text",)),
                       seqio.CacheDatasetPlaceholder(),
                       functools.partial(_add_constants, language=lang_id)])


def _checked_pairs(texts: PairTexts, max_chars: int, name: str) -> Dict[str, Dict[str, list]]:
    columns = {}
    for split, value in texts.items():
        if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], tuple):
            # (source file, target file): line i of one translates line i of the other.
            src, tgt = (sources.read_lines(p) for p in value)
            if len(src) != len(tgt):
                raise ValueError(f"{name} [{split}]: {value[0]} has {len(src)} lines but "
                                 f"{value[1]} has {len(tgt)}; parallel files must align")
            value = list(zip(src, tgt))
        kept, skips = sources.clean_pairs(value, max_chars)
        skips.report(f"{name} [{split}]")
        if not kept:
            raise ValueError(f"{name} [{split}]: no usable pairs (skipped {dict(skips)})")
        columns[split] = {"source": [a for a, _ in kept], "target": [b for _, b in kept]}
    return columns


def add_parallel(source_language: str, target_language: str,
                 texts: Union[PairTexts, seqio.DataSource], vocabulary: seqio.Vocabulary, *,
                 collection: str = DEFAULT_COLLECTION, source_key: Optional[str] = None,
                 target_key: Optional[str] = None,
                 max_chars: int = sources.DEFAULT_MAX_CHARS,
                 shuffle_buffer_size: int = TASK_SHUFFLE_BUFFER) -> seqio.Task:
    """Register `<collection>.para.<src>_<tgt>`.

    `texts` is {split: [(source, target), ...] or (source file, target file)}, or a seqio
    DataSource whose `source_key`/`target_key` (default: the language codes, as in the TFDS
    translation sets) hold the two sides. `shuffle_buffer_size`: see `TASK_SHUFFLE_BUFFER`.
    """
    name = para_task_name(source_language, target_language, collection)
    ids = {"source_language": register_language(source_language),
           "target_language": register_language(target_language)}
    if isinstance(texts, seqio.DataSource):
        source = texts
        keys = {"source": source_key or source_language, "target": target_key or target_language}
        first = [functools.partial(_select_and_clean, keys=keys), seqio.preprocessors.tokenize]
    else:
        source = tensor_source(_checked_pairs(texts, max_chars, name), vocabulary)
        first = []  # tokenized by the source
    replace_registered(name, seqio.TaskRegistry)
    return seqio.TaskRegistry.add(
        name, source=source, output_features=para_features(vocabulary),
        shuffle_buffer_size=shuffle_buffer_size,
        preprocessors=[*first, functools.partial(_drop_empty_ids, keys=("source", "target")),
                       seqio.CacheDatasetPlaceholder(),
                       functools.partial(_add_constants, **ids)])


def task_names(collection: str = DEFAULT_COLLECTION, kind: str = MONO) -> Tuple[str, ...]:
    """Every registered `<collection>.<kind>.<languages>` task, sorted."""
    prefix = f"{collection}.{kind}."
    return tuple(sorted(n for n in seqio.TaskRegistry.names()
                        if n.startswith(prefix) and "." not in n[len(prefix):]))


def smoothed_rates(counts: Mapping[str, float], alpha: float = DEFAULT_ALPHA
                   ) -> Dict[str, float]:
    """Sampling rates q_i = n_i^alpha / sum_j n_j^alpha (alpha=1: proportional, 0: uniform)."""
    if not counts:
        raise ValueError("no tasks to mix")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    bad = {k: n for k, n in counts.items() if not n or n <= 0}
    if bad:
        raise ValueError(f"tasks without examples cannot be mixed: {bad}")
    weights = {k: float(n) ** alpha for k, n in counts.items()}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def example_counts(names: Sequence[str], split: str = "train") -> Dict[str, int]:
    counts = {}
    for name in names:
        n = seqio.get_mixture_or_task(name).num_input_examples(split)
        if n is None:
            raise ValueError(f"task {name} does not know its {split} size; pass counts= to "
                             f"add_mixture (e.g. from the TFDS dataset info)")
        counts[name] = int(n)
    return counts


def add_mixture(name: str, tasks: Sequence[str], alpha: float = DEFAULT_ALPHA,
                counts: Optional[Mapping[str, int]] = None) -> seqio.Mixture:
    """Register a mixture of `tasks` sampled at the smoothed rates of their train sizes."""
    unknown = [t for t in tasks if t not in seqio.TaskRegistry.names()]
    if unknown:
        raise ValueError(f"mixture {name}: unknown tasks {unknown}")
    rates = smoothed_rates(dict(counts) if counts else example_counts(tasks), alpha)
    replace_registered(name, seqio.MixtureRegistry)
    return seqio.MixtureRegistry.add(name, [(t, rates[t]) for t in tasks])


def mixture_rates(name: str) -> Dict[str, float]:
    """{task: normalised rate} of a registered mixture."""
    mixture = seqio.get_mixture_or_task(name)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    total = float(np.sum(list(rates.values())))
    return {k: v / total for k, v in rates.items()}
