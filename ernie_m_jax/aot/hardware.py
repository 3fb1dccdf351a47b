"""Cloud TPU chips and slice names, as one table: what `compile --topology=v4-32` means.

Accelerator names follow Cloud TPU's: v4-N and v5p-N count TensorCores (N/2 chips, one
megacore device per chip); v5e-N and v6e-N count chips. Each maps to the topology name and
chip configuration that libtpu's compile-only devices expect
(`jax.experimental.topologies.get_topology_desc`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Dict, Optional

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip kind: what a step's memory and time are held against."""

    name: str
    hbm_bytes: float
    peak_bf16_flops: float
    # Bytes per second one chip moves in a collective over ICI (half its bidirectional
    # per-chip ICI bandwidth; v4's docs give only the pod's all-reduce bandwidth, divided
    # here by the pod's 4,096 chips).
    ici_bytes_per_s: float
    # Data-centre network bytes per second per chip (multislice), where documented.
    dcn_bytes_per_s: Optional[float]
    # How sizes are counted: "cores" (v4-N, v5p-N: TensorCores) or "chips" (v5e, v6e).
    counts: str
    chip_config: str  # libtpu's chip_config_name: megacore chips are one device
    dims: int  # 3D torus (v4, v5p) or 2D (v5e, v6e)


CHIPS: Dict[str, Chip] = {
    # cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16, "HBM2 capacity and bandwidth 32 GiB,
    # 1200 GBps", all-reduce bandwidth per pod 1.1 PB/s over 4,096 chips.
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 1.1e15 / 4096, None, "cores", "megacore", 3),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16, 95 GiB HBM, bidirectional ICI 1200
    # GBps per chip, DCN 50 Gbps per chip.
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 1200e9 / 2, 50e9 / 8, "cores", "megacore", 3),
    # cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16, 16 GB HBM, bidirectional ICI 400 GBps
    # per chip, 2 x 100 Gbps NICs per 8-chip host.
    "v5e": Chip("TPU v5e", 16e9, 197e12, 400e9 / 2, 2 * 100e9 / 8 / 8, "chips", "default", 2),
    # cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16, 32 GB HBM, bidirectional ICI 800 GBps
    # per chip (DCN per chip not given).
    "v6e": Chip("TPU v6e", 32e9, 918e12, 800e9 / 2, None, "chips", "default", 2),
}

# Chip counts -> torus shape, from the Cloud TPU docs' topology tables (the first listed
# shape where several exist).
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """A named slice (times `num_slices`): its chips and libtpu's name for the topology."""

    name: str
    generation: str
    chips_per_slice: int
    topology_name: str
    num_slices: int = 1

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def num_chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def label(self) -> str:
        return self.name if self.num_slices == 1 else f"{self.num_slices} x {self.name}"


def parse(name: str, num_slices: int = 1) -> Accelerator:
    """`v4-32` -> 16 v4 chips as libtpu's `v4:2x2x4`; a clear error for anything else."""
    if num_slices < 1:
        raise ValueError(f"--num_slices must be at least 1, got {num_slices}")
    match = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name.strip().lower())
    if not match:
        raise ValueError(f"unknown TPU accelerator {name!r}: use a Cloud TPU name such as "
                         f"v4-32, v5p-128, v5e-256 or v6e-256 (generations {sorted(CHIPS)})")
    generation, size = match.group(1), int(match.group(2))
    chip = CHIPS[generation]
    chips = size // 2 if chip.counts == "cores" else size
    shapes = _SHAPES_3D if chip.dims == 3 else _SHAPES_2D
    if chip.counts == "cores" and size % 2 or chips not in shapes:
        unit = "TensorCores (2 per chip)" if chip.counts == "cores" else "chips"
        sizes = [c * 2 if chip.counts == "cores" else c for c in shapes]
        raise ValueError(f"{name}: {generation} slices count {unit}; known sizes are "
                         f"{', '.join(f'{generation}-{s}' for s in sizes)}")
    topology = f"{generation}:{shapes[chips]}"
    assert math.prod(int(d) for d in shapes[chips].split("x")) == chips
    return Accelerator(name.strip().lower(), generation, chips, topology, num_slices)


# libtpu looks for the TPU VM it runs on (metadata server, worker list) and logs an error
# for each thing it cannot find; a compile-only host is none, so it is told so up front.
# And compile-only processes own no chip: several may load libtpu at once (by default the
# first holds /tmp/libtpu_lockfile and the others fail).
_NOT_A_TPU_VM = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_ID": "0",
                 "TPU_WORKER_HOSTNAMES": "localhost", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def topology_devices(accelerator: Accelerator):
    """libtpu's compile-only devices for the slice(s): they compile, never run."""
    for key, value in _NOT_A_TPU_VM.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator.name)
    try:
        import libtpu  # noqa: F401  (only to name the missing package clearly)
        from jax.experimental import topologies
    except ImportError:
        raise ImportError(
            "compiling for a TPU topology needs libtpu's compile-only devices: "
            "pip install -e '.[tpu]' (the libtpu version that this jax expects)") from None
    topology = topologies.get_topology_desc(
        platform="tpu", topology_name=accelerator.topology_name,
        chip_config_name=accelerator.chip.chip_config,
        chips_per_host_bounds=(2, 2, 1), num_slices=accelerator.num_slices)
    devices = list(topology.devices)
    if len(devices) != accelerator.num_chips:
        raise ValueError(f"libtpu made {len(devices)} devices for {accelerator.label}, "
                         f"expected {accelerator.num_chips} chips")
    return devices
