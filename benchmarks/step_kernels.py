"""The CPU train step's matmuls one by one, ours (XLA:CPU) beside PyTorch's (#41).

    python -m benchmarks.step_kernels --size small --length 128 --update_readme

Every matmul an MMLM train step runs (forward, input gradient and weight gradient of each
projection, the attention's batched products, the MLM head), each shape with the operand
layout the step uses, timed alone: ours as one jitted `lax.dot_general`, PyTorch's as the
same product of its tensors (`a @ b.t()` and the like, all cores). Each kernel's two sides
take turns; beside the time, how many of the host's cores each kept busy (process CPU time
over wall time), which is what the whole-step profile cannot show: an op's event says how
long it ran, not on how many threads. The per-step column multiplies by how often the step
runs that kernel; the kernels' FLOPs add up to `metrics.step_flops` (tested).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ernie_m_jax import files, huge_pages

RESULTS = Path(__file__).with_name("results")
MARKER = "step_kernels"

# dimension numbers of `lax.dot_general`: ((lhs contracting, rhs contracting), (lhs batch,
# rhs batch)), named by layout: N = as stored, T = transposed (contracting its first axis).
NN = (((1,), (0,)), ((), ()))
NT = (((1,), (1,)), ((), ()))
TN = (((0,), (0,)), ((), ()))
BATCHED_NT = (((2,), (2,)), ((0,), (0,)))
BATCHED_NN = (((2,), (1,)), ((0,), (0,)))
BATCHED_TN = (((1,), (1,)), ((0,), (0,)))


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One matmul of the step: `per_step` runs of lhs x rhs with these dimension numbers."""
    name: str
    lhs: Tuple[int, ...]
    rhs: Tuple[int, ...]
    dims: tuple
    per_step: int

    @property
    def flops(self) -> float:
        """2 x multiply-adds of one run: every lhs element meets every free rhs column."""
        (_, contracting), (_, batch) = self.dims
        free = [n for i, n in enumerate(self.rhs) if i not in contracting and i not in batch]
        return 2.0 * math.prod(self.lhs) * math.prod(free)


def step_kernels(config, batch: int, length: int, predictions: int) -> List[Kernel]:
    """The matmuls of one MMLM train step of `config` on [batch, length] rows with
    `predictions` MLM slots per row (`MaskingConfig.num_slots`)."""
    t, d, m = batch * length, config.hidden_size, config.mlp_dim
    bh, hd, n = batch * config.num_heads, config.head_dim, config.num_layers
    p, v = batch * predictions, config.vocab_size
    return [
        Kernel("q/k/v/out projection, forward", (t, d), (d, d), NN, 4 * n),
        Kernel("q/k/v/out projection, input gradient", (t, d), (d, d), NT, 4 * n),
        Kernel("q/k/v/out projection, weight gradient", (t, d), (t, d), TN, 4 * n),
        Kernel("MLP up, forward", (t, d), (d, m), NN, n),
        Kernel("MLP up, input gradient", (t, m), (d, m), NT, n),
        Kernel("MLP up, weight gradient", (t, d), (t, m), TN, n),
        Kernel("MLP down, forward", (t, m), (m, d), NN, n),
        Kernel("MLP down, input gradient", (t, d), (m, d), NT, n),
        Kernel("MLP down, weight gradient", (t, m), (t, d), TN, n),
        # batched over batch x heads: scores and dP (q k^T, dO v^T), context and dQ (P v,
        # dS k), dK and dV (dS^T q, P^T dO)
        Kernel("attention q k^T and dO v^T (batched)", (bh, length, hd), (bh, length, hd),
               BATCHED_NT, 2 * n),
        Kernel("attention P v and dS k (batched)", (bh, length, length), (bh, length, hd),
               BATCHED_NN, 2 * n),
        Kernel("attention dS^T q and P^T dO (batched)", (bh, length, length),
               (bh, length, hd), BATCHED_TN, 2 * n),
        Kernel("MLM head dense, forward", (p, d), (d, d), NN, 1),
        Kernel("MLM head dense, input gradient", (p, d), (d, d), NT, 1),
        Kernel("MLM head dense, weight gradient", (p, d), (p, d), TN, 1),
        Kernel("MLM logits (tied embeddings), forward", (p, d), (v, d), NT, 1),
        Kernel("MLM logits, input gradient", (p, v), (v, d), NN, 1),
        Kernel("MLM logits, embedding gradient", (p, v), (p, d), TN, 1),
    ]


def cores_busy(fn: Callable[[], None], reps: int) -> Tuple[float, float]:
    """(median seconds of one call, cores busy): `reps` timed calls, the process's user and
    system CPU time over their wall time (2.0 = both cores of a 2-core host throughout)."""
    times = []
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return statistics.median(times), cpu / wall


