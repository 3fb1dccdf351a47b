"""What one paper-in-miniature sitting is: its configuration, arms, languages and where its
results go. Shared by the runner, the evaluation and the report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import gin

from ernie_m_jax.data import corpus
from tasks import registry
from tasks.demo import DemoData, default_data_dir, demo_corpus, register_demo

PACKAGE_DIR = Path(__file__).resolve().parent
GIN_DIR = PACKAGE_DIR.parent / "gin"
README = PACKAGE_DIR.parent / "README.md"  # tables between results markers
CONFIGS = {"cpu": "paper_cpu.gin", "tiny": "paper_tiny.gin"}
ARMS = ("mmlm", "mmlm_tlm", "mmlm_tlm_camlm", "ernie_m")
# Arms that continue the finished `CONTINUED_FROM` run of the same seed for ERNIE-M's stage-2
# share of the steps, the optimizer restarted (#23): ERNIE-M's stage 2 from a stage 1 trained as
# long as every other arm, its control (the same continuation without BTMLM), and variants of
# BTMLM's generation, chosen on the validation split. None runs unless asked for (`--arms`).
CONTINUED_FROM = "mmlm_tlm_camlm"


@dataclasses.dataclass(frozen=True)
class Continuation:
    """How a continued arm trains on: the arm file, and gin bindings on top of it."""

    arm_file: str
    bindings: Tuple[str, ...] = ()


CONTINUED_ARMS = {
    "ernie_m_full_stage1": Continuation("ernie_m_stage2.gin"),
    "camlm_continued": Continuation("mmlm_tlm_camlm.gin"),
    # Pseudo sentences worth more, by the generation diagnostic on validation messages
    # (`generation/knobs/`): top-10 sampling, and only into languages CAMLM taught.
    "ernie_m_full_stage1_top10_parallel": Continuation("ernie_m_stage2.gin", (
        "BTMLMConfig.top_k = 10", "BTMLMConfig.parallel_targets_only = True")),
    # BTMLM at half weight: on the short stage 1 it cost mostly what it displaced.
    "ernie_m_full_stage1_half_btmlm": Continuation("ernie_m_stage2.gin", (
        "TrainConfig.objective_weights = {'mmlm': 1.0, 'tlm': 1.0, 'camlm': 1.0, "
        "'btmlm': 0.5}",)),
}
# A continuation's seed is its arm's seed plus this, so that it does not replay the batches
# and masks its starting run saw first; both continued arms share it (a paired comparison).
CONTINUATION_SEED_OFFSET = 1000
RANDOM_INIT, BAG_OF_SUBWORDS = "random_init", "bag_of_subwords"
# Every arm the driver runs, in the order the tables and the plot show them.
KNOWN_ARMS = (RANDOM_INIT, *ARMS, *CONTINUED_ARMS)
SOURCE = "en"
MONO_MIXTURE, PARA_MIXTURE = "paper.mono", "paper.para"


# Out-of-domain scoring (#23): the held-out packages' messages, none in pretraining. Half
# of them (by message) fit the English probe of the transfer task, the other half test it;
# retrieval reads them all. A language with fewer messages than one retrieval pool is left
# out of the out-of-domain scores, not out of the corpus.
HELD_OUT_CORPUS = corpus.CorpusConfig(validation_fraction=0.0, test_fraction=0.5,
                                      min_train_messages=1)


@dataclasses.dataclass(frozen=True)
class ExperimentData(DemoData):
    """The registered demo data, and the corpus of the packages pretraining never saw."""

    held_out_corpus_dir: Optional[Path] = None


@gin.configurable
def register_experiment_data(data_dir: Optional[str] = None, vocab_size: int = 8000,
                             parallel_languages: Sequence[str] = ("de", "fr", "es", "ru",
                                                                  "zh_hans"),
                             monolingual_only_languages: Sequence[str] = (
                                 "it", "pt", "nl", "pl", "tr", "ar", "ja"),
                             held_out_packages: Sequence[str] = ()) -> ExperimentData:
    """The demo corpus's tasks for these languages, and mixtures in which only
    `parallel_languages` have parallel data. `held_out_packages` (e.g. `('Sphinx',)`) builds
    the corpus and the vocabulary without those packages' catalogs, and a corpus of theirs
    alone to score out of domain on."""
    overlap = set(parallel_languages) & set(monolingual_only_languages)
    if overlap:
        raise ValueError(f"languages {sorted(overlap)} are both parallel and monolingual-only")
    every = {s.package for s in corpus.DEFAULT_SOURCES}
    unknown = sorted(set(held_out_packages) - every)
    if unknown or set(held_out_packages) == every:
        raise ValueError(f"held_out_packages {sorted(held_out_packages)} must be some, not all, "
                         f"of the demo packages {sorted(every)}")
    root = Path(data_dir) if data_dir else default_data_dir()
    kept = tuple(sorted(every - set(held_out_packages))) if held_out_packages else ()
    demo = register_demo(str(root), vocab_size,
                         languages=(SOURCE, *parallel_languages, *monolingual_only_languages),
                         packages=kept)
    held_out_dir = None
    if held_out_packages:
        held_out_dir, _ = demo_corpus(root, held_out_packages, HELD_OUT_CORPUS,
                                      name="held_out_" + "_".join(sorted(held_out_packages)))
    mono = [registry.mono_task_name(lang)
            for lang in (SOURCE, *parallel_languages, *monolingual_only_languages)]
    registry.add_mixture(MONO_MIXTURE, mono)
    registry.add_mixture(PARA_MIXTURE, [registry.para_task_name(SOURCE, lang)
                                        for lang in parallel_languages])
    return ExperimentData(**{f.name: getattr(demo, f.name) for f in dataclasses.fields(demo)},
                          held_out_corpus_dir=held_out_dir)


class RunStopped(RuntimeError):
    """A run ended early (SIGTERM/SIGINT): its result must not be written as finished."""


@dataclasses.dataclass(frozen=True)
class Setting:
    config: str
    out: Path
    steps: Optional[int] = None  # overrides NUM_STEPS
    bindings: Tuple[str, ...] = ()  # extra gin bindings for every run, e.g. a data_dir
    # ernie_m only: start stage 2 from this finished stage-1 run ("{seed}" is filled in)
    # instead of training stage 1, so probes of stage-2 knobs share the arm's stage 1.
    stage1_from: Optional[str] = None

    def files(self, *arm_files: str) -> List[str]:
        return [str(GIN_DIR / CONFIGS[self.config]),
                *[str(GIN_DIR / "arms" / f) for f in arm_files]]


def result_path(setting: Setting, arm: str, seed: int) -> Path:
    return setting.out / "results" / f"{arm}_seed{seed}.json"
