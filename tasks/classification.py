"""Classification tasks for fine-tuning, one seqio task per dataset and language.

  `ernie_m.cls.<dataset>.<lang>`   {"text": ids, ["text_pair": ids,] "label": int32}

Three datasets, each in the two settings of the paper: cross-lingual transfer (train on
English only, test on every language) and translate-train-all (train on every language):
  - `packages`: which package (Django, Sphinx or Wagtail) a UI message of the embedded demo
    corpus comes from; runs on one CPU, no download.
  - `xnli`: TFDS `xnli` (validation/test in 15 languages), English training from `multi_nli`,
    translate-train from `xtreme_xnli` (MNLI machine-translated by XTREME).
  - `paws_x`: TFDS `paws_x_wiki/<lang>` (train machine-translated, validation/test human).
Each `register_*` function takes the pretrained run's vocabulary and special tokens (the
fine-tuning run passes them) and returns the `ClassificationData` that fine-tuning reads.
TFDS sources are read-only: nothing is downloaded here (tests use `tfds.testing.mock_data`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.data import corpus, seqio_vocab, sources
from ernie_m_jax.finetune.config import ClassificationData
from tasks import registry
from tasks.demo import default_data_dir

COLLECTION = "ernie_m.cls"
XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur",
                  "vi", "zh")
XNLI_LABELS = ("entailment", "neutral", "contradiction")  # the TFDS ClassLabel order
PAWS_X_LANGUAGES = ("de", "en", "es", "fr", "ja", "ko", "zh")
PAWS_X_LABELS = ("different", "paraphrase")  # TFDS: 0 = not a paraphrase, 1 = paraphrase
XNLI, MNLI, XTREME_XNLI = "xnli:1.1.0", "multi_nli:1.1.0", "xtreme_xnli:1.1.0"
PAWS_X = "paws_x_wiki/{lang}:1.0.0"


def task_name(dataset: str, language: str) -> str:
    return f"{COLLECTION}.{dataset}.{sources.check_language_code(language)}"


def features(vocabulary: seqio.Vocabulary, pair: bool) -> Dict[str, seqio.Feature]:
    text = seqio.Feature(vocabulary, add_eos=False)
    label = seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, rank=0, dtype=tf.int32)
    return {"text": text, **({"text_pair": text} if pair else {}), "label": label}


def _int_labels(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Labels as int32 (fine-tuning checks that each has an output in the head)."""
    return ds.map(lambda ex: {**ex, "label": tf.cast(ex["label"], tf.int32)})


def _clean(ds: tf.data.Dataset, keys: Sequence[str]) -> tf.data.Dataset:
    ds = ds.map(lambda ex: {**ex, **{k: sources.tf_clean_text(ex[k]) for k in keys}})
    return ds.filter(lambda ex: sources.tf_keep_nonempty(*(ex[k] for k in keys)))


def add_task(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
             pair: bool, select=None) -> seqio.Task:
    """Register `name` over `source`. A TFDS source's rows are mapped by `select` to
    {"text", ["text_pair",] "label"} strings and tokenized here; an in-memory source
    (`registry.tensor_source`) is already tokenized."""
    keys = ("text", "text_pair") if pair else ("text",)
    first = [] if select is None else [select, functools.partial(_clean, keys=keys),
                                       seqio.preprocessors.tokenize]
    registry.replace_registered(name, seqio.TaskRegistry)
    return seqio.TaskRegistry.add(
        name, source=source, output_features=features(vocabulary, pair),
        shuffle_buffer_size=registry.TASK_SHUFFLE_BUFFER,
        preprocessors=[*first, _int_labels])


