"""Every collective in a compiled module's HLO text: kind, count, bytes, and where from.

Counts are static (instructions in the text) and dynamic (times executed per step: an
instruction inside the scanned layer loop runs once per layer, inside the accumulation loop
once per microbatch). Bytes are what one chip sends for one execution, by the usual ring
costs: all-gather and reduce-scatter (n-1)/n of the full buffer, all-reduce twice that,
all-to-all (n-1)/n, a collective-permute its whole buffer.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Dict, List, Optional

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

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


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    result_bytes: float  # the whole result buffer on one chip (tuples summed)
    group_size: int
    executions: int  # per step
    op_name: str  # the jax op it came from (metadata), "" if none

    @property
    def bytes_sent(self) -> float:
        """Bytes one chip sends for one execution."""
        n = max(self.group_size, 1)
        share = (n - 1) / n
        if self.kind == "all-reduce":
            return 2 * share * self.result_bytes
        if self.kind == "reduce-scatter":
            return share * self.result_bytes * n  # the result is one n-th of the input
        if self.kind == "collective-permute":
            return self.result_bytes
        return share * self.result_bytes


def _array_bytes(shape_text: str) -> float:
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _group_size(line: str) -> int:
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", line)
    if mesh:
        sizes = dict(re.findall(r"'(\w+)'=(\d+)", mesh.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", mesh.group(2)))
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
    if iota:
        return int(iota.group(2))
    listed = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
    if listed:
        return len(listed.group(1).split(","))
    return 1


def _result_shape(kind: str, shape_text: str) -> str:
    """Async `-start` ops return (operands, results, ...): keep the results only."""
    parts = re.findall(r"[a-z]+\d*\[[\d,]*\]", shape_text)
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


def parse(hlo_text: str) -> List[Collective]:
    """Every collective of a compiled module, with its executions per step."""
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
    # Executions of each computation per step: callers' executions times loop trip counts.
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

    found = []
    for name, lines in computations.items():
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            op = match.group(3)
            kind = op[:-len("-start")] if op.endswith("-start") else op
            if kind not in KINDS:
                continue
            op_name = _OP_NAME.search(line)
            found.append(Collective(
                kind, _array_bytes(_result_shape(kind, match.group(2))), _group_size(line),
                executions(name), op_name.group(1) if op_name else ""))
    return found


def summarize(collectives: List[Collective]) -> Dict[str, Dict[str, float]]:
    """kind -> {count (in the text), executions (per step), bytes (sent per chip per step),
    bytes_once (each instruction counted once)}.

    `bytes` counts every trip of the loops a collective sits in. XLA sometimes pipelines a
    collective into a loop body behind flags so that it runs on one trip only (async
    collective fusions with a start/end flag); those are over-counted there, so the truth
    lies between `bytes_once` and `bytes`."""
    table = {k: {"count": 0, "executions": 0, "bytes": 0.0, "bytes_once": 0.0} for k in KINDS}
    for c in collectives:
        row = table[c.kind]
        row["count"] += 1
        row["executions"] += c.executions
        row["bytes"] += c.bytes_sent * c.executions
        row["bytes_once"] += c.bytes_sent
    return table


def by_source(collectives: List[Collective], kind: str, top: int = 8) -> List[tuple]:
    """(jax op, count, bytes per step) of one kind, the heaviest first: where they come from."""
    rows: Dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for c in collectives:
        if c.kind == kind:
            source = re.sub(r"^jit\(train_step\)/", "", c.op_name) or "(no metadata)"
            rows[source][0] += 1
            rows[source][1] += c.bytes_sent * c.executions
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
        table[side][c.kind] += c.bytes_sent * c.executions
    return table
