"""Train-step benchmark: step time, tokens/s and MFU beside the hardware's measured limit and
beside a PyTorch eager baseline, plus the overheads that matter (BTMLM, FSDP, input, memory).

    python -m benchmarks.train_step                      # this CPU (several minutes)
    python -m benchmarks.train_step --preset gpu         # one GPU, bf16, <= 8 minutes
    python -m benchmarks.train_step --preset quick       # seconds: checks the script runs

Every figure comes from this one run on this one machine, and the steps compared in a ratio
(ours against PyTorch's, BTMLM against MMLM) are taken in turns, so ratios are meaningful even
on noisy machines; absolute numbers are not comparable across runs. FLOPs are counted as
MaxText/MLPerf do (`metrics.step_flops`): matmuls x 3 for forward + backward, attention not
halved, recomputation not counted, the MLM head only where logits are computed, BTMLM's
generation pass added. MFU's peak is the best rate of large matmuls timed here before and
after the steps (CPU) or the device's dense bf16 peak (GPU/TPU, `metrics.PEAK_FLOPS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from ernie_m_jax import cpu_devices, files, huge_pages

ROOT = Path(__file__).resolve().parents[1]

PRESETS = {
    # Sizes, lengths, tokens per step, dtype; steps compared in a ratio are timed in `rounds`
    # turns of `turn_steps` (after `warmup`, each turn after one untimed step); the 8-device
    # overhead times `steps` after `warmup`. Ours runs `steps_per_call` steps a call
    # (`TrainConfig.steps_per_call`): a turn's unit is one call, PyTorch's that many steps.
    "cpu": dict(sizes=("tiny", "small", "base"), lengths=(128, 512), tokens=2048, rounds=3,
                turn_steps=2, steps=5, warmup=1, dtype="float32", torch=True, btmlm=True,
                fsdp=True, pipeline=True, steps_per_call=1),
    "gpu": dict(sizes=("small", "base"), lengths=(128, 512), tokens=32768, rounds=2,
                turn_steps=5, steps=10, warmup=3, dtype="bfloat16", torch=False, btmlm=True,
                fsdp=False, pipeline=True, steps_per_call=1),
    "quick": dict(sizes=("tiny",), lengths=(32,), tokens=256, rounds=2, turn_steps=1, steps=2,
                  warmup=1, dtype="float32", torch=True, btmlm=True, fsdp=False,
                  pipeline=False, steps_per_call=1),
}


def _median_seconds(fn, steps: int, warmup: int) -> List[float]:
    """One callable's step times alone: `steps` timed after `warmup` (one turn, no settling)."""
    return interleaved_seconds({"alone": fn}, 1, steps, warmup, settle=0)["alone"][0]


