"""Simulated CPU devices: the environment a child needs, and the deadlock it prevents."""

import os
import subprocess
import sys

import pytest

from ernie_m_jax import cpu_devices, distributed
from tests.train_runs import ROOT


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(cpu_devices.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)


def test_a_childs_environment_keeps_its_flags_and_gets_two_threads_a_device(two_cores):
    env = {"XLA_FLAGS": "--xla_cpu_a=1 --xla_force_host_platform_device_count=2", "HOME": "/h"}
    child = cpu_devices.simulated_devices_env(8, env)
    assert child["XLA_FLAGS"] == "--xla_cpu_a=1 --xla_force_host_platform_device_count=8"
    assert child["JAX_PLATFORMS"] == "cpu" and child["HOME"] == "/h"
    assert child["PJRT_NPROC"] == "16"
    assert env["XLA_FLAGS"].endswith("=2") and "PJRT_NPROC" not in env  # the caller's, untouched
    assert cpu_devices.simulated_devices_env(1, {})["PJRT_NPROC"] == "2"  # the cores, at least
    # A larger count asked for is kept; a smaller one is raised.
    assert cpu_devices.simulated_devices_env(8, {"PJRT_NPROC": "64"})["PJRT_NPROC"] == "64"
    assert cpu_devices.simulated_devices_env(8, {"PJRT_NPROC": "4"})["PJRT_NPROC"] == "16"


def test_many_cores_are_kept(monkeypatch):
    monkeypatch.setattr(cpu_devices.os, "sched_getaffinity", lambda pid: set(range(40)),
                        raising=False)
    assert cpu_devices.usable_cores() == 40
    assert cpu_devices.pool_threads(8, {}) == 40


def test_bad_counts_are_refused_by_name(two_cores):
    with pytest.raises(ValueError, match="simulated CPU devices must be at least 1, got 0"):
        cpu_devices.simulated_devices_env(0, {})
    with pytest.raises(ValueError, match="PJRT_NPROC must be an integer, got 'many'"):
        cpu_devices.pool_threads(8, {"PJRT_NPROC": "many"})


def test_cpu_devices_flag_reserves_the_threads_before_the_backend_starts(two_cores,
                                                                          monkeypatch):
    """`--cpu_devices 8` (`distributed.initialize`) raises PJRT_NPROC before asking JAX for
    the devices; without a process group nothing else happens."""
    monkeypatch.setenv("PJRT_NPROC", "1")  # restored after the test, whatever it sets
    updates = []
    monkeypatch.setattr(distributed.jax.config, "update",
                        lambda name, value: updates.append((name, value,
                                                            os.environ["PJRT_NPROC"])))
    monkeypatch.setattr(distributed, "from_environment", lambda: distributed.ProcessGroup())
    monkeypatch.setattr(distributed, "cluster_visible", lambda: False)
    assert distributed.initialize(cpu_devices=8) is False
    assert updates == [("jax_num_cpu_devices", 8, "16")]


def _dispatch_ahead(threads=None):
    env = cpu_devices.simulated_devices_env(8)
    env["XLA_FLAGS"] += " --xla_cpu_collective_call_terminate_timeout_seconds=20"
    if threads is not None:
        env["PJRT_NPROC"] = str(threads)
    return subprocess.run([sys.executable, "-m", "tests.dispatch_ahead_check", "2000"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_collectives_dispatched_ahead_finish_with_two_threads_a_device():
    """One collective program called 2,000 times without waiting, on 8 simulated devices:
    with the environment `simulated_devices_env` gives, every call finishes with the right
    value. The control is XLA:CPU's own sizing on a host of up to 8 cores, one thread a
    device: the same calls deadlock at a rendezvous, which XLA aborts after 20 s."""
    result = _dispatch_ahead()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "DISPATCH OK" in result.stdout
    threads = int(result.stdout.split("pool threads ")[1].split()[0])
    assert threads == max(16, cpu_devices.usable_cores()), result.stdout
    control = _dispatch_ahead(threads=8)
    assert control.returncode != 0, control.stdout
    assert "Termination timeout" in control.stderr, control.stderr[-3000:]
