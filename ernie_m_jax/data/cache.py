"""seqio's offline cache of a run's tasks, built with Apache Beam (T5X's `cache_tasks_main`):
every task of the run's two mixtures tokenized and cleaned once, written as TFRecords that
training reads with `DataConfig.use_cached` (`USE_CACHED_TASKS = True` in the run files)
instead of preprocessing on every host at every start. The DirectRunner builds it on one
machine; Dataflow or Flink build corpus-scale caches (`--pipeline_options`)."""

from __future__ import annotations

import re
from typing import List, Sequence

import seqio
import tensorflow as tf

from ernie_m_jax.data import pipeline


def run_tasks(data: pipeline.DataConfig) -> List[str]:
    """The names of every task the run's mixtures draw from."""
    return sorted({task.name for mixture in (data.mono_mixture, data.pair_mixture)
                   for task in pipeline.tasks_of(mixture)})


def cache_tasks(data: pipeline.DataConfig, output_dir: str,
                pipeline_options: Sequence[str] = ("--runner=DirectRunner",),
                overwrite: bool = False) -> List[str]:
    """Cache the run's tasks under `output_dir` (one folder per task, seqio's layout);
    returns their names. Tasks already cached there are kept unless `overwrite`."""
    try:
        import apache_beam as beam
        from seqio.scripts import cache_tasks_main
    except ImportError as err:
        raise ImportError(f"caching tasks needs Apache Beam ({err}): pip install -e "
                          "'.[cache]'") from None
    names = run_tasks(data)
    if not cache_tasks_main.FLAGS.is_parsed():  # its pipeline reads its flags' defaults
        cache_tasks_main.FLAGS.mark_as_parsed()
    seqio.add_global_cache_dirs([output_dir])
    tf.io.gfile.makedirs(output_dir)
    options = beam.options.pipeline_options.PipelineOptions(list(pipeline_options))
    with beam.Pipeline(options=options) as beam_pipeline:
        cache_tasks_main.run_pipeline(beam_pipeline, [re.escape(n) for n in names], output_dir,
                                      overwrite=overwrite)
    return names
