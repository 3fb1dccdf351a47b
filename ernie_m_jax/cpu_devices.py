"""The host's CPU as JAX sees it: the cores this process may use, and what simulated CPU devices
(`--cpu_devices`, the tests' 8-device children) need from XLA:CPU to not deadlock.

XLA:CPU sizes its two thread pools (the one that runs each device's program and the intra-op
one) to max(cores, devices): exactly one thread per device on a host with fewer cores than
devices. A program with collectives needs every device's thread at once, and a caller that
dispatches far ahead of execution (a loop calling a jitted step that reads its results only now
and then) parks dispatch tasks on the same pool, waiting for an in-flight slot. Then a
collective waits for a device that cannot get a thread, forever. Measured with 8 devices on 2
cores, one program dispatched 2,000-3,000 times (`tests/dispatch_ahead_check.py`): 6 of 6 runs
deadlocked with 8 threads and 2 of 2 with 9; none of 5 with 16 or 32, and waiting every 40 calls
or fewer never did. XLA reads the pools' size from `PJRT_NPROC` (else the cores) when the
backend starts, so two threads a device are set there before it does.
"""

from __future__ import annotations

import os
from typing import Dict, Mapping

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
THREADS_ENV = "PJRT_NPROC"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and `taskset`
    narrow), else the machine's count."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return len(cores) if cores else (os.cpu_count() or 1)


def pool_threads(devices: int, env: Mapping[str, str] = os.environ) -> int:
    """Threads XLA:CPU's pools need for `devices` simulated devices: two per device (one
    program's collective on every device, plus a dispatch's worth parked beside it), never
    fewer than the cores or than what `env` already asks for."""
    if devices < 1:
        raise ValueError(f"simulated CPU devices must be at least 1, got {devices}")
    try:
        asked = int(env.get(THREADS_ENV, "0") or 0)
    except ValueError:
        raise ValueError(f"{THREADS_ENV} must be an integer, got {env[THREADS_ENV]!r}") from None
    return max(usable_cores(), 2 * devices, asked)


def reserve_threads(devices: int, environ=os.environ) -> int:
    """Set `PJRT_NPROC` in this process for `devices` simulated devices; call it before
    anything starts a JAX backend (it is read once, then). Returns the thread count."""
    threads = pool_threads(devices, environ)
    environ[THREADS_ENV] = str(threads)
    return threads


def simulated_devices_env(devices: int, env: Mapping[str, str] = os.environ) -> Dict[str, str]:
    """`env` for a fresh interpreter with `devices` simulated CPU devices (the count must be
    set before JAX starts): its XLA flags kept, any earlier device count replaced, the CPU
    platform forced and the thread pools sized by `pool_threads`."""
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    flags.append(f"{DEVICE_COUNT_FLAG}={devices}")
    return dict(env, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu",
                **{THREADS_ENV: str(pool_threads(devices, env))})
