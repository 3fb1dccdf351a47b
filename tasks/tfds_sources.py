"""Real-scale sources on TFDS, registered exactly like the demo tasks.

Monolingual text from mC4 (`c4/multilingual`, one split per language code, e.g. `de` and
`de-validation`) and parallel text from the TFDS translation sets, whose examples are
`{<lang>: text, <lang>: text}` (`wmt19_translate/de-en:1.0.0`, `para_crawl/enfr:1.2.0`, ...;
seqio wants the version in the name). On TPU VMs
set `data_dir` to the GCS bucket holding the prepared datasets; nothing is downloaded here
(`read_only` sources fail clearly if the data is not prepared).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import seqio

from tasks import registry

MC4 = "c4/multilingual:3.1.0"
MC4_COLLECTION = "ernie_m.mc4"
TRANSLATION_COLLECTION = "ernie_m.tfds"


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

