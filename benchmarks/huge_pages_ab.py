"""The CPU train step with and without glibc's huge pages (`ernie_m_jax.huge_pages`), side by
side: fresh processes, interleaved, the same compiled step as `benchmarks.train_step`.

    python -m benchmarks.huge_pages_ab                          # tiny, small, base (~10 min)
    python -m benchmarks.huge_pages_ab --cases tiny@128 --rounds 1 --update_readme

Each round runs every case twice, one child process with `ERNIE_M_JAX_HUGE_PAGES=0` and one
that restarts itself with the tunable as every command does; a child reports its median and
best step time, the minor page faults of its whole life (compile included) and the
`GLIBC_TUNABLES` it ran with, so a host without huge pages shows two equal arms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from ernie_m_jax import files, huge_pages

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "huge_pages_ab.json"
MARKER = "huge_pages_ab"
TOKENS = 2048  # per step, as `train_step`'s cpu preset: batch = TOKENS // length
STEPS = {"tiny": 15, "small": 7, "base": 3}
DEFAULT_CASES = ("tiny@128", "small@128", "small@512", "base@128")
ARMS = ("default", "huge pages")


def arm_environment(arm: str, environ: Mapping[str, str]) -> Dict[str, str]:
    """A child's environment: the default arm opts out of the restart; the other leaves it
    to the child (it restarts itself where the host offers huge pages)."""
    base = {k: v for k, v in environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.OPT_OUT)}
    return {**base, huge_pages.OPT_OUT: "0"} if arm == "default" else base


def _child(size: str, length: int, steps: int) -> None:
    from benchmarks import train_step as bench

    step = bench.compiled_step(bench._model_config(size, "float32"), TOKENS // length, length)
    times = bench._median_seconds(step.one, steps, 2)
    print(json.dumps({"ms": statistics.median(times) * 1e3, "best_ms": min(times) * 1e3,
                      "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
                      "tunables": os.environ.get("GLIBC_TUNABLES", "")}))


def run(cases: Sequence[str], rounds: int) -> Dict[str, Dict[str, List[dict]]]:
    """{case: {arm: [one child's figures per round]}}, arms alternating within each case."""
    results: Dict[str, Dict[str, List[dict]]] = {c: {a: [] for a in ARMS} for c in cases}
    for _ in range(rounds):
        for case in cases:
            size, length = case.split("@")
            for arm in ARMS:
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.huge_pages_ab", "--child", size, length,
                     str(STEPS[size])], cwd=ROOT, env=arm_environment(arm, os.environ),
                    capture_output=True, text=True, check=True)
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                results[case][arm].append(figures)
                print(f"{case} {arm}: {figures}", flush=True)
    return results


def markdown(results: Mapping[str, Mapping[str, Sequence[dict]]]) -> str:
    """The side-by-side table: each round's median step per arm, the change per round, and
    the mean page faults per process."""
    lines = ["| size@length | default (ms) | huge pages (ms) | change | best, default / huge "
             "pages (ms) | minor faults per process, default / huge pages |",
             "|---|---|---|---|---|---|"]
    for case, arms in results.items():
        off, on = arms["default"], arms["huge pages"]
        change = ", ".join(f"{b['ms'] / a['ms'] - 1:+.0%}" for a, b in zip(off, on))
        lines.append(f"| {case} | {_medians(off)} | {_medians(on)} | {change} | "
                     f"{min(r['best_ms'] for r in off):,.0f} / "
                     f"{min(r['best_ms'] for r in on):,.0f} | "
                     f"{_millions(off)} / {_millions(on)} |")
    return "\n".join(lines)


def _medians(rows: Sequence[dict]) -> str:
    return ", ".join(f"{r['ms']:,.0f}" for r in rows)


def _millions(rows: Sequence[dict]) -> str:
    return f"{statistics.mean(r['page_faults'] for r in rows) / 1e6:.2f}M"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help="comma-separated size@length (sizes: tiny, small, base)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--update_readme", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("SIZE", "LENGTH", "STEPS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        size, length, steps = args.child
        _child(size, int(length), int(steps))
        return 0
    cases = args.cases.split(",")
    for case in cases:
        size, _, length = case.partition("@")
        if size not in STEPS or not length.isdigit() or TOKENS % int(length):
            parser.error(f"--cases: {case!r} is not size@length with a size of "
                         f"{sorted(STEPS)} and a length dividing {TOKENS}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    results = run(cases, args.rounds)
    files.write_json_atomic(RESULT, results)
    table = markdown(results)
    print(table)
    if args.update_readme:
        files.replace_marked_block(Path(__file__).with_name("README.md"), MARKER, table)
    return 0


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()  # a child of the huge-pages arm restarts here
    sys.exit(main())
