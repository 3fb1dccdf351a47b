"""Compile the real train step for a TPU slice on any host, and say what it needs.

MaxText's `train_compile.py`, here: `train.build_train_step` (the one builder `train` and the
benchmark use) is lowered with abstract state and batches onto libtpu's compile-only devices
and compiled. Nothing is initialised, no data is read, no device memory is touched. The
compiled module gives per-chip memory (`memory_analysis`), XLA's FLOP count
(`cost_analysis`) and its HLO text, where every collective is counted (`hlo.py`). The step
time and MFU that follow are a roofline *estimate*, never a measurement.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Dict, List, Optional

import jax
import numpy as np

from ernie_m_jax import metrics, partitioning
from ernie_m_jax.aot import hardware, hlo, recommended
from ernie_m_jax.aot.hardware import Accelerator, GiB
from ernie_m_jax.train.config import Experiment
from ernie_m_jax.train.resolve import resolve
from ernie_m_jax.train.step import TrainStep, build_train_step


class DoesNotFit(ValueError):
    """The compiled step needs more HBM per chip than the chip has. `report` is what can be
    written as the compile's JSON (None where a full report exists elsewhere)."""

    def __init__(self, message: str, report: Optional[dict] = None):
        super().__init__(message)
        self.report = report


# XLA's TPU compiler refuses a program whose temporaries alone exceed the chip's usable HBM,
# before `memory_analysis` can be asked: "... HLO temporaries (36.26G) exceeds available HBM
# (30.75G)." Its G is 2**30 bytes (a 32 GiB v4 chip offers 30.75).
_HBM_REFUSAL = re.compile(r"RESOURCE_EXHAUSTED.*?temporaries \(([\d.]+)([KMGT])\) exceeds "
                          r"available HBM \(([\d.]+)([KMGT])\)", re.S)
