"""Training and scoring every arm x seed, resumably: each finished one writes
`results/<arm>_seed<k>.json` and is skipped on a rerun; training resumes from checkpoints."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import numpy as np

from ernie_m_jax import checkpoints, files, gin_config, saved_run, train
from ernie_m_jax.data import languages
from ernie_m_jax.model import init_params
from experiments.paper_in_miniature import report
from experiments.paper_in_miniature.evaluation import evaluate_out_of_domain, evaluate_run
from experiments.paper_in_miniature.setting import (
    CONTINUATION_SEED_OFFSET,
    CONTINUED_ARMS,
    CONTINUED_FROM,
    GIN_DIR,
    KNOWN_ARMS,
    RANDOM_INIT,
    RunStopped,
    Setting,
    result_path,
)


def _parse(setting: Setting, arm_files: Sequence[str], bindings: Sequence[str]) -> None:
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    gin_config.parse(setting.files(*arm_files), [*setting.bindings, *bindings])


def _train(setting: Setting, model_dir: Path, arm_files: Sequence[str], seed: int,
           steps: int, extra: Sequence[str] = ()) -> Dict[str, float]:
    bindings = [f"TrainConfig.seed = {seed}", f"DataConfig.seed = {seed}",
                f"NUM_STEPS = {steps}", *extra]
    _parse(setting, arm_files, bindings)
    try:
        summary = train.train(str(model_dir), train.Experiment.from_gin())
    finally:
        gin.clear_config()
    if "preempted_at_step" in summary:
        raise RunStopped(f"{model_dir} stopped at step {summary['preempted_at_step']} of "
                         f"{steps} on a signal, with a checkpoint; no result is written for "
                         f"it: rerun the same command to resume")
    return summary


def _macro(setting: Setting, name: str):
    _parse(setting, ["mmlm.gin"], [])
    try:
        return gin.query_parameter(f"%{name}")
    finally:
        gin.clear_config()


def total_steps(setting: Setting) -> int:
    return setting.steps or int(_macro(setting, "NUM_STEPS"))


def stage1_steps(setting: Setting) -> int:
    """ERNIE-M's stage-1 share of the steps (`STAGE1_FRACTION`); stage 2 gets the rest."""
    fraction = float(_macro(setting, "STAGE1_FRACTION"))
    steps = total_steps(setting)
    first = round(steps * fraction)
    if not 0 < first < steps:
        raise ValueError(f"STAGE1_FRACTION={fraction} leaves no steps for one of ERNIE-M's "
                         f"two stages ({steps} steps in all)")
    return first


def _mlm_accuracy(summary: Dict[str, float]) -> Dict[str, float]:
    return {k.split("/")[1]: v for k, v in summary.items()
            if k.startswith("eval/") and k.endswith("/accuracy") and k.count("/") == 2}


def _finished_stage1(setting: Setting, seed: int, steps: int) -> str:
    """`setting.stage1_from` for this seed, checked to hold a stage 1 of exactly `steps`."""
    directory = setting.stage1_from.replace("{seed}", str(seed))
    if "{seed}" not in setting.stage1_from:
        logging.warning("--stage1_from has no {seed}: every seed starts stage 2 from %s",
                        directory)
    latest = checkpoints.latest_step(Path(directory) / "checkpoints")
    if latest != steps:
        raise ValueError(f"--stage1_from {directory} must hold a finished stage 1 of {steps} "
                         f"steps (this config's STAGE1_FRACTION of NUM_STEPS); its latest "
                         f"checkpoint is {'missing' if latest is None else f'step {latest}'}")
    return directory


def _continue_arm(setting: Setting, arm: str, seed: int, model_dir: Path
                  ) -> Tuple[Path, Dict[str, float], dict]:
    """One of `CONTINUED_ARMS`: the `CONTINUED_FROM` run of this seed, trained (or resumed)
    to the config's steps where its final checkpoint is gone, continued for the stage-2 share
    of the steps with the arm's objectives."""
    steps = total_steps(setting)
    start = setting.out / "runs" / f"{CONTINUED_FROM}_seed{seed}"
    if checkpoints.latest_step(start / "checkpoints") != steps:
        _train(setting, start, [f"{CONTINUED_FROM}.gin"], seed, steps)
    more, continuation_seed = steps - stage1_steps(setting), seed + CONTINUATION_SEED_OFFSET
    continuation = CONTINUED_ARMS[arm]
    summary = _train(setting, model_dir, [continuation.arm_file], continuation_seed, more,
                     [f"TrainConfig.init_from = {str(start)!r}", *continuation.bindings])
    return model_dir, summary, {"continued_from": str(start), "start_steps": steps,
                                "continued_steps": more, "continuation_seed": continuation_seed,
                                "bindings": list(continuation.bindings)}


def train_arm(setting: Setting, arm: str, seed: int) -> Tuple[Path, Dict[str, float], dict]:
    """Train (or resume) one arm with one seed: (its final run, the last summary, extras).
    A finished run is only read back, so this also brings back an arm whose run was lost."""
    steps = total_steps(setting)
    model_dir = setting.out / "runs" / f"{arm}_seed{seed}"
    extra: Dict[str, object] = {}
    if arm in CONTINUED_ARMS:
        return _continue_arm(setting, arm, seed, model_dir)
    if arm == "ernie_m":
        first = extra["stage1_steps"] = stage1_steps(setting)
        if setting.stage1_from:
            stage1 = extra["stage1_from"] = _finished_stage1(setting, seed, first)
        else:
            stage1 = str(model_dir / "stage1")
            _train(setting, Path(stage1), ["mmlm_tlm_camlm.gin"], seed, first)
        summary = _train(setting, model_dir / "stage2", ["ernie_m_stage2.gin"], seed,
                         steps - first, [f"TrainConfig.init_from = {stage1!r}"])
        return model_dir / "stage2", summary, extra
    return model_dir, _train(setting, model_dir, [f"{arm}.gin"], seed, steps), extra


