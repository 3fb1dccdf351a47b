"""The embedded demo corpus as seqio tasks: `ernie_m.mono.<lang>`, `ernie_m.para.en_<lang>`.

`register_demo()` builds (or reuses) the corpus and its SentencePiece vocabulary under
`data_dir`, registers one monolingual task per language and one English-centred parallel task
per other language, then the mixtures `ernie_m.demo.mono` and `ernie_m.demo.para` over every
`ernie_m.mono.*` / `ernie_m.para.*` task registered at that moment (so languages added before
the call, e.g. from your own module, are mixed in too).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import gin
import seqio

from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.data import corpus, seqio_vocab, vocab
from tasks import registry

# Tasks the last register_demo() call made; a later call with other languages drops them.
_REGISTERED: set = set()
MONO_MIXTURE = "ernie_m.demo.mono"
PARA_MIXTURE = "ernie_m.demo.para"
DATA_DIR_ENV = "ERNIE_M_JAX_DATA_DIR"
DEFAULT_VOCAB_SIZE = 8000


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, Path.home() / ".cache" / "ernie_m_jax"))


@dataclasses.dataclass(frozen=True)
class DemoData:
    corpus_dir: Path
    vocabulary_path: Path
    languages: Tuple[str, ...]
    mono_mixture: str = MONO_MIXTURE
    para_mixture: str = PARA_MIXTURE


def demo_corpus(data_dir: Path, packages: Sequence[str] = (),
                config: corpus.CorpusConfig = corpus.CorpusConfig(),
                name: Optional[str] = None) -> Tuple[Path, dict]:
    """(folder, manifest) of the demo corpus built from the catalogs of `packages` only
    (`CatalogSource.package` names; default: all of `config.sources`), cached under
    `data_dir / name`. The default name is `demo_corpus`, or `demo_corpus_<packages>` for a
    subset, so that a corpus holding a package out of pretraining never overwrites the full
    one; give another `name` for another `config`."""
    known = {s.package: s for s in config.sources}
    unknown = sorted(set(packages) - set(known))
    if unknown:
        raise ValueError(f"unknown demo packages {unknown}; the demo corpus is built from "
                         f"{sorted(known)}")
    chosen = tuple(sorted(set(packages) or known))
    if len(chosen) < len(known):
        config = dataclasses.replace(config, sources=tuple(known[p] for p in chosen))
        name = name or "demo_corpus_" + "_".join(chosen)
    name = name or "demo_corpus"
    return data_dir / name, corpus.load_or_build(data_dir / name, config)


def demo_vocabulary(corpus_dir: Path, manifest: dict, vocab_size: int) -> Path:
    """The cached vocabulary for this corpus content and size, trained if missing or stale;
    one per corpus folder."""
    stem = "demo_spm" if corpus_dir.name == "demo_corpus" else f"{corpus_dir.name}_spm"
    path = corpus_dir.parent / f"{stem}_{vocab_size}.model"
    stamp = path.with_suffix(".json")
    expected = {"corpus_sha256": manifest["content_sha256"], "vocab_size": vocab_size}
    if path.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == expected:
                return path
        except ValueError:
            pass
    logging.info("training a %d-piece SentencePiece vocabulary on %s", vocab_size, corpus_dir)
    vocab.train_vocabulary(corpus_dir, path, vocab_size)
    stamp.write_text(json.dumps(expected))
    return path


def _check_same_vocabulary(names, vocabulary) -> None:
    """Added languages join the demo mixtures only if they share its vocabulary."""
    other = [n for n in names if any(
        f.vocabulary != vocabulary for k, f in seqio.get_mixture_or_task(n).output_features.items()
        if k in ("text", "source", "target"))]
    if other:
        raise ValueError(f"tasks {other} were registered with another vocabulary than the demo's "
                         f"({vocabulary}); register them with the demo vocabulary")


@gin.configurable
def register_demo(data_dir: Optional[str] = None, vocab_size: int = DEFAULT_VOCAB_SIZE,
                  languages: Sequence[str] = (), vocabulary_path: Optional[str] = None,
                  alpha: float = registry.DEFAULT_ALPHA,
                  tokens: Optional[SpecialTokens] = None,
                  packages: Sequence[str] = ()) -> DemoData:
    """Build/reuse the demo corpus and vocabulary, register its tasks and mixtures.

    `vocabulary_path` may be any SentencePiece model in either id layout (e.g. an imported
    XLM-R `sentencepiece.bpe.model`); `tokens`, when given, must be its special ids.
    `packages` builds corpus and vocabulary from those packages' catalogs alone (default:
    all), e.g. to hold one package's messages out of pretraining entirely."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    corpus_dir, manifest = demo_corpus(data_dir, packages)
    known = manifest["languages"]
    unknown = sorted(set(languages) - set(known))
    if unknown:
        raise ValueError(f"unknown demo languages {unknown}; the demo corpus has {known}")
    chosen = tuple(sorted(languages)) if languages else tuple(known)
    if corpus.SOURCE_LANGUAGE not in chosen:
        chosen = tuple(sorted((*chosen, corpus.SOURCE_LANGUAGE)))
    path = Path(vocabulary_path) if vocabulary_path else demo_vocabulary(corpus_dir, manifest,
                                                                         vocab_size)
    vocabulary = seqio_vocab.load_vocabulary(path, tokens)
    texts = {lang: {split: corpus.read_split(corpus_dir, split, lang) for split in corpus.SPLITS}
             for lang in chosen}
    for lang in chosen:
        registry.add_monolingual(
            lang, {s: list(rows.values()) for s, rows in texts[lang].items() if rows}, vocabulary)
    english = texts[corpus.SOURCE_LANGUAGE]
    for lang in chosen:
        if lang == corpus.SOURCE_LANGUAGE:
            continue
        pairs = {split: [(english[split][key], text) for key, text in rows.items()
                         if key in english[split]]
                 for split, rows in texts[lang].items()}
        registry.add_parallel(corpus.SOURCE_LANGUAGE, lang,
                              {split: rows for split, rows in pairs.items() if rows}, vocabulary)
    now = {registry.mono_task_name(lang) for lang in chosen} | {
        registry.para_task_name(corpus.SOURCE_LANGUAGE, lang)
        for lang in chosen if lang != corpus.SOURCE_LANGUAGE}
    for stale in _REGISTERED - now:
        if stale in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(stale)
    _REGISTERED.clear()
    _REGISTERED.update(now)
    for mixture, kind in ((MONO_MIXTURE, registry.MONO), (PARA_MIXTURE, registry.PARA)):
        names = registry.task_names(kind=kind)
        _check_same_vocabulary(names, vocabulary)
        registry.add_mixture(mixture, names, alpha)
    return DemoData(corpus_dir, path, chosen)
