"""The training input: one deterministic, per-host, checkpointable tf.data pipeline.

Each step needs one sub-batch per enabled objective. Monolingual objectives (MMLM, BTMLM)
draw from the monolingual mixture, pair objectives (TLM, CAMLM) from the parallel one; both
streams are zipped into a single dataset so that one `tf.train.Checkpoint` of its iterator
records the exact position of the whole input. Every host reads its own shard
(`seqio.ShardInfo(process_index, process_count)`) and its share of each global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Dict, List, Mapping, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.data import features, vocab

MONO_OBJECTIVES = ("mmlm", "btmlm")


class _QuietSeqio(logging.Filter):
    """seqio warns once per in-memory task (189 for the demo) that restarts reshuffle
    badly, and once per vocabulary that T5 used pad id 0; neither applies here: the
    iterator position is restored exactly, and our pad id is the vocabulary's own."""

    PREFIXES = ("Using an uncached FunctionDataset", "T5 library uses PAD_ID=0")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.PREFIXES)


logging.getLogger("absl").addFilter(_QuietSeqio())
PAIR_OBJECTIVES = ("tlm", "camlm")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What each objective reads. `batch_sizes` are global (all hosts) per objective."""

    mono_mixture: str = "ernie_m.demo.mono"
    pair_mixture: str = "ernie_m.demo.para"
    mono_length: int = 64
    pair_length: int = 128
    batch_sizes: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"mmlm": 8, "tlm": 8, "camlm": 8, "btmlm": 8})
    seed: int = 0
    shuffle_buffer_size: int = 4096
    # Read the tasks' training split from seqio's offline cache (`ernie-m-jax cache-tasks`)
    # in `cache_dir` instead of preprocessing it on the fly (T5X's USE_CACHED_TASKS).
    use_cached: bool = False
    cache_dir: Optional[str] = None
    # Several examples per training row (`features.pack_rows`), each masked, attended and
    # generated as if alone (`example_ids`): rows of text instead of mostly padding.
    pack: bool = False

    def __post_init__(self):
        unknown = set(self.batch_sizes) - set(MONO_OBJECTIVES + PAIR_OBJECTIVES)
        if unknown:
            raise ValueError(f"DataConfig.batch_sizes: unknown objectives {sorted(unknown)}")
        bad = {k: v for k, v in self.batch_sizes.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise ValueError(f"DataConfig.batch_sizes must be non-negative ints, got {bad}")
        if self.mono_length <= features.MONO_OVERHEAD or \
                self.pair_length <= features.PAIR_OVERHEAD + 1:
            raise ValueError(f"DataConfig lengths too short: mono_length={self.mono_length}, "
                             f"pair_length={self.pair_length}")

    def enabled(self, objectives: Sequence[str]) -> Dict[str, int]:
        """{objective: global batch size} for the objectives that will run."""
        missing = [o for o in objectives if self.batch_sizes.get(o, 0) <= 0]
        if missing:
            raise ValueError(f"objectives {missing} are enabled but DataConfig.batch_sizes "
                             f"gives them no examples ({dict(self.batch_sizes)})")
        return {o: self.batch_sizes[o] for o in objectives}


def host_batch_size(global_batch: int, process_count: int, what: str) -> int:
    if global_batch % process_count:
        raise ValueError(f"{what}: global batch {global_batch} is not divisible by "
                         f"{process_count} processes")
    return global_batch // process_count


def _options(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def _stream(mixture: str, split: str, example_fn, length: int, tokens: SpecialTokens,
            shard_info: seqio.ShardInfo, seed: int, shuffle: bool, num_epochs: Optional[int],
            shuffle_buffer_size: int, use_cached: bool = False,
            pack_offset: Optional[int] = None) -> tf.data.Dataset:
    """The mixture's examples as fixed-length rows: one example per row, or packed (with
    the model's position offset `pack_offset`)."""
    provider = seqio.get_mixture_or_task(mixture)
    if use_cached:
        _check_cached(provider)
    kwargs = dict(sequence_length=None, split=split, shuffle=shuffle, seed=seed,
                  shard_info=shard_info if shard_info.num_shards > 1 else None,
                  num_epochs=num_epochs, use_cached=use_cached)
    # No in-memory cache: a cached split is saved whole with every checkpoint's input
    # position (61 MB a host for the demo), and a single task may not know its size.
    kwargs["try_in_mem_cache"] = False
    if isinstance(provider, seqio.Task):
        kwargs["shuffle_buffer_size"] = shuffle_buffer_size
    ds = provider.get_dataset(**kwargs).map(
        functools.partial(example_fn, length=length, tokens=tokens),
        num_parallel_calls=tf.data.AUTOTUNE)
    if pack_offset is not None:
        return features.pack_rows(ds, length, tokens, pack_offset)
    return ds.map(functools.partial(features.pad_row, length=length, tokens=tokens),
                  num_parallel_calls=tf.data.AUTOTUNE)


