"""`huge_pages`: a command restarts itself once with glibc's huge-page tunable, and only
where it applies (#41: XLA:CPU's per-step buffers otherwise fault in page by page)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ernie_m_jax import huge_pages

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("environ, thp, glibc, expected", [
    ({}, "madvise", (2, 36), "glibc.malloc.hugetlb=1"),
    ({}, "always", (2, 35), "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", (2, 39),
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", (2, 36), None),  # user's own
    ({"ERNIE_M_JAX_HUGE_PAGES": "0"}, "madvise", (2, 36), None),  # opted out
    ({}, "never", (2, 36), None),  # the kernel gives none
    ({}, "", (2, 36), None),  # no such kernel setting (not Linux, old kernel)
    ({}, "madvise", (2, 34), None),  # a glibc without the tunable
    ({}, "madvise", None, None),  # musl or another C library
])
def test_the_environment_gets_the_tunable_only_where_it_applies(environ, thp, glibc, expected):
    result = huge_pages.environment_with_huge_pages({"PATH": "/bin", **environ}, thp, glibc)
    if expected is None:
        assert result is None
    else:
        assert result == {"PATH": "/bin", **environ, "GLIBC_TUNABLES": expected}


def test_the_kernels_setting_is_read_from_its_brackets(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert huge_pages.thp_mode(str(setting)) == "madvise"
    setting.write_text("[always] madvise never\n")
    assert huge_pages.thp_mode(str(setting)) == "always"
    assert huge_pages.thp_mode(str(tmp_path / "missing")) == ""


# A process that says when it starts, restarts itself (with this host's kernel and C library
# taken as ones where the tunable applies), then prints what it runs with.
CHILD = """
import os
from ernie_m_jax import huge_pages
print("started", os.getpid(), flush=True)
huge_pages.thp_mode = lambda: "madvise"
huge_pages.glibc_version = lambda: (2, 36)
huge_pages.restart_with_huge_pages()
print(os.environ.get("GLIBC_TUNABLES"), os.environ.get("KEPT"), os.getpid())
"""


def _run(extra_env):
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", huge_pages.OPT_OUT)}
    result = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True,
                            text=True, env={**env, "KEPT": "yes", **extra_env}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")


def test_a_process_restarts_once_with_the_tunable_and_keeps_the_rest():
    lines = _run({})
    pid = lines[0].split()[1]
    assert lines[:2] == [f"started {pid}"] * 2, lines  # the program ran again, once, same PID
    assert lines[2] == f"glibc.malloc.hugetlb=1 yes {pid}", lines
    # The control: opted out, it runs once and as it was started.
    lines = _run({huge_pages.OPT_OUT: "0"})
    pid = lines[0].split()[1]
    assert lines[:2] == [f"started {pid}", f"None yes {pid}"], lines


def test_the_command_restarts_only_as_a_process_entry_point(monkeypatch):
    """`cli.main(argv)` (tests, `python -m ernie_m_jax.train`'s own call) never replaces the
    running program; `cli.main()` (the console script) restarts first."""
    from ernie_m_jax import cli

    calls = []
    monkeypatch.setattr(huge_pages, "restart_with_huge_pages", lambda: calls.append(1))
    monkeypatch.setattr(sys, "argv", ["ernie-m-jax", "--help"])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert calls == []
    with pytest.raises(SystemExit):
        cli.main()
    assert calls == [1]