def _sides(kernel: Kernel, seed: int = 0) -> Dict[str, Callable[[], None]]:
    import jax
    import numpy as np
    import torch

    rs = np.random.RandomState(seed)
    lhs = rs.standard_normal(kernel.lhs).astype(np.float32)
    rhs = rs.standard_normal(kernel.rhs).astype(np.float32)
    ours = jax.jit(lambda a, b: jax.lax.dot_general(a, b, kernel.dims))
    a, b = jax.device_put(lhs), jax.device_put(rhs)
    ta, tb = torch.from_numpy(lhs), torch.from_numpy(rhs)
    theirs = {NN: lambda: ta @ tb, NT: lambda: ta @ tb.t(), TN: lambda: ta.t() @ tb,
              BATCHED_NT: lambda: torch.bmm(ta, tb.transpose(1, 2)),
              BATCHED_NN: lambda: torch.bmm(ta, tb),
              BATCHED_TN: lambda: torch.bmm(ta.transpose(1, 2), tb)}[kernel.dims]
    np.testing.assert_allclose(np.asarray(ours(a, b)), theirs().numpy(), rtol=2e-3, atol=2e-2)
    return {"ours": lambda: ours(a, b).block_until_ready(), "pytorch": theirs}


def measure(kernels: Sequence[Kernel], rounds: int = 3, reps: int = 8) -> List[dict]:
    """Each kernel's two sides in turns (the starting side rotating), `rounds` turns of one
    untimed call and `reps` timed ones each: median call time and cores busy per side."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for kernel in kernels:
        sides = _sides(kernel)
        seen: Dict[str, List[Tuple[float, float]]] = {s: [] for s in sides}
        names = list(sides)
        for r in range(rounds):
            for name in names[r % 2:] + names[:r % 2]:
                sides[name]()
                seen[name].append(cores_busy(sides[name], reps))
        row = {"kernel": kernel.name, "lhs": list(kernel.lhs), "rhs": list(kernel.rhs),
               "per_step": kernel.per_step, "gflop": kernel.flops / 1e9}
        for name, figures in seen.items():
            row[f"{name}_ms"] = statistics.median(f[0] for f in figures) * 1e3
            row[f"{name}_cores"] = statistics.median(f[1] for f in figures)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: Sequence[dict], header: str) -> str:
    lines = [header, "", "| kernel | shapes | runs a step | ours (ms) | cores busy, ours | "
             "PyTorch (ms) | cores busy, PyTorch | ours - PyTorch, per step (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    total = 0.0
    for r in rows:
        gap = (r["ours_ms"] - r["pytorch_ms"]) * r["per_step"]
        total += gap
        shapes = f"{'x'.join(map(str, r['lhs']))} . {'x'.join(map(str, r['rhs']))}"
        lines.append(f"| {r['kernel']} | {shapes} | {r['per_step']} | {r['ours_ms']:.2f} | "
                     f"{r['ours_cores']:.2f} | {r['pytorch_ms']:.2f} | "
                     f"{r['pytorch_cores']:.2f} | {gap:+.1f} |")
    ours = sum(r["ours_ms"] * r["per_step"] for r in rows)
    theirs = sum(r["pytorch_ms"] * r["per_step"] for r in rows)
    lines.append(f"| **all of the step's matmuls** | | | **{ours:,.0f}** a step | | "
                 f"**{theirs:,.0f}** a step | | **{total:+.0f}** |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from benchmarks.step_profile import step_parser

    parser = step_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--update_readme", action="store_true",
                        help="write the table into benchmarks/README.md")
    args = parser.parse_args(argv)
    if min(args.rounds, args.reps, args.batch, args.length) < 1:
        parser.error("--rounds, --reps, --batch and --length must be at least 1")
    import jax

    from benchmarks import train_step as bench
    from benchmarks.train_step import cpu_model
    from ernie_m_jax.configs import MaskingConfig

    config = bench._model_config(args.size, "float32")
    kernels = step_kernels(config, args.batch, args.length,
                           MaskingConfig().num_slots(args.length))
    rows = measure(kernels, args.rounds, args.reps)
    header = (f"{args.size}@{args.length}, batch {args.batch}; {cpu_model()} "
              f"({os.cpu_count()} cores), jax {jax.__version__}, float32; median of "
              f"{args.rounds} turns of {args.reps} calls per side, the sides taking turns.")
    table = markdown(rows, header)
    print(table)
    files.write_json_atomic(RESULTS / f"step_kernels_{args.size}_{args.length}.json",
                            {"header": header, "rows": rows})
    if args.update_readme:
        files.replace_marked_block(Path(__file__).with_name("README.md"), MARKER, table)
    return 0


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()  # as every `ernie-m-jax` command runs, both sides
    raise SystemExit(main())
