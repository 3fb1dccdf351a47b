"""Scoring one trained (or untrained) encoder on held-out text: en<->X retrieval at every
layer, raw and centred, and zero-shot package classification fitted on English, each beside
bag of subwords on the same messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np

from ernie_m_jax.data import corpus, pipeline
from ernie_m_jax.evaluation import transfer
from ernie_m_jax.evaluation.embedding import SentenceEncoder
from ernie_m_jax.evaluation.retrieval import PairSet, bag_of_subwords, retrieval_accuracy
from ernie_m_jax.saved_run import SavedRun
from experiments.paper_in_miniature.setting import MONO_MIXTURE, PARA_MIXTURE, SOURCE
from tasks import registry


def experiment_languages() -> Dict[str, Tuple[str, ...]]:
    """Languages with and without parallel training data, read from the registered mixtures."""
    para_prefix = f"{registry.DEFAULT_COLLECTION}.{registry.PARA}.{SOURCE}_"
    parallel = tuple(t.name[len(para_prefix):] for t in pipeline.tasks_of(PARA_MIXTURE))
    mono_prefix = f"{registry.DEFAULT_COLLECTION}.{registry.MONO}."
    mono = [t.name[len(mono_prefix):] for t in pipeline.tasks_of(MONO_MIXTURE)]
    return {"parallel": parallel,
            "monolingual_only": tuple(lang for lang in mono
                                   if lang != SOURCE and lang not in parallel)}


def pair_sets(run: SavedRun, corpus_dir: Path, languages: Sequence[str], encoder,
              split: str = "test") -> List:
    """en<->X pairs of one split as token ids. The demo corpus drops format placeholders and
    markup when it is built (`CorpusConfig.strip_placeholders`), so shared `%(name)s`, tags
    and the like cannot make retrieval easy here."""
    english = corpus.read_split(corpus_dir, split, SOURCE)
    sets = []
    for lang in languages:
        other = corpus.read_split(corpus_dir, split, lang)
        pairs = [(english[k], other[k]) for k in sorted(other) if k in english]
        src, tgt = zip(*pairs)
        sets.append(PairSet(f"{SOURCE}-{lang}", encoder.tokenize(src), encoder.tokenize(tgt),
                            run.language_id(SOURCE), run.language_id(lang)))
    return sets


def _layer_results(encoder, sets, num_layers: int) -> Dict[str, Dict[str, Dict[str, dict]]]:
    """{"raw"/"centered": {layer: {pair: accuracies}}}, every layer from one pass per side."""
    out: Dict[str, Dict[str, Dict[str, dict]]] = {"raw": {}, "centered": {}}
    for pairs in sets:
        src = encoder.embed_ids(pairs.source, pairs.source_language)
        tgt = encoder.embed_ids(pairs.target, pairs.target_language)
        for layer in range(num_layers + 1):
            for variant in out:
                out[variant].setdefault(str(layer), {})[pairs.name] = retrieval_accuracy(
                    src[:, layer], tgt[:, layer], pairs, center=variant == "centered")
    return out


def _bag_results(sets, vocab_size: int) -> Dict[str, dict]:
    return {p.name: retrieval_accuracy(bag_of_subwords(p.source, vocab_size),
                                       bag_of_subwords(p.target, vocab_size), p)
            for p in sets}


@dataclasses.dataclass(frozen=True)
class TransferSets:
    """Which package a message comes from: English training messages to fit on, held-out
    messages per language (English included) to test on."""
    classes: Tuple[str, ...]
    train_ids: List[List[int]]
    train_labels: np.ndarray
    tests: Dict[str, Tuple[List[List[int]], np.ndarray]]


def transfer_sets(corpus_dir: Path, languages: Sequence[str], encoder,
                  split: str = "test") -> TransferSets:
    """Messages of exactly one package (Django, Wagtail or Sphinx), labelled with it; a
    translation shares its message's key and so its label. The probe fits on English train
    messages and is scored on `split`; no held-out message is trained on, in any language
    (the corpus splits by message)."""
    packages = {k: p[0] for k, p in corpus.read_packages(corpus_dir).items() if len(p) == 1}
    classes = tuple(sorted(set(packages.values())))

    def labelled(split: str, lang: str):
        rows = corpus.read_split(corpus_dir, split, lang)
        keys = [k for k in sorted(rows) if k in packages]
        return (encoder.tokenize([rows[k] for k in keys]),
                np.array([classes.index(packages[k]) for k in keys], np.int32))

    train_ids, train_labels = labelled("train", SOURCE)
    return TransferSets(classes, train_ids, train_labels,
                        {lang: labelled(split, lang) for lang in (SOURCE, *languages)})


def _transfer_results(encoder, sets: TransferSets, num_layers: int, run) -> Dict[str, dict]:
    """{"raw"/"centered": {layer: {language: scores}}}: a linear probe fitted on English at
    each layer, scored on every language's held-out messages."""
    train = encoder.embed_ids(sets.train_ids, run.language_id(SOURCE))
    tests = {lang: (encoder.embed_ids(ids, run.language_id(lang)), labels)
             for lang, (ids, labels) in sets.tests.items()}
    out: Dict[str, dict] = {"raw": {}, "centered": {}}
    for layer in range(num_layers + 1):
        layer_tests = {lang: (f[:, layer], labels) for lang, (f, labels) in tests.items()}
        for variant in out:
            out[variant][str(layer)] = transfer.zero_shot(
                train[:, layer], sets.train_labels, layer_tests, len(sets.classes),
                centered=variant == "centered")
    return out


