"""The pod plan's recommended configuration per (model, stage, slice), as data.

`recommended.json` beside this file is written by `python -m benchmarks.pod_recommend`
from compiles of the real step (`ernie-m-jax compile`), one entry per model size, stage and
slice: the mesh preset, global rows per objective, remat policy and accumulation steps
that keep the estimated collective time within 25% of the compute at the smallest batch
that does, or, where no batch within reason does, the batch it would need. `ernie-m-jax
compile` reads it to name the change for a configuration that misses.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Dict, List, Optional

from ernie_m_jax.configs import MODEL_PRESETS, ModelConfig

PATH = Path(__file__).with_name("recommended.json")


@functools.lru_cache(maxsize=None)
def load() -> tuple:
    """Every recommendation (an empty tuple where none was written yet)."""
    if not PATH.exists():
        return ()
    return tuple(json.loads(PATH.read_text())["recommendations"])


def model_size(config: ModelConfig) -> Optional[str]:
    """The preset whose shape `config` has ("base", "large", ...), or None."""
    for name, preset in MODEL_PRESETS.items():
        if all(getattr(config, k) == preset[k]
               for k in ("vocab_size", "hidden_size", "num_layers", "mlp_dim")):
            return name
    return None


def stage(objectives) -> str:
    """ERNIE-M's stage of a set of objectives: BTMLM joins in stage 2."""
    return "stage2" if "btmlm" in objectives else "stage1"


def find(size: Optional[str], stage_name: str, accelerator: str, slices: int,
         entries: Optional[List[Dict]] = None) -> Optional[Dict]:
    """The recommendation for one model size, stage and slice (None where there is none)."""
    for entry in load() if entries is None else entries:
        if (entry["size"], entry["stage"], entry["accelerator"], entry["slices"]) == \
                (size, stage_name, accelerator, slices):
            return entry
    return None


def flags(entry: Dict) -> str:
    """The gin flags that select a recommendation on top of the run and model files."""
    parts = [f"--gin_file=gin/mesh/{entry['mesh']}.gin", f"--gin.BATCH_SIZE={entry['rows']}",
             f"--gin.ModelConfig.remat_policy='{entry['remat']}'"]
    if entry["grad_accum_steps"] > 1:
        parts.append(f"--gin.TrainConfig.grad_accum_steps={entry['grad_accum_steps']}")
    return " ".join(parts)


def describe(entry: Dict) -> str:
    """One line: the flags and what their compile measured."""
    measured = (f"compiled: collectives {entry['collective_share']:.0%} of compute, "
                f"{entry['hbm_gib']:.1f} of {entry['hbm_capacity_gib']:.1f} GiB per chip")
    if entry["reaches_target"]:
        return f"{flags(entry)} ({measured})"
    return (f"{flags(entry)} ({measured}; no batch up to {entry['rows']} rows per objective "
            f"reaches 25%: about {entry['rows_needed']} would)")
