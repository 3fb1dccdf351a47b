"""ERNIE-M's claim in miniature: do CAMLM and BTMLM align languages beyond MMLM + TLM, above
all for languages without parallel data?

    python -m experiments.paper_in_miniature [--config cpu|tiny] [--seeds 0,1,2]
        [--arms mmlm,mmlm_tlm,mmlm_tlm_camlm,ernie_m] [--out DIR] [--steps N] [--update_readme]

Arms share the model, the steps and the tokens per step (`gin/arms/*.gin`); `ernie_m` runs
stage 1 (MMLM+TLM+CAMLM) for `STAGE1_FRACTION` of the steps (half), then stage 2 (all four,
BTMLM included) from it for the rest. Two more arms, run only when named, test BTMLM on a
stage 1 as long as every other arm (#23): `ernie_m_full_stage1` continues the finished
`mmlm_tlm_camlm` run of the same seed with all four objectives for the stage-2 share of the
steps, `camlm_continued` continues it as long without BTMLM (both restart the optimizer). Each
finished arm x seed writes
`results/<arm>_seed<k>.json` and is skipped on a rerun, so the experiment can be completed over
several sittings (training itself resumes from its checkpoints too). `summary.json` (mean and
spread over seeds) and `plot.png` are rewritten from whatever results exist; `--update_readme`
writes the tables into README.md.

Evaluation is on the test split, for en<->X with X with and without parallel training data:
retrieval accuracy in both directions at every layer with mean pooling, raw and with each
language's mean vector subtracted (the corpus has format placeholders and markup stripped,
which UI catalogs share across languages); zero-shot cross-lingual transfer, XNLI's question
in miniature: a linear probe fitted at every layer on English messages to tell which package
(Django, Wagtail, Sphinx) a message comes from, scored on the other languages' translations
of held-out messages; MMLM accuracy per language; and two baselines in the same tables: a
randomly initialised model and bag of subwords.

The package: `setting.py` (configurations, arms, the data registration), `runner.py` (train and
score every arm x seed, resumably), `evaluation.py` (the scores of one encoder), `report.py`
(summary over seeds, plot, README tables), `__main__.py` (the command line).
"""

from experiments.paper_in_miniature.evaluation import (
                                                       evaluate_run,
                                                       experiment_languages,
                                                       pair_sets,
                                                       transfer_sets,
)
from experiments.paper_in_miniature.report import (
                                                       format_probes,
                                                       format_summary,
                                                       headline_layer,
                                                       plot,
                                                       run_metrics,
                                                       summarise,
)
from experiments.paper_in_miniature.runner import (
                                                       run_arm,
                                                       run_experiment,
                                                       run_random_init,
                                                       stage1_steps,
                                                       total_steps,
)
from experiments.paper_in_miniature.setting import (
                                                       ARMS,
                                                       BAG_OF_SUBWORDS,
                                                       CONFIGS,
                                                       CONTINUED_ARMS,
                                                       CONTINUED_FROM,
                                                       GIN_DIR,
                                                       MONO_MIXTURE,
                                                       PARA_MIXTURE,
                                                       RANDOM_INIT,
                                                       README,
                                                       SOURCE,
                                                       RunStopped,
                                                       Setting,
                                                       register_experiment_data,
                                                       result_path,
)

__all__ = ["ARMS", "BAG_OF_SUBWORDS", "CONFIGS", "CONTINUED_ARMS", "CONTINUED_FROM", "GIN_DIR",
           "MONO_MIXTURE", "PARA_MIXTURE", "RANDOM_INIT", "README", "SOURCE", "RunStopped",
           "Setting", "evaluate_run",
           "experiment_languages", "format_probes", "format_summary", "headline_layer",
           "pair_sets", "plot", "register_experiment_data", "result_path", "run_arm",
           "run_experiment", "run_metrics", "run_random_init", "stage1_steps", "summarise",
           "total_steps", "transfer_sets"]
