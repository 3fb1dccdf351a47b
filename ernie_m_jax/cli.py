"""`ernie-m-jax` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def _smoke(args: argparse.Namespace) -> int:
    from ernie_m_jax import smoke

    print(f"ernie-m-jax smoke: MMLM+TLM+CAMLM+BTMLM on a tiny model, {args.steps} steps, "
          f"seed {args.seed}")
    summary = smoke.run(steps=args.steps, seed=args.seed)
    failed = [name for name, s in summary.items() if not s["last"] < 0.9 * s["first"]]
    for name, s in summary.items():
        print(f"  {name:6s} loss {s['first']:.3f} -> {s['last']:.3f}")
    if failed:
        print(f"FAILED: loss did not drop by 10% for {failed}", file=sys.stderr)
        return 1
    print("OK: every objective's loss dropped")
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gin_file", action="append", default=[], required=True,
                        help="gin file (repeatable), e.g. gin/runs/demo_cpu.gin")
    parser.add_argument("--model_dir", required=True,
                        help="checkpoints, TensorBoard events and metrics.jsonl go here; a run "
                             "with an existing model_dir resumes it")
    group = parser.add_argument_group(
        "multi-process", "one process per host (or GPU); auto-detected on TPU VM slices and "
        "under SLURM, or from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID")
    group.add_argument("--coordinator_address", help="host:port of process 0")
    group.add_argument("--num_processes", type=int)
    group.add_argument("--process_id", type=int)
    group.add_argument("--cpu_devices", type=int,
                       help="simulate this many CPU devices per process (testing)")


def _train(args: argparse.Namespace) -> int:
    from ernie_m_jax import train

    return train.run_from_args(args, args.gin_bindings)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_dir", required=True, help="a training run's directory")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--gin_file", action="append", default=[],
                        help="extra gin files on top of the run's config.gin (repeatable)")


def _load_run(args: argparse.Namespace):
    from ernie_m_jax import saved_run

    return saved_run.load(args.model_dir, args.step, args.gin_file, args.gin_bindings)


def _export_hf(args: argparse.Namespace) -> int:
    from ernie_m_jax.export import hf_export

    out = hf_export.export(_load_run(args), args.out, args.format, args.fold_language,
                           args.overwrite)
    print(f"wrote the {args.format} checkpoint to {out}")
    return 0


def _import_hf(args: argparse.Namespace) -> int:
    from ernie_m_jax.export import hf_import

    out = hf_import.import_hf(args.hf_dir, args.model_dir, args.overwrite, args.seed)
    print(f"wrote {out}; continue pretraining from it with\n  ernie-m-jax train "
          f"--gin_file=YOUR_RUN.gin --gin_file={out}/config.gin "
          f"--gin.TrainConfig.init_from=\"'{out}'\" --model_dir=NEW_DIR")
    return 0


def _read_text_lines(path: str) -> list:
    """Lines of a UTF-8 file; one clear error for a missing, empty or undecodable file."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line} is not valid UTF-8 ({err.reason})") from None
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{path} is empty")
    return lines


def _embed(args: argparse.Namespace) -> int:
    import numpy as np

    from ernie_m_jax.evaluation.embedding import SentenceEncoder

    texts = _read_text_lines(args.input)
    empty = sum(1 for t in texts if not t.strip())
    if empty:
        print(f"note: {empty} empty lines get the vector of [CLS] [SEP]", file=sys.stderr)
    encoder = SentenceEncoder(_load_run(args), args.pooling, args.layer, args.batch_size)
    vectors = encoder.embed_texts(texts, args.language, progress=True)
    tmp = args.output + ".partial.npy"
    np.save(tmp, vectors)
    os.replace(tmp, args.output)
    print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} vectors to {args.output}")
    return 0


