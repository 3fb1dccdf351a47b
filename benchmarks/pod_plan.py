"""The pod plan: the real train step compiled for TPU slices on this host, one configuration
at a time, each result a committed JSON, and the README's table made from them.

    python -m benchmarks.pod_plan                    # compile what is missing, in order
    python -m benchmarks.pod_plan --max_minutes 40   # stop starting new compiles after 40 min
    python -m benchmarks.pod_plan --only base --only stage2 --update_readme

Every configuration is `ernie-m-jax compile` (the same command a user runs) in a child
process, writing `results/pod_plan/<key>.json`; a configuration whose JSON exists is skipped
(unless an older collective counter measured it: then it is compiled again, and kept if that
fails), so an interrupted plan goes on where it stopped when the same command runs again. A compile
that fails is recorded with its error (and retried with `--retry_errors`). Base on 256 chips
takes minutes on 2 CPU cores: the plan is meant to be grown over several sessions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

from ernie_m_jax import files
from ernie_m_jax.aot import hlo

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pod_plan"
README = ROOT / "README.md"
MARKER = "pod_plan"

SIZES = ("base", "large")
ACCELERATORS = (("v4-32", 1), ("v5p-128", 1), ("v5e-256", 1), ("v6e-256", 1), ("v5e-256", 2))
STAGES = ("stage2", "stage1")
# data_parallel is not asked of a pod plan, but on 256 chips FSDP gathers every weight for
# two rows per chip: the replicated-weights alternative belongs beside it, after the meshes the
# plan asks for.
MESHES = ("fsdp", "fsdp_tensor", "data_parallel")
REMATS = ("dots", "full")


def plan() -> List[Dict[str, object]]:
    """Every configuration, the most telling first: stage 2 (all four objectives) under plain
    FSDP with remat 'dots' on every slice, then stage 1, then remat 'full', then the other
    meshes (tensor parallelism compiles several times slower)."""
    rows = []
    for mesh, remat, stage, size, (accelerator, slices) in itertools.product(
            MESHES, REMATS, STAGES, SIZES, ACCELERATORS):
        rows.append({"size": size, "accelerator": accelerator, "slices": slices,
                     "stage": stage, "mesh": mesh, "remat": remat})
    return rows


def key(row: Dict[str, object]) -> str:
    slices = f"{row['slices']}x" if row["slices"] > 1 else ""
    return (f"{row['size']}_{row['stage']}_{slices}{row['accelerator']}_{row['mesh']}_"
            f"{row['remat']}")


def command(row: Dict[str, object], output: Path) -> List[str]:
    """The user's own command for this configuration."""
    return [sys.executable, "-m", "ernie_m_jax.cli", "compile",
            f"--gin_file=gin/runs/pretrain_{row['stage']}.gin",
            f"--gin_file=gin/models/{row['size']}.gin", f"--gin_file=gin/mesh/{row['mesh']}.gin",
            f"--topology={row['accelerator']}", f"--num_slices={row['slices']}",
            "--gin.MONO_MIXTURE='plan.mono'", "--gin.PARA_MIXTURE='plan.para'",
            "--gin.NUM_STEPS=1000", f"--gin.ModelConfig.remat_policy='{row['remat']}'",
            f"--output={output}"]


def run_compile(make_command, output: Path, timeout_s: float):
    """(JSON, None, seconds) of a compile run in a child process, or (None, its last error
    line, seconds). It writes a fresh file beside `output`, which stays untouched."""
    fresh = output.with_name(output.name + ".new")
    fresh.unlink(missing_ok=True)
    started = time.time()
    try:
        done = subprocess.run(make_command(fresh), cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout_s)
        error = None if fresh.exists() else (done.stderr.strip().splitlines() or ["?"])[-1]
    except subprocess.TimeoutExpired:
        error = f"compile took longer than {timeout_s:.0f} s"
    if error is not None:
        return None, error, time.time() - started
    result = json.loads(fresh.read_text())
    fresh.unlink()
    return result, None, time.time() - started


