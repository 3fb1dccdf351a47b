"""Tiny training runs through the real gin files, for the train tests (in and out of process)."""

import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import gin

from ernie_m_jax import cpu_devices

ROOT = Path(__file__).resolve().parents[1]
LANGUAGES = "('de', 'fr')"


def tiny_bindings(data_dir: str, steps: int, **extra) -> List[str]:
    """demo_cpu.gin shrunk to seconds: tiny model, two languages, short rows."""
    bindings = {
        "register_demo.data_dir": repr(str(data_dir)),
        "register_demo.languages": LANGUAGES,
        "NUM_STEPS": steps, "BTMLM_START": 0,  # all four objectives from the first step
        "ModelConfig.hidden_size": 32, "ModelConfig.num_layers": 2, "ModelConfig.num_heads": 4,
        "ModelConfig.mlp_dim": 64, "ModelConfig.num_languages": 8,
        "MONO_LENGTH": 16, "PAIR_LENGTH": 32, "BATCH_SIZE": 8, "MMLM_BATCH": 8,
        "CAMLM_BATCH": 8, "BTMLM_BATCH": 8,
        "LEARNING_RATE": 3e-3, "OptimizerConfig.warmup_steps": 2,
        "TrainConfig.log_every": 1, "TrainConfig.checkpoint_every": 3,
        "TrainConfig.eval_every": 0, "TrainConfig.eval_languages": "('de',)",
        "TrainConfig.eval_examples_per_language": 16, "TrainConfig.eval_batch_size": 8,
        "TrainConfig.progress_bar": False, "TrainConfig.async_checkpointing": True,
    }
    bindings.update(extra)
    return [f"{k} = {v}" for k, v in bindings.items()]


def as_flags(bindings: Sequence[str]) -> List[str]:
    """`A.b = 1` -> `--gin.A.b=1`, for the command line."""
    return ["--gin." + b.replace(" = ", "=", 1) for b in bindings]


def run(model_dir: str, bindings: Sequence[str], files: Sequence[str] = ("runs/demo_cpu.gin",),
        stop_after=None, input_fn=None) -> Dict[str, float]:
    from ernie_m_jax import gin_config, train

    gin.clear_config()
    try:
        gin_config.parse(files, bindings)
        return train.train(str(model_dir), train.Experiment.from_gin(), stop_after=stop_after,
                           input_fn=input_fn)
    finally:
        gin.clear_config()


def eight_device_env() -> Dict[str, str]:
    """This process's environment for a child with 8 simulated CPU devices (the count must be
    set before JAX starts, hence a fresh interpreter), keeping the suite's XLA flags.

    `cpu_devices.simulated_devices_env` gives XLA:CPU two threads a device: with one (its
    default on 2 cores) the children deadlocked at a collective when dispatch ran ahead (CI,
    stops 50 and 51). A rendezvous that still does not complete aborts the child after
    5 minutes with XLA's message naming the collective (its default, 40 s, is too short for
    a child sharing 2 cores with another test worker), before the tests' 10-minute limit."""
    env = cpu_devices.simulated_devices_env(8)
    env["XLA_FLAGS"] += " --xla_cpu_collective_call_terminate_timeout_seconds=300"
    return env


def run_eight_device_child(args: Sequence[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m *args` in a child with 8 simulated CPU devices, which must exit 0 within
    `timeout` seconds; a failure shows the tail of its output either way (the child's
    progress lines say how far it got: a bare timeout told nothing in CI, stop 51)."""
    def text(output) -> str:
        return output.decode(errors="replace") if isinstance(output, bytes) else output or ""

    try:
        result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=eight_device_env(),
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"{args[0]} still running after {timeout} s:\n"
                             f"{text(err.stdout)[-3000:]}\n{text(err.stderr)[-5000:]}") from None
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result
