"""`ernie-m-jax` command line: one subcommand per job."""

from __future__ import annotations

import argparse
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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ernie_m_jax.gin_config import split_gin_flags

    rest, bindings = split_gin_flags(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    args.gin_bindings = bindings
    if getattr(args, "steps", 1) <= 0:
        build_parser().error("--steps must be positive")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