def interleaved_seconds(fns: Mapping[str, Callable[[], None]], rounds: int, steps: int,
                        warmup: int, settle: int = 1) -> Dict[str, List[List[float]]]:
    """Each callable's step times, taken in turns: every round gives each callable a turn
    of `settle` untimed steps then `steps` timed ones, the round starting at the
    (i mod n)-th callable. A machine that slows down for a minute slows every side alike
    (#41: these shared hosts drift by 20-40% between minutes, which timing one side's steps
    after the other's turned into a ratio), and each side is timed in its own steady state:
    the settling step absorbs what the other side left behind (glibc and the kernel must
    find huge pages again after PyTorch's allocations broke them up). Returns, per
    callable, one list of timed steps per round."""
    if rounds < 1 or steps < 1:
        raise ValueError(f"taking turns needs at least one round of one timed step; got "
                         f"rounds={rounds}, steps={steps}")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: Dict[str, List[List[float]]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            for _ in range(settle):
                fns[name]()
            turn = []
            for _ in range(steps):
                start = time.perf_counter()
                fns[name]()
                turn.append(time.perf_counter() - start)
            times[name].append(turn)
    return times


def flat(turns: Sequence[Sequence[float]]) -> List[float]:
    return [t for turn in turns for t in turn]


def paired_ratios(slow: Sequence[Sequence[float]], fast: Sequence[Sequence[float]]
                  ) -> List[float]:
    """Round by round, the median of `slow`'s turn over the median of `fast`'s (turns from
    `interleaved_seconds`): the spread says how far one round's ratio strays from the
    ratio of the medians."""
    if len(slow) != len(fast) or not slow or not all(slow) or not all(fast):
        raise ValueError(f"paired ratios need two equally long, non-empty series of turns; "
                         f"got {len(slow)} and {len(fast)} rounds")
    return [statistics.median(a) / statistics.median(b) for a, b in zip(slow, fast)]


def best_matmul_rate(dtype: str, sizes: Sequence[int]) -> float:
    """The best FLOP/s of large square matmuls: the practical peak this device showed.

    Best of several sizes (and, in `run`, of a measurement before and after the steps), so
    that a momentarily busy machine does not lower the peak and flatter the MFU.
    """
    return max(matmul_peak(dtype, n) for n in sizes)


def matmul_peak(dtype: str, n: int) -> float:
    """FLOP/s of one large square matmul in `dtype` (median of 5 after 2 warm-up)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda x, y: x @ y)
    times = _median_seconds(lambda: f(a, b).block_until_ready(), 5, 2)
    return 2 * n ** 3 / statistics.median(times)


def _model_config(size: str, dtype: str, **overrides):
    from ernie_m_jax.configs import model_config

    # 512 positions for every size, so every length fits.
    return model_config(size, max_position_embeddings=514, dtype=dtype, **overrides)


def _batch(config, batch: int, length: int, seed: int = 0):
    """Full-length rows ([CLS] x [SEP], no padding): every position is a real token."""
    import numpy as np

    rs = np.random.RandomState(seed)
    ids = rs.randint(5, config.vocab_size, (batch, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    return {"input_ids": ids, "segment_ids": np.ones_like(ids),
            "language_ids": np.zeros_like(ids)}


@dataclasses.dataclass(frozen=True)
class CompiledStep:
    """One objective's train step compiled for timing: `one()` runs a step on its batch."""

    exp: object  # train.Experiment
    btmlm: object  # BTMLMConfig when the objective is BTMLM, else None
    compiled: object  # the compiled executable
    compile_s: float
    devices: int
    one: Callable[[], None]  # one call: `exp.train.steps_per_call` steps


def compiled_step(config, batch: int, length: int, objective: str = "mmlm",
                  mesh_shape=(-1, 1, 1), placeholders: Optional[int] = None,
                  steps_per_call: int = 1) -> CompiledStep:
    """One objective's full train step (loss, grads, AdamW), jit with shardings and donation,
    built by the same `train.build_train_step` that training uses, and compiled; with
    `steps_per_call` > 1, a call of that many steps over stacked batches, as training runs
    it with `TrainConfig.steps_per_call`."""
    import jax

    from ernie_m_jax import partitioning, train
    from ernie_m_jax.configs import BTMLMConfig, MaskingConfig, SpecialTokens
    from ernie_m_jax.data.pipeline import DataConfig
    from ernie_m_jax.optimizer import OptimizerConfig

    btmlm = BTMLMConfig(max_placeholders=placeholders) if objective == "btmlm" else None
    k = steps_per_call
    exp = train.Experiment(
        train.TrainConfig(num_steps=1000, objective_weights={objective: 1.0},
                          steps_per_call=k, log_every=10 * k, checkpoint_every=500 * k),
        config,
        DataConfig(batch_sizes={objective: batch}, mono_length=length, pair_length=length),
        partitioning.MeshConfig(shape=tuple(mesh_shape)), OptimizerConfig(), MaskingConfig(),
        btmlm or BTMLMConfig(), SpecialTokens())
    mesh = partitioning.make_mesh(exp.mesh)
    rules = exp.mesh.rules
    built = train.build_train_step(exp, mesh)
    state = train.init_state(config, built.optimizer, exp.train.seed, built.state_shardings)
    with partitioning.activate(mesh, rules):
        local = {objective: _batch(config, batch, length)}
        batches = (train.stacked_global_batch([local] * k, mesh, rules) if k > 1 else
                   train.global_batch(local, mesh, rules))
        start = time.perf_counter()
        compiled = built.fn.lower(state, batches).compile()
        compile_s = time.perf_counter() - start
    holder = {"state": state}

    def one():
        holder["state"], out = compiled(holder["state"], batches)
        jax.block_until_ready(out)

    return CompiledStep(exp, btmlm, compiled, compile_s, mesh.size, one)


def repeated(fn: Callable[[], None], times: int) -> Callable[[], None]:
    """`fn` called `times` times: PyTorch's steps in the units ours' calls are timed in."""
    def run():
        for _ in range(times):
            fn()
    return run


def per_step(turns: Sequence[Sequence[float]], steps_per_call: int) -> List[List[float]]:
    """Timed calls of several steps as the steps' mean times."""
    return [[t / steps_per_call for t in turn] for turn in turns]


def _steps_in_turns(fns: Mapping[str, Callable[[], None]], p: dict, steps_per_call: int
                    ) -> Dict[str, List[List[float]]]:
    """`interleaved_seconds` with the preset's rounds, turns and warm-up, each callable
    running `steps_per_call` steps a call, as per-step times."""
    turns = interleaved_seconds(fns, p["rounds"], p["turn_steps"], p["warmup"])
    return {name: per_step(timed, steps_per_call) for name, timed in turns.items()}


def jax_step(config, batch: int, length: int, objective: str = "mmlm",
             mesh_shape=(-1, 1, 1), steps: int = 3, warmup: int = 2,
             placeholders: Optional[int] = None) -> Dict[str, float]:
    """`compiled_step`'s step timed alone: median of `steps` after `warmup`, with its FLOPs
    and compiled memory."""
    step = compiled_step(config, batch, length, objective, mesh_shape, placeholders)
    return jax_result(step, config, batch, length, _median_seconds(step.one, steps, warmup),
                      objective, placeholders)


def jax_result(step: CompiledStep, config, batch: int, length: int, times: Sequence[float],
               objective: str = "mmlm", placeholders: Optional[int] = None) -> Dict[str, float]:
    """A compiled step's timed steps as a report entry, with its FLOPs and compiled memory."""
    from ernie_m_jax import metrics

    times = list(times)
    memory = step.compiled.memory_analysis()
    flops = metrics.step_flops(config, {objective: (batch, length)}, step.exp.masking,
                               step.btmlm)
    tokens = batch * (length + (placeholders or 0))
    median = statistics.median(times)
    result = {"compile_s": step.compile_s, "step_s": median, "step_s_all": times,
              "tokens_per_s": tokens / median, "model_flops": flops,
              "devices": step.devices}
    if memory is not None:
        result["compiled_bytes"] = int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                       + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    return result


def torch_step_fn(config, batch: int, length: int) -> Callable[[], None]:
    """The same MLM step in PyTorch eager f32: transformers' ErnieMModel + an XLM-R-style head
    (tied decoder), logits only at the masked positions (as ours), AdamW, clipping at 1.0;
    each call runs one step on all cores."""
    import numpy as np
    import torch
    import transformers

    from ernie_m_jax.configs import MaskingConfig

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    encoder = transformers.ErnieMModel(transformers.ErnieMConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_dim, max_position_embeddings=config.max_position_embeddings,
        hidden_dropout_prob=config.dropout_rate,
        attention_probs_dropout_prob=config.attention_dropout_rate,
        layer_norm_eps=config.layer_norm_eps, pad_token_id=config.pad_id))
    head = torch.nn.Sequential(torch.nn.Linear(config.hidden_size, config.hidden_size),
                               torch.nn.GELU(), torch.nn.LayerNorm(config.hidden_size))
    bias = torch.nn.Parameter(torch.zeros(config.vocab_size))
    params = list(encoder.parameters()) + list(head.parameters()) + [bias]
    optimizer = torch.optim.AdamW(params, lr=1e-4, eps=1e-6, weight_decay=0.01)
    encoder.train()
    ids = torch.from_numpy(_batch(config, batch, length)["input_ids"].astype(np.int64))
    slots = MaskingConfig().num_slots(length)
    rs = np.random.RandomState(0)
    positions = torch.from_numpy(np.stack([np.sort(rs.choice(np.arange(1, length - 1), slots,
                                                               replace=False))
                                           for _ in range(batch)]))
    labels = torch.gather(ids, 1, positions)
    masked = ids.scatter(1, positions, 4)
    attention = torch.ones_like(ids)

    def one():
        optimizer.zero_grad(set_to_none=True)
        hidden = encoder(input_ids=masked, attention_mask=attention).last_hidden_state
        picked = torch.gather(hidden, 1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = head(picked) @ encoder.embeddings.word_embeddings.weight.T + bias
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size),
                                                 labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return one