def _eval_retrieval(args: argparse.Namespace) -> int:
    import seqio

    from ernie_m_jax.evaluation import retrieval
    from ernie_m_jax.evaluation.embedding import SentenceEncoder

    run = _load_run(args)
    encoder = SentenceEncoder(run, args.pooling, args.layer, args.batch_size)
    if args.source_file or args.target_file:
        if not (args.source_file and args.target_file):
            raise ValueError("--source_file and --target_file go together")
        sets = [retrieval.PairSet(
            f"{args.source_file} | {args.target_file}",
            encoder.tokenize(_read_text_lines(args.source_file)),
            encoder.tokenize(_read_text_lines(args.target_file)),
            run.language_id(args.source_language), run.language_id(args.target_language))]
    else:
        names = args.task or [t.name for t in seqio.get_mixture_or_task(
            run.experiment.data.pair_mixture).tasks]
        sets = [retrieval.task_pairs(n, args.split, args.max_examples) for n in names]
    results = retrieval.evaluate(encoder, sets, args.center, progress=True)
    print(retrieval.format_table(results))
    settings = {"model_dir": args.model_dir, "step": run.step, "layer": encoder.layer,
                "pooling": args.pooling, "center": args.center, "split": args.split}
    if args.output:
        retrieval.write_json(args.output, results, settings)
        print(f"wrote {args.output}")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from experiments import paper_in_miniature as paper

    out = Path(args.out or Path("experiments") / "results" / "paper_in_miniature" / args.config)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",") if args.arms else [paper.RANDOM_INIT, *paper.ARMS]
    if args.stage1_from and arms != ["ernie_m"]:
        raise ValueError("--stage1_from starts ERNIE-M's stage 2 from a finished stage 1: "
                         "use it with --arms=ernie_m")
    setting = paper.Setting(args.config, out, args.steps, tuple(args.gin_bindings),
                            args.stage1_from)
    try:
        summary = paper.run_experiment(setting, arms, seeds)
    except paper.RunStopped as stopped:
        print(f"ernie-m-jax experiment: {stopped}", file=sys.stderr)
        return 1
    table, block = paper.format_summary(summary), args.config
    if args.stage1_from:  # a probe: every probe beside this one, and the arm itself
        block = f"{args.config}-probes"
        arm_out = Path(args.stage1_from).parents[2]  # <arm out>/runs/ernie_m_seed{seed}/stage1
        if (arm_out / "results").is_dir():
            table = paper.format_probes(arm_out, out.parent)
    print(table)
    if args.update_readme:
        from ernie_m_jax import files

        print(f"updated {files.replace_marked_block(paper.README, block, table)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ernie-m-jax", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    smoke = commands.add_parser(
        "smoke", help="train all four objectives briefly on a built-in sample; fails if any "
                      "loss does not drop")
    smoke.add_argument("--steps", type=int, default=150)
    smoke.add_argument("--seed", type=int, default=0)
    smoke.set_defaults(run=_smoke)
    train = commands.add_parser(
        "train", help="pretrain with gin configs: --gin_file=... [--gin.NAME=VALUE ...] "
                      "--model_dir=DIR")
    add_train_arguments(train)
    train.set_defaults(run=_train)

    export = commands.add_parser(
        "export-hf", help="write a run's checkpoint as a Hugging Face model directory")
    _add_run_arguments(export)
    export.add_argument("--out", required=True, help="new directory to write")
    export.add_argument("--format", choices=("ernie_m", "xlm_roberta"), default="ernie_m")
    export.add_argument("--fold_language", help="for models with language embeddings: add "
                        "this language's embedding (or 'mean') to the position embeddings")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(run=_export_hf, plain_errors=True)

    imp = commands.add_parser(
        "import-hf", help="turn an ErnieM or XLM-R checkpoint directory into a run to "
                          "continue pretraining from")
    imp.add_argument("--hf_dir", required=True)
    imp.add_argument("--model_dir", required=True, help="new directory to write")
    imp.add_argument("--seed", type=int, default=0, help="for tensors initialised fresh")
    imp.add_argument("--overwrite", action="store_true")
    imp.set_defaults(run=_import_hf, plain_errors=True)

    for name, helptext in (("embed", "sentence vectors for the lines of a text file"),
                           ("eval-retrieval", "cross-lingual retrieval accuracy (both "
                                              "directions) on parallel tasks or two files")):
        sub = commands.add_parser(name, help=helptext)
        _add_run_arguments(sub)
        sub.add_argument("--pooling", choices=("cls", "mean"), default="mean")
        sub.add_argument("--layer", type=int, default=-1,
                         help="0 = embeddings, 1..N = layer outputs, -1 = last")
        sub.add_argument("--batch_size", type=int, default=64)
        if name == "embed":
            sub.add_argument("--input", required=True, help="UTF-8 text, one sentence a line")
            sub.add_argument("--output", required=True, help=".npy file to write")
            sub.add_argument("--language", help="the text's language (models with language "
                                                "embeddings)")
            sub.set_defaults(run=_embed, plain_errors=True)
        else:
            sub.add_argument("--task", action="append", help="registered parallel task "
                             "(repeatable; default: every task of the run's pair mixture)")
            sub.add_argument("--split", default="test")
            sub.add_argument("--max_examples", type=int)
            sub.add_argument("--source_file")
            sub.add_argument("--target_file")
            sub.add_argument("--source_language")
            sub.add_argument("--target_language")
            sub.add_argument("--center", action="store_true",
                             help="subtract each side's mean vector before comparing")
            sub.add_argument("--output", help="JSON file for the results")
            sub.set_defaults(run=_eval_retrieval, plain_errors=True)

    experiment = commands.add_parser(
        "experiment", help="reproducible experiments; `paper-in-miniature`: what CAMLM and "
                           "BTMLM add for languages without parallel data")
    experiment.add_argument("name", choices=("paper-in-miniature",))
    experiment.add_argument("--config", choices=("cpu", "tiny"), default="cpu")
    experiment.add_argument("--seeds", default="0,1,2")
    experiment.add_argument("--arms", help="comma-separated (default: random_init and all four)")
    experiment.add_argument("--steps", type=int, help="override the config's NUM_STEPS")
    experiment.add_argument("--out", help="default experiments/results/paper_in_miniature/"
                                          "<config>; finished arm x seed results are kept")
    experiment.add_argument("--stage1_from",
                            help="with --arms=ernie_m: start stage 2 from this finished stage-1 "
                                 "run (\"{seed}\" is replaced by the seed), to probe stage-2 "
                                 "knobs (--gin.BTMLMConfig.*) without retraining stage 1")
    experiment.add_argument("--update_readme", action="store_true",
                            help="write the tables into experiments/README.md between "
                                 "<!-- results:CONFIG --> markers (a probe's, with "
                                 "--stage1_from, between <!-- results:CONFIG-probes -->)")
    experiment.set_defaults(run=_experiment, plain_errors=True)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ernie_m_jax.gin_config import split_gin_flags

    rest, bindings = split_gin_flags(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    args.gin_bindings = bindings
    steps = getattr(args, "steps", None)
    if steps is not None and steps <= 0:
        build_parser().error("--steps must be positive")
    if not getattr(args, "plain_errors", False):
        return args.run(args)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"ernie-m-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
