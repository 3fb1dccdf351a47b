"""The benchmark's ingredients: FLOP counting against XLA's own count, and both step
timers on a tiny model (speed targets live in benchmarks/, not here)."""

import json
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import train_step as bench
from ernie_m_jax import metrics
from ernie_m_jax.configs import MaskingConfig, model_config
from ernie_m_jax.model import ErnieM, init_params
from tests import synthetic


@pytest.mark.slow
def test_forward_flops_match_xla_cost_analysis():
    # One layer: XLA's cost analysis counts the body of the scanned layer loop once.
    config = model_config("tiny", hidden_size=256, num_heads=4, mlp_dim=1024, vocab_size=1000,
                          num_layers=1)
    batch, length, predictions = 2, 64, 9
    params = init_params(config, jax.random.key(0))
    ids = jnp.full((batch, length), 7, jnp.int32)
    positions = jnp.tile(jnp.arange(predictions, dtype=jnp.int32), (batch, 1))
    forward = jax.jit(lambda p, x: ErnieM(config).apply(p, x, mlm_positions=positions))
    cost = forward.lower(params, ids).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    ours = metrics.forward_flops(config, batch, length, predictions)
    # XLA also counts elementwise work (softmax, GELU, LayerNorm): a few percent on top.
    assert ours <= cost["flops"] <= 1.06 * ours, (ours, cost["flops"])


def test_step_flops_add_btmlm_generation_and_count_camlm_twice():
    config = model_config("tiny")
    masking = MaskingConfig()
    f = metrics.forward_flops
    mmlm = metrics.step_flops(config, {"mmlm": (4, 32)}, masking)
    assert mmlm == 3 * f(config, 4, 32, masking.num_slots(32))
    camlm = metrics.step_flops(config, {"camlm": (4, 32)}, masking)
    assert camlm == 3 * f(config, 8, 32, masking.num_slots(32))


@pytest.mark.slow
def test_both_step_timers_run_the_same_shapes():
    config = bench._model_config("tiny", "float32")
    ours = bench.jax_step(config, 4, 32, steps=2, warmup=1)
    theirs = bench.torch_step(config, 4, 32, steps=2, warmup=1)
    step = bench.compiled_step(config, 4, 32)
    turns = bench.interleaved_seconds({"jax": step.one,
                                       "torch": bench.torch_step_fn(config, 4, 32)}, 2, 1, 0)
    ours_all, theirs_all = bench.flat(turns["jax"]), bench.flat(turns["torch"])
    assert bench.jax_result(step, config, 4, 32, ours_all)["step_s_all"] == ours_all
    assert bench.torch_result(4, 32, theirs_all)["step_s_all"] == theirs_all
    for result in (ours, theirs):
        assert len(result["step_s_all"]) == 2 and result["step_s"] > 0
        assert result["tokens_per_s"] == pytest.approx(4 * 32 / result["step_s"])
    assert ours["model_flops"] == metrics.step_flops(config, {"mmlm": (4, 32)}, MaskingConfig())
    assert ours["compiled_bytes"] > 0
    # Three steps a call: one call advances the state by 3, on the stacked batches.
    three = bench.compiled_step(config, 4, 32, steps_per_call=3)
    assert three.exp.train.steps_per_call == 3
    batch_args = jax.tree.leaves(three.compiled.args_info[0][1])
    assert {a.shape for a in batch_args} == {(3, 4, 32)}
    three.one()
    generated = bench.jax_step(config, 4, 16, "btmlm", steps=1, warmup=0, placeholders=16)
    assert generated["tokens_per_s"] == pytest.approx(4 * 32 / generated["step_s"])
    assert np.isfinite(bench.matmul_peak("float32", 256))


