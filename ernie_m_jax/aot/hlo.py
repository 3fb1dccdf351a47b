"""Every collective in a compiled module's HLO text: kind, network, bytes, and where from.

What one chip sends for one execution follows the usual ring costs: all-gather and
reduce-scatter (n-1)/n of the full buffer, all-reduce twice that, all-to-all (n-1)/n, a
collective-permute its whole buffer, a cross-slice `send` its payload. Executions per step
count loop trips: an instruction inside the scanned layer loop runs once per layer.

The forms XLA's TPU backend writes, each handled here and tested on hand-written HLO:

- One asynchronous collective split into a start, continuation pieces and a done that share
  a `channel_id`, the pieces often placed inside loops: counted once, as often as its
  least-executed piece runs (the start).
- Multislice traffic: the cross-slice sums are `send`/`recv` pairs handed to the
  data-centre network (DCN); each `send` is one transfer of its payload.
- Replica groups listed (`{{0,1},{2,3}}`), in iota form (`[2,2]<=[4]`, `[4,4]<=[4,4]T(1,0)`),
  in mesh form (`mesh['a'=2,'b'=4], device_ids=(...) {'b'}`), or empty (every partition).
- An all-reduce fused with the slice each chip keeps (an all-reduce of the full buffer inside
  a computation named `all-reduce-scatter...`): the traffic of a reduce-scatter, (n-1)/n of
  that buffer, not twice it.

Given the devices (`DeviceLayout`), each collective also records the torus axes its groups
span: a ring along one axis of a 2D torus uses half of a chip's links, so half its ICI
bandwidth (`link_share`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-reduce-scatter", "all-to-all",
         "collective-permute", "send")
NETWORKS = ("ici", "dcn")
# Written into every compile's JSON: the pod plan recompiles what an older counter measured.
# 2: async pieces merged by channel, send/recv as DCN, mesh-form groups, all-reduce-scatter.
COUNTER_VERSION = 2

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
                "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z\-]+)\(")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\dm\d(?:fn)?)?)\[([\d,]*)\]")
_CALLED = re.compile(r"\b(?:calls|to_apply|body|branch_computations|called_computations)="
                     r"\{?([%\w.\-, ]+)\}?")
_WHILE = re.compile(r"condition=%([\w.\-]+), body=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CHANNEL = re.compile(r"\bchannel_id=(\d+)")
_PARTITIONS = re.compile(r"\bnum_partitions=(\d+)")
_IOTA = r"\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?"


@dataclasses.dataclass(frozen=True)
class DeviceLayout:
    """Where each of a module's partitions sits: its torus coordinates and slice. Index i is
    the device the HLO calls i (the mesh's devices in order; in a multislice module, whose
    partitions are one slice's chips, the first slice's)."""

    coords: Tuple[Tuple[int, ...], ...]
    slice_index: Tuple[int, ...]

    @classmethod
    def from_devices(cls, devices: Sequence) -> "DeviceLayout":
        return cls(tuple(tuple(getattr(d, "coords", (i,))) for i, d in enumerate(devices)),
                   tuple(getattr(d, "slice_index", 0) or 0 for d in devices))

    @property
    def torus_dims(self) -> int:
        """Torus axes with more than one chip (2 on a v5e-256, 3 on a v4-32)."""
        spread = np.ptp(np.array(self.coords), axis=0) if self.coords else []
        return int(sum(1 for s in spread if s > 0))

    def describe(self, members: Sequence[int]) -> Tuple[Tuple[int, ...], bool]:
        """(torus axes the group spans, whether it crosses slices)."""
        if not members or max(members) >= len(self.coords):
            return (), False
        points = np.array([self.coords[m] for m in members])
        axes = tuple(int(a) for a in np.flatnonzero(np.ptp(points, axis=0) > 0))
        return axes, len({self.slice_index[m] for m in members}) > 1


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    result_bytes: float  # the result buffer on one chip (tuples summed); a send's payload
    group_size: int
    executions: int  # per step
    op_name: str  # the jax op it came from (metadata), "" if none
    network: str = "ici"  # "dcn": between slices
    torus_axes: Tuple[int, ...] = ()  # torus axes its groups span; () where not known
    torus_dims: int = 0  # the slice's torus axes (0: not known)
    pieces: int = 1  # instructions in the text (an async collective's start, pieces, done)

    @property
    def bytes_sent(self) -> float:
        """Bytes one chip sends for one execution."""
        if self.kind == "send":
            return self.result_bytes
        n = max(self.group_size, 1)
        share = (n - 1) / n
        if self.kind == "all-reduce":
            return 2 * share * self.result_bytes
        if self.kind == "reduce-scatter":
            return share * self.result_bytes * n  # the result is one n-th of the input
        if self.kind == "collective-permute":
            return self.result_bytes
        return share * self.result_bytes

    @property
    def bytes_per_step(self) -> float:
        return self.bytes_sent * self.executions

    @property
    def link_share(self) -> float:
        """The part of a chip's ICI bandwidth its rings can use: the torus axes they span over
        the torus's axes (1 where not known, and for DCN transfers)."""
        if self.network != "ici" or not self.torus_dims or not self.torus_axes:
            return 1.0
        return min(1.0, len(self.torus_axes) / self.torus_dims)


