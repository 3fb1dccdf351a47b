"""Where the CPU train step's time goes, op class by op class, ours beside PyTorch eager (#41).

    python -m benchmarks.step_profile --size small --length 128 --batch 16

Ours: the compiled MMLM step of `benchmarks.train_step.jax_step`'s configuration, traced with
`jax.profiler` (XLA:CPU records one event per executed op, on every thread it uses). PyTorch:
the same step as `benchmarks.train_step.torch_step`, under `torch.profiler` (self time of each
aten op on the calling thread; its matmuls run multi-threaded inside). Both are split into
the same classes and printed per step; op time is summed over threads. Beside them, each
side's system CPU time and minor page faults per step (`getrusage`): the kernel's work of
mapping fresh buffers, which lands inside whichever op first writes one.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import re
import resource
import statistics
import tempfile
import time
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from ernie_m_jax import huge_pages

CLASSES = ("matmul", "copy / transpose", "dropout RNG", "optimizer", "other element-wise")


RNG_SCOPES = ("_bernoulli", "threefry", "_uniform", "random_bits")


def hlo_op_names(hlo_text: str) -> Dict[str, str]:
    """{instruction name: the JAX op it came from (`metadata.op_name`)} of compiled HLO."""
    return dict(re.findall(r"%?([\w.-]+) = [^\n]*?metadata=\{op_name=\"([^\"]*)\"",
                           hlo_text))


def xla_op_class(name: str, op_names: Mapping[str, str]) -> Optional[str]:
    """The class of one XLA:CPU op event (a fusion or thunk name; `op_names` from
    `hlo_op_names`), None for the runtime's own events (executor, waits, Python frames) and
    for loops and calls, whose ops have events of their own. Fusions are named after their
    root op and carry their JAX op's name scope: matmuls by name, the rest by scope (random
    bits inside dropout, the update outside the loss's `jvp`)."""
    if name.startswith(("ThunkExecutor", "SlinkyThreadPool", "$")) or ":" in name:
        return None
    kind = re.sub(r"\.\d+$", "", name)
    if kind in ("while", "call", "conditional"):
        return None
    if kind in ("dot", "convolution") or kind.startswith(("ynn_fusion", "xnn_fusion",
                                                           "onednn")):
        return "matmul"
    scope = op_names.get(name, "")
    if any(s in scope for s in RNG_SCOPES):
        return "dropout RNG"
    if kind in ("copy", "transpose") or kind.startswith(("copy_", "transpose_")):
        return "copy / transpose"
    if scope and "jvp(" not in scope:
        return "optimizer"
    return "other element-wise"


def torch_op_class(name: str) -> Optional[str]:
    """The class of one aten op (or profiler range) by its name; None for ranges that only
    enclose other ops (their self time is bookkeeping)."""
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::baddbmm"):
        return "matmul"
    if name in ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"):
        return "copy / transpose"
    if name in ("aten::bernoulli_", "aten::dropout", "aten::native_dropout"):
        return "dropout RNG"
    if name.startswith("Optimizer.") or name in ("aten::lerp_", "aten::addcdiv_",
                                                  "aten::addcmul_", "aten::sqrt",
                                                  "aten::_foreach_lerp_",
                                                  "aten::_foreach_addcdiv_",
                                                  "aten::_foreach_addcmul_",
                                                  "aten::_foreach_sqrt"):
        return "optimizer"
    if name.startswith("aten::"):
        return "other element-wise"
    return None


def split(events: Iterable[Tuple[str, float]], classify: Callable[[str], Optional[str]],
          steps: int) -> Dict[str, float]:
    """{class: milliseconds per step} from (name, milliseconds) events of `steps` steps."""
    out = dict.fromkeys(CLASSES, 0.0)
    for name, ms in events:
        kind = classify(name)
        if kind is not None:
            out[kind] += ms / steps
    return out


def host_cost(fn: Callable[[], None], steps: int) -> Dict[str, float]:
    """System CPU time and minor page faults per call of `fn` (already warmed up), from the
    process's rusage: the kernel's share of a step, which no op's profile event shows
    (a page faulted in is charged to whichever op first writes it)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"system_ms": (after.ru_stime - before.ru_stime) * 1e3 / steps,
            "page_faults": (after.ru_minflt - before.ru_minflt) / steps}


def _jax_events(size: str, length: int, batch: int, steps: int
                ) -> Tuple[float, Dict[str, float], Sequence[Tuple[str, float]], Dict[str, str]]:
    import jax

    from benchmarks import train_step as bench

    step = bench.compiled_step(bench._model_config(size, "float32"), batch, length)
    step_s = statistics.median(bench._median_seconds(step.one, steps, 2))
    host = host_cost(step.one, steps)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                step.one()
        path = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
        trace = json.load(gzip.open(path))
    events = [(e["name"], e["dur"] / 1e3) for e in trace["traceEvents"] if e.get("ph") == "X"]
    return step_s, host, events, hlo_op_names(step.compiled.as_text())


def _torch_events(size: str, length: int, batch: int, steps: int
                  ) -> Tuple[float, Dict[str, float], Sequence[Tuple[str, float]]]:
    import torch

    from benchmarks import train_step as bench

    one = bench.torch_step_fn(bench._model_config(size, "float32"), batch, length)
    step_s = statistics.median(bench._median_seconds(one, steps, 2))
    host = host_cost(one, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            one()
    return step_s, host, [(e.key, e.self_cpu_time_total / 1e3) for e in prof.key_averages()]


def profile(size: str, length: int, batch: int, steps: int = 3) -> Dict[str, object]:
    jax_step_s, jax_host, jax_events, op_names = _jax_events(size, length, batch, steps)
    torch_step_s, torch_host, torch_events = _torch_events(size, length, batch, steps)
    return {"size": size, "length": length, "batch": batch, "steps": steps,
            "ours": {"step_ms": jax_step_s * 1e3, "host": jax_host,
                     "split_ms": split(jax_events, lambda n: xla_op_class(n, op_names),
                                       steps)},
            "pytorch": {"step_ms": torch_step_s * 1e3, "host": torch_host,
                        "split_ms": split(torch_events, torch_op_class, steps)}}


def markdown(result: Mapping[str, object]) -> str:
    ours, theirs = result["ours"], result["pytorch"]
    lines = [f"{result['size']}@{result['length']}, batch {result['batch']}: step "
             f"{ours['step_ms']:.0f} ms (ours) vs {theirs['step_ms']:.0f} ms (PyTorch eager)",
             "", "| op class | ours: op time summed over threads (ms/step) | PyTorch: self time "
             "on the calling thread (ms/step) |", "|---|---|---|"]
    for kind in CLASSES:
        lines.append(f"| {kind} | {ours['split_ms'][kind]:.0f} | "
                     f"{theirs['split_ms'][kind]:.0f} |")
    for key, label in (("system_ms", "system CPU time, whole process (ms/step)"),
                       ("page_faults", "minor page faults, whole process (per step)")):
        if key in ours.get("host", {}):
            lines.append(f"| {label} | {ours['host'][key]:,.0f} | {theirs['host'][key]:,.0f} |")
    return "\n".join(lines)


def step_parser(description: str) -> argparse.ArgumentParser:
    """The arguments that name the step these CPU diagnostics take apart (the benchmark's
    small@128 row by default): `--size`, `--length`, `--batch`."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = step_parser(__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--output", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    started = time.time()
    result = profile(args.size, args.length, args.batch, args.steps)
    print(markdown(result))
    print(f"({time.time() - started:.0f} s)")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()  # as every `ernie-m-jax` command runs, both sides
    raise SystemExit(main())
