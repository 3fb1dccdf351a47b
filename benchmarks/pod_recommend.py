"""The recommended configuration per (model, stage, slice), chosen from compiles.

    python -m benchmarks.pod_recommend                    # compile what is missing, resumably
    python -m benchmarks.pod_recommend --only base --max_minutes 60 --update_readme

For each model size, stage and slice of the pod plan: the run files' default (plain FSDP,
512 rows per objective, remat 'dots') where its collectives take at most 25% of its
compute and it fits (from the pod plan's own compile). Otherwise `gin/mesh/fsdp_gathered.gin`
(every weight gathered once a step, each chip's gradient part reduce-scattered once),
compiled at 512 rows and then at the rows each compile's estimate names
(`compile_step.rows_for_overlap`), up to MAX_ROWS rows per objective; a step that does not
fit tries remat 'full', then accumulation. Every compile is `ernie-m-jax compile` in a child
process and a JSON in `results/pod_recommend/` (existing ones are reused, so the search
goes on where it stopped); the choices go to `ernie_m_jax/aot/recommended.json`, which
`ernie-m-jax compile` reads, and to the README's table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from benchmarks import pod_plan
from ernie_m_jax import files
from ernie_m_jax.aot import recommended
from ernie_m_jax.aot.compile_step import OVERLAP_TARGET, rows_for_overlap
from ernie_m_jax.aot.hardware import parse as parse_accelerator

ROOT = pod_plan.ROOT
RESULTS = ROOT / "benchmarks" / "results" / "pod_recommend"
MARKER = "pod_recommended"
DEFAULT_ROWS = 512
MAX_ROWS = 8192  # per objective: XLM-R's batch (sequences a step)
GATHERED = "fsdp_gathered"
MAX_ACCUM = 8


def targets() -> List[Dict]:
    """(size, stage, slice) in the pod plan's order: base before large, stage 2 first."""
    return [{"size": size, "stage": stage, "accelerator": acc, "slices": slices}
            for size, stage, (acc, slices) in itertools.product(
                pod_plan.SIZES, pod_plan.STAGES, pod_plan.ACCELERATORS)]


def key(target: Dict, mesh: str, remat: str, rows: int, accum: int) -> str:
    slices = f"{target['slices']}x" if target["slices"] > 1 else ""
    return (f"{target['size']}_{target['stage']}_{slices}{target['accelerator']}_{mesh}_"
            f"{remat}_{rows}rows_accum{accum}")


def command(target: Dict, mesh: str, remat: str, rows: int, accum: int,
            output: Path) -> List[str]:
    row = {**target, "mesh": mesh, "remat": remat}
    return pod_plan.command(row, output) + [f"--gin.BATCH_SIZE={rows}",
                                            f"--gin.TrainConfig.grad_accum_steps={accum}"]


def compiled(target: Dict, mesh: str, remat: str, rows: int, accum: int,
             timeout_s: float, budget: "Budget") -> Optional[Dict]:
    """The compile's JSON (compiled now if missing and the budget allows; None if not)."""
    output = RESULTS / f"{key(target, mesh, remat, rows, accum)}.json"
    if output.exists():
        return json.loads(output.read_text())
    if not budget.allows():
        return None
    print(f"{output.stem} ...", flush=True)
    result, error, seconds = pod_plan.run_compile(
        lambda fresh: command(target, mesh, remat, rows, accum, fresh), output, timeout_s)
    if error is not None:
        result = {"error": error, "seconds": round(seconds)}
    files.write_json_atomic(output, result)
    print(f"  {_summary(result)}", flush=True)
    return result


class Budget:
    """Start no new compile after `minutes` (0: no limit)."""

    def __init__(self, minutes: float):
        self.deadline = time.time() + 60 * minutes if minutes else math.inf

    def allows(self) -> bool:
        return time.time() < self.deadline


def share(result: Dict) -> float:
    """Estimated collective time (ICI + DCN) over compute time."""
    r = result["roofline_estimate"]
    return (r["ici_seconds"] + r["dcn_seconds"]) / r["compute_seconds"]


def usable(result: Optional[Dict]) -> bool:
    return bool(result) and "error" not in result and "refused_by_compiler" not in result \
        and int(result.get("counter", 1)) >= 2


def _summary(result: Dict) -> str:
    if "error" in result:
        return f"error: {result['error']}"
    if "refused_by_compiler" in result:
        return "does not fit (XLA refused it)"
    return (f"{result['memory_bytes']['total'] / 2 ** 30:.1f} GiB per chip, "
            f"{'fits' if result['fits'] else 'DOES NOT FIT'}, collectives {share(result):.0%} "
            f"of compute")


