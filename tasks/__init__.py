"""seqio Tasks and Mixtures of monolingual and parallel text (see tasks/README.md)."""

from ernie_m_jax.data.languages import language_id, register_language, registered_languages
from tasks.registry import (
                            add_mixture,
                            add_monolingual,
                            add_parallel,
                            mixture_rates,
                            mono_task_name,
                            para_task_name,
                            smoothed_rates,
                            task_names,
)

__all__ = ["add_mixture", "add_monolingual", "add_parallel", "language_id", "mixture_rates",
           "mono_task_name", "para_task_name", "register_language", "registered_languages",
           "smoothed_rates", "task_names"]