def add_texts(dataset: str, language: str, splits, labels: Sequence[str],
              vocabulary: seqio.Vocabulary) -> seqio.Task:
    """Register `ernie_m.cls.<dataset>.<language>` from in-memory rows: {split: [(text,
    label), ...]} or, for pairs, [(text, text_pair, label), ...], labels named as in
    `labels`. An unknown label or an empty split is refused, naming it."""
    name = task_name(dataset, language)
    arity = {len(row) for rows in splits.values() for row in rows}
    if len(arity) > 1 or not arity <= {2, 3}:
        raise ValueError(f"{name}: rows must all be (text, label) or (text, text_pair, label)")
    columns = {}
    for split, rows in splits.items():
        if not rows:
            raise ValueError(f"{name}: split {split!r} has no examples")
        unknown = sorted({row[-1] for row in rows} - set(labels))
        if unknown:
            raise ValueError(f"{name} [{split}]: unknown labels {unknown}; the task's labels "
                             f"are {list(labels)}")
        columns[split] = {"text": [row[0] for row in rows],
                          **({"text_pair": [row[1] for row in rows]} if arity == {3} else {}),
                          "label": [labels.index(row[-1]) for row in rows]}
    return add_task(name, registry.tensor_source(columns, vocabulary), vocabulary,
                    pair=arity == {3})


def _setting(dataset: str, labels, pair: bool, languages: Sequence[str],
             translate_train_all: bool, validation_languages: Sequence[str],
             train_name=None) -> ClassificationData:
    train_name = train_name or functools.partial(task_name, dataset)
    train = {lang: train_name(lang) for lang in (languages if translate_train_all else ("en",))}
    return ClassificationData(dataset, tuple(labels), pair, train,
                              {lang: task_name(dataset, lang) for lang in languages},
                              tuple(validation_languages))


# --- the demo corpus: which package a message comes from ------------------------------------

def package_examples(corpus_dir: Path, split: str, language: str) -> list:
    """(message, package) for the messages of exactly one package; a translation shares its
    message's key and so its label, and the corpus splits by message, so no test message is
    trained on in any language."""
    packages = {k: p[0] for k, p in corpus.read_packages(corpus_dir).items() if len(p) == 1}
    rows = corpus.read_split(corpus_dir, split, language)
    return [(rows[k], packages[k]) for k in sorted(rows) if k in packages]


@gin.configurable
def register_packages(vocabulary_path: str, tokens: Optional[SpecialTokens] = None,
                      data_dir: Optional[str] = None, languages: Sequence[str] = (),
                      translate_train_all: bool = False,
                      validation_languages: Sequence[str] = ("en",)) -> ClassificationData:
    """`ernie_m.cls.packages.<lang>` for every demo-corpus language (or `languages`).

    The corpus is built (or reused) where the demo keeps it, `data_dir` or
    $ERNIE_M_JAX_DATA_DIR."""
    corpus_dir = Path(data_dir or default_data_dir()) / "demo_corpus"
    manifest = corpus.load_or_build(corpus_dir)
    unknown = sorted(set(languages) - set(manifest["languages"]))
    if unknown:
        raise ValueError(f"unknown demo languages {unknown}; the demo corpus has "
                         f"{manifest['languages']}")
    chosen = tuple(sorted(set(languages) | {"en"})) if languages else tuple(
        manifest["languages"])
    classes = tuple(sorted({p[0] for p in corpus.read_packages(corpus_dir).values()
                            if len(p) == 1}))
    vocabulary = seqio_vocab.load_vocabulary(vocabulary_path, tokens)
    for lang in chosen:
        splits = {split: package_examples(corpus_dir, split, lang) for split in corpus.SPLITS}
        add_texts("packages", lang, {s: rows for s, rows in splits.items() if rows}, classes,
                  vocabulary)
    return _setting("packages", classes, False, chosen, translate_train_all,
                    validation_languages)


# --- XNLI ---------------------------------------------------------------------------------