def add_missing_validation(setting: Setting, arms: Sequence[str], seeds: Sequence[int]) -> None:
    """Score on the validation split the finished continued arms whose result predates it,
    keeping the rest of the result; a run that is gone is left as it is, with a warning."""
    for arm in (a for a in arms if a in CONTINUED_ARMS):
        for seed in seeds:
            path = result_path(setting, arm, seed)
            if not path.exists():
                continue
            result = json.loads(path.read_text())
            if "validation" in result:
                continue
            final_dir = setting.out / "runs" / f"{arm}_seed{seed}"
            if checkpoints.latest_step(final_dir / "checkpoints") is None:
                logging.warning("%s has no validation scores and its run %s is gone: left "
                                "as it is", path, final_dir)
                continue
            run = saved_run.load(str(final_dir))
            data = run.experiment.train.data_setup()  # the run's tasks, and its corpus
            result["validation"] = evaluate_run(run, data.corpus_dir, "validation")
            files.write_json_atomic(path, result)
            print(f"scored {arm} seed {seed} on the validation split: {path}", flush=True)


def _scores(run: saved_run.SavedRun, data, arm: str) -> dict:
    """Test-split scores on the corpus the run's data setup registered (`data`); continued
    arms also on validation (#23 chooses among them there, reports test); and, where the
    sitting held packages out of pretraining, on those packages' messages."""
    result = evaluate_run(run, data.corpus_dir)
    if arm in CONTINUED_ARMS:
        result["validation"] = evaluate_run(run, data.corpus_dir, "validation")
    if getattr(data, "held_out_corpus_dir", None):
        result["out_of_domain"] = evaluate_out_of_domain(run, data.corpus_dir,
                                                         data.held_out_corpus_dir)
    return result


def run_arm(setting: Setting, arm: str, seed: int) -> dict:
    """Train (or resume) one arm with one seed, evaluate it, write its result file."""
    started = time.time()
    final_dir, summary, extra = train_arm(setting, arm, seed)
    trained = time.time()
    run = saved_run.load(str(final_dir))
    result = _scores(run, run.experiment.train.data_setup(), arm)
    # Seconds of this sitting (a resumed run counts only what was left to train).
    extra["seconds"] = {"train": round(trained - started), "evaluate": round(time.time() - trained)}
    steps = extra.get("start_steps", 0) + extra.get("continued_steps", total_steps(setting))
    result.update(arm=arm, seed=seed, steps=steps,
                  mlm_accuracy=_mlm_accuracy(summary),
                  final_losses={k: v for k, v in summary.items()
                                if k.startswith("train/") and k.endswith("loss")}, **extra)
    return result


def run_random_init(setting: Setting, seed: int) -> dict:
    """The same encoder, untrained: what architecture and shared subwords give by themselves."""
    _parse(setting, ["mmlm.gin"], [f"TrainConfig.seed = {seed}"])
    try:
        exp = train.Experiment.from_gin()
        data = exp.train.data_setup()
        params = nn.unbox(init_params(exp.model, jax.random.key(seed)))["params"]
        run = saved_run.SavedRun(
            model_dir="", step=0, model=exp.model, tokens=exp.tokens,
            params=jax.tree.map(np.asarray, params), vocabulary_path=data.vocabulary_path,
            languages=languages.registered_languages(), experiment=exp)
        result = _scores(run, data, RANDOM_INIT)
    finally:
        gin.clear_config()
    result.update(arm=RANDOM_INIT, seed=seed, steps=0, mlm_accuracy={})
    return result


def missing(arms: Sequence[str], seeds: Sequence[int], path_of: Callable[[str, int], Path]
            ) -> Iterator[Tuple[str, int, Path]]:
    """(arm, seed, result path) of every arm x seed without a result yet, seed by seed:
    a sitting resumes where the last one stopped."""
    for seed in seeds:
        for arm in arms:
            path = path_of(arm, seed)
            if path.exists():
                logging.info("%s exists: skipped", path)
            else:
                yield arm, seed, path


def run_experiment(setting: Setting, arms: Sequence[str], seeds: Sequence[int]) -> dict:
    """Every missing arm x seed (random_init included), then the summary and the plot."""
    unknown = set(arms) - set(KNOWN_ARMS)
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; choose from {KNOWN_ARMS}")
    add_missing_validation(setting, arms, seeds)
    for arm, seed, path in missing(arms, seeds, lambda a, k: result_path(setting, a, k)):
        result = run_random_init(setting, seed) if arm == RANDOM_INIT else \
            run_arm(setting, arm, seed)
        result["config"] = setting.config
        if setting.bindings:  # a probe's knobs, so its result says what it ran
            result["bindings"] = [*setting.bindings, *result.get("bindings", ())]
        files.write_json_atomic(path, result)
        print(f"finished {arm} seed {seed}: {path}", flush=True)
    summary = report.summarise(setting.out)
    report.plot(summary, setting.out / "plot.png")
    return summary
