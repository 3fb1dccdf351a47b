"""Pretraining: configs (`config.py`), what a run takes from its mixtures (`resolve.py`), the
sharded state (`state.py`), the one jitted step and its builder (`step.py`), held-out
evaluation (`evaluate.py`) and the loop (`loop.py`).

Run it with `ernie-m-jax train --gin_file=gin/runs/demo_cpu.gin --model_dir=DIR`
(`python -m ernie_m_jax.train ...` is the same command).
"""

from ernie_m_jax.train.config import Experiment, TrainConfig
from ernie_m_jax.train.loop import train
from ernie_m_jax.train.resolve import resolve
from ernie_m_jax.train.state import COUNTERS, abstract_state, init_state
from ernie_m_jax.train.step import (
                                    GradientSum,
                                    TrainStep,
                                    build_train_step,
                                    global_batch,
                                    make_eval_step,
                                    make_train_step,
                                    stacked_global_batch,
)

__all__ = ["COUNTERS", "GradientSum", "Experiment", "TrainConfig", "TrainStep", "abstract_state",
           "build_train_step", "global_batch", "init_state", "make_eval_step", "make_train_step",
           "resolve", "stacked_global_batch", "train"]
