"""host_memory: freed XLA:CPU buffers stay mapped, measured by the page faults of a step."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ernie_m_jax import host_memory

# A jitted scan whose stacked outputs (32 x 4 MiB) are a temporary buffer of each call, as a
# train step's layer scan is; the third call's minor page faults are printed.
PROGRAM = textwrap.dedent("""
    import json, resource
    from ernie_m_jax import host_memory
    applied = host_memory.configure()
    import jax, jax.numpy as jnp
    step = lambda c, _: (c * 1.0001, jnp.sin(c))
    f = jax.jit(lambda x: jax.lax.scan(step, x, None, length=32)[1].sum())
    x = jnp.ones((1024, 1024), jnp.float32)
    for _ in range(2):
        f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"applied": applied, "faults": faults}))
""")
BUFFER_PAGES = 32 * 1024 * 1024 * 4 // 4096


def _run(choice: str) -> dict:
    env = {**os.environ, host_memory.ENV: choice, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_keep_reuses_the_step_buffers_where_the_system_default_faults_them_in_again():
    system, keep = _run("system"), _run("keep")
    assert system["applied"] == "system" and keep["applied"] == "keep"
    # Positive control: glibc's default maps the buffer anew, every page faults again.
    assert system["faults"] >= BUFFER_PAGES, system
    assert keep["faults"] < BUFFER_PAGES // 10, keep


def test_choice_follows_the_override_then_the_platform(monkeypatch):
    monkeypatch.delenv(host_memory.ENV, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.choice() == "keep"
    monkeypatch.setenv("JAX_PLATFORMS", "tpu,cpu")
    assert host_memory.choice() == "system"
    monkeypatch.setenv(host_memory.ENV, "keep")
    assert host_memory.choice() == "keep"
    monkeypatch.setenv(host_memory.ENV, "System")
    assert host_memory.choice() == "system"


def test_an_unknown_choice_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(host_memory.ENV, "mmap")
    with pytest.raises(ValueError, match=f"{host_memory.ENV}='mmap'.*keep, system"):
        host_memory.choice()
