"""What packing buys, measured: the share of row positions that hold text (not padding), per
objective, packed and not; the useful (text) tokens/s of the real train step on this CPU; and
the pod plan's model FLOPs per useful token for base stage 2 on one v5e-256 slice.

    python -m benchmarks.packing --update_readme     # ~10 minutes on 2 cores
    python -m benchmarks.packing --quick             # a minute: the script runs

Corpora:
- the demo corpus (UI messages, `tasks/demo.py`), at the demo's rows (16 and 32 pieces) and
  at longer ones;
- synthetic sentences whose lengths follow a realistic distribution for parallel text:
  log-normal pieces per sentence with median `REALISTIC_MEDIAN` and geometric standard
  deviation `REALISTIC_SPREAD` (`realistic_lengths`). This is a stated assumption, not a
  histogram measured on a public set (none can be downloaded here): it puts half the
  sentences between ~17 and ~43 pieces, the 20-40 XLM-R pieces typical of WMT/Europarl-style
  sentences, with a long tail truncated at the row.

Text fraction: MMLM and TLM rows as read; CAMLM reads the TLM rows (twice, once per
direction: same fraction); BTMLM's stage-2 row is the source plus its pseudo sentence, one
placeholder per source word (`placeholder_ratio` 1, no length factors), in a block as long as
the source row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence

import numpy as np

from ernie_m_jax import files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "packing.json"
REALISTIC_MEDIAN = 27.0
REALISTIC_SPREAD = 1.6
FIRST_WORD_ID = 5
POD_ROW = "base_stage2_v5e-256_fsdp_dots"
DEMO_LANGUAGES = ("de", "en", "fr", "ja", "ru", "zh_hans")  # demo_cpu.gin's


def realistic_lengths(count: int, seed: int = 0) -> np.ndarray:
    """Pieces per sentence: log-normal, median `REALISTIC_MEDIAN`, geometric sd
    `REALISTIC_SPREAD`, at least 1."""
    rs = np.random.RandomState(seed)
    lengths = np.exp(rs.normal(np.log(REALISTIC_MEDIAN), np.log(REALISTIC_SPREAD), count))
    return np.maximum(1, np.round(lengths)).astype(np.int64)


def text_fractions(batch: Dict[str, Dict[str, np.ndarray]], tokens) -> Dict[str, float]:
    """objective -> share of its rows' positions that hold text (see the module doc)."""
    out = {}
    for name, rows in batch.items():
        real = rows["segment_ids"] > 0
        if name == "btmlm":
            words = real & ~np.isin(rows["input_ids"], tokens.all_ids)
            examples = rows.get("example_ids", real.astype(np.int32))
            # one placeholder per word, at least one per example
            per_example = [max(1, int(words[r][examples[r] == e].sum()))
                           for r in range(len(real)) for e in np.unique(examples[r][real[r]])]
            out[name] = float((real.sum() + sum(per_example)) / (2 * real.size))
        else:
            out[name] = float(real.mean())
    return out


def _mean_fractions(batches: Iterator, count: int, tokens) -> Dict[str, float]:
    seen = [text_fractions(next(batches), tokens) for _ in range(count)]
    return {k: round(statistics.mean(s[k] for s in seen), 4) for k in seen[0]}


def demo_fractions(lengths: Sequence[tuple], batches: int) -> list:
    """Text fractions of the demo corpus's training batches, packed and not."""
    from ernie_m_jax.configs import SpecialTokens
    from ernie_m_jax.data import pipeline

    tokens = SpecialTokens()
    rows = []
    for mono, pair in lengths:
        for pack in (False, True):
            config = pipeline.DataConfig(mono_length=mono, pair_length=pair, pack=pack,
                                         batch_sizes={"mmlm": 32, "tlm": 32, "btmlm": 32})
            ds = pipeline.training_dataset(config, ("mmlm", "tlm", "btmlm"), tokens=tokens)
            fractions = _mean_fractions(ds.as_numpy_iterator(), batches, tokens)
            fractions["camlm"] = fractions["tlm"]
            rows.append({"corpus": "demo", "mono_length": mono, "pair_length": pair,
                         "pack": pack, "fractions": fractions})
    return rows


def _synthetic_examples(kind: str, count: int, seed: int):
    import tensorflow as tf

    rs = np.random.RandomState(seed)
    sizes = realistic_lengths(2 * count, seed).reshape(count, 2)
    words = lambda n: rs.randint(FIRST_WORD_ID, 8000, n).astype(np.int32)
    if kind == "mono":
        examples = [{"text": words(a), "language": np.int32(1)} for a, _ in sizes]
        spec = {"text": tf.TensorSpec([None], tf.int32), "language": tf.TensorSpec([], tf.int32)}
    else:
        examples = [{"source": words(a), "target": words(b), "source_language": np.int32(1),
                     "target_language": np.int32(2)} for a, b in sizes]
        spec = {"source": tf.TensorSpec([None], tf.int32),
                "target": tf.TensorSpec([None], tf.int32),
                "source_language": tf.TensorSpec([], tf.int32),
                "target_language": tf.TensorSpec([], tf.int32)}
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)