def compile_one(row: Dict[str, object], timeout_s: float) -> Dict[str, object]:
    """Compile one configuration into its JSON. The compile writes a fresh file beside the
    result and replaces it only once done: a stale result that fails to recompile is kept,
    with the error beside it."""
    output = RESULTS / f"{key(row)}.json"
    result, error, seconds = run_compile(lambda fresh: command(row, fresh), output, timeout_s)
    if error is not None and output.exists() and is_stale(json.loads(output.read_text())):
        result = {**json.loads(output.read_text()), "recompile_error": error}
    elif error is not None:
        result = {"error": error, "seconds": round(seconds)}
    result["config"] = row
    files.write_json_atomic(output, result)
    return result


def load_one(row: Dict[str, object]):
    """One configuration's JSON, or None where it was not compiled."""
    path = RESULTS / f"{key(row)}.json"
    return json.loads(path.read_text()) if path.exists() else None


def load() -> Dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


def _progress(result: dict) -> str:
    """One line for the driver's log."""
    if "error" in result:
        return f"error: {result['error']}"
    if "recompile_error" in result:
        return f"recompile failed, the older result is kept: {result['recompile_error']}"
    if "refused_by_compiler" in result:
        needed = result["refused_by_compiler"]["temporaries_bytes"] / 2 ** 30
        return f"does not fit: XLA refused it, temporaries alone {needed:.1f} GiB per chip"
    gib = result["memory_bytes"]["total"] / 2 ** 30
    return f"{gib:.1f} GiB per chip" + ("" if result["fits"] else ": does not fit")


def _sent_gib(collectives: Dict[str, dict], key: str = "bytes") -> float:
    """GiB one chip sends a step, over every kind of collective."""
    return sum(v[key] for v in collectives.values()) / 2 ** 30


def counter_version(result: dict) -> int:
    """Which collective counter measured a compile (1: before `hlo.COUNTER_VERSION` was
    written; it over-counted split async collectives and missed DCN sends and mesh-form
    replica groups)."""
    return int(result.get("counter", 1))


def is_stale(result: dict) -> bool:
    """A compile the plan does again: measured by an older counter."""
    return "error" not in result and "refused_by_compiler" not in result and \
        counter_version(result) < hlo.COUNTER_VERSION


def _traffic_cells(result: dict, slices: int) -> str:
    """ICI, DCN and collective time over compute time, as the table shows them."""
    r = result["roofline_estimate"]
    ratio = f"{(r['ici_seconds'] + r['dcn_seconds']) / r['compute_seconds']:.0%}"
    if counter_version(result) < 2:
        return (f"{_sent_gib(result['collectives']):.2f} GiB by counter 1 (not comparable; "
                f"recompile) | not counted | {ratio} by counter 1")
    ici, dcn = result["networks"]["ici"], result["networks"]["dcn"]
    dcn_cell = (f"{dcn['bytes'] / 2 ** 20:.1f} MiB in {dcn['executions']} transfers"
                if slices > 1 else "–")
    return (f"{ici['bytes'] / 2 ** 30:.2f} GiB ({ici['count']} collectives, "
            f"{ici['executions']} runs) | {dcn_cell} | {ratio}")


