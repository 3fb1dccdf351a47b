import os
import shutil
import tempfile
from pathlib import Path

import filelock
import flax.linen as nn
import jax
import pytest

from ernie_m_jax.configs import model_config
from ernie_m_jax.model import ErnieM, init_params

# One persistent XLA compilation cache for the whole suite, this process and every
# subprocess a test starts (they inherit the environment): the ~45 tiny trainings compile the
# same few steps, and a cached one loads in a fraction of the compile time. JAX keys entries by
# program, options, backend and version, so a cache kept between sessions is safe; point
# ERNIE_M_JAX_TEST_CACHE elsewhere (or at an empty folder) to start from nothing.
CACHE_DIR = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.environ.get("ERNIE_M_JAX_TEST_CACHE",
                   str(Path(tempfile.gettempdir()) / "ernie_m_jax_test_compilation_cache")))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Compilation is most of the suite's time and the tiny models run in milliseconds either
# way, so the suite (and every subprocess, through the environment) compiles with LLVM's
# optimisation off and XLA:CPU's older elemental emitter instead of its fusion emitters: the
# tiny train step compiles in 4.6 s instead of 11.7, tests/test_objectives.py runs in 49 s
# instead of 101 (fresh caches). XLA's HLO passes (fusion decisions, sharding, layouts,
# collectives) are the same, and so are the values (the smoke run's losses agree to the
# printed digit): the programs tested are the ones users run, with slower machine code.
# XLA_FLAGS is read when JAX creates its backend, which no import has done yet.
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if FAST_COMPILE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAG}".strip()
for _name, _value in (("jax_compilation_cache_dir", CACHE_DIR),
                      ("jax_persistent_cache_min_compile_time_secs", 0.5),
                      ("jax_persistent_cache_min_entry_size_bytes", 0)):
    jax.config.update(_name, _value)  # this process: jax read the environment on import


@pytest.fixture(scope="session")
def tiny_config():
    return model_config("tiny", num_languages=4, dropout_rate=0.0, attention_dropout_rate=0.0)


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    return ErnieM(tiny_config)


@pytest.fixture(scope="session")
def tiny_params(tiny_config):
    return nn.unbox(init_params(tiny_config, jax.random.key(0)))["params"]


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """One demo corpus and vocabulary for every test that registers the demo tasks, built
    once per run: under pytest-xdist the first worker builds it in the run's shared temporary
    folder while the others wait on the lock, then all read it."""
    from tasks import demo  # seqio and TensorFlow: only for the tests that use the demo data

    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: this session's own folder
        path = tmp_path_factory.mktemp("demo_data")
    else:
        path = tmp_path_factory.getbasetemp().parent / "demo_data"
    with filelock.FileLock(f"{path}.lock"):
        path.mkdir(exist_ok=True)
        demo.demo_vocabulary(*demo.demo_corpus(path), demo.DEFAULT_VOCAB_SIZE)
    return str(path)


@pytest.fixture(scope="session")
def six_step_run(demo_data_dir, tmp_path_factory):
    """A tiny run of 6 steps with checkpoints at 3 and 6 (`train_runs.tiny_bindings`), trained
    once for the tests that damage, resume or export a run: they change only a copy
    (`copied_run`)."""
    from tests.train_runs import run, tiny_bindings

    model_dir = tmp_path_factory.mktemp("six_steps") / "run"
    run(model_dir, tiny_bindings(demo_data_dir, 6))
    return model_dir


@pytest.fixture
def copied_run(six_step_run, tmp_path):
    """This test's own copy of `six_step_run`."""
    target = tmp_path / "run"
    shutil.copytree(six_step_run, target)
    return target


@pytest.fixture(autouse=True, scope="module")
def _module_registrations():
    """seqio's registries and our language ids are process-global: what a test module
    registers is removed when it ends, so no module sees another's tasks."""
    import seqio

    from ernie_m_jax.data import languages

    tasks_before = set(seqio.TaskRegistry.names())
    mixtures_before = set(seqio.MixtureRegistry.names())
    ids_before = languages.registered_languages()
    yield
    for name in set(seqio.MixtureRegistry.names()) - mixtures_before:
        seqio.MixtureRegistry.remove(name)
    for name in set(seqio.TaskRegistry.names()) - tasks_before:
        seqio.TaskRegistry.remove(name)
    languages._IDS.clear()
    languages._IDS.update(ids_before)
