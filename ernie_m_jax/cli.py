"""`ernie-m-jax` command line: one subcommand per job, the only module that reads argv.

Each subcommand imports what it runs inside its handler: `--help` and a mistyped flag answer
at once instead of after loading TensorFlow and JAX, and `train` joins its process group
before anything touches a backend.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import tokenize
from typing import Optional, Sequence

from ernie_m_jax import huge_pages
from ernie_m_jax.files import split_lines


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
    import jax

    from ernie_m_jax import distributed, gin_config, train

    # Before anything touches a backend: join the other processes, if any.
    distributed.initialize(distributed.ProcessGroup(
        args.coordinator_address, args.num_processes, args.process_id), args.cpu_devices)
    gin_config.parse(args.gin_file, args.gin_bindings)
    exp = train.Experiment.from_gin()  # every config is built (and checked) before any compute
    if jax.process_index() == 0:
        m = exp.model
        print(f"ernie-m-jax train: {m.num_layers} x {m.hidden_size} encoder, "
              f"{', '.join(o.upper() for o in exp.train.enabled)}, {exp.train.num_steps:,} "
              f"steps, on {exp.data.mono_mixture} / {exp.data.pair_mixture} -> "
              f"{args.model_dir}", flush=True)
    summary = train.train(args.model_dir, exp)
    if jax.process_index() != 0:
        return 0
    if "already_at_step" in summary:
        print(f"the run in {args.model_dir} is already at step {summary['already_at_step']} "
              f"(TrainConfig.num_steps={exp.train.num_steps}): nothing to do; raise "
              f"NUM_STEPS to train on")
        return 0
    print(_summary(args.model_dir, exp, summary, time.perf_counter() - args.started))
    return 0


def _compile(args: argparse.Namespace) -> int:
    from ernie_m_jax import files, gin_config, train
    from ernie_m_jax.aot import compile_step, hardware

    accelerator = hardware.parse(args.topology, args.num_slices)  # before any work
    # Compiling needs no weights: a stage-2 file's STAGE1_DIR may stay unset.
    gin_config.parse(args.gin_file, list(args.gin_bindings) + ["TrainConfig.init_from = None"])
    exp = train.Experiment.from_gin()
    print(f"ernie-m-jax compile: {exp.model.num_layers} x {exp.model.hidden_size} encoder, "
          f"{', '.join(o.upper() for o in exp.train.enabled)}, for {accelerator.label} "
          f"({accelerator.num_chips} chips, libtpu topology {accelerator.topology_name}); "
          "compile-only devices: nothing runs", flush=True)
    try:
        report, text = compile_step.compile_train_step(exp, accelerator,
                                                       keep_hlo=bool(args.hlo_out))
    except ImportError as err:  # libtpu missing: say how to install it
        print(f"ernie-m-jax compile: error: {err}", file=sys.stderr)
        return 2
    except compile_step.DoesNotFit as err:  # XLA refused it: the plan records that too
        if args.output and err.report is not None:
            files.write_json_atomic(args.output, err.report)
            print(f"wrote {args.output}")
        raise
    print(compile_step.format_report(report))
    # Atomic: the pod plan takes an existing --output file for a finished compile.
    if args.output:
        files.write_json_atomic(args.output, report.to_json())
        print(f"wrote {args.output}")
    if text is not None:
        files.write_text_atomic(args.hlo_out, text)
        print(f"wrote the optimized HLO to {args.hlo_out}")
    report.check_fits()  # a step that does not fit: one message, non-zero exit
    return 0


def _cache_tasks(args: argparse.Namespace) -> int:
    from ernie_m_jax import gin_config, train
    from ernie_m_jax.data import cache

    gin_config.parse(args.gin_file, args.gin_bindings)
    exp = train.Experiment.from_gin()
    if exp.train.data_setup is not None:
        exp.train.data_setup()  # registers the run's tasks
    output = args.output_cache_dir or exp.data.cache_dir
    if not output:
        raise ValueError("where should the cache go? pass --output_cache_dir (or bind "
                         "CACHE_DIR, the folder training then reads it from)")
    names = cache.cache_tasks(exp.data, output, args.pipeline_options or
                              ["--runner=DirectRunner"], args.overwrite)
    print(f"cached {len(names)} tasks in {output}; train with --gin.USE_CACHED_TASKS=True "
          f"--gin.CACHE_DIR={shlex.quote(repr(output))}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from ernie_m_jax import gin_config
    from ernie_m_jax.finetune import evaluate, loop
    from ernie_m_jax.finetune.config import FinetuneConfig

    bindings = list(args.gin_bindings)
    if args.init_from:
        bindings.append(f"FinetuneConfig.init_from = {args.init_from!r}")
    gin_config.parse(args.gin_file, bindings)
    cfg = FinetuneConfig()
    print(f"ernie-m-jax finetune: from {cfg.init_from or '(the run being resumed)'} -> "
          f"{args.model_dir}", flush=True)
    summary = loop.finetune(args.model_dir, cfg)
    if "preempted_at_step" in summary:
        return 0
    print(f"{summary['num_steps']} steps ({summary['steps_per_epoch']} an epoch of "
          f"{summary['train_examples']} examples); best validation accuracy "
          f"{summary['best_validation_accuracy']:.3f} at step {summary['test']['step']}"
          + (f"; stopped early at step {summary['stopped_early_at']}"
             if summary.get("stopped_early_at") else "")
          + f"; {(time.perf_counter() - args.started) / 60:.1f} min in all")
    print(evaluate.format_table(summary["test"]))
    print(finetune_next_steps(args.model_dir))
    return 0


def finetune_next_steps(model_dir: str) -> str:
    """What to run after fine-tuning, ready to paste (paths quoted for the shell)."""
    quoted = shlex.quote(model_dir)
    return (f"next:\n  ernie-m-jax evaluate --model_dir={quoted} --split=validation\n"
            f"  ernie-m-jax export-hf --model_dir={quoted} --out=DIR --format=ernie_m\n"
            f"  tensorboard --logdir={quoted}")


def _evaluate(args: argparse.Namespace) -> int:
    from ernie_m_jax.finetune import evaluate, loop, run

    which = run.BEST if args.checkpoint == "best" else run.CHECKPOINTS
    result = loop.evaluate(args.model_dir, args.split, which, args.batch_size)
    print(evaluate.format_table(result))
    output = args.output or os.path.join(
        args.model_dir, f"eval_{args.split}_step_{result['step']}.json")
    evaluate.write_json(output, result, {"model_dir": args.model_dir,
                                         "checkpoint": args.checkpoint})
    print(f"wrote {output}")
    return 0


def _summary(model_dir: str, exp, summary, command_seconds: float) -> str:
    """The run's summary, with en<->X retrieval scored on its own parallel tasks."""
    from ernie_m_jax import run_summary, saved_run

    layer = run_summary.middle_layer(exp.model.num_layers)
    if "preempted_at_step" in summary:  # inside a preemption's grace period: no evaluation
        scores, note = [], run_summary.skipped_retrieval_note(model_dir, layer)
    else:
        run = saved_run.load(model_dir, setup_data=False)
        tasks = run_summary.parallel_tasks(exp, run)
        scores = (run_summary.score_retrieval(run, tasks, layer,
                                              use_cached=exp.data.use_cached) if tasks else [])
        note = None if tasks else "no registered parallel tasks: retrieval not scored"
        if scores:
            run_summary.write_scores(model_dir, run.step, layer, scores)
    text = run_summary.format_summary(model_dir, exp, summary, scores, layer, note)
    return text + f"\n(the whole command took {command_seconds / 60:.1f} min)"


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
    from ernie_m_jax.finetune import run

    if run.read_info(args.model_dir) is not None:  # a fine-tuned classifier
        out = hf_export.export_classifier(args.model_dir, args.out, args.format,
                                          args.fold_language, args.overwrite,
                                          license=args.license)
        print(f"wrote the {args.format} sequence classifier to {out}")
        return 0
    out = hf_export.export(_load_run(args), args.out, args.format, args.fold_language,
                           args.overwrite, license=args.license)
    print(f"wrote the {args.format} checkpoint to {out}")
    return 0