def _xnli_select(ds: tf.data.Dataset, language: str) -> tf.data.Dataset:
    """XNLI rows hold every language: premise[lang], and the hypothesis whose language is
    `language` (a TranslationVariableLanguages feature)."""
    def has(ex):
        return tf.reduce_any(tf.equal(ex["hypothesis"]["language"], language))

    def pick(ex):
        match = tf.equal(ex["hypothesis"]["language"], language)
        return {"text": ex["premise"][language],
                "text_pair": tf.boolean_mask(ex["hypothesis"]["translation"], match)[0],
                "label": ex["label"]}
    return ds.filter(has).map(pick)


def _pair_select(ds: tf.data.Dataset, first: str, second: str) -> tf.data.Dataset:
    """Rows with the pair under `first` and `second` (MultiNLI, PAWS-X)."""
    return ds.map(lambda ex: {"text": ex[first], "text_pair": ex[second], "label": ex["label"]})


def _check_languages(languages: Sequence[str], known: Sequence[str], dataset: str) -> None:
    unknown = sorted(set(languages) - set(known))
    if unknown:
        raise ValueError(f"{dataset} has no languages {unknown}; it has {tuple(known)}")


@gin.configurable
def register_xnli(vocabulary_path: str, tokens: Optional[SpecialTokens] = None,
                  data_dir: Optional[str] = None, languages: Sequence[str] = XNLI_LANGUAGES,
                  translate_train_all: bool = False,
                  validation_languages: Sequence[str] = ("en",)) -> ClassificationData:
    """XNLI in `languages`: validation and test from `xnli`; English training from
    `multi_nli`, other languages' (translate-train-all) from `xtreme_xnli`."""
    _check_languages(languages, XNLI_LANGUAGES, "XNLI")
    vocabulary = seqio_vocab.load_vocabulary(vocabulary_path, tokens)
    tfds = functools.partial(seqio.TfdsDataSource, tfds_data_dir=data_dir, read_only=True)
    for lang in languages:
        add_task(task_name("xnli", lang),
                 tfds(XNLI, splits={"validation": "validation", "test": "test"}),
                 vocabulary, True,
                 functools.partial(_xnli_select, language=lang))
    add_task(task_name("mnli", "en"), tfds(MNLI, splits={"train": "train"}), vocabulary,
             True, functools.partial(_pair_select, first="premise", second="hypothesis"))
    if translate_train_all:
        for lang in languages:
            if lang != "en":
                add_task(task_name("xnli_translate_train", lang),
                         tfds(XTREME_XNLI, splits={"train": "train"}), vocabulary, True,
                         functools.partial(_xnli_select, language=lang))
    train_name = lambda lang: task_name("mnli" if lang == "en" else "xnli_translate_train", lang)
    return _setting("xnli", XNLI_LABELS, True, tuple(languages), translate_train_all,
                    validation_languages, train_name)


# --- PAWS-X -------------------------------------------------------------------------------

@gin.configurable
def register_paws_x(vocabulary_path: str, tokens: Optional[SpecialTokens] = None,
                    data_dir: Optional[str] = None, languages: Sequence[str] = PAWS_X_LANGUAGES,
                    translate_train_all: bool = False,
                    validation_languages: Sequence[str] = ("en",)) -> ClassificationData:
    """PAWS-X from `paws_x_wiki/<lang>`: each language's train (machine-translated except
    English), validation and test."""
    _check_languages(languages, PAWS_X_LANGUAGES, "PAWS-X")
    vocabulary = seqio_vocab.load_vocabulary(vocabulary_path, tokens)
    for lang in languages:
        source = seqio.TfdsDataSource(
            PAWS_X.format(lang=lang), tfds_data_dir=data_dir, read_only=True,
            splits={"train": "train", "validation": "validation", "test": "test"})
        add_task(task_name("paws_x", lang), source, vocabulary, True,
                 functools.partial(_pair_select, first="sentence1", second="sentence2"))
    return _setting("paws_x", PAWS_X_LABELS, True, tuple(languages), translate_train_all,
                    validation_languages)