def test_rates_against_the_peak_bound_what_any_implementation_could_show():
    # 300 GFLOP per step on a 100 GFLOP/s device: no step can beat 3 s.
    row = {"size": "base", "length": 128, "batch": 16,
           "jax": {"model_flops": 300e9, "step_s": 4.0, "devices": 1, "compile_s": 1.0,
                   "tokens_per_s": 512.0, "step_s_all": [4.2, 3.5, 4.0]},
           "torch": {"step_s": 6.0, "step_s_all": [6.0, 7.0, 5.6]}, "speedup_vs_torch": 1.5}
    bench._rate_against_peak(row, 100e9)
    assert row["ideal_step_s"] == pytest.approx(3.0)
    assert row["mfu"] == pytest.approx(0.75)
    assert row["speedup_ceiling_vs_torch"] == pytest.approx(2.0)
    report = {"device": "cpu", "cores": 2, "jax": "x", "dtype": "float32", "peak_flops": 100e9,
              "peak_source": "best measured matmul", "steps": 3, "warmup": 2, "rows": [row],
              "process_peak_rss_gib": 1.0}
    line = bench.markdown(report).splitlines()[4]
    # Best to best: 5.6 s against 3.5 s.
    assert "| 75.0% | 6000 | 1.50x | 2.00x | 3500 / 5600 (1.60x) |" in line, line
    # Steps taken in turns: each round's ratio of the turns' medians, lowest and highest
    # beside the medians' ratio.
    row["paired_speedups"] = bench.paired_ratios([[6.0, 7.0], [5.6, 5.0]],
                                                 [[4.2, 3.8], [3.5, 4.5]])
    assert row["paired_speedups"] == pytest.approx([6.5 / 4.0, 5.3 / 4.0])
    table = bench.markdown({**report, "rounds": 2, "turn_steps": 2}).splitlines()
    assert "| 75.0% | 6000 | 1.50x (1.32-1.62) | 2.00x |" in table[4], table[4]
    assert ("median of 4 steps: 2 turns of 2 each, the steps compared in a ratio taking "
            "turns, each turn after one untimed step, after 2 warm-up." in table[0]), table[0]
    called = bench.markdown({**report, "rounds": 2, "turn_steps": 2, "steps_per_call": 4})
    assert called.startswith("Device: cpu (2 cores), jax x, float32; peak 100.0 GFLOP/s (best "
                             "measured matmul); ours 4 steps a call"), called
    named = bench.markdown({**report, "cpu": "AMD EPYC"})
    assert named.startswith("Device: cpu (AMD EPYC, 2 cores)"), named


def test_interleaved_timing_takes_the_steps_in_turns_and_times_each_call(monkeypatch):
    calls, clock = [], {"now": 0.0}
    cost = {"a": 1.0, "b": 2.0, "c": 4.0}

    def step(name):
        def one():
            calls.append(name)
            clock["now"] += cost[name]
        return one

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["now"])
    times = bench.interleaved_seconds({n: step(n) for n in "abc"}, rounds=4, steps=2,
                                      warmup=1)
    monkeypatch.undo()
    # Warm-up once each, then rounds starting at a, b, c, a: no side always follows another,
    # and each turn is one untimed step and two timed ones.
    turns = "".join(name * 3 for name in "abc" "bca" "cab" "abc")
    assert calls == list("abc" + turns), calls
    assert times == {"a": [[1.0, 1.0]] * 4, "b": [[2.0, 2.0]] * 4, "c": [[4.0, 4.0]] * 4}
    assert bench.flat(times["b"]) == [2.0] * 8
    assert bench.paired_ratios(times["c"], times["a"]) == [4.0] * 4
    # Calls of several steps: their steps' mean, and PyTorch's steps repeated to match.
    assert bench.per_step([[8.0, 4.0], [2.0]], 4) == [[2.0, 1.0], [0.5]]
    four_of_a = bench.repeated(step("a"), 4)
    calls.clear()
    four_of_a()
    assert calls == ["a"] * 4
    with pytest.raises(ValueError, match="rounds=0"):
        bench.interleaved_seconds({"a": step("a")}, rounds=0, steps=1, warmup=0)
    with pytest.raises(ValueError, match="equally long"):
        bench.paired_ratios([[1.0], [2.0]], [[1.0]])
    with pytest.raises(ValueError, match="non-empty"):
        bench.paired_ratios([[]], [[1.0]])


