"""TensorFlow loads for the input pipeline without native log lines and without the GPUs."""

import os
import subprocess
import sys

import pytest

from ernie_m_jax import console
from tests.train_runs import ROOT

NATIVE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796199629.466744   16374 port.cc:153] oneDNN custom operations are on.\n",
    b"E0000 00:00:1796199634.533815   16374 cuda_platform.cc:52] failed call to cuInit: x\n",
]


def test_native_log_lines_are_dropped_and_everything_else_is_kept(capfd):
    with console.filtered_stderr() as dropped:
        for line in NATIVE[:2]:
            os.write(2, line)
        os.write(2, b"a warning from C that is not a log line\n")
        print("a Python warning", file=sys.stderr)
        os.write(2, NATIVE[2])
    # (pytest captures sys.stderr apart from file descriptor 2, hence sorted)
    err = capfd.readouterr().err
    assert sorted(err.splitlines()) == ["a Python warning",
                                        "a warning from C that is not a log line"]
    assert [line.encode() for line in dropped] == NATIVE


def _stderr_of(code):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr, done.stdout


@pytest.mark.slow
def test_tensorflow_loads_quietly_and_off_the_gpus():
    # Positive control: a plain import (and first op) writes native log lines here.
    plain, _ = _stderr_of("import tensorflow as tf; tf.constant(1)")
    assert any(console.is_native_log(line) for line in plain.splitlines())
    quiet, out = _stderr_of("from ernie_m_jax import console\n"
                            "tf = console.load_tensorflow(); tf.constant(1)\n"
                            "print(tf.config.get_visible_devices('GPU'))")
    assert not any(console.is_native_log(line) for line in quiet.splitlines()), quiet
    assert out.strip() == "[]"
