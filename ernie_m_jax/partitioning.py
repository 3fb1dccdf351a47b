"""One device mesh and one rule table that map the model's logical axes onto it.

The model names every parameter and activation axis ("batch", "embed", "heads", ...); the
rules below say which mesh axis each name is split over. Data parallelism, FSDP and tensor
parallelism are all the same rule table on meshes of different shapes (big_vision / MaxText
style), so the same code runs on one CPU, a TPU slice or a multi-GPU host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ernie_m_jax import cpu_devices

MESH_AXES = ("data", "fsdp", "tensor")

# (logical axis, mesh axis or axes). Earlier rules win; a mesh axis already used by another
# dimension of the same array is skipped, so activations shard "batch" over data+fsdp while
# weights shard "embed" over fsdp.
LOGICAL_AXIS_RULES: Tuple[Tuple[str, object], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed_out", "tensor"),
    ("embed", "fsdp"),
    ("length", None),
    ("kv", None),
    ("position", None),
    ("language", None),
    ("layers", None),
    ("labels", None),  # a classifier's outputs: a handful, replicated
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape over all devices of all processes; one -1 entry takes the remaining devices."""

    axes: Tuple[str, ...] = MESH_AXES
    shape: Tuple[int, ...] = (-1, 1, 1)
    rules: Tuple[Tuple[str, object], ...] = LOGICAL_AXIS_RULES

    def __post_init__(self):
        if len(self.axes) != len(self.shape):
            raise ValueError(f"MeshConfig.axes {self.axes} and shape {self.shape} differ in length")
        if len(set(self.axes)) != len(self.axes):
            raise ValueError(f"MeshConfig.axes has duplicates: {self.axes}")
        if sum(s == -1 for s in self.shape) > 1 or any(s == 0 or s < -1 for s in self.shape):
            raise ValueError(
                f"MeshConfig.shape {self.shape} must be positive sizes with at most one -1")

    def across_slices(self, num_slices: int) -> "MeshConfig":
        """On several TPU slices, data parallelism crosses them (over the data-centre
        network), as in MaxText: a data axis of 1 becomes one replica per slice, the rest of
        the mesh as configured. So a preset (`fsdp.gin`) runs unchanged on one slice or many,
        in training and in the ahead-of-time compile alike."""
        if num_slices == 1 or "data" not in self.axes:
            return self
        index = self.axes.index("data")
        if self.shape[index] != 1:
            return self
        return dataclasses.replace(self, shape=tuple(
            num_slices if i == index else s for i, s in enumerate(self.shape)))

    def resolve(self, num_devices: int) -> Tuple[int, ...]:
        """The concrete shape on `num_devices` devices, or a clear error if it cannot fit."""
        known = math.prod(s for s in self.shape if s != -1)
        if -1 in self.shape:
            if num_devices % known:
                raise ValueError(
                    f"mesh {dict(zip(self.axes, self.shape))} needs a multiple of {known} devices, "
                    f"there are {num_devices}")
            return tuple(num_devices // known if s == -1 else s for s in self.shape)
        if known != num_devices:
            raise ValueError(
                f"mesh {dict(zip(self.axes, self.shape))} has {known} devices, there are "
                f"{num_devices}")
        return tuple(self.shape)


def make_mesh(config: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A mesh over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    slices = num_slices(devices)
    config = config.across_slices(slices)
    shape = config.resolve(len(devices))
    # Auto axes: XLA's SPMD partitioner propagates the shardings we place (pjit style).
    auto = (jax.sharding.AxisType.Auto,) * len(shape)
    if slices > 1:  # TPU multislice: only the data axis may cross the slow DCN
        return Mesh(_hybrid_devices(config, shape, devices, slices), config.axes,
                    axis_types=auto)
    try:
        return jax.make_mesh(shape, config.axes, axis_types=auto, devices=devices)
    except NotImplementedError:
        # A mesh axis that is no product of whole torus axes (tensor=2 on v5p's 4x4x4):
        # jax.make_mesh only splits physical axes on v5e; split them here too, so that
        # each tensor group is a run of neighbours along one torus axis.
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, config.axes, axis_types=auto)


def _hybrid_devices(config: MeshConfig, shape: Tuple[int, ...], devices, slices: int):
    """Devices laid out so that the data axis spans the slices and the rest stays in one
    (physical axes split where a mesh axis is no product of whole ones, as in `make_mesh`)."""
    sizes = dict(zip(config.axes, shape))
    if sizes.get("data", 1) % slices:
        raise ValueError(
            f"the devices span {slices} slices, which only data parallelism may cross (over "
            f"the data-centre network), but mesh {sizes} has data={sizes.get('data', 1)}; "
            f"make MeshConfig.shape's data entry a multiple of {slices}")
    dcn = tuple(slices if a == "data" else 1 for a in config.axes)
    ici = tuple(s // d for s, d in zip(shape, dcn))
    try:
        return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    except NotImplementedError:
        return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                    allow_split_physical_axes=True)


def logical_shardings(boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedShardings for a tree of `nn.LogicallyPartitioned` values (e.g. `eval_shape(init)`)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def data_sharding(mesh: Mesh, rules=LOGICAL_AXIS_RULES, ndim: int = 2) -> NamedSharding:
    """Batches: leading axis over the batch mesh axes, the rest replicated."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, spec)


def mesh_axes(entry) -> Tuple[str, ...]:
    """A rule's target, or a PartitionSpec entry, as a tuple of mesh axes (None: none)."""
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def without_axes(rules, axes):
    """`rules` with the mesh `axes` taken out of every rule: the rules inside a function
    mapped over those axes (a vmap with them as its SPMD axes), where constraints may not
    name them again."""
    def drop(target):
        kept = tuple(a for a in mesh_axes(target) if a not in axes)
        return kept if len(kept) > 1 else (kept[0] if kept else None)
    return tuple((name, drop(target)) for name, target in rules)


def logical_axes_on(rules, mesh_axis: str) -> set:
    """The logical axis names that `rules` split over `mesh_axis` (alone or with others)."""
    return {name for name, target in rules if mesh_axis in mesh_axes(target)}


def num_slices(devices) -> int:
    """TPU slices the devices span (1 off TPU multislice)."""
    return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_axes(mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Tuple[str, ...]:
    """The mesh axes the batch axis is split over on `mesh`."""
    spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
    return tuple(a for a in mesh_axes(spec) if a in mesh.shape)


def batch_shards(mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> int:
    """How many parts the batch axis is split into on `mesh`."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


def check_batch_divides(batch_size: int, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> None:
    """Fail early (before compiling) if the global batch cannot be split over the mesh."""
    shards = batch_shards(mesh, rules)
    if batch_size % shards:
        raise ValueError(
            f"global batch size {batch_size} is not divisible by the {shards} batch shards of "
            f"mesh {dict(mesh.shape)}")


def attention_batch_groups(mesh: Mesh) -> int:
    """How many independent attentions a step on `mesh` splits its batch into
    (`ModelConfig.attention_batch_groups`): one per core the process may run on for a mesh
    of one CPU device, whose XLA runs each batched matmul on one thread; 1 on accelerators
    and on several devices, where the batch is sharded and slicing it would move data. It
    reads the mesh, not `jax.default_backend()`, which is the CPU where this host compiles
    for a TPU slice."""
    if mesh.size != 1 or mesh.devices.flat[0].platform != "cpu":
        return 1
    return cpu_devices.usable_cores()


def for_mesh(model_config, mesh: Mesh):
    """`model_config` (a `ModelConfig`) with what it leaves to the mesh decided: its
    `attention_batch_groups` where None."""
    if model_config.attention_batch_groups is not None:
        return model_config
    return dataclasses.replace(model_config, attention_batch_groups=attention_batch_groups(mesh))


@contextlib.contextmanager
def activate(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Make `mesh` and `rules` the context for the model's `with_logical_constraint`s."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def sharded_init(init_fn, rng: jax.Array, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Run `init_fn(rng)` (returning boxed variables) with its outputs created sharded.

    Returns (unboxed variables, their NamedShardings); no device ever holds the full model.
    """
    shardings = logical_shardings(jax.eval_shape(init_fn, rng), mesh, rules)
    # Placement comes from out_shardings alone: under `activate`, flax's DenseGeneral would
    # constrain its flat pre-reshape kernel with the names of the final shape.
    variables = jax.jit(lambda r: nn.unbox(init_fn(r)), out_shardings=shardings)(rng)
    return variables, shardings


def addressable_fraction(array: jax.Array) -> float:
    """Share of the global array held by one device (1.0 when replicated)."""
    shard = array.addressable_shards[0].data
    return float(np.prod(shard.shape) / max(np.prod(array.shape), 1))