def test_cpu_model_reads_the_model_name(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n")
    assert bench.cpu_model(str(cpuinfo)) == "AMD EPYC 9B14"
    fallback = platform.processor() or platform.machine()
    assert bench.cpu_model(str(tmp_path / "missing")) == fallback


@pytest.mark.slow
def test_packing_benchmark_counts_text_positions_with_known_answers():
    from benchmarks import packing

    tokens = synthetic.TOKENS
    rows = {"input_ids": np.array([[0, 7, 8, 2, 0, 9, 2, 1], [0, 7, 2, 1, 1, 1, 1, 1]]),
            "segment_ids": np.array([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0]]),
            "example_ids": np.array([[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0, 0, 0]])}
    got = packing.text_fractions({"mmlm": rows, "btmlm": rows}, tokens)
    assert got["mmlm"] == 10 / 16
    # BTMLM: 10 source tokens + one placeholder per word (2 + 1 + 1) over source + block.
    assert got["btmlm"] == (10 + 4) / 32
    lengths = packing.realistic_lengths(20000)
    assert abs(np.median(lengths) - packing.REALISTIC_MEDIAN) <= 1
    unpacked, packed = packing.realistic_fractions(length=128, examples=300)
    assert not unpacked["pack"] and packed["pack"]
    for name in ("mmlm", "tlm", "camlm", "btmlm"):
        assert packed["fractions"][name] > unpacked["fractions"][name]
    assert packed["fractions"]["mmlm"] > 0.8 and packed["fractions"]["tlm"] > 0.7


def test_pod_flops_per_useful_token_with_a_hand_counted_row(tmp_path):
    from benchmarks import packing

    row = tmp_path / "toy_row.json"
    # 4 chips x 1,000 FLOPs; MMLM 2 rows x 10, TLM 1 x 20, BTMLM 1 x 10 (source rows).
    row.write_text(json.dumps({"model_flops_per_chip": 1000.0, "chips": 4, "batch_shapes": {
        "mmlm": [2, 10], "tlm": [1, 20], "btmlm": [1, 10]}}))
    fractions = {False: {"mmlm": 0.5, "tlm": 0.25, "btmlm": 0.1},
                 True: {"mmlm": 1.0, "tlm": 0.5, "btmlm": 0.1}}
    got = packing.pod_flops_per_useful_token(fractions, row)
    # unpacked: 20 * 0.5 + 20 * 0.25 + 10 * 0.5 (BTMLM reads MMLM's fraction) = 20 tokens
    assert got["unpacked"]["useful_tokens_per_step"] == 20
    assert got["unpacked"]["flops_per_useful_token"] == 4000 / 20
    assert got["packed"]["useful_tokens_per_step"] == 20 + 10 + 10
    assert got["row"] == "toy_row"
    assert packing.pod_flops_per_useful_token(fractions, tmp_path / "missing.json") is None


def test_step_profile_classes_ops_by_name_and_scope_with_known_answers():
    """The profile's split (#41) on a hand-made trace: each event lands in the class its name
    and JAX scope say, runtime and loop events are left out (their ops have events of their
    own), and the totals are per step."""
    from benchmarks import step_profile as sp

    hlo = "\n".join([
        '  %ynn_fusion.3 = f32[8,8]{1,0} fusion(%a, %b), metadata={op_name="jit(s)/jvp(M)/dot"}',
        '  %copy_bitcast_fusion.1 = f32[8,8]{1,0} fusion(%c), metadata={op_name="jit(s)/'
        'transpose(jvp(M))/add_any"}',
        '  %add_select_fusion.2 = f32[8]{0} fusion(%d), metadata={op_name="jit(s)/jvp(M)/'
        'dropout/jit(_bernoulli)/jit(_uniform)/add"}',
        '  %multiply_add_fusion.4 = f32[8]{0} fusion(%e), metadata={op_name="jit(s)/mul"}',
        '  %negate_exponential_fusion = f32[8]{0} fusion(%f), metadata={op_name="jit(s)/jvp(M)/'
        'gelu/exp"}'])
    names = sp.hlo_op_names(hlo)
    assert names["copy_bitcast_fusion.1"] == "jit(s)/transpose(jvp(M))/add_any"
    events = [("ynn_fusion.3", 6.0), ("dot.7", 2.0), ("copy_bitcast_fusion.1", 4.0),
              ("add_select_fusion.2", 1.0), ("multiply_add_fusion.4", 3.0),
              ("negate_exponential_fusion", 5.0), ("while.2", 100.0),
              ("ThunkExecutor::Execute", 50.0), ("$api.py:2479 block_until_ready", 9.0)]
    split = sp.split(events, lambda n: sp.xla_op_class(n, names), steps=2)
    assert split == {"matmul": 4.0, "copy / transpose": 2.0, "dropout RNG": 0.5,
                     "optimizer": 1.5, "other element-wise": 2.5}
    torch_events = [("aten::mm", 10.0), ("aten::addmm", 4.0), ("aten::bernoulli_", 2.0),
                    ("aten::copy_", 1.0), ("Optimizer.step#AdamW.step", 3.0),
                    ("aten::gelu", 2.0), ("autograd::engine::evaluate_function: X", 40.0)]
    assert sp.split(torch_events, sp.torch_op_class, steps=1) == {
        "matmul": 14.0, "copy / transpose": 1.0, "dropout RNG": 2.0, "optimizer": 3.0,
        "other element-wise": 2.0}