def _bag_transfer(sets: TransferSets, vocab_size: int) -> Dict[str, dict]:
    tests = {lang: (bag_of_subwords(ids, vocab_size), labels)
             for lang, (ids, labels) in sets.tests.items()}
    return transfer.zero_shot(bag_of_subwords(sets.train_ids, vocab_size), sets.train_labels,
                              tests, len(sets.classes))


def evaluate_run(run: SavedRun, corpus_dir: Path, split: str = "test") -> dict:
    """Retrieval at every layer, raw and centred, with bag-of-subwords on the same pairs, and
    zero-shot package classification from English, on the held-out messages (`split`:
    "test", or "validation" to choose settings by) of the demo corpus in `corpus_dir`; the
    run's tasks must be registered."""
    languages = experiment_languages()
    encoder = SentenceEncoder(run, pooling="mean", layer=None, batch_size=64)
    every = [*languages["parallel"], *languages["monolingual_only"]]
    result = {"languages": languages, "split": split, "retrieval": {}, "bag_of_subwords": {},
              "pairs": {}}
    sets = pair_sets(run, corpus_dir, every, encoder, split)
    result["retrieval"]["messages"] = _layer_results(encoder, sets, run.model.num_layers)
    result["bag_of_subwords"]["messages"] = _bag_results(sets, run.model.vocab_size)
    result["pairs"]["messages"] = {p.name: len(p.source) for p in sets}
    labelled = transfer_sets(corpus_dir, every, encoder, split)
    result["transfer"] = {
        "classes": list(labelled.classes),
        "train_examples": len(labelled.train_ids),
        "model": _transfer_results(encoder, labelled, run.model.num_layers, run),
        "bag_of_subwords": _bag_transfer(labelled, run.model.vocab_size)}
    return result


# Retrieval out of domain is scored within pools of this many pairs, averaged over a language's
# disjoint pools, so that a language with more held-out messages is not made harder by a larger
# pool (the in-domain test sets hold about 100-150 pairs per language).
POOL_SIZE = 100


def _all_splits(corpus_dir: Path, lang: str) -> Dict[str, str]:
    """{message key: text} of one language over every split (empty where it is absent)."""
    if lang not in corpus.languages(corpus_dir):
        return {}
    return {k: t for split in corpus.SPLITS
            for k, t in corpus.read_split(corpus_dir, split, lang).items()}


