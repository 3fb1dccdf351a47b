"""What BTMLM's stage 1 writes: a run's pseudo translations of held-out English messages,
scored against the reference translations. It says whether back-translation has anything to
learn from at the model's current quality (issue #8), and which generation settings give it
more (#23: choose them on `--split=validation`).

    python -m experiments.btmlm_generation MODEL_DIR --temperatures=1.0,0.0 --out=FILE.json
    python -m experiments.btmlm_generation MODEL_DIR --split=validation --top_k=20 \
        --pair_separators --placeholder_ratio=1.2
"""

import argparse
import collections
import dataclasses
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np


def piece_statistics(generated: Sequence[Sequence[int]], sources: Sequence[Sequence[int]],
                     references: Sequence[Sequence[int]]) -> Dict[str, float]:
    """Means over rows: the share of generated pieces found in the reference translation
    (`reference_precision`), the same with each reference piece matched at most as often as
    it occurs there (`clipped_precision`, BLEU's unigram precision: repeating one frequent
    piece does not score), the reference pieces so matched over the reference's length
    (`clipped_recall`: a pseudo sentence too short to hold the translation scores less),
    the share found in the English source (`copied`), the share of
    distinct pieces (`distinct`), what copying the source would score (`source_precision`,
    `source_clipped_precision`), and `length_ratio`, generated pieces per reference piece
    (mean over rows, then divided)."""
    if not (len(generated) == len(sources) == len(references)) or not generated:
        raise ValueError(f"need as many generated rows as sources and references, at least "
                         f"one; got {len(generated)}, {len(sources)}, {len(references)}")

    def share(pieces: Sequence[int], within: Sequence[int]) -> float:
        return float(np.isin(pieces, list(within)).mean()) if len(pieces) else 0.0

    def matched(pieces: Sequence[int], within: Sequence[int]) -> int:
        available = collections.Counter(within)
        return sum(min(n, available[piece]) for piece, n in collections.Counter(pieces).items())

    def clipped(pieces: Sequence[int], within: Sequence[int]) -> float:
        return matched(pieces, within) / len(pieces) if len(pieces) else 0.0

    rows = [(g, s, r) for g, s, r in zip(generated, sources, references) if len(g)]
    return {
        "reference_precision": float(np.mean([share(g, r) for g, _, r in rows])),
        "clipped_precision": float(np.mean([clipped(g, r) for g, _, r in rows])),
        "clipped_recall": float(np.mean([matched(g, r) / len(r) for g, _, r in rows
                                         if len(r)])),
        "source_clipped_precision": float(np.mean([clipped(s, r) for _, s, r in rows
                                                   if len(s)])),
        "copied": float(np.mean([share(g, s) for g, s, _ in rows])),
        "distinct": float(np.mean([len(set(g)) / len(g) for g, _, _ in rows])),
        "source_precision": float(np.mean([share(s, r) for _, s, r in rows if len(s)])),
        "length_ratio": float(np.mean([len(g) for g, _, _ in rows])
                              / max(np.mean([len(r) for _, _, r in rows]), 1e-9)),
        "messages": len(rows),
    }


def generate(run, rows: Sequence[Sequence[int]], source_language: int, target_language: int,
             temperature: float, seed: int = 0, batch_size: int = 64,
             **knobs) -> List[List[int]]:
    """The run's BTMLM stage 1 (`objectives.btmlm_generate`, its `BTMLMConfig` with `knobs`
    replaced, e.g. `top_k=20`) on each row, into `target_language`; returns the generated
    pieces without padding or separators."""
    import jax
    import jax.numpy as jnp

    from ernie_m_jax.evaluation.embedding import framed_batch
    from ernie_m_jax.model import ErnieM
    from ernie_m_jax.objectives import btmlm_generate, pseudo_sentence_columns

    tokens, cfg = run.tokens, run.model
    btmlm = dataclasses.replace(run.experiment.btmlm, temperature=temperature,
                                target_languages=(target_language,), max_placeholders=None,
                                **knobs)
    model = ErnieM(cfg)
    # The source, then as many placeholders (and the pseudo sentence's separators, if any).
    length = (cfg.max_length - pseudo_sentence_columns(btmlm, 0)) // 2
    fill = jax.jit(lambda params, batch, rng: btmlm_generate(
        params, batch, rng, model=model, tokens=tokens, btmlm=btmlm)["input_ids"][:, length:])
    params = jax.device_put(run.params)
    specials = set(tokens.all_ids)
    out: List[List[int]] = []
    rng = jax.random.key(seed)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids = framed_batch(chunk, tokens, batch_size, length)
        batch = {"input_ids": jnp.asarray(ids),
                 "segment_ids": jnp.asarray((ids != tokens.pad_id).astype(np.int32)),
                 "language_ids": jnp.full(ids.shape, source_language, jnp.int32)}
        rng, step_rng = jax.random.split(rng)
        filled = np.asarray(fill(params, batch, step_rng))[:len(chunk)]
        out += [[int(t) for t in row if t not in specials] for row in filled]
    return out