def realistic_fractions(length: int, examples: int) -> dict:
    """Text fractions of rows of `length` built from realistic-length sentences."""
    import functools

    from ernie_m_jax.configs import SpecialTokens
    from ernie_m_jax.data import features

    tokens = SpecialTokens()
    out = {"corpus": "realistic", "mono_length": length, "pair_length": length}
    by_pack = {}
    for pack in (False, True):
        batch = {}
        for name, kind, example_fn in (("mmlm", "mono", features.monolingual_example),
                                       ("tlm", "pair", features.pair_example)):
            ds = _synthetic_examples(kind, examples, seed=1 if kind == "mono" else 2).map(
                functools.partial(example_fn, length=length, tokens=tokens))
            ds = features.pack_rows(ds, length, tokens, 2) if pack else ds.map(
                functools.partial(features.pad_row, length=length, tokens=tokens))
            rows = next(ds.batch(10 ** 6).as_numpy_iterator())
            batch[name] = rows
        batch["btmlm"] = batch["mmlm"]
        fractions = {k: round(v, 4) for k, v in text_fractions(batch, tokens).items()}
        fractions["camlm"] = fractions["tlm"]
        by_pack[pack] = fractions
    return [dict(out, pack=pack, fractions=f) for pack, f in by_pack.items()]


def input_rates(length: int, batches: int) -> list:
    """Rows/s and text tokens/s the demo input pipeline delivers (all four objectives),
    packed and not: seqio's packer runs in tf.data, on the host's cores."""
    from ernie_m_jax.configs import SpecialTokens
    from ernie_m_jax.data import pipeline

    out = []
    for pack in (False, True):
        config = pipeline.DataConfig(mono_length=length, pair_length=length, pack=pack)
        objectives = ("mmlm", "tlm", "camlm", "btmlm")
        rows = sum(config.enabled(objectives).values())
        iterator = pipeline.training_dataset(config, objectives,
                                             tokens=SpecialTokens()).as_numpy_iterator()
        for _ in range(5):
            next(iterator)
        start, text = time.perf_counter(), 0
        for _ in range(batches):
            text += sum(int((b["segment_ids"] > 0).sum()) for b in next(iterator).values())
        seconds = time.perf_counter() - start
        out.append({"pack": pack, "length": length, "rows_per_s": rows * batches / seconds,
                    "text_tokens_per_s": text / seconds})
    return out


def step_throughput(mono: int, pair: int, rows: Dict[str, int], steps: int,
                    warmup: int) -> list:
    """Useful (text) tokens/s of the demo model's real train step (all four objectives),
    packed and not, same shapes, batches from the demo corpus; one process, side by side."""
    import gin
    import jax

    from ernie_m_jax import gin_config, partitioning, train
    from ernie_m_jax.data import pipeline
    from ernie_m_jax.train.state import init_state

    results = []
    for pack in (False, True):
        gin.clear_config()
        gin_config.parse(["runs/demo_cpu.gin"], [
            f"PACK = {pack}", f"MONO_LENGTH = {mono}", f"PAIR_LENGTH = {pair}",
            f"MMLM_BATCH = {rows['mmlm']}", f"BATCH_SIZE = {rows['tlm']}",
            "BTMLM_START = 0"])
        exp = train.Experiment.from_gin()
        exp.train.data_setup()
        exp = train.resolve(exp)
        mesh = partitioning.make_mesh(exp.mesh)
        step = train.build_train_step(exp, mesh)
        state = init_state(exp.model, step.optimizer, 0, step.state_shardings)
        data = pipeline.training_dataset(exp.data, exp.train.enabled, tokens=exp.tokens,
                                         position_offset=exp.model.position_offset)
        batches = data.as_numpy_iterator()
        times, text = [], []
        for index in range(warmup + steps):
            batch = train.global_batch(next(batches), mesh, exp.mesh.rules)
            start = time.perf_counter()
            state, metrics = step.fn(state, batch)
            tokens = float(jax.device_get(metrics["text_tokens"]))
            if index >= warmup:
                times.append(time.perf_counter() - start)
                text.append(tokens)
        results.append({"pack": pack, "mono_length": mono, "pair_length": pair,
                        "rows": rows, "step_s": statistics.median(times),
                        "step_s_all": times, "text_tokens_per_step": statistics.mean(text),
                        "useful_tokens_per_s": statistics.mean(text) /
                        statistics.median(times)})
    gin.clear_config()
    return results


def pod_flops_per_useful_token(fractions: Dict[bool, Dict[str, float]],
                               path: Optional[Path] = None) -> Optional[dict]:
    """Model FLOPs per useful token of a pod-plan compile (default: the base stage-2 step
    on one v5e-256): packing adds no FLOPs (same shapes), so it divides them by the text
    fraction's gain."""
    path = path or ROOT / "benchmarks" / "results" / "pod_plan" / f"{POD_ROW}.json"
    if not path.exists():
        return None
    row = json.loads(path.read_text())
    flops = row["model_flops_per_chip"] * row["chips"]
    out = {"row": path.stem, "model_flops_per_step": flops}
    for pack, f in fractions.items():
        # the text each objective reads (BTMLM's source rows are monolingual, as MMLM's)
        useful = sum(rows * length * f["mmlm" if name == "btmlm" else name]
                     for name, (rows, length) in row["batch_shapes"].items())
        out["packed" if pack else "unpacked"] = {"useful_tokens_per_step": useful,
                                                 "flops_per_useful_token": flops / useful}
    return out