def _pooled(encoder, run, seen: Set[str], held_out_dir: Path, languages: Sequence[str]
            ) -> Tuple[Dict[str, Dict[str, Dict[str, dict]]], Dict[str, dict], Dict[str, int]]:
    """Retrieval at every layer and bag of subwords on the held-out packages' pairs whose
    message pretraining never saw (`seen`: its message keys), ordered by key (a hash), each
    the mean over a language's disjoint pools of `POOL_SIZE`; a language with less than one
    pool is left out. Also {pair: messages scored}."""
    english = _all_splits(held_out_dir, SOURCE)
    per_pool: List[Tuple[str, PairSet]] = []
    for lang in languages:
        other = _all_splits(held_out_dir, lang)
        pairs = [(english[k], other[k]) for k in sorted(other) if k in english and k not in seen]
        for start in range(0, len(pairs) - POOL_SIZE + 1, POOL_SIZE):
            src, tgt = zip(*pairs[start:start + POOL_SIZE])
            per_pool.append((f"{SOURCE}-{lang}", PairSet(
                f"{SOURCE}-{lang}/{start // POOL_SIZE}", encoder.tokenize(src),
                encoder.tokenize(tgt), run.language_id(SOURCE), run.language_id(lang))))
    layers = _layer_results(encoder, [p for _, p in per_pool], run.model.num_layers)
    bags = _bag_results([p for _, p in per_pool], run.model.vocab_size)

    def mean_over_pools(per_set: Dict[str, dict]) -> Dict[str, dict]:
        out: Dict[str, List[dict]] = {}
        for name, pool in per_pool:
            out.setdefault(name, []).append(per_set[pool.name])
        return {name: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
                for name, rows in out.items()}

    retrieval = {variant: {layer: mean_over_pools(per_set) for layer, per_set in by_layer.items()}
                 for variant, by_layer in layers.items()}
    counts: Dict[str, int] = {}
    for name, pool in per_pool:
        counts[name] = counts.get(name, 0) + len(pool.source)
    return retrieval, mean_over_pools(bags), counts


def out_of_domain_transfer_sets(corpus_dir: Path, held_out_dir: Path, seen: Set[str],
                                languages: Sequence[str], encoder) -> TransferSets:
    """Package classification with the held-out packages as classes too: the pretraining
    packages' messages as in `transfer_sets`, the held-out packages' unseen messages from
    their own corpus (split in halves, `HELD_OUT_CORPUS`). Fitted on English train
    messages, scored on every language's test messages; `seen`: pretraining's message keys."""
    in_domain = transfer_sets(corpus_dir, languages, encoder)
    held_out = {k: p[0] for k, p in corpus.read_packages(held_out_dir).items()
                if len(p) == 1 and k not in seen}
    classes = (*in_domain.classes, *sorted(set(held_out.values())))

    present = corpus.languages(held_out_dir)

    def labelled(split: str, lang: str):
        rows = corpus.read_split(held_out_dir, split, lang) if lang in present else {}
        keys = [k for k in sorted(rows) if k in held_out]
        return (encoder.tokenize([rows[k] for k in keys]),
                np.array([classes.index(held_out[k]) for k in keys], np.int32))

    def joined(a, b):
        return a[0] + b[0], np.concatenate([a[1], b[1]])

    train_ids, train_labels = joined((in_domain.train_ids, in_domain.train_labels),
                                     labelled("train", SOURCE))
    return TransferSets(classes, train_ids, train_labels,
                        {lang: joined(in_domain.tests[lang], labelled("test", lang))
                         for lang in in_domain.tests})


def evaluate_out_of_domain(run: SavedRun, corpus_dir: Path, held_out_dir: Path) -> dict:
    """`evaluate_run`'s scores on the messages of packages held out of pretraining entirely:
    retrieval (in pools of `POOL_SIZE`) and bag of subwords on the same pairs, and package
    classification with the held-out packages as further classes."""
    groups = experiment_languages()
    encoder = SentenceEncoder(run, pooling="mean", layer=None, batch_size=64)
    every = [*groups["parallel"], *groups["monolingual_only"]]
    seen = set(_all_splits(corpus_dir, SOURCE))  # every message has its English original
    retrieval, bags, counts = _pooled(encoder, run, seen, held_out_dir, every)
    scored = {group: tuple(lang for lang in langs if f"{SOURCE}-{lang}" in counts)
              for group, langs in groups.items()}
    labelled = out_of_domain_transfer_sets(corpus_dir, held_out_dir, seen, every, encoder)
    return {"languages": scored, "pool_size": POOL_SIZE,
            "retrieval": {"messages": retrieval}, "bag_of_subwords": {"messages": bags},
            "pairs": {"messages": counts},
            "transfer": {
                "classes": list(labelled.classes),
                "train_examples": len(labelled.train_ids),
                "model": _transfer_results(encoder, labelled, run.model.num_layers, run),
                "bag_of_subwords": _bag_transfer(labelled, run.model.vocab_size)}}