def test_step_profile_host_cost_counts_the_pages_a_call_maps_afresh():
    """`host_cost`'s page faults with known answers: a call that maps a fresh anonymous
    64 MiB block (small pages asked for, so transparent huge pages cannot merge them) and
    writes a byte of every page faults in at least those 16,384 pages; the same writes into
    one kept block fault none. The mapping is made directly, not through `malloc`, whose
    reuse of freed blocks differs between machines."""
    import mmap

    from benchmarks import step_profile as sp

    size = 64 * 2 ** 20
    pages = size // mmap.PAGESIZE
    ones = b"\x01" * pages

    def small_page_block():
        block = mmap.mmap(-1, size)
        block.madvise(mmap.MADV_NOHUGEPAGE)
        return block

    def touch(block):
        block[::mmap.PAGESIZE] = ones

    def touch_fresh():
        with small_page_block() as block:
            touch(block)

    fresh = sp.host_cost(touch_fresh, steps=3)
    kept = small_page_block()
    touch(kept)
    reused = sp.host_cost(lambda: touch(kept), steps=3)
    kept.close()
    assert fresh["page_faults"] >= pages
    assert reused["page_faults"] < pages // 10
    assert fresh["system_ms"] >= 0 and reused["system_ms"] >= 0


def test_huge_pages_ab_arms_and_table_with_known_answers():
    """The default arm opts out of the restart, the other leaves it to the child; neither
    inherits the parent's tunable. The table's change is huge pages over default, per round."""
    from benchmarks import huge_pages_ab as ab

    parent = {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
              "ERNIE_M_JAX_HUGE_PAGES": "1"}
    assert ab.arm_environment("default", parent) == {"PATH": "/bin",
                                                     "ERNIE_M_JAX_HUGE_PAGES": "0"}
    assert ab.arm_environment("huge pages", parent) == {"PATH": "/bin"}
    row = lambda ms, best, faults: {"ms": ms, "best_ms": best, "page_faults": faults}  # noqa: E731
    table = ab.markdown({"small@128": {
        "default": [row(500, 480, 1_000_000), row(400, 390, 1_200_000)],
        "huge pages": [row(450, 420, 200_000), row(400, 380, 300_000)]}})
    assert table.splitlines()[-1] == (
        "| small@128 | 500, 400 | 450, 400 | -10%, +0% | 390 / 380 | 1.10M / 0.25M |")


@pytest.mark.slow
def test_huge_pages_ab_children_run_with_the_tunable_only_in_their_arm():
    """One round of the tiny step in two fresh processes: the huge-pages child restarted itself
    with the tunable exactly where this host offers huge pages (the same test the commands
    make), the default child never did (the control)."""
    import os

    from benchmarks import huge_pages_ab as ab
    from ernie_m_jax import huge_pages

    results = ab.run(["tiny@128"], rounds=1)["tiny@128"]
    (off,), (on,) = results["default"], results["huge pages"]
    offered = huge_pages.environment_with_huge_pages(
        ab.arm_environment("huge pages", os.environ), huge_pages.thp_mode(),
        huge_pages.glibc_version()) is not None
    assert off["tunables"] == ""
    assert ("glibc.malloc.hugetlb=1" in on["tunables"]) == offered
    assert off["ms"] > 0 and on["ms"] > 0 and off["page_faults"] > 0


