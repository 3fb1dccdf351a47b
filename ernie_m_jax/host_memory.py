"""Keep freed host memory for reuse, so that a CPU train step does not page-fault its buffers
in again every step.

XLA:CPU allocates each execution's temporary buffer (hundreds of MiB for the small model)
with `malloc` on one of its worker threads and frees it when the step ends. glibc serves a
block that large from `mmap` (threads' own arenas cannot hold it) and gives it back with
`munmap`, so the next step faults every page in again, zero-filled by the kernel: ~97,000
faults and ~165 ms of system time per small@128 step on the 2-core machines, 13-15% of
the step. With every thread on the main arena, no `mmap` and no trimming, a freed buffer stays
mapped and the next step reuses it: no faults after the first step (the process keeps its
peak heap; RSS settles a little above it).

`configure()` sets this up; it must run before JAX (or TensorFlow) starts threads that
allocate, which is why the CLI, the test suite and the benchmarks call it first. It applies on
Linux with glibc only, and by default only where JAX will run on the CPU: on hosts with
accelerators the input pipeline's many threads are better off with their own arenas.
`ERNIE_M_JAX_HOST_MEMORY=keep` or `=system` overrides the choice.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
from typing import Optional

ENV = "ERNIE_M_JAX_HOST_MEMORY"
CHOICES = ("keep", "system")

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

# Device files of accelerators JAX would use instead of the CPU.
ACCELERATOR_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")

_applied: Optional[str] = None


def _accelerator_present() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] != "cpu"
    return any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES)


def choice() -> str:
    """'keep' or 'system': the environment's override, else 'keep' where JAX will run on
    the CPU."""
    value = os.environ.get(ENV, "").strip().lower()
    if value and value not in CHOICES:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(CHOICES)}")
    return value or ("system" if _accelerator_present() else "keep")


def configure() -> str:
    """Apply `choice()` once per process; returns what applies ('keep', 'system', or
    'unsupported' off glibc)."""
    global _applied
    if _applied is not None:
        return _applied
    wanted = choice()
    if wanted == "system":
        _applied = "system"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _applied = "unsupported"
    else:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        # Arena first: threads created from now on share the main arena, the only one that
        # grows past 64 MiB without mmap. -1 is SIZE_MAX as glibc reads it: never trim.
        ok = all(mallopt(param, value) == 1 for param, value in (
            (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
        _applied = "keep" if ok else "unsupported"
    return _applied