def torch_step(config, batch: int, length: int, steps: int, warmup: int) -> Dict[str, float]:
    """`torch_step_fn`'s step timed alone: median of `steps` after `warmup`."""
    return torch_result(batch, length,
                        _median_seconds(torch_step_fn(config, batch, length), steps, warmup))


def torch_result(batch: int, length: int, times: Sequence[float]) -> Dict[str, float]:
    import torch

    times = list(times)
    median = statistics.median(times)
    return {"step_s": median, "step_s_all": times, "tokens_per_s": batch * length / median,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def pipeline_rate(batches: int = 60) -> Dict[str, float]:
    """Rows/s the demo input pipeline delivers (all four objectives' streams), after warm-up,
    and the bytes of the input position one host saves with every checkpoint."""
    import tempfile

    import seqio

    from ernie_m_jax.configs import SpecialTokens
    from ernie_m_jax.data import pipeline
    from tasks.demo import register_demo

    register_demo()
    config = pipeline.DataConfig(mono_length=128, pair_length=128)
    objectives = ("mmlm", "tlm", "camlm", "btmlm")
    rows = sum(config.enabled(objectives).values())
    iterator = pipeline.CheckpointableIterator(
        pipeline.training_dataset(config, objectives, seqio.ShardInfo(0, 1),
                                  tokens=SpecialTokens()))
    for _ in range(10):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        iterator.save(os.path.join(folder, "iterator"))
        saved = sum(f.stat().st_size for f in Path(folder).iterdir())
    return {"rows_per_s": rows * batches / seconds, "rows_per_step": rows, "length": 128,
            "iterator_checkpoint_bytes": saved}


def _fsdp_child(args) -> None:
    """Runs in a subprocess with 8 simulated devices (set before JAX starts)."""
    import jax

    config = _model_config(args.fsdp_size, "float32", dropout_rate=0.0,
                           attention_dropout_rate=0.0)
    batch = args.fsdp_tokens // args.fsdp_length
    out = {"devices": jax.device_count()}
    for name, shape in (("fsdp", (1, -1, 1)), ("data_parallel", (-1, 1, 1))):
        out[name] = jax_step(config, batch, args.fsdp_length, mesh_shape=shape,
                             steps=args.steps, warmup=args.warmup)
    print("RESULT " + json.dumps(out))


def fsdp_overhead(size: str, length: int, tokens: int, steps: int, warmup: int) -> dict:
    env = cpu_devices.simulated_devices_env(8, {**os.environ, "XLA_FLAGS": ""})
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--fsdp_child",
           f"--fsdp_size={size}", f"--fsdp_length={length}", f"--fsdp_tokens={tokens}",
           f"--steps={steps}", f"--warmup={warmup}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def run(preset: str, sizes: Sequence[str], lengths: Sequence[int],
        steps_per_call: Optional[int] = None) -> dict:
    """The preset's report; `steps_per_call` (default the preset's) is how many steps ours
    runs a call (`TrainConfig.steps_per_call`), and PyTorch runs as many per timed unit."""
    import jax

    from ernie_m_jax import metrics

    p = PRESETS[preset]
    calls = p["steps_per_call"] if steps_per_call is None else steps_per_call
    device = jax.devices()[0]
    spec = metrics.peak_flops(device)
    matmul_sizes = (2048, 4096) if device.platform == "cpu" else (8192, 16384)
    measured = best_matmul_rate(p["dtype"], matmul_sizes)
    peak_source = "device spec (dense bf16)" if spec else "best measured matmul"
    peak = spec or measured
    report = {"preset": preset, "device": device.device_kind, "platform": device.platform,
              "cpu": cpu_model(), "cores": os.cpu_count(),
              "jax": jax.__version__, "dtype": p["dtype"], "matmul_flops_measured": measured,
              "peak_flops": peak, "peak_source": peak_source, "steps": p["steps"],
              "warmup": p["warmup"], "rounds": p["rounds"], "turn_steps": p["turn_steps"],
              "steps_per_call": calls,
              "rows": []}
    for size in sizes:
        for length in lengths:
            batch = max(1, p["tokens"] // length)
            config = _model_config(size, p["dtype"])
            row = {"size": size, "length": length, "batch": batch}
            step = compiled_step(config, batch, length, steps_per_call=calls)
            fns = {"jax": step.one}
            if p["torch"]:
                fns["torch"] = repeated(torch_step_fn(config, batch, length), calls)
            times = _steps_in_turns(fns, p, calls)
            ours = row["jax"] = jax_result(step, config, batch, length, flat(times["jax"]))
            if p["torch"]:
                theirs = row["torch"] = torch_result(batch, length, flat(times["torch"]))
                row["speedup_vs_torch"] = theirs["step_s"] / ours["step_s"]
                row["paired_speedups"] = paired_ratios(times["torch"], times["jax"])
            del step, fns  # both models' memory back before the next row
            _rate_against_peak(row, peak)
            report["rows"].append(row)
            print(_row_line(row), flush=True)
            if device.platform != "cpu":
                stats = device.memory_stats() or {}
                row["device_peak_bytes"] = stats.get("peak_bytes_in_use")
    if p["btmlm"]:
        size = "small" if "small" in sizes else sizes[0]
        length = min(lengths)
        k = length // 2
        config = _model_config(size, p["dtype"])
        batch = max(1, p["tokens"] // (length + k))
        steps = {"mmlm": compiled_step(config, batch, length + k, steps_per_call=calls),
                 "btmlm": compiled_step(config, batch, length, "btmlm", placeholders=k,
                                        steps_per_call=calls)}
        times = _steps_in_turns({n: s.one for n, s in steps.items()}, p, calls)
        mmlm = jax_result(steps["mmlm"], config, batch, length + k, flat(times["mmlm"]))
        btmlm = jax_result(steps["btmlm"], config, batch, length, flat(times["btmlm"]),
                           "btmlm", k)
        del steps
        report["btmlm_vs_mmlm"] = {
            "size": size, "source_length": length, "placeholders": k, "batch": batch,
            "mmlm_step_s": mmlm["step_s"], "btmlm_step_s": btmlm["step_s"],
            "ratio": btmlm["step_s"] / mmlm["step_s"],
            "flops_ratio": btmlm["model_flops"] / mmlm["model_flops"]}
        print(f"BTMLM / MMLM step at equal tokens: {report['btmlm_vs_mmlm']['ratio']:.2f}x "
              f"(FLOPs {report['btmlm_vs_mmlm']['flops_ratio']:.2f}x)", flush=True)
    if p["fsdp"]:
        size = "small" if "small" in sizes else sizes[0]
        one = jax_step(_model_config(size, "float32", dropout_rate=0.0,
                                     attention_dropout_rate=0.0),
                       p["tokens"] // 128, 128, steps=p["steps"], warmup=p["warmup"])
        eight = fsdp_overhead(size, 128, p["tokens"], p["steps"], p["warmup"])
        report["fsdp_8_vs_1"] = {
            "size": size, "length": 128, "one_device_step_s": one["step_s"],
            "fsdp_8_step_s": eight["fsdp"]["step_s"],
            "data_parallel_8_step_s": eight["data_parallel"]["step_s"],
            "fsdp_ratio": eight["fsdp"]["step_s"] / one["step_s"],
            "data_parallel_ratio": eight["data_parallel"]["step_s"] / one["step_s"]}
        print(f"8 simulated devices / 1 device: FSDP {report['fsdp_8_vs_1']['fsdp_ratio']:.2f}x, "
              f"data parallel {report['fsdp_8_vs_1']['data_parallel_ratio']:.2f}x", flush=True)
    if p["pipeline"]:
        rate = pipeline_rate()
        demo = next((r for r in report["rows"] if r["size"] == "small" and r["length"] == 128),
                    report["rows"][0])
        consumed = demo["batch"] / demo["jax"]["step_s"]
        report["input_pipeline"] = {**rate, "rows_per_s_consumed": consumed,
                                    "headroom": rate["rows_per_s"] / consumed,
                                    "consumer": f"{demo['size']}@{demo['length']}"}
        print(f"input pipeline: {rate['rows_per_s']:.0f} rows/s vs {consumed:.1f} consumed "
              f"({report['input_pipeline']['headroom']:.0f}x headroom)", flush=True)
    if not spec:  # measure again after the steps and keep the best
        measured = max(measured, best_matmul_rate(p["dtype"], matmul_sizes))
        report["matmul_flops_measured"] = report["peak_flops"] = measured
        for row in report["rows"]:
            _rate_against_peak(row, measured)
    report["process_peak_rss_gib"] = _peak_rss_gib()
    return report


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor's model name: CPU results depend on the family (Intel's and AMD's
    2-core hosts here differ by 1.4x in matmul peak), so every report names it."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best_to_best(row: dict) -> str:
    """Each side's fastest timed step and their ratio: the comparison least moved by a busy
    moment on either side (the median is the headline)."""
    ours, theirs = min(row["jax"]["step_s_all"]), min(row["torch"]["step_s_all"])
    return f"{ours * 1e3:.0f} / {theirs * 1e3:.0f} ({theirs / ours:.2f}x)"


def _speedup(row: dict) -> str:
    """The medians' ratio, then the lowest and highest ratio of one round's two steps (taken
    in turns), where the report has them."""
    text = f"{row['speedup_vs_torch']:.2f}x"
    if row.get("paired_speedups"):
        text += f" ({min(row['paired_speedups']):.2f}-{max(row['paired_speedups']):.2f})"
    return text


def _rate_against_peak(row: dict, peak: float) -> None:
    """MFU, the step at 100% of the peak (nothing on this device can beat it) and so the
    largest speed-up over PyTorch that any implementation could show."""
    ours = row["jax"]
    row["ideal_step_s"] = ours["model_flops"] / (peak * ours["devices"])
    row["mfu"] = row["ideal_step_s"] / ours["step_s"]
    if "torch" in row:
        row["speedup_ceiling_vs_torch"] = row["torch"]["step_s"] / row["ideal_step_s"]


def _row_line(row) -> str:
    line = (f"{row['size']:>5} L={row['length']:<4} B={row['batch']:<4} "
            f"step {row['jax']['step_s'] * 1e3:8.1f} ms  compile {row['jax']['compile_s']:5.1f} s  "
            f"{row['jax']['tokens_per_s']:9.0f} tok/s  MFU {row['mfu']:6.1%}")
    if "torch" in row:
        line += (f"  torch {row['torch']['step_s'] * 1e3:8.1f} ms  "
                 f"speed-up {row['speedup_vs_torch']:.2f}x "
                 f"(at most {row['speedup_ceiling_vs_torch']:.2f}x)")
    return line


def markdown(report: dict) -> str:
    cpu = f"{report['cpu']}, " if report.get("cpu") else ""
    calls = report.get("steps_per_call", 1)
    if "rounds" in report and calls > 1:  # calls of several steps, taken in turns
        timed = report["rounds"] * report["turn_steps"]
        timing = (f"ours {calls} steps a call (`TrainConfig.steps_per_call`), PyTorch "
                  f"{calls} steps to ours' call; median of {timed} "
                  f"calls' mean step: {report['rounds']} turns of {report['turn_steps']} each, "
                  f"the sides compared in a ratio taking turns, each turn after one untimed "
                  f"call, after {report['warmup']} warm-up")
    elif "rounds" in report:  # steps taken in turns
        timing = (f"median of {report['rounds'] * report['turn_steps']} steps: "
                  f"{report['rounds']} turns of {report['turn_steps']} each, the steps "
                  f"compared in a ratio taking turns, each turn after one untimed step, "
                  f"after {report['warmup']} warm-up")
    else:
        timing = f"median of {report['steps']} steps after {report['warmup']} warm-up"
    lines = [f"Device: {report['device']} ({cpu}{report['cores']} cores), jax {report['jax']}, "
             f"{report['dtype']}; peak {report['peak_flops'] / 1e9:.1f} GFLOP/s "
             f"({report['peak_source']}); {timing}.", "",
             "| size | length | batch | step (ms) | compile (s) | tokens/s | MFU | PyTorch step "
             "(ms) | speed-up vs PyTorch (round by round) | at most (step at peak) | best step, "
             "ours / PyTorch (ms) | compiled memory (GiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        torch_ms = f"{r['torch']['step_s'] * 1e3:.0f}" if "torch" in r else "–"
        speed = _speedup(r) if "torch" in r else "–"
        ceiling = (f"{r['speedup_ceiling_vs_torch']:.2f}x" if "speedup_ceiling_vs_torch" in r
                   else "–")
        best = _best_to_best(r) if "torch" in r else "–"
        mem = r["jax"].get("compiled_bytes")
        mem_text = f"{mem / 2 ** 30:.2f}" if mem else "–"
        lines.append(f"| {r['size']} | {r['length']} | {r['batch']} | "
                     f"{r['jax']['step_s'] * 1e3:.0f} | {r['jax']['compile_s']:.1f} | "
                     f"{r['jax']['tokens_per_s']:.0f} | {r['mfu']:.1%} | {torch_ms} | {speed} | "
                     f"{ceiling} | {best} | {mem_text} |")
    lines.append("")
    if "btmlm_vs_mmlm" in report:
        b = report["btmlm_vs_mmlm"]
        total = b["source_length"] + b["placeholders"]
        lines.append(f"- BTMLM step / MMLM step at equal tokens ({b['size']}, "
                     f"{b['source_length']} source + {b['placeholders']} placeholders vs {total} "
                     f"tokens): **{b['ratio']:.2f}x** (model FLOPs {b['flops_ratio']:.2f}x)")
    if "fsdp_8_vs_1" in report:
        f = report["fsdp_8_vs_1"]
        lines.append(f"- 8 simulated CPU devices / 1 device ({f['size']}, length 128, same global "
                     f"batch): FSDP **{f['fsdp_ratio']:.2f}x**, data parallel "
                     f"{f['data_parallel_ratio']:.2f}x (the 8 share the same cores: this "
                     "measures partitioning overhead, not scaling)")
    if "input_pipeline" in report:
        i = report["input_pipeline"]
        lines.append(f"- Input pipeline: {i['rows_per_s']:.0f} rows/s (all four objectives, "
                     f"length 128) vs {i['rows_per_s_consumed']:.1f} rows/s consumed by the "
                     f"{i['consumer']} step: **{i['headroom']:.0f}x** headroom")
        if "iterator_checkpoint_bytes" in i:
            lines.append(f"- Input position saved with every checkpoint, per host: "
                         f"{i['iterator_checkpoint_bytes'] / 2 ** 20:.1f} MiB (every task's "
                         f"shuffle buffer; `tasks.registry.TASK_SHUFFLE_BUFFER`)")
    lines.append(f"- Peak resident memory of the benchmark process: "
                 f"{report['process_peak_rss_gib']:.1f} GiB")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--sizes", help="comma-separated, e.g. tiny,small")
    parser.add_argument("--lengths", help="comma-separated, e.g. 128,512")
    parser.add_argument("--steps_per_call", type=int,
                        help="steps ours runs a call (default: the preset's)")
    parser.add_argument("--output", help="JSON file (default benchmarks/results/<preset>.json)")
    parser.add_argument("--update_readme", action="store_true",
                        help="rewrite this preset's table in benchmarks/README.md")
    parser.add_argument("--fsdp_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fsdp_size", default="small", help=argparse.SUPPRESS)
    parser.add_argument("--fsdp_length", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--fsdp_tokens", type=int, default=2048, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fsdp_child:
        _fsdp_child(args)
        return 0
    if args.steps_per_call is not None and args.steps_per_call < 1:
        parser.error(f"--steps_per_call must be at least 1, got {args.steps_per_call}")
    preset = PRESETS[args.preset]
    sizes = tuple(args.sizes.split(",")) if args.sizes else preset["sizes"]
    lengths = tuple(int(x) for x in args.lengths.split(",")) if args.lengths else preset["lengths"]
    report = run(args.preset, sizes, lengths, args.steps_per_call)
    text = markdown(report)
    print(text)
    output = Path(args.output or ROOT / "benchmarks" / "results" / f"{args.preset}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(output, report, indent=2)
    print(f"wrote {output}")
    if args.update_readme:
        files.replace_marked_block(Path(__file__).with_name("README.md"), args.preset, text)
    return 0


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()  # as every `ernie-m-jax` command runs, both sides
    sys.exit(main())
