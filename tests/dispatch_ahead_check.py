"""Run in a subprocess with 8 simulated CPU devices (see test_cpu_devices.py).

One program with collectives (two all-reduces over different device groups), each call fed
the last one's result, dispatched `calls` times without waiting: the pattern of a train loop
that fetches its metrics now and then. Prints the threads XLA:CPU's intra-op pool started and
DISPATCH OK when every call finished with the value a NumPy recurrence gives.
"""

import functools
import os
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def pool_threads_started() -> int:
    """Threads named after XLA:CPU's intra-op pool in this process (Linux)."""
    names = [open(f"/proc/self/task/{t}/comm").read() for t in os.listdir("/proc/self/task")]
    return sum("XLAEigen" in name for name in names)


def main(calls: int):
    assert jax.device_count() == 8, jax.device_count()
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    rows = P(("a", "b"))

    @jax.jit
    @functools.partial(jax.shard_map, mesh=mesh, in_specs=rows, out_specs=rows)
    def step(x):
        # Sums over 2 devices, then over the other 4: every device's part equals the total.
        return jax.lax.psum(jax.lax.psum(x, "a"), "b") / 8.0 + 1.0

    start = np.arange(8 * 16, dtype=np.float32).reshape(8 * 16, 1)
    x = jax.device_put(start, NamedSharding(mesh, rows))
    for _ in range(calls):
        x = step(x)
    result = np.asarray(x)
    expected = start.reshape(8, 16, 1)
    for _ in range(calls):
        expected = np.broadcast_to(expected.sum(0) / 8.0 + 1.0, expected.shape)
    np.testing.assert_allclose(result, expected.reshape(start.shape), rtol=1e-5)
    print(f"pool threads {pool_threads_started()}")
    print("DISPATCH OK")


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