def _entry(target: Dict, mesh: str, remat: str, rows: int, accum: int, result: Dict,
           source: str, rows_needed: int) -> Dict:
    networks = result["networks"]
    return {**target, "mesh": mesh, "remat": remat, "rows": rows, "grad_accum_steps": accum,
            "gather_weights_once": result.get("gather_weights_once", "word_embeddings"),
            "collective_share": round(share(result), 4),
            "reaches_target": share(result) <= OVERLAP_TARGET, "rows_needed": rows_needed,
            "hbm_gib": round(result["memory_bytes"]["total"] / 2 ** 30, 2),
            "hbm_capacity_gib": round(result["hbm_bytes"] / 2 ** 30, 2),
            "ici_gib": round(networks["ici"]["bytes"] / 2 ** 30, 3),
            "dcn_mib": round(networks["dcn"]["bytes"] / 2 ** 20, 2),
            "dcn_transfers": networks["dcn"]["executions"],
            "mfu_bound": round(result["roofline_estimate"]["mfu_overlapped"], 3),
            "mfu_bound_not_hidden": round(result["roofline_estimate"]["mfu_serial"], 3),
            "compile": source}


def choose(target: Dict, timeout_s: float, budget: Budget) -> Optional[Dict]:
    """The recommendation for one target, or None while compiles are still missing."""
    default = pod_plan.load_one({**target, "mesh": "fsdp", "remat": "dots"})
    if usable(default) and default["fits"] and share(default) <= OVERLAP_TARGET:
        return _entry(target, "fsdp", "dots", DEFAULT_ROWS, 1, default,
                      f"pod_plan/{pod_plan.key({**target, 'mesh': 'fsdp', 'remat': 'dots'})}",
                      DEFAULT_ROWS)
    shards = parse_accelerator(target["accelerator"], target["slices"]).num_chips
    rows, remat, accum = DEFAULT_ROWS, "dots", 1
    for _ in range(12):
        result = compiled(target, GATHERED, remat, rows, accum, timeout_s, budget)
        if result is None:
            return None
        source = f"pod_recommend/{key(target, GATHERED, remat, rows, accum)}"
        if not usable(result) or not result["fits"]:
            if "error" in result and "refused_by_compiler" not in result:
                return None  # a compile that failed: nothing to recommend from
            if remat == "dots":
                remat = "full"
            elif accum < MAX_ACCUM and rows % (accum * 2 * shards) == 0:
                accum *= 2
            else:
                return None
            continue
        needed = rows_for_overlap(rows, share(result), shards * accum)
        if share(result) <= OVERLAP_TARGET or rows >= MAX_ROWS:
            return _entry(target, GATHERED, remat, rows, accum, result, source,
                          max(needed, rows))
        rows = min(needed, MAX_ROWS // (shards * accum) * shards * accum)
    return None


def block(entries: Sequence[Dict]) -> str:
    lines = ["| model | stage | slice | flags (on the run and model files) | GiB/chip (HBM) | "
             "ICI sent/chip a step | DCN | est. collective time / compute time | "
             "MFU at most (hidden / not) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        slice_name = (f"{e['slices']} x {e['accelerator']}" if e["slices"] > 1
                      else e["accelerator"])
        dcn = (f"{e['dcn_mib']:.1f} MiB in {e['dcn_transfers']} transfers" if e["slices"] > 1
               else "–")
        reach = (f"{e['collective_share']:.0%}" if e["reaches_target"] else
                 f"**{e['collective_share']:.0%}**: needs ~{e['rows_needed']} rows")
        lines.append(f"| {e['size']} | {e['stage']} | {slice_name} | "
                     f"`{recommended.flags(e)}` | {e['hbm_gib']:.1f} ({e['hbm_capacity_gib']:.0f})"
                     f" | {e['ici_gib']:.2f} GiB | {dcn} | {reach} | {e['mfu_bound']:.0%} / "
                     f"{e['mfu_bound_not_hidden']:.0%} |")
    return "\n".join(lines)


def write(entries: List[Dict], update_readme: bool) -> None:
    files.write_json_atomic(recommended.PATH, {
        "written_by": "python -m benchmarks.pod_recommend", "target_share": OVERLAP_TARGET,
        "max_rows": MAX_ROWS, "recommendations": entries})
    recommended.load.cache_clear()
    if update_readme:
        missing = len(targets()) - len(entries)
        note = ("" if not missing else
                f"\n\n{len(entries)} of {len(targets())} (model, stage, slice) chosen; "
                f"`python -m benchmarks.pod_recommend` compiles the rest, resumably.")
        files.replace_marked_block(pod_plan.README, MARKER, block(entries) + note)


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[],
                        help="keep targets whose name contains this (repeatable)")
    parser.add_argument("--max_minutes", type=float, default=0)
    parser.add_argument("--timeout_minutes", type=float, default=30)
    parser.add_argument("--update_readme", action="store_true")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.max_minutes)
    entries = []
    for target in targets():
        name = "_".join(str(v) for v in target.values())
        chosen = None
        if all(part in name for part in args.only):
            chosen = choose(target, 60 * args.timeout_minutes, budget)
        else:  # keep what an earlier run chose
            chosen = recommended.find(target["size"], target["stage"], target["accelerator"],
                                      target["slices"])
        if chosen is not None:
            entries.append(chosen)
            write(entries, args.update_readme)
    write(entries, args.update_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