def _import_hf(args: argparse.Namespace) -> int:
    from ernie_m_jax.export import hf_import

    out = hf_import.import_hf(args.hf_dir, args.model_dir, args.overwrite, args.seed)
    print(f"wrote {out}; continue pretraining from it with\n  ernie-m-jax train "
          f"--gin_file=gin/runs/continue_from_hf.gin "
          f"--gin_file={shlex.quote(str(out / 'config.gin'))} "
          "--gin.MONO_MIXTURE=... --gin.PARA_MIXTURE=... --gin.NUM_STEPS=... "
          "--model_dir=NEW_DIR")
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
    lines = split_lines(text)
    if not lines:
        raise ValueError(f"{path} is empty")
    return lines


def _embed(args: argparse.Namespace) -> int:
    import numpy as np

    from ernie_m_jax.evaluation.embedding import SentenceEncoder

    output = os.path.abspath(args.output)
    if not os.path.isdir(os.path.dirname(output)) or os.path.isdir(output):
        raise FileNotFoundError(f"--output {args.output}: its folder does not exist (or it is a "
                                "folder itself); the vectors would have nowhere to go")
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
    from ernie_m_jax.data import pipeline
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
    else:  # registered tasks: the run's data setup registers them (the data must exist)
        if run.experiment.train.data_setup is not None:
            run.experiment.train.data_setup()
        names = args.task or [t.name for t in pipeline.tasks_of(
            run.experiment.data.pair_mixture)]
        sets = [retrieval.task_pairs(n, args.split, args.max_examples) for n in names]
    results = retrieval.evaluate(encoder, sets, args.center, progress=True)
    print(retrieval.format_table(results))
    settings = {"model_dir": args.model_dir, "step": run.step, "layer": encoder.layer,
                "pooling": args.pooling, "center": args.center, "split": args.split}
    if args.output:
        retrieval.write_json(args.output, results, settings)
        print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ernie-m-jax", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain ERNIE-M-style multilingual encoders (MMLM, TLM, CAMLM, BTMLM) "
                    "with JAX, from one CPU to TPU pods,\nand move them to and from Hugging "
                    "Face.",
        epilog="start with the demo (about 10 minutes on 2 CPU cores):\n"
               "  ernie-m-jax train --gin_file=gin/runs/demo_cpu.gin "
               "--model_dir=/tmp/ernie_m_demo\n"
               "`ernie-m-jax COMMAND --help` shows a command's flags and an example.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and XLA's native logs, and on an error the "
                             "full traceback instead of one line")
    commands = parser.add_subparsers(dest="command", required=True)

    def subcommand(name: str, help: str, example: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, parents=[common], help=help, description=help[0].upper() + help[1:] + ".",
            epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(loads_tensorflow=True)  # the data pipeline's; smoke reads no data
        return sub

    smoke = subcommand(
        "smoke", "train all four objectives briefly on a built-in sample; fails if any loss "
                 "does not drop", "ernie-m-jax smoke --steps=150")
    smoke.add_argument("--steps", type=int, default=150)
    smoke.add_argument("--seed", type=int, default=0)
    smoke.set_defaults(run=_smoke, loads_tensorflow=False)
    train = subcommand(
        "train", "pretrain (or resume) a run from gin files and --gin.NAME=VALUE bindings",
        "ernie-m-jax train --gin_file=gin/runs/demo_cpu.gin --model_dir=/tmp/ernie_m_demo "
        "--gin.NUM_STEPS=200")
    add_train_arguments(train)
    train.set_defaults(run=_train)

    comp = subcommand(
        "compile", "compile the train step ahead of time for a TPU slice, on any host "
                   "(libtpu's compile-only devices), and report its HBM per chip, FLOPs, "
                   "collectives and a roofline estimate",
        "ernie-m-jax compile --gin_file=gin/runs/pretrain_stage2.gin --topology=v5e-256 "
        "--gin.MONO_MIXTURE=\"'my.mono'\" --gin.PARA_MIXTURE=\"'my.para'\" "
        "--gin.NUM_STEPS=1000")
    comp.add_argument("--gin_file", action="append", default=[], required=True,
                      help="gin file (repeatable), as for train")
    comp.add_argument("--topology", required=True,
                      help="Cloud TPU accelerator type: v4-N / v5p-N (N TensorCores), v5e-N / "
                           "v6e-N (N chips), e.g. v4-32, v5p-128, v5e-256, v6e-256")
    comp.add_argument("--num_slices", type=int, default=1,
                      help="multislice: this many slices joined by the data-centre network")
    comp.add_argument("--output", help="JSON file for the report")
    comp.add_argument("--hlo_out", help="write the optimized HLO text here")
    comp.set_defaults(run=_compile)

    cache = subcommand(
        "cache-tasks", "preprocess a run's tasks once into seqio's offline cache with Apache "
                       "Beam (DirectRunner here, Dataflow or Flink at scale)",
        "ernie-m-jax cache-tasks --gin_file=gin/runs/pretrain_stage1.gin "
        "--gin_file=gin/data/tfds.gin --output_cache_dir=gs://my-bucket/seqio_cache "
        "--pipeline_options=--runner=DataflowRunner,--project=my-project")
    cache.add_argument("--gin_file", action="append", default=[], required=True,
                       help="the run's gin files (repeatable), as for train")
    cache.add_argument("--output_cache_dir", help="where the cache goes (default: CACHE_DIR)")
    cache.add_argument("--pipeline_options", type=lambda text: text.split(","),
                       help="Beam pipeline options, comma-separated (default "
                            "--runner=DirectRunner)")
    cache.add_argument("--overwrite", action="store_true",
                       help="rebuild tasks already cached there")
    cache.set_defaults(run=_cache_tasks)

    fine = subcommand(
        "finetune", "fine-tune a pretrained run for sentence(-pair) classification and score "
                    "every language (resumes an existing --model_dir)",
        "ernie-m-jax finetune --gin_file=gin/finetune/packages.gin "
        "--init_from=/tmp/ernie_m_demo --model_dir=/tmp/ernie_m_packages")
    fine.add_argument("--gin_file", action="append", default=[], required=True,
                      help="gin file (repeatable), e.g. gin/finetune/xnli.gin")
    fine.add_argument("--init_from", help="the pretraining run (or import-hf directory) to "
                                          "start from")
    fine.add_argument("--model_dir", required=True, help="the fine-tuning run's directory")
    fine.set_defaults(run=_finetune)

    ev = subcommand(
        "evaluate", "accuracy per language of a fine-tuned classifier on a split",
        "ernie-m-jax evaluate --model_dir=/tmp/ernie_m_packages --split=test")
    ev.add_argument("--model_dir", required=True, help="a fine-tuning run's directory")
    ev.add_argument("--split", default="test", choices=("validation", "test"))
    ev.add_argument("--checkpoint", default="best", choices=("best", "latest"),
                    help="model selection's best step or the latest one")
    ev.add_argument("--batch_size", type=int, default=64)
    ev.add_argument("--output", help="JSON file (default: in --model_dir)")
    ev.set_defaults(run=_evaluate)

    export = subcommand(
        "export-hf", "write a run's checkpoint (or a fine-tuned run's classifier) as a Hugging "
                     "Face model directory",
        "ernie-m-jax export-hf --model_dir=/tmp/ernie_m_demo --out=/tmp/demo_hf "
        "--format=xlm_roberta --fold_language=mean")
    _add_run_arguments(export)
    export.add_argument("--out", required=True, help="new directory to write")
    export.add_argument("--format", choices=("ernie_m", "xlm_roberta"), default="ernie_m")
    export.add_argument("--fold_language", help="for models with language embeddings: add "
                        "this language's embedding (or 'mean') to the position embeddings")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in --out (never a training run)")
    export.add_argument("--license", default="other",
                        help="the model card's license (a Hub license id, e.g. apache-2.0); "
                             "the weights' terms follow the training data's")
    export.set_defaults(run=_export_hf)

    imp = subcommand(
        "import-hf", "turn an ErnieM or XLM-R checkpoint directory (weights and tokenizer) "
                     "into a run to continue pretraining from",
        "ernie-m-jax import-hf --hf_dir=/ckpt/xlm-roberta-base --model_dir=/tmp/xlmr_base")
    imp.add_argument("--hf_dir", required=True)
    imp.add_argument("--model_dir", required=True, help="new directory to write")
    imp.add_argument("--seed", type=int, default=0, help="for tensors initialised fresh")
    imp.add_argument("--overwrite", action="store_true",
                     help="replace everything in a non-empty --model_dir (never a training run)")
    imp.set_defaults(run=_import_hf)

    for name, helptext, example in (
            ("embed", "sentence vectors (.npy) for the lines of a text file",
             "ernie-m-jax embed --model_dir=/tmp/ernie_m_demo --input=sents.txt "
             "--output=vecs.npy --language=de"),
            ("eval-retrieval", "cross-lingual retrieval accuracy (both directions) on the "
                               "run's parallel tasks or two aligned files",
             "ernie-m-jax eval-retrieval --model_dir=/tmp/ernie_m_demo --split=test "
             "--layer=2 --center")):
        sub = subcommand(name, helptext, example)
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
            sub.set_defaults(run=_embed)
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
            sub.set_defaults(run=_eval_retrieval)

    return parser


# What a user's input can cause (bad flags, gin bindings or files, a run that does not fit):
# one `error:` line and exit 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, SyntaxError, tokenize.TokenError, ArithmeticError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The `ernie-m-jax` command. Without `argv` it is the process's entry point, which
    first restarts itself with huge pages for glibc's large blocks where they apply
    (`huge_pages`: XLA:CPU's per-step buffers otherwise fault in page by page)."""
    if argv is None:
        huge_pages.restart_with_huge_pages()
    from ernie_m_jax.gin_config import split_gin_flags

    started = time.perf_counter()
    parser = build_parser()
    try:
        rest, bindings = split_gin_flags(sys.argv[1:] if argv is None else argv)
    except ValueError as err:
        parser.error(str(err))
    args = parser.parse_args(rest)
    args.gin_bindings = bindings
    args.started = started
    steps = getattr(args, "steps", None)
    if steps is not None and steps <= 0:
        parser.error("--steps must be positive")
    if args.loads_tensorflow:
        from ernie_m_jax import console

        # Before JAX or anything else loads it: no native log lines unless --verbose.
        console.load_tensorflow(quiet=not args.verbose)
    if args.verbose:
        return args.run(args)
    try:
        return args.run(args)
    except USER_ERRORS as err:
        message = " ".join(str(err).split())
        print(f"ernie-m-jax {args.command}: error: {message} (--verbose shows the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