def _array_bytes(shape_text: str) -> float:
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _ints(text: Optional[str]) -> List[int]:
    return [int(x) for x in text.split(",") if x] if text else []


def _iota(shape: List[int], dims: List[int], perm: List[int]) -> np.ndarray:
    """XLA's iota device list: arange(prod(dims)) reshaped to dims, transposed, reshaped."""
    ids = np.arange(math.prod(dims)).reshape(dims)
    if perm:
        ids = ids.transpose(perm)
    return ids.reshape(shape)


def _groups(line: str, partitions: int) -> np.ndarray:
    """[groups, group size] of device ids, in every form XLA writes."""
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\((.*?)\))? "
                     r"\{([^}]*)\}", line)
    if mesh:
        axes = re.findall(r"'(\w+)'=(\d+)", mesh.group(1))
        names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
        spec = (mesh.group(2) or "").strip()
        iota = re.fullmatch(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", spec)
        if iota:
            ids = _iota(sizes, _ints(iota.group(1)), _ints(iota.group(2)))
        elif spec:
            ids = np.array(_ints(spec)).reshape(sizes)
        else:
            ids = np.arange(math.prod(sizes)).reshape(sizes)
        grouped = [names.index(a) for a in re.findall(r"'(\w+)'", mesh.group(3))]
        rest = [i for i in range(len(names)) if i not in grouped]
        size = math.prod(sizes[i] for i in grouped)
        return ids.transpose(rest + grouped).reshape(-1, size)
    iota = re.search(r"replica_groups=" + _IOTA, line)
    if iota:
        return _iota(_ints(iota.group(1)), _ints(iota.group(2)), _ints(iota.group(3)))
    listed = re.search(r"replica_groups=\{(\{[\d,{} ]*\})\}", line)
    if listed:
        groups = [_ints(g.replace(" ", "")) for g in re.findall(r"\{([\d, ]*)\}",
                                                                 listed.group(1))]
        return np.array(groups) if len({len(g) for g in groups}) == 1 else \
            np.array([groups[0]])
    pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", line)
    if pairs:  # a permute's "group" is each sender and its target
        return np.array([_ints(p) for p in re.findall(r"\{([\d,]+)", pairs.group(1) + "}")])
    return np.arange(partitions).reshape(1, -1)


def _result_shape(kind: str, shape_text: str) -> str:
    """Async `-start` ops return (operands, results, ...) and a send (payload, context,
    token): keep the results, or the payload."""
    parts = re.findall(r"[a-z]+\d*\[[\d,]*\]", shape_text)
    if kind == "send" and parts:
        return parts[0]
    if kind == "collective-permute" and len(parts) >= 2:
        return parts[1]
    if kind == "all-gather" and shape_text.startswith("((") and len(parts) >= 2:
        return " ".join(parts[len(parts) // 2:])
    return shape_text


def _trip_count(condition_lines: List[str]) -> Optional[int]:
    """A scan's loop condition compares its counter with one constant: that is the count."""
    constants = [int(c) for line in condition_lines
                 for c in re.findall(r"s32\[\][^ ]* constant\((\d+)\)", line)]
    return constants[0] if len(constants) == 1 else None


def _computations(hlo_text: str) -> Tuple[Dict[str, List[str]], Optional[str]]:
    computations: Dict[str, List[str]] = collections.OrderedDict()
    entry, current = None, None
    for line in hlo_text.splitlines():
        head = _COMPUTATION.match(line)
        if head and line.rstrip().endswith("{"):
            current = head.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif current is not None and line.strip() != "}":
            computations[current].append(line)
    return computations, entry


def _execution_counts(computations: Dict[str, List[str]], entry: Optional[str]):
    """name -> executions per step: callers' executions times loop trip counts."""
    calls: Dict[str, List[tuple]] = collections.defaultdict(list)  # callee -> (caller, x)
    for name, lines in computations.items():
        for line in lines:
            loop = _WHILE.search(line)
            if loop:
                trips = _trip_count(computations.get(loop.group(1), []))
                calls[loop.group(2)].append((name, trips or 1))
                calls[loop.group(1)].append((name, trips or 1))
                continue
            for group in _CALLED.findall(line):
                for callee in re.findall(r"%?([\w.\-]+)", group):
                    if callee in computations:
                        calls[callee].append((name, 1))
    memo: Dict[str, int] = {}

    def executions(name: str, depth: int = 0) -> int:
        if name == entry or depth > 50:
            return 1
        if name not in memo:
            memo[name] = sum(executions(caller, depth + 1) * times
                             for caller, times in calls.get(name, [])) or 1
        return memo[name]

    return executions


def _kind(op: str, computation: str) -> Optional[str]:
    kind = op[:-len("-start")] if op.endswith("-start") else op
    if kind == "all-reduce" and computation.startswith("all-reduce-scatter"):
        return "all-reduce-scatter"
    return kind if kind in KINDS else None


def parse(hlo_text: str, layout: Optional[DeviceLayout] = None) -> List[Collective]:
    """Every collective of a compiled module once, with its executions per step."""
    computations, entry = _computations(hlo_text)
    executions = _execution_counts(computations, entry)
    partitions = _PARTITIONS.search(hlo_text)
    partitions = int(partitions.group(1)) if partitions else (
        len(layout.coords) if layout else 1)
    torus_dims = layout.torus_dims if layout else 0
    merged: Dict[tuple, Collective] = {}
    for name, lines in computations.items():
        for number, line in enumerate(lines):
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            kind = _kind(match.group(3), name)
            if kind is None:
                continue
            op_name = _OP_NAME.search(line)
            if kind == "send":
                group_size, axes, network = 2, (), "dcn"
            else:
                groups = _groups(line, partitions)
                group_size = groups.shape[1]
                axes, crosses = layout.describe(list(groups[0])) if layout else ((), False)
                network = "dcn" if crosses else "ici"
            found = Collective(kind, _array_bytes(_result_shape(kind, match.group(2))),
                               group_size, executions(name),
                               op_name.group(1) if op_name else "", network, axes,
                               torus_dims)
            channel = _CHANNEL.search(line)
            # Only an async collective fusion's pieces share one collective's channel (the
            # all-reduces of every fused all-reduce-scatter may all say channel_id=1).
            async_piece = channel and "async_collective_fusion_config" in line
            key = (kind, channel.group(1)) if async_piece else (kind, name, number)
            before = merged.get(key)
            if before is not None:  # another piece of one asynchronous collective
                found = dataclasses.replace(
                    before, executions=min(before.executions, found.executions),
                    pieces=before.pieces + 1, op_name=before.op_name or found.op_name)
            merged[key] = found
    return list(merged.values())


def _totals(collectives: List[Collective], group_of, groups: Sequence[str]):
    """group -> {count, executions, bytes (sent per chip per step)}, every group listed."""
    table = {g: {"count": 0, "executions": 0, "bytes": 0.0} for g in groups}
    for c in collectives:
        row = table[group_of(c)]
        row["count"] += 1
        row["executions"] += c.executions
        row["bytes"] += c.bytes_per_step
    return table


def summarize(collectives: List[Collective]) -> Dict[str, Dict[str, float]]:
    """kind -> {count (collectives, an async one's pieces counted once), instructions (in
    the text), executions (per step), bytes (sent per chip per step)}."""
    table = _totals(collectives, lambda c: c.kind, KINDS)
    for kind, row in table.items():
        row["instructions"] = sum(c.pieces for c in collectives if c.kind == kind)
    return table


def by_network(collectives: List[Collective]) -> Dict[str, Dict[str, float]]:
    """"ici" and "dcn" -> {count, executions, bytes (sent per chip per step),
    link_bytes (bytes over the share of the chip's links they can use: divided by the chip's
    full bandwidth, the time they take)}."""
    table = _totals(collectives, lambda c: c.network, NETWORKS)
    for network, row in table.items():
        row["link_bytes"] = sum(c.bytes_per_step / c.link_share for c in collectives
                                if c.network == network)
    return table


def by_axes(collectives: List[Collective]) -> Dict[str, float]:
    """ICI bytes per step by the torus axes the groups span ("0", "0,1", "?" where not
    known): which rings carry the traffic."""
    table: Dict[str, float] = collections.defaultdict(float)
    for c in collectives:
        if c.network == "ici" and c.bytes_per_step:
            table[",".join(map(str, c.torus_axes)) or "?"] += c.bytes_per_step
    return dict(table)


def by_source(collectives: List[Collective], kind: str, top: int = 8) -> List[tuple]:
    """(jax op, count, bytes per step) of one kind, the heaviest first: where they come from."""
    rows: Dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for c in collectives:
        if c.kind == kind:
            source = re.sub(r"^jit\(train_step\)/", "", c.op_name) or "(no metadata)"
            rows[source][0] += 1
            rows[source][1] += c.bytes_per_step
    return sorted(((k, n, b) for k, (n, b) in rows.items()), key=lambda r: -r[2])[:top]


def by_pass(collectives: List[Collective]) -> Dict[str, Dict[str, float]]:
    """Bytes sent per chip per step by kind, split into the forward pass (weights gathered
    for use) and the backward pass (`transpose(...)` ops: gradients reduced to their
    shards). On TPU, XLA often runs a gather or reduce-scatter as a ring of
    collective-permutes fused with the matmul that needs it, so kinds alone do not say
    which is which; the pass does."""
    table = {p: {k: 0.0 for k in KINDS} for p in ("forward", "backward")}
    for c in collectives:
        side = "backward" if "transpose(" in c.op_name else "forward"
        table[side][c.kind] += c.bytes_per_step
    return table
