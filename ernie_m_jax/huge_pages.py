"""Transparent huge pages for glibc's large blocks, set before a command's process starts.

XLA:CPU allocates each execution's temporary buffer afresh (about 400 MiB for the small
model's step, GiBs at base) and frees it after the step. glibc hands a block that large back
to the kernel, so every step faults each of its 4 KiB pages in again, zero-filled: ~97,000
faults and ~150 ms of system time per small@128 step on a 2-core host (#41,
benchmarks/README.md). glibc's `glibc.malloc.hugetlb=1` tunable advises its mapped blocks as
transparent huge pages, 2 MiB per fault. glibc reads tunables only when a process starts, so
a command re-executes itself once with the tunable added (same PID, argv and environment
otherwise), before it imports anything heavy.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Mapping, Optional, Tuple

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "ERNIE_M_JAX_HUGE_PAGES"  # "0": leave glibc's malloc as it is
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
FIRST_GLIBC = (2, 35)  # the first glibc with the tunable


def thp_mode(path: str = THP_SETTING) -> str:
    """The kernel's transparent-huge-page mode ("always", "madvise", "never"), "" where the
    kernel does not say."""
    try:
        with open(path) as f:
            chosen = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return ""
    return chosen.group(1) if chosen else ""


def glibc_version() -> Optional[Tuple[int, int]]:
    """(major, minor) of the C library this process runs on; None where it is not glibc."""
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    found = re.fullmatch(r"glibc (\d+)\.(\d+).*", name or "")
    return (int(found.group(1)), int(found.group(2))) if found else None


def environment_with_huge_pages(environ: Mapping[str, str], thp: str,
                                glibc: Optional[Tuple[int, int]]) -> Optional[dict]:
    """`environ` with the tunable added, or None where a restart would change nothing: the
    user opted out, the tunable is already set (this is the restarted process), the C
    library is not a glibc that knows it, or the kernel gives no transparent huge pages."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (environ.get(OPT_OUT) == "0" or TUNABLE in tunables or glibc is None
            or glibc < FIRST_GLIBC or thp not in ("always", "madvise")):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{TUNABLE}=1")))}


def restart_with_huge_pages() -> None:
    """Re-execute this process with the tunable set, where it would apply (Linux, glibc,
    transparent huge pages on); otherwise return. Call first thing in a command's process
    entry point, never from a library function: it replaces the running program."""
    if not sys.platform.startswith("linux") or not getattr(sys, "orig_argv", None):
        return
    environ = environment_with_huge_pages(os.environ, thp_mode(), glibc_version())
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environ)