def table(results: Dict[str, dict]) -> str:
    """One row per configuration that has a result."""
    lines = ["| model | stage | slice | mesh | remat | GiB/chip (HBM) | fits | ICI sent/chip "
             "a step | DCN sent/chip a step | est. collective time / compute time | compile |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in plan():
        result = results.get(key(row))
        if result is None:
            continue
        slice_name = (f"{row['slices']} x {row['accelerator']}" if row["slices"] > 1
                      else row["accelerator"])
        head = f"| {row['size']} | {row['stage']} | {slice_name} | {row['mesh']} | {row['remat']} |"
        if "error" in result:
            lines.append(f"{head} error: {result['error'][:80].strip()} | | | | | |")
            continue
        if "refused_by_compiler" in result:
            refused = result["refused_by_compiler"]
            lines.append(
                f"{head} > {refused['temporaries_bytes'] / 2 ** 30:.1f} "
                f"({result['hbm_bytes'] / 2 ** 30:.0f}) | **no**: XLA refused it, its "
                f"temporaries alone need {refused['temporaries_bytes'] / 2 ** 30:.2f} of "
                f"{refused['available_bytes'] / 2 ** 30:.2f} GiB usable | | | | "
                f"{result['compile_seconds']:.0f} s |")
            continue
        gib = result["memory_bytes"]["total"] / 2 ** 30
        hbm = result["hbm_bytes"] / 2 ** 30
        lines.append(f"{head} {gib:.1f} ({hbm:.0f}) | {'yes' if result['fits'] else '**no**'} "
                     f"| {_traffic_cells(result, row['slices'])} | "
                     f"{result['compile_seconds']:.0f} s |")
    return "\n".join(lines)


FIXES = ROOT / "benchmarks" / "results" / "fsdp_fixes"
FIX_LABELS = {
    "1_before": "before: CAMLM's directions concatenated, the table gathered at each use",
    "2_gathered_once": "CAMLM interleaved; the table gathered once a step (gradient "
                       "all-reduced)",
    "3_one_reduce_scatter": "... and its gradient reduce-scattered in bf16, not all-reduced "
                            "(what `train` runs)",
}


def fixes_table() -> str:
    """Before/after figures of the FSDP fixes, from their compile JSONs."""
    lines = ["| step | HBM/chip | all-gather | all-reduce | all-to-all | collective-permute | "
             "sent/chip |", "|---|---|---|---|---|---|---|"]
    for name, label in FIX_LABELS.items():
        result = json.loads((FIXES / f"{name}.json").read_text())
        c = result["collectives"]
        cells = [f"{c[k]['count']} ({c[k]['bytes'] / 2 ** 30:.2f} GiB)"
                 for k in ("all-gather", "all-reduce", "all-to-all", "collective-permute")]
        sent = _sent_gib(c)
        lines.append(f"| {label} | {result['memory_bytes']['total'] / 2 ** 30:.2f} GiB | "
                     f"{' | '.join(cells)} | {sent:.2f} GiB |")
    return "\n".join(lines) + ("\n\nCounts are instructions in the HLO; bytes are sent per "
                               "chip per step (loop trips included). No reduce-scatter "
                               "instruction appears: XLA runs those as rings of "
                               "collective-permutes fused into the matmuls.")


DCN_SUM = ROOT / "benchmarks" / "results" / "pod_scale"
DCN_SUM_LABELS = {"1_before": "before", "2_one_dcn_sum": "one cross-slice sum"}


def dcn_sum_table() -> str:
    """Before/after figures of one cross-slice gradient sum a step (`train.GradientSum`),
    from their compile JSONs: base, stage 1 and 2, on 2 x v5e-256."""
    lines = ["| step | HBM/chip | ICI | DCN | DCN transfers |", "|---|---|---|---|---|"]
    for stage in ("stage1", "stage2"):
        for name, label in DCN_SUM_LABELS.items():
            result = json.loads((DCN_SUM / f"base_{stage}_2xv5e-256_fsdp_{name}.json")
                                .read_text())
            ici, dcn = result["networks"]["ici"], result["networks"]["dcn"]
            lines.append(f"| {stage.replace('stage', 'stage ')}, {label} | "
                         f"{result['memory_bytes']['total'] / 2 ** 30:.2f} GiB | "
                         f"{ici['bytes'] / 2 ** 30:.2f} GiB | {dcn['bytes'] / 2 ** 20:.2f} MiB | "
                         f"{dcn['executions']} |")
    return "\n".join(lines)


GATHER = ROOT / "benchmarks" / "results" / "pod_gather"
GATHER_LABELS = {
    "1_before": ("before: plain FSDP, the table alone gathered once", 512),
    "2_gathered_once_512": ("every weight gathered once (`gather_weights_once='all'`); XLA "
                            "sums each layer's gradient inside the backward loops", 512),
    "3_one_sum_512": ("... and each chip's gradient a part, summed once a step "
                      "(`GradientSum` over the batch axes)", 512),
    "4_one_sum_1024": ("the same at 1,024 rows per objective (`gin/mesh/fsdp_gathered.gin`)",
                       1024),
    "5_one_sum_16x16_1024": ("the same on data 16 x FSDP 16 (groups along one torus axis: "
                             "half the links)", 1024),
}


def gather_table() -> str:
    """Before/after figures of gathering every weight once (base stage 2 on v5e-256, remat
    'dots'), from their compile JSONs; the first row is the pod plan's own compile."""
    lines = ["| step | rows/objective | HBM/chip | all-gather | all-reduce | ICI sent/chip | "
             "est. collective time / compute time |", "|---|---|---|---|---|---|---|"]
    for name, (label, rows) in GATHER_LABELS.items():
        path = (RESULTS / "base_stage2_v5e-256_fsdp_dots.json" if name == "1_before"
                else GATHER / f"{name}.json")
        result = json.loads(path.read_text())
        assert result["batch_shapes"]["mmlm"][0] == rows, (name, result["batch_shapes"])
        c, r = result["collectives"], result["roofline_estimate"]
        cells = [f"{c[k]['executions']} runs, {c[k]['bytes'] / 2 ** 30:.2f} GiB"
                 for k in ("all-gather", "all-reduce")]
        lines.append(f"| {label} | {rows} | {result['memory_bytes']['total'] / 2 ** 30:.2f} GiB "
                     f"| {' | '.join(cells)} | "
                     f"{result['networks']['ici']['bytes'] / 2 ** 30:.2f} GiB | "
                     f"{(r['ici_seconds'] + r['dcn_seconds']) / r['compute_seconds']:.0%} |")
    return "\n".join(lines)


def plan_block(results: Dict[str, dict]) -> str:
    """The README's pod-plan block: the table and how much of the plan it covers, per mesh."""
    mesh_of = {key(row): row["mesh"] for row in plan()}
    compiled = [mesh_of[name] for name, result in results.items() if "error" not in result]
    stale = sum(1 for result in results.values() if is_stale(result))
    planned = list(mesh_of.values())
    per_mesh = ", ".join(f"`{mesh}` {compiled.count(mesh)} of {planned.count(mesh)}"
                         for mesh in MESHES)
    failed = len(results) - len(compiled)
    done, total = len(compiled), len(planned)
    rest = ("" if done == total else
            "; `python -m benchmarks.pod_plan` compiles the rest, resumably"
            + (f", and retries the {failed} that failed or timed out with `--retry_errors`"
               if failed else ""))
    recount = (f" {stale} of them were measured by collective counter 1 and are compiled "
               f"again by the same command (counter {hlo.COUNTER_VERSION}: ICI and DCN apart)."
               if stale else "")
    return (f"{table(results)}\n\n{done} of {total} configurations compiled ({per_mesh}"
            f"{rest}; JSON in `benchmarks/results/pod_plan/`).{recount}")


def update_readme(results: Dict[str, dict]) -> None:
    files.replace_marked_block(README, "fsdp_fixes", fixes_table())
    files.replace_marked_block(README, "one_dcn_sum", dcn_sum_table())
    files.replace_marked_block(README, "gather_once", gather_table())
    files.replace_marked_block(README, MARKER, plan_block(results))


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[],
                        help="keep configurations whose key contains this (repeatable, all "
                             "must match), e.g. --only base --only stage2")
    parser.add_argument("--max_minutes", type=float, default=0,
                        help="start no new compile after this long (0: no limit)")
    parser.add_argument("--timeout_minutes", type=float, default=30)
    parser.add_argument("--retry_errors", action="store_true")
    parser.add_argument("--update_readme", action="store_true")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    for row in plan():
        name = key(row)
        if any(part not in name for part in args.only):
            continue
        existing = RESULTS / f"{name}.json"
        if existing.exists():
            before = json.loads(existing.read_text())
            redo = (is_stale(before) and "recompile_error" not in before
                    or args.retry_errors and ("error" in before or "recompile_error" in before))
            if not redo:
                continue
        if args.max_minutes and time.time() - started > 60 * args.max_minutes:
            print(f"stopping after {args.max_minutes} min; rerun to go on")
            break
        print(f"{name} ...", flush=True)
        result = compile_one(row, 60 * args.timeout_minutes)
        print(f"  {_progress(result)}", flush=True)
        if args.update_readme:
            update_readme(load())
    if args.update_readme:
        update_readme(load())
        print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
