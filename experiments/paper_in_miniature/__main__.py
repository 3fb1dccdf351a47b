"""`python -m experiments.paper_in_miniature [--config cpu|tiny] [--seeds 0,1,2] ...`: train
and score every missing arm x seed, print the tables, optionally write them into the README."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ernie_m_jax import files, huge_pages
from ernie_m_jax.gin_config import split_gin_flags
from experiments.paper_in_miniature import report
from experiments.paper_in_miniature.finetuning import run_finetuning
from experiments.paper_in_miniature.runner import run_experiment
from experiments.paper_in_miniature.setting import (
    ARMS,
    CONFIGS,
    RANDOM_INIT,
    README,
    RunStopped,
    Setting,
)

PROG = "python -m experiments.paper_in_miniature"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="ERNIE-M's claim in miniature: what CAMLM and BTMLM add for "
        "languages without parallel data. Extra --gin.NAME=VALUE flags bind every run.",
        epilog=f"example: {PROG} --config=tiny --seeds=0 --out=/tmp/smoke")
    parser.add_argument("--config", choices=tuple(CONFIGS), default="cpu")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", help="comma-separated (default: random_init and all four); "
                                       "also camlm_continued and ernie_m_full_stage1, which "
                                       "continue the finished mmlm_tlm_camlm run of each seed "
                                       "without and with BTMLM")
    parser.add_argument("--steps", type=int, help="override the config's NUM_STEPS")
    parser.add_argument("--out", help="default experiments/results/paper_in_miniature/"
                                      "<config>; finished arm x seed results are kept")
    parser.add_argument("--hold_out",
                        help="comma-separated demo packages (e.g. Sphinx) to hold out of "
                             "pretraining entirely, corpus and vocabulary alike; every arm is "
                             "then also scored on their messages. Default --out: "
                             "<config>_without_<packages>")
    parser.add_argument("--stage1_from",
                        help="with --arms=ernie_m: start stage 2 from this finished stage-1 "
                             "run (\"{seed}\" is replaced by the seed), to probe stage-2 "
                             "knobs (--gin.BTMLMConfig.*) without retraining stage 1")
    parser.add_argument("--finetune", action="store_true",
                        help="fine-tune each arm's run of each --seeds (pretraining it first "
                             "where its run is gone) on the package task with each "
                             "--finetune_seeds, and print the table beside the linear probe")
    parser.add_argument("--finetune_seeds", default="0,1,2",
                        help="with --finetune: the fine-tuning seeds of each pretraining run")
    parser.add_argument("--update_readme", action="store_true",
                        help="write the tables into experiments/README.md between "
                             "<!-- results:CONFIG --> markers (a probe's, with "
                             "--stage1_from, between <!-- results:CONFIG-probes -->; with "
                             "--hold_out=P, <!-- results:CONFIG-without-p -->)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    rest, bindings = split_gin_flags(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(rest)
    if args.steps is not None and args.steps <= 0:
        parser.error("--steps must be positive")
    held_out = sorted(args.hold_out.split(",")) if args.hold_out else []
    name = args.config + "".join(f"_without_{p.lower()}" for p in held_out)
    out = Path(args.out or Path("experiments") / "results" / "paper_in_miniature" / name)
    if held_out:
        bindings.append(f"register_experiment_data.held_out_packages = {tuple(held_out)!r}")
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",") if args.arms else [RANDOM_INIT, *ARMS]
    if args.stage1_from and arms != ["ernie_m"]:
        parser.error("--stage1_from starts ERNIE-M's stage 2 from a finished stage 1: "
                     "use it with --arms=ernie_m")
    setting = Setting(args.config, out, args.steps, tuple(bindings), args.stage1_from)
    if args.finetune:
        arms = args.arms.split(",") if args.arms else list(ARMS)
        finetune_seeds = [int(s) for s in args.finetune_seeds.split(",")]
        table, code = _guarded(lambda: run_finetuning(setting, arms, seeds, finetune_seeds))
        return code if code else _show(table, f"{args.config}-finetune", args.update_readme)
    summary, code = _guarded(lambda: run_experiment(setting, arms, seeds))
    if code:
        return code
    table, block = report.format_summary(summary), name.replace("_without_", "-without-")
    if args.stage1_from:  # a probe: every probe beside this one, and the arm itself
        block = f"{args.config}-probes"
        arm_out = Path(args.stage1_from).parents[2]  # <arm out>/runs/ernie_m_seed{seed}/stage1
        if (arm_out / "results").is_dir():
            table = report.format_probes(arm_out, out.parent)
    return _show(table, block, args.update_readme)


def _guarded(work):
    """(work's result, 0), or (None, exit code) with one line for a stop or bad input."""
    try:
        return work(), 0
    except RunStopped as stopped:
        print(f"{PROG}: {stopped}", file=sys.stderr)
        return None, 1
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return None, 2


def _show(table: str, block: str, update_readme: bool) -> int:
    print(table)
    if update_readme:
        print(f"updated {files.replace_marked_block(README, block, table)}")
    return 0


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()  # as `ernie-m-jax train` runs
    sys.exit(main())