_UNIT = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _what_would_help(exp: Experiment, accelerator: Accelerator, mesh: Dict[str, int]) -> str:
    rows = {o: r // accelerator.num_chips for o, (r, _) in exp.batch_shapes().items()}
    helps = []
    if exp.model.remat_policy != "full":
        helps.append(f"ModelConfig.remat_policy='full' (now {exp.model.remat_policy!r})")
    if mesh.get("fsdp", 1) < accelerator.num_chips:
        helps.append("FSDP over every chip (gin/mesh/fsdp.gin)")
    helps.append(f"fewer rows per chip (now {rows}): a smaller BATCH_SIZE, or "
                 f"TrainConfig.grad_accum_steps > {exp.train.grad_accum_steps}")
    return "; ".join(helps)


def _setting(exp: Experiment, accelerator: Accelerator, mesh: Dict[str, int]) -> dict:
    """What was compiled, for the JSON of a compile that finished or was refused."""
    return {
        "accelerator": accelerator.label, "chip": accelerator.chip.name,
        "topology": accelerator.topology_name,
        "num_slices": accelerator.num_slices, "chips": accelerator.num_chips,
        "mesh": mesh, "model": {"layers": exp.model.num_layers,
                                "hidden": exp.model.hidden_size,
                                "dtype": exp.model.dtype,
                                "remat": exp.model.remat_policy},
        "objectives": list(exp.train.enabled),
        "batch_shapes": {o: list(s) for o, s in exp.batch_shapes().items()},
        "grad_accum_steps": exp.train.grad_accum_steps,
        "gather_weights_once": exp.train.gather_weights_once}


def refused_for_memory(err: Exception, exp: Experiment, accelerator: Accelerator,
                       mesh: Dict[str, int], seconds: float) -> Optional[DoesNotFit]:
    """The not-fits error for XLA's own out-of-HBM refusal, or None for any other error."""
    found = _HBM_REFUSAL.search(str(err))
    if found is None:
        return None
    needed = float(found.group(1)) * _UNIT[found.group(2)]
    available = float(found.group(3)) * _UNIT[found.group(4)]
    report = {**_setting(exp, accelerator, mesh), "compile_seconds": round(seconds, 1),
              "fits": False, "hbm_bytes": accelerator.chip.hbm_bytes,
              "refused_by_compiler": {"temporaries_bytes": needed,
                                      "available_bytes": available, "message": str(err)}}
    return DoesNotFit(
        f"does not fit on {accelerator.label}: XLA refused to compile the step, whose "
        f"temporaries alone need {needed / GiB:.2f} GiB per chip and a "
        f"{accelerator.chip.name} offers {available / GiB:.2f} GiB to them; what would "
        f"help: {_what_would_help(exp, accelerator, mesh)}", report)


@dataclasses.dataclass
class CompileReport:
    accelerator: Accelerator
    mesh: Dict[str, int]
    experiment: Experiment
    compile_seconds: float
    memory: Dict[str, float]  # bytes per chip
    xla_flops: float  # per chip, XLA's cost analysis
    model_flops: float  # per chip, metrics.step_flops / chips
    collectives: Dict[str, Dict[str, float]]
    networks: Dict[str, Dict[str, float]]  # "ici" / "dcn": hlo.by_network
    torus_axes: Dict[str, float]  # ICI bytes by the torus axes their groups span
    passes: Dict[str, Dict[str, float]]
    sources: Dict[str, List[tuple]]
    notes: List[str]

    @property
    def hbm_bytes(self) -> float:
        return self.accelerator.chip.hbm_bytes

    @property
    def fits(self) -> bool:
        return self.memory["total"] <= self.hbm_bytes

    @property
    def recompute_factor(self) -> float:
        """Matmul FLOPs executed per model FLOP: remat "full" runs each layer's forward
        again in the backward pass (3 -> 4 forward-equivalents); "dots" saves every matmul
        output and recomputes only elementwise work."""
        return 4 / 3 if self.experiment.model.remat_policy == "full" else 1.0

    def roofline(self) -> Dict[str, float]:
        """Step-time bounds from peak compute and interconnect bandwidth: an estimate that
        assumes every matmul runs at the chip's peak, so its MFU is an upper bound. ICI time
        charges each collective at the share of the chip's links its rings span (a ring
        along one axis of a 2D torus gets half); DCN time is the cross-slice transfers'
        bytes at the chip's share of the data-centre network."""
        chip = self.accelerator.chip
        compute = self.model_flops * self.recompute_factor / chip.peak_bf16_flops
        ici = self.networks["ici"]["link_bytes"] / chip.ici_bytes_per_s
        dcn_rate = chip.dcn_bytes_per_s or chip.ici_bytes_per_s / 10
        dcn = self.networks["dcn"]["bytes"] / dcn_rate
        overlapped, serial = max(compute, ici + dcn), compute + ici + dcn
        peak = chip.peak_bf16_flops
        return {"compute_seconds": compute, "ici_seconds": ici, "dcn_seconds": dcn,
                "step_seconds_overlapped": overlapped, "step_seconds_serial": serial,
                "mfu_overlapped": self.model_flops / peak / overlapped,
                "mfu_serial": self.model_flops / peak / serial}

    def check_fits(self) -> None:
        if self.fits:
            return
        m = self.memory
        raise DoesNotFit(
            f"does not fit on {self.accelerator.label}: the step needs "
            f"{m['total'] / GiB:.2f} GiB per chip (temporaries {m['temporaries'] / GiB:.2f}, "
            f"arguments {m['arguments'] / GiB:.2f}) and a {self.accelerator.chip.name} has "
            f"{self.hbm_bytes / GiB:.2f} GiB; what would help: "
            f"{_what_would_help(self.experiment, self.accelerator, self.mesh)}")

    def to_json(self) -> dict:
        return {
            **_setting(self.experiment, self.accelerator, self.mesh),
            "compile_seconds": round(self.compile_seconds, 1),
            "memory_bytes": self.memory, "hbm_bytes": self.hbm_bytes, "fits": self.fits,
            "xla_flops_per_chip": self.xla_flops, "model_flops_per_chip": self.model_flops,
            "counter": hlo.COUNTER_VERSION,
            "collectives": self.collectives, "networks": self.networks,
            "ici_bytes_by_torus_axes": self.torus_axes, "collective_bytes_by_pass": self.passes,
            "collective_sources": {k: [list(r) for r in v] for k, v in self.sources.items()},
            "roofline_estimate": self.roofline(), "notes": self.notes}


def _mesh_config(exp: Experiment, num_slices: int, notes: List[str]):
    """With several slices, data parallelism crosses slices (over DCN), as in MaxText."""
    config = exp.mesh.across_slices(num_slices)
    if config != exp.mesh:
        notes.append(f"{num_slices} slices: the data axis is {num_slices} (one replica per "
                     f"slice, gradients summed over DCN); the rest of the mesh is as configured")
    return config


def _resolved(exp: Experiment, notes: List[str]) -> Experiment:
    """The languages BTMLM generates into come from the registered mixture; where it is not
    registered here, two placeholder ids (the compiled program does not depend on them).
    No data is read: fitted length factors are constants, not the program's shape."""
    try:
        return resolve(exp, read_data=False)
    except (ValueError, KeyError):
        if "btmlm" in exp.train.enabled:
            notes.append(f"{exp.data.mono_mixture} is not registered here: BTMLM target "
                         "languages are placeholders (they do not change the program)")
        return dataclasses.replace(exp, btmlm=dataclasses.replace(exp.btmlm,
                                                                  target_languages=(0, 1)))


def _one_step_a_call(exp: Experiment, notes: List[str]) -> Experiment:
    """The report's figures are a step's: a run of several steps a call
    (`TrainConfig.steps_per_call`) loops over this same step, its batches stacked."""
    k = exp.train.steps_per_call
    if k == 1:
        return exp
    notes.append(f"compiled one step a call: steps_per_call={k} runs {k} of these steps in "
                 f"a loop, with {k} batches in memory where this holds one")
    return dataclasses.replace(exp, train=dataclasses.replace(exp.train, steps_per_call=1))


def _per_chip_bytes(tree) -> float:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
    return float(total)


def compile_train_step(exp: Experiment, accelerator: Accelerator,
                       keep_hlo: bool = False) -> tuple:
    """(CompileReport, HLO text or None) of `exp`'s train step on `accelerator`."""
    devices = hardware.topology_devices(accelerator)
    notes: List[str] = []
    exp = _one_step_a_call(exp, notes)
    mesh_config = _mesh_config(exp, accelerator.num_slices, notes)
    exp = _resolved(dataclasses.replace(exp, mesh=mesh_config), notes)
    mesh = partitioning.make_mesh(mesh_config, devices)  # errors name the counts
    started = time.perf_counter()
    built: TrainStep = build_train_step(exp, mesh)
    with partitioning.activate(mesh, mesh_config.rules):
        lowered = built.fn.lower(built.abstract_state, built.abstract_batches())
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as err:
            refusal = refused_for_memory(err, exp, accelerator, dict(mesh.shape),
                                         time.perf_counter() - started)
            if refusal is None:
                raise
            raise refusal from None
    seconds = time.perf_counter() - started

    stats = compiled.memory_analysis()
    state_bytes = _per_chip_bytes(built.abstract_state)
    params_bytes = _per_chip_bytes(built.abstract_state["params"])
    batch_bytes = _per_chip_bytes(built.abstract_batches())
    memory = {
        "parameters": params_bytes, "optimizer_and_counters": state_bytes - params_bytes,
        "batch": batch_bytes, "arguments": float(stats.argument_size_in_bytes),
        "outputs_not_aliased": float(stats.output_size_in_bytes - stats.alias_size_in_bytes),
        "temporaries": float(stats.temp_size_in_bytes),
        "generated_code": float(stats.generated_code_size_in_bytes)}
    memory["total"] = (memory["arguments"] + memory["outputs_not_aliased"]
                       + memory["temporaries"] + memory["generated_code"])
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    model = metrics.step_flops(exp.model, built.batch_shapes, exp.masking, built.btmlm)
    text = compiled.as_text()
    # A multislice module is one slice's program: its device ids are the first slice's chips,
    # which lead the mesh (the data axis, first, spans the slices).
    found = hlo.parse(text, hlo.DeviceLayout.from_devices(list(mesh.devices.flat)))
    report = CompileReport(
        accelerator, dict(mesh.shape), exp, seconds, memory, float(cost.get("flops", 0.0)),
        model / accelerator.num_chips, hlo.summarize(found), hlo.by_network(found),
        hlo.by_axes(found), hlo.by_pass(found),
        {k: hlo.by_source(found, k) for k in hlo.KINDS}, notes)
    return report, (text if keep_hlo else None)


# Collective time over compute time that a step can hide behind its matmuls with room to
# spare: above it, `format_report` says how many rows would get there.
OVERLAP_TARGET = 0.25


def rows_for_overlap(rows: int, ratio: float, shards: int,
                     target: float = OVERLAP_TARGET) -> int:
    """Global rows (a multiple of the batch `shards`) at which collectives would take
    `target` of the compute time, from one compile at `rows` where they take `ratio`. It
    assumes the collectives do not grow with the rows, which holds for FSDP's weight gathers
    and gradient reductions and for data parallelism's gradient sums (not for tensor
    parallelism's activations): compute grows with the rows, collectives stay. An estimate
    to check by compiling at the rows it names (memory grows with the rows too)."""
    needed = rows * ratio / target
    return max(rows, math.ceil(needed / shards) * shards)


def _overlap_advice(report: "CompileReport", ratio: float) -> List[str]:
    mesh = report.mesh
    if ratio <= OVERLAP_TARGET or mesh.get("tensor", 1) > 1:
        return []
    shards = partitioning.batch_shards(jax.sharding.AbstractMesh(
        tuple(mesh.values()), tuple(mesh)), report.experiment.mesh.rules)
    rows = {o: b for o, (b, _) in report.experiment.batch_shapes().items()}
    more = {o: rows_for_overlap(b, ratio, shards) for o, b in rows.items()}
    per_objective = ", ".join(f"{o} {rows[o]} -> {more[o]}" for o in rows)
    lines = [f"what would help: collectives take {ratio:.0%} of the compute; with the "
             f"weights' traffic fixed, about these global rows would bring them to "
             f"{OVERLAP_TARGET:.0%} ({per_objective}); an estimate: compile again at those "
             "rows to see that it fits"]
    return lines + _recommendation(report)


def _recommendation(report: "CompileReport") -> List[str]:
    """The pod plan's recommended configuration for this model, stage and slice, where it
    has one (`recommended.json`)."""
    exp, acc = report.experiment, report.accelerator
    size = recommended.model_size(exp.model)
    stage = recommended.stage(exp.train.enabled)
    entry = recommended.find(size, stage, acc.name, acc.num_slices)
    if entry is None:
        return []
    return [f"the pod plan recommends for {size} {stage} on {acc.label}: "
            f"{recommended.describe(entry)}"]


def _gib(x: float) -> str:
    return f"{x / GiB:7.2f} GiB"


def format_report(report: CompileReport) -> str:
    """The table `ernie-m-jax compile` prints."""
    acc, chip, m, exp = report.accelerator, report.accelerator.chip, report.memory, \
        report.experiment
    r = report.roofline()
    collective_share = (r["ici_seconds"] + r["dcn_seconds"]) / r["compute_seconds"]
    verdict = (f"fits, headroom {_gib(report.hbm_bytes - m['total']).strip()}" if report.fits
               else "DOES NOT FIT")
    shapes = ", ".join(f"{o} {b}x{n}" for o, (b, n) in exp.batch_shapes().items())
    lines = [
        f"{acc.label} ({acc.num_chips} x {chip.name}, libtpu topology {acc.topology_name}), "
        f"mesh {report.mesh}",
        f"model {exp.model.num_layers} x {exp.model.hidden_size}, {exp.model.dtype}, remat "
        f"{exp.model.remat_policy}; {shapes} (global rows x length); accumulation "
        f"{exp.train.grad_accum_steps}; compiled in {report.compile_seconds:.0f} s",
        "",
        "HBM per chip",
        f"  parameters                 {_gib(m['parameters'])}",
        f"  optimizer state, counters  {_gib(m['optimizer_and_counters'])}",
        f"  batch                      {_gib(m['batch'])}",
        f"  temporaries                {_gib(m['temporaries'])}",
        f"  outputs (not donated)      {_gib(m['outputs_not_aliased'])}",
        f"  generated code             {_gib(m['generated_code'])}",
        f"  total                      {_gib(m['total'])} of "
        f"{_gib(report.hbm_bytes).strip()} -> {verdict}",
        "",
        f"FLOPs per chip per step: {report.model_flops / 1e12:.3f} T model FLOPs "
        f"(metrics.step_flops), x{report.recompute_factor:.2f} executed with remat "
        f"{exp.model.remat_policy!r}; XLA's cost analysis says {report.xla_flops / 1e12:.3f} T "
        "(it counts the scanned layer loop's body once)",
        "",
        "collectives          count  instructions  per step   sent per chip per step "
        "(forward + backward)",
    ]
    for kind, row in report.collectives.items():
        if not row["instructions"]:
            continue
        lines.append(f"  {kind:18s} {row['count']:6d} {row['instructions']:12d} "
                     f"{row['executions']:9d}   {row['bytes'] / GiB:8.3f} GiB "
                     f"({report.passes['forward'][kind] / GiB:.3f} + "
                     f"{report.passes['backward'][kind] / GiB:.3f})")
    ici, dcn = report.networks["ici"], report.networks["dcn"]
    axes = ", ".join(f"axes {k}: {v / GiB:.3f} GiB" for k, v in
                     sorted(report.torus_axes.items()))
    lines += [
        f"  ICI  {ici['bytes'] / GiB:8.3f} GiB in {ici['executions']} executions"
        + (f" (torus {axes})" if axes else ""),
        f"  DCN  {dcn['bytes'] / 2 ** 20:8.3f} MiB in {dcn['executions']} transfers",
        "",
        "roofline ESTIMATE (not a measurement): compute at peak "
        f"{chip.peak_bf16_flops / 1e12:.0f} TFLOP/s {r['compute_seconds'] * 1e3:.1f} ms, "
        f"ICI at up to {chip.ici_bytes_per_s / 1e9:.0f} GB/s (the share of links each ring "
        f"spans) {r['ici_seconds'] * 1e3:.1f} ms"
        + (f", DCN {r['dcn_seconds'] * 1e3:.1f} ms" if r["dcn_seconds"] else ""),
        f"  step >= {r['step_seconds_overlapped'] * 1e3:.1f} ms (collectives hidden) or "
        f"{r['step_seconds_serial'] * 1e3:.1f} ms (not hidden): MFU at most "
        f"{r['mfu_overlapped']:.0%} / {r['mfu_serial']:.0%}; collectives / compute "
        f"{collective_share:.0%}",
    ]
    lines += _overlap_advice(report, collective_share)
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
