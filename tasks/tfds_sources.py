"""Real-scale sources on TFDS, registered exactly like the demo tasks.

Monolingual text from mC4 (`c4/multilingual`, one split per language code, e.g. `de` and
`de-validation`) and parallel text from the TFDS translation sets, whose examples are
`{<lang>: text, <lang>: text}` (`wmt19_translate/de-en:1.0.0`, `para_crawl/enfr:1.2.0`, ...;
seqio wants the version in the name). On TPU VMs
set `data_dir` to the GCS bucket holding the prepared datasets; nothing is downloaded here
(`read_only` sources fail clearly if the data is not prepared). `register_tfds` does it all
from gin (`gin/data/tfds.gin`), with any vocabulary file in either id layout.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple, Union

import gin
import seqio

from ernie_m_jax.data import seqio_vocab
from tasks import registry

MC4 = "c4/multilingual:3.1.0"
MC4_COLLECTION = "ernie_m.mc4"
TRANSLATION_COLLECTION = "ernie_m.tfds"
MONO_MIXTURE = "ernie_m.tfds.mono"
PARA_MIXTURE = "ernie_m.tfds.para"


def add_mc4_language(language: str, vocabulary: seqio.Vocabulary, *,
                     data_dir: Optional[str] = None, tfds_name: str = MC4) -> seqio.Task:
    """`ernie_m.mc4.mono.<language>` from the mC4 split of that language."""
    source = seqio.TfdsDataSource(
        tfds_name, tfds_data_dir=data_dir, read_only=True,
        splits={"train": language, "validation": f"{language}-validation"})
    return registry.add_monolingual(language, source, vocabulary, collection=MC4_COLLECTION)


def add_translation_pair(source_language: str, target_language: str, tfds_name: str,
                         vocabulary: seqio.Vocabulary, *, data_dir: Optional[str] = None,
                         splits: Union[Sequence[str], Mapping[str, str]] = ("train", "validation"),
                         ) -> seqio.Task:
    """`ernie_m.tfds.para.<src>_<tgt>` from a TFDS translation set such as
    `wmt19_translate/de-en:1.0.0` (whose features are the two language codes). Splits are
    named explicitly (para_crawl has only `train`) so the task is usable before any download."""
    source = seqio.TfdsDataSource(tfds_name, tfds_data_dir=data_dir, read_only=True,
                                  splits=splits)
    return registry.add_parallel(source_language, target_language, source, vocabulary,
                                 collection=TRANSLATION_COLLECTION)



@gin.configurable
def register_tfds(vocabulary_path: str, mc4_languages: Sequence[str],
                  translation_sets: Mapping[str, str], data_dir: Optional[str] = None,
                  alpha: float = registry.DEFAULT_ALPHA,
                  counts: Optional[Mapping[str, int]] = None,
                  mc4_name: str = MC4) -> Tuple[str, str]:
    """mC4 languages and TFDS translation sets as the mixtures `ernie_m.tfds.mono` and
    `ernie_m.tfds.para`, tokenized with `vocabulary_path` (a SentencePiece model in either
    id layout, e.g. an imported XLM-R run's `%VOCABULARY`).

    `translation_sets` maps `src-tgt` (language codes joined by `-`) to a TFDS name, e.g.
    `{'de-en': 'wmt19_translate/de-en:1.0.0'}`. Mixing rates come from the datasets' split
    sizes, or from `counts` ({task name: train examples}) where the data is not prepared here.
    `mc4_name`: another TFDS set laid out as mC4 (a `text` feature, splits `<lang>` and
    `<lang>-validation`).
    """
    if not mc4_languages or not translation_sets:
        raise ValueError("register_tfds needs at least one mC4 language and one translation "
                         f"set, got mc4_languages={list(mc4_languages)} and translation_sets="
                         f"{dict(translation_sets)}")
    vocabulary = seqio_vocab.load_vocabulary(vocabulary_path)
    mono = [add_mc4_language(language, vocabulary, data_dir=data_dir, tfds_name=mc4_name).name
            for language in mc4_languages]
    para = []
    for pair, tfds_name in translation_sets.items():
        source, sep, target = pair.partition("-")
        if not sep or not source or not target:
            raise ValueError(f"translation_sets key {pair!r} is not 'source-target' (e.g. "
                             "'de-en')")
        para.append(add_translation_pair(source, target, tfds_name, vocabulary,
                                         data_dir=data_dir).name)
    for name, tasks in ((MONO_MIXTURE, mono), (PARA_MIXTURE, para)):
        registry.add_mixture(name, tasks, alpha,
                             counts={t: counts[t] for t in tasks} if counts else None)
    return MONO_MIXTURE, PARA_MIXTURE