def use_cache_dir(config: DataConfig) -> None:
    """Make `config.cache_dir` one of the folders seqio finds task caches in (its registry
    of cache folders is process-wide, like its task registry)."""
    if config.cache_dir and config.cache_dir not in seqio.utils.get_global_cache_dirs():
        seqio.add_global_cache_dirs([config.cache_dir])


def _check_cached(provider) -> None:
    """Every task is cached, or one error naming those that are not and how to cache them."""
    missing = [t.name for t in tasks_of(provider.name) if not t.cache_dir]
    if missing:
        raise FileNotFoundError(
            f"DataConfig.use_cached: no seqio cache of {missing[:5]}"
            f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''} in "
            f"{seqio.utils.get_global_cache_dirs() or 'any cache folder'}; build it with "
            "`ernie-m-jax cache-tasks` (or set USE_CACHED_TASKS = False)")


def _split_batch(batch: Dict[str, tf.Tensor], sizes: Mapping[str, int]):
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = {k: v[start:start + size] for k, v in batch.items()}
        start += size
    return out


def training_dataset(config: DataConfig, objectives: Sequence[str],
                     shard_info: seqio.ShardInfo = seqio.ShardInfo(0, 1), *,
                     tokens: SpecialTokens, position_offset: int = 2) -> tf.data.Dataset:
    """Endless {objective: {feature: int32 [host_batch, length]}} for the given objectives
    (packed rows, with `config.pack`, number positions from the model's `position_offset`)."""
    sizes = config.enabled(objectives)
    host = {o: host_batch_size(b, shard_info.num_shards, f"batch_sizes[{o!r}]")
            for o, b in sizes.items()}
    use_cache_dir(config)
    streams = {}
    for kind, names, mixture, example_fn, length in (
            ("mono", MONO_OBJECTIVES, config.mono_mixture, features.monolingual_example,
             config.mono_length),
            ("pair", PAIR_OBJECTIVES, config.pair_mixture, features.pair_example,
             config.pair_length)):
        wanted = {o: host[o] for o in names if o in host}
        if not wanted:
            continue
        ds = _stream(mixture, "train", example_fn, length, tokens, shard_info, config.seed,
                     shuffle=True, num_epochs=None,
                     shuffle_buffer_size=config.shuffle_buffer_size,
                     use_cached=config.use_cached,
                     pack_offset=position_offset if config.pack else None)
        ds = ds.batch(sum(wanted.values()), drop_remainder=True)
        streams[kind] = ds.map(functools.partial(_split_batch, sizes=wanted))
    ds = tf.data.Dataset.zip(tuple(streams.values()))
    ds = ds.map(lambda *parts: {k: v for part in parts for k, v in part.items()})
    return _options(ds.prefetch(2))