def run(quick: bool) -> dict:
    from tasks.demo import register_demo

    register_demo(languages=DEMO_LANGUAGES)
    demo_lengths = [(16, 32)] if quick else [(16, 32), (64, 64), (128, 128)]
    report = {"demo": demo_fractions(demo_lengths, 2 if quick else 20),
              "realistic": realistic_fractions(64 if quick else 256, 200 if quick else 4000)}
    fractions = {r["pack"]: r["fractions"] for r in report["realistic"]}
    report["pod"] = pod_flops_per_useful_token(fractions)
    report["input"] = input_rates(64, 5 if quick else 40)
    report["steps"] = step_throughput(
        64, 64, {"mmlm": 8, "tlm": 8} if quick else {"mmlm": 32, "tlm": 32},
        steps=2 if quick else 10, warmup=1 if quick else 3)
    return report


def markdown(report: dict) -> str:
    objectives = ("mmlm", "tlm", "camlm", "btmlm")
    lines = ["Share of row positions holding text (the rest is padding), mean over batches:", "",
             "| corpus | rows (mono/pair) | " + " | ".join(
                 f"{o.upper()} unpacked | {o.upper()} packed" for o in objectives) + " |",
             "|---|---|" + "---|" * (2 * len(objectives))]
    rows = report["demo"] + report["realistic"]
    for unpacked, packed in zip(rows[0::2], rows[1::2]):
        cells = [f"{unpacked['fractions'][o]:.0%} | {packed['fractions'][o]:.0%}"
                 for o in objectives]
        lines.append(f"| {unpacked['corpus']} | {unpacked['mono_length']}/"
                     f"{unpacked['pair_length']} | " + " | ".join(cells) + " |")
    steps = {s["pack"]: s for s in report["steps"]}
    lines += ["", f"Train step on this CPU (demo model, all four objectives, rows of "
                  f"{steps[False]['mono_length']}/{steps[False]['pair_length']}, "
                  f"{steps[False]['rows']['mmlm']} rows per objective, median of "
                  f"{len(steps[False]['step_s_all'])} steps, side by side):", "",
              "| input | step (ms) | text tokens a step | useful tokens/s |", "|---|---|---|---|"]
    for pack in (False, True):
        s = steps[pack]
        lines.append(f"| {'packed' if pack else 'one example a row'} | {s['step_s'] * 1e3:.0f} | "
                     f"{s['text_tokens_per_step']:.0f} | {s['useful_tokens_per_s']:.0f} |")
    ratio = lambda key: steps[True][key] / steps[False][key]
    lines.append(f"| packed / one a row | {ratio('step_s'):.2f}x | "
                 f"{ratio('text_tokens_per_step'):.2f}x | "
                 f"**{ratio('useful_tokens_per_s'):.2f}x** |")
    rates = {r["pack"]: r for r in report["input"]}
    lines += ["", f"Input pipeline (demo corpus, all four objectives, rows of "
                  f"{rates[False]['length']}): {rates[False]['rows_per_s']:,.0f} rows/s "
                  f"({rates[False]['text_tokens_per_s']:,.0f} text tokens/s) one example a row, "
                  f"{rates[True]['rows_per_s']:,.0f} rows/s "
                  f"({rates[True]['text_tokens_per_s']:,.0f} text tokens/s) packed, "
                  f"{rates[True]['text_tokens_per_s'] / steps[True]['useful_tokens_per_s']:.0f}x "
                  "the text the packed step above consumes (seqio's packer is a tf.data "
                  "while-loop on the host's cores)."]
    pod = report.get("pod")
    if pod:
        a, b = pod["unpacked"], pod["packed"]
        lines += ["", f"Pod plan, `{pod['row']}` (realistic sentences, rows of 256): "
                      f"{a['flops_per_useful_token'] / 1e9:.2f} GFLOP per useful token one "
                      f"example a row, {b['flops_per_useful_token'] / 1e9:.2f} packed "
                      f"(**{a['flops_per_useful_token'] / b['flops_per_useful_token']:.2f}x** "
                      f"fewer; {a['useful_tokens_per_step']:,.0f} -> "
                      f"{b['useful_tokens_per_step']:,.0f} useful tokens a step)."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the script runs")
    parser.add_argument("--output", help=f"JSON file (default {RESULTS})")
    parser.add_argument("--update_readme", action="store_true",
                        help="rewrite the packing table in benchmarks/README.md")
    args = parser.parse_args(argv)
    report = run(args.quick)
    text = markdown(report)
    print(text)
    output = Path(args.output or RESULTS)
    output.parent.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(output, report, indent=2)
    print(f"wrote {output}")
    if args.update_readme:
        files.replace_marked_block(Path(__file__).with_name("README.md"), "packing", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