def diagnose(model_dir: str, temperatures: Sequence[float], limit: int = 128,
             seed: int = 0, languages: Optional[Sequence[str]] = None,
             split: str = "test", **knobs) -> dict:
    """Piece statistics per temperature and language, English `split` messages as sources,
    with the run's generation settings except `knobs` (BTMLMConfig fields)."""
    from ernie_m_jax import saved_run
    from ernie_m_jax.evaluation.embedding import SentenceEncoder
    from experiments import paper_in_miniature as paper

    run = saved_run.load(model_dir)
    data = run.experiment.train.data_setup()  # the run's own tasks, and its corpus
    factors = {}
    if knobs.get("fit_length_factors"):  # measured on the run's own pair mixture
        from ernie_m_jax.train.resolve import length_factors_by_id, pair_length_factors

        factors = pair_length_factors(run.experiment.data.pair_mixture)
        knobs = {**knobs, "length_factors": length_factors_by_id(factors)}
    groups = paper.experiment_languages()
    languages = list(languages or [*groups["parallel"], *groups["monolingual_only"]])
    sets = {p.name.split("-", 1)[1]: p
            for p in paper.pair_sets(run, data.corpus_dir, languages, SentenceEncoder(run),
                                     split)}
    result = {"model_dir": str(model_dir), "step": run.step, "limit": limit, "seed": seed,
              "split": split, "languages": groups, "temperatures": {},
              "knobs": {k: v for k, v in knobs.items() if k != "length_factors"}}
    if factors:
        result["length_factors"] = factors
    for temperature in temperatures:
        per_language = result["temperatures"][str(temperature)] = {}
        for lang in languages:
            pairs = sets[lang]
            sources, references = pairs.source[:limit], pairs.target[:limit]
            generated = generate(run, sources, pairs.source_language, pairs.target_language,
                                 temperature, seed, **knobs)
            per_language[lang] = piece_statistics(generated, sources, references)
    return result


def format_table(directory: Path) -> str:
    """Markdown, one row per diagnostic JSON in `directory` (by name) and temperature:
    clipped precision, plain share in the reference, copied and distinct pieces, with /
    without parallel data (means over each group's languages), beside copying the source."""
    lines = ["| setting | T | clipped precision, with / without | clipped recall | "
             "in reference | copied | distinct | length vs reference |",
             "|---|---|---|---|---|---|---|---|"]
    copying = None
    for path in sorted(Path(directory).glob("*.json")):
        result = json.loads(path.read_text())
        groups = result["languages"]

        def both(per_language: dict, key: str) -> str:
            if any(key not in per_language[lang] for g in groups for lang in groups[g]):
                return "–"  # a statistic added after this diagnostic ran
            return " / ".join(f"{np.mean([per_language[lang][key] for lang in groups[g]]):.3f}"
                              for g in ("parallel", "monolingual_only"))

        knobs = ", ".join(f"`{k}={v}`" for k, v in sorted(result.get("knobs", {}).items()))
        for temperature, per_language in result["temperatures"].items():
            lines.append(f"| {path.stem}{': ' + knobs if knobs else ''} | {temperature} | "
                         f"{both(per_language, 'clipped_precision')} | "
                         f"{both(per_language, 'clipped_recall')} | "
                         f"{both(per_language, 'reference_precision')} | "
                         f"{both(per_language, 'copied')} | {both(per_language, 'distinct')} | "
                         f"{both(per_language, 'length_ratio')} |")
            copying = copying or (f"| copying the English source | – | "
                                  f"{both(per_language, 'source_clipped_precision')} | – | "
                                  f"{both(per_language, 'source_precision')} | 1 | – | – |")
    return "\n".join(lines + [copying] if copying else ["(no diagnostics yet)"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", nargs="?",
                        help="a paper-in-miniature run, e.g. its ERNIE-M stage 1")
    parser.add_argument("--table", metavar="DIR",
                        help="instead: print the table of the diagnostics (JSON) in DIR")
    parser.add_argument("--update_readme", metavar="BLOCK",
                        help="with --table: also write it into experiments/README.md between "
                             "<!-- results:BLOCK --> markers")
    parser.add_argument("--temperatures", default="1.0,0.0")
    parser.add_argument("--limit", type=int, default=128, help="held-out messages per language")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", choices=("test", "validation"),
                        help="the English messages to translate (choose settings on validation)")
    parser.add_argument("--top_k", type=int, help="override the run's BTMLMConfig.top_k")
    parser.add_argument("--placeholder_ratio", type=float,
                        help="override the run's BTMLMConfig.placeholder_ratio")
    parser.add_argument("--pair_separators", action=argparse.BooleanOptionalAction,
                        help="override the run's BTMLMConfig.pair_separators")
    parser.add_argument("--fit_length_factors", action=argparse.BooleanOptionalAction,
                        help="placeholders per source piece scaled by the language pair's "
                             "length ratio in the run's parallel data "
                             "(BTMLMConfig.fit_length_factors)")
    parser.add_argument("--out", help="also write the printed JSON to this file")
    args = parser.parse_args(argv)
    if args.table:
        table = format_table(Path(args.table))
        if args.update_readme:
            from ernie_m_jax import files
            from experiments.paper_in_miniature import README

            print(f"updated {files.replace_marked_block(README, args.update_readme, table)}")
        print(table)
        return 0
    if not args.model_dir:
        parser.error("give a MODEL_DIR to diagnose, or --table DIR")
    knobs = {k: getattr(args, k) for k in ("top_k", "placeholder_ratio", "pair_separators",
                                            "fit_length_factors")
             if getattr(args, k) is not None}
    result = diagnose(args.model_dir, [float(t) for t in args.temperatures.split(",")],
                      args.limit, args.seed, split=args.split, **knobs)
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out:
        from ernie_m_jax import files

        files.write_json_atomic(Path(args.out), result)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
