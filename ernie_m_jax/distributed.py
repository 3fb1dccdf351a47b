"""Joining JAX's multi-controller runtime: one process per host (or per GPU), one global mesh.

`initialize()` must run before anything touches a JAX backend. It is a no-op for a single
process; otherwise it calls `jax.distributed.initialize` with
  - explicit values (CLI flags `--coordinator_address/--num_processes/--process_id`), else
  - JAX's own environment variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID), else
  - JAX's cluster auto-detection, when a cluster is visible: a multi-host TPU VM slice or a
    SLURM job with several tasks.
On CPU (tests, laptops) cross-process collectives go through gloo.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping, Optional

import jax

from ernie_m_jax.cpu_devices import reserve_threads

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None

    @property
    def explicit(self) -> bool:
        return self.coordinator_address is not None

    def check(self) -> "ProcessGroup":
        given = [self.coordinator_address is not None, self.num_processes is not None,
                 self.process_id is not None]
        if any(given) and not all(given):
            raise ValueError("give all of coordinator_address, num_processes and process_id "
                             f"(or none, to auto-detect); got {self}")
        if self.explicit:
            if self.num_processes < 1 or not 0 <= self.process_id < self.num_processes:
                raise ValueError(f"process_id must be in [0, num_processes), got {self}")
            if ":" not in self.coordinator_address:
                raise ValueError(f"coordinator_address must be host:port, "
                                 f"got {self.coordinator_address!r}")
        return self


def from_environment(env: Mapping[str, str] = os.environ) -> ProcessGroup:
    if ENV_ADDRESS not in env:
        return ProcessGroup()
    try:
        return ProcessGroup(env[ENV_ADDRESS], int(env[ENV_COUNT]), int(env[ENV_ID])).check()
    except (KeyError, ValueError) as err:
        raise ValueError(f"{ENV_ADDRESS} is set, so {ENV_COUNT} and {ENV_ID} must be integers: "
                         f"{err}") from None


def cluster_visible(env: Mapping[str, str] = os.environ) -> bool:
    """A multi-process cluster JAX can auto-detect: SLURM with >1 task, or a multi-host TPU."""
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def initialize(group: ProcessGroup = ProcessGroup(), cpu_devices: Optional[int] = None) -> bool:
    """Join the process group if there is one; returns whether this is a multi-process run."""
    group = group.check() if group.explicit else from_environment()
    if cpu_devices:
        # More threads than devices, or collectives can deadlock (see `cpu_devices`).
        reserve_threads(cpu_devices)
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    if group.explicit:
        if group.num_processes == 1:
            return False
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(group.coordinator_address, group.num_processes,
                                   group.process_id)
    elif cluster_visible():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize()
    else:
        return False
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