def evaluation_batches(task: str, length: int, batch_size: int, split: str = "validation",
                       max_examples: Optional[int] = None,
                       shard_info: seqio.ShardInfo = seqio.ShardInfo(0, 1), *,
                       tokens: SpecialTokens, use_cached: bool = False):
    """Fixed-shape monolingual batches of one task, in order; the last one is padded with
    empty rows (segment 0, so nothing in them is masked or scored)."""
    ds = _stream(task, split, features.monolingual_example, length, tokens, shard_info, seed=0,
                 shuffle=False, num_epochs=1, shuffle_buffer_size=1, use_cached=use_cached)
    if max_examples:
        ds = ds.take(max_examples)
    for batch in _options(ds.batch(batch_size)).as_numpy_iterator():
        n = batch["input_ids"].shape[0]
        if n < batch_size:
            batch = {k: np.concatenate(
                [v, np.full((batch_size - n, length), tokens.pad_id if k == "input_ids" else 0,
                            v.dtype)]) for k, v in batch.items()}
        yield batch


class CheckpointableIterator:
    """A tf.data iterator whose position can be saved and restored (per host)."""

    def __init__(self, dataset: tf.data.Dataset):
        self._iterator = iter(dataset)
        self._checkpoint = tf.train.Checkpoint(ds=self._iterator)

    def __iter__(self):
        return self

    def __next__(self):
        return tf.nest.map_structure(lambda t: t.numpy(), next(self._iterator))

    def save(self, prefix: str) -> str:
        return self._checkpoint.write(prefix)

    def restore(self, prefix: str) -> None:
        self._checkpoint.read(prefix).assert_consumed()


def tasks_of(name: str) -> List[seqio.Task]:
    """The tasks of a registered mixture, or the task itself."""
    provider = seqio.get_mixture_or_task(name)
    return [provider] if isinstance(provider, seqio.Task) else list(provider.tasks)


def vocabulary_of(mixture: str) -> Optional[str]:
    """The SentencePiece model file the mixture's (first) task tokenizes with, if any."""
    for feature in tasks_of(mixture)[0].output_features.values():
        path = getattr(feature.vocabulary, "sentencepiece_model_file", None)
        if path:
            return path
    return None


def check_vocabulary(config: DataConfig, objectives: Sequence[str], tokens: SpecialTokens,
                     model_vocab_size: int) -> None:
    """Every text feature the run reads must use one vocabulary whose special ids are the
    run's `SpecialTokens` and whose ids fit the model's embedding: otherwise a run would
    train on wrong ids (e.g. XLM-R's vocabulary with [MASK]=4, a real piece) without error."""
    sizes = config.enabled(objectives)
    mixtures = [m for m, names in ((config.mono_mixture, MONO_OBJECTIVES),
                                   (config.pair_mixture, PAIR_OBJECTIVES))
                if any(o in sizes for o in names)]
    seen: List[tuple] = []  # (vocabulary, [task:feature, ...]); vocabularies are unhashable
    for mixture in mixtures:
        for task in tasks_of(mixture):
            for key, feature in task.output_features.items():
                if key not in ("text", "source", "target"):
                    continue
                for vocabulary, where in seen:
                    if vocabulary == feature.vocabulary:
                        where.append(f"{task.name}:{key}")
                        break
                else:
                    seen.append((feature.vocabulary, [f"{task.name}:{key}"]))
    if len(seen) > 1:
        described = "; ".join(f"{v} in {where[0]}" + (f" (+{len(where) - 1} more)"
                                                     if len(where) > 1 else "")
                              for v, where in seen)
        raise ValueError(f"the mixtures {mixtures} tokenize with {len(seen)} different "
                         f"vocabularies: {described}")
    for vocabulary, _ in seen:
        path = getattr(vocabulary, "sentencepiece_model_file", None)
        if path:
            vocab.check_special_tokens(vocab.inspect(path), tokens)
        if vocabulary.vocab_size > model_vocab_size:
            raise ValueError(
                f"the vocabulary {vocabulary} has {vocabulary.vocab_size} ids but the model "
                f"embeds {model_vocab_size} (ModelConfig.vocab_size): bind "
                f"ModelConfig.vocab_size = {vocabulary.vocab_size}")