@pytest.mark.parametrize("argv, named", [
    (["--cases", "huge@128"], "'huge@128'"),  # no such size
    (["--cases", "small@100"], "'small@100'"),  # 100 does not divide 2048
    (["--cases", "small"], "'small'"),  # no length
    (["--rounds", "0"], "--rounds must be at least 1"),
])
def test_huge_pages_ab_refuses_bad_arguments_before_running_anything(argv, named, capsys,
                                                                     monkeypatch):
    from benchmarks import huge_pages_ab as ab

    monkeypatch.setattr(ab, "run", lambda *a: pytest.fail("ran with bad arguments"))
    with pytest.raises(SystemExit) as exit_info:
        ab.main(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_step_kernels_add_up_to_the_steps_model_flops():
    """The kernel table (#41) lists every matmul of an MMLM step once: with their runs a step
    their FLOPs are exactly `metrics.step_flops` (3x the forward: the forward, the input
    gradient and the weight gradient of each product), hand-checked on one kernel."""
    from benchmarks import step_kernels as sk

    config = model_config("small")
    batch, length = 16, 128
    slots = MaskingConfig().num_slots(length)
    kernels = sk.step_kernels(config, batch, length, slots)
    total = sum(k.flops * k.per_step for k in kernels)
    assert total == metrics.step_flops(config, {"mmlm": (batch, length)}, MaskingConfig())
    up = next(k for k in kernels if k.name == "MLP up, weight gradient")
    assert (up.lhs, up.rhs, up.per_step) == ((2048, 256), (2048, 1024), 4)
    assert up.flops == 2 * 2048 * 256 * 1024  # contracts the 2,048 tokens
    scores = next(k for k in kernels if k.name.startswith("attention q k^T"))
    assert scores.flops == 2 * (16 * 4) * 128 * 128 * 64
    without_head = sk.step_kernels(config, batch, length, 0)  # the control: the head counts
    assert sum(k.flops * k.per_step for k in without_head) < total


def test_step_kernels_cores_busy_with_known_answers():
    """`cores_busy` on a call that sleeps (about no core) and on one that spins in Python
    (one core: the GIL), each timed per call."""
    import time

    from benchmarks import step_kernels as sk

    seconds, cores = sk.cores_busy(lambda: time.sleep(0.02), 3)
    assert 0.019 < seconds < 0.2 and cores < 0.3

    def spin():
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass

    seconds, cores = sk.cores_busy(spin, 3)
    assert 0.019 < seconds < 0.2 and 0.6 < cores < 1.3


@pytest.mark.slow
def test_step_kernels_time_both_sides_on_a_tiny_step():
    """End to end on the tiny size: every kernel's two sides compute the same product
    (checked inside) and are timed, and the table totals the per-step difference."""
    from benchmarks import step_kernels as sk

    kernels = sk.step_kernels(model_config("tiny"), 2, 16, 3)
    rows = sk.measure(kernels, rounds=2, reps=1)
    assert [r["kernel"] for r in rows] == [k.name for k in kernels]
    assert all(r["ours_ms"] > 0 and r["pytorch_ms"] > 0 for r in rows)
    gap = sum((r["ours_ms"] - r["pytorch_ms"]) * r["per_step"] for r in rows)
    table = sk.markdown(rows, "tiny")
    assert table.count("\n| ") == len(rows) + 2 and f"**{gap:+.0f}**" in table


def test_step_kernels_refuses_empty_turns_by_name(capsys):
    from benchmarks import step_kernels as sk

    with pytest.raises(SystemExit) as exit_info:
        sk.main(["--reps", "0"])
    assert exit_info.value.code == 2
    assert "--rounds, --reps, --batch and --length must be at least 1" in capsys.readouterr().err
