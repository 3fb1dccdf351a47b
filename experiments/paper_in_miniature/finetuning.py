"""The experiment, fine-tuned: each arm's encoder fine-tuned on the package task (which
package a UI message comes from) on English only, scored on the held-out messages of every
language, with and without parallel data in pretraining. The full fine-tuning version of the
linear probe that `evaluation.py` fits on frozen vectors.

Each arm's pretraining run of seed k is fine-tuned with several fine-tuning seeds f (the
classifier's initialisation, dropout and example order), each writing
`results/finetune/<arm>_seed<k>_ft<f>.json`, skipped on a rerun; a pretraining run that is
gone is trained again first (resumably, as the arms are), and a fine-tuning run resumes from
its own checkpoints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Sequence

import gin
import numpy as np

from ernie_m_jax import files, gin_config, saved_run
from ernie_m_jax.finetune import loop
from ernie_m_jax.finetune.config import FinetuneConfig
from experiments.paper_in_miniature.evaluation import experiment_languages
from experiments.paper_in_miniature.report import headline_layer
from experiments.paper_in_miniature.runner import train_arm
from experiments.paper_in_miniature.setting import (
    ARMS,
    GIN_DIR,
    SOURCE,
    RunStopped,
    Setting,
    result_path,
)

GROUPS = ("en", "parallel", "monolingual_only")


def finetune_result_path(setting: Setting, arm: str, seed: int, finetune_seed: int) -> Path:
    return setting.out / "results" / "finetune" / f"{arm}_seed{seed}_ft{finetune_seed}.json"


def finetune_arm(setting: Setting, arm: str, seed: int, finetune_seed: int) -> dict:
    """Pretrain the arm (pretraining seed `seed`) if its run is gone, then fine-tune it with
    `finetune_seed` and score it."""
    started = time.time()
    final_dir, _, _ = train_arm(setting, arm, seed)
    run = saved_run.load(str(final_dir))
    data = run.experiment.train.data_setup()  # registers the arm's tasks and mixtures
    groups = experiment_languages()
    languages = (SOURCE, *groups["parallel"], *groups["monolingual_only"])
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    try:
        gin_config.parse([str(GIN_DIR / f"finetune_{setting.config}.gin")], [
            f"FinetuneConfig.init_from = {str(final_dir)!r}",
            f"FinetuneConfig.seed = {finetune_seed}",
            f"LANGUAGES = {tuple(languages)!r}",
            f"register_packages.data_dir = {str(data.corpus_dir.parent)!r}",
            "FinetuneConfig.progress_bar = False"])
        summary = loop.finetune(
            str(setting.out / "runs" / f"{arm}_seed{seed}_ft{finetune_seed}_packages"),
            FinetuneConfig())
    finally:
        gin.clear_config()
    if "preempted_at_step" in summary:
        raise RunStopped(f"fine-tuning {arm} seed {seed} (fine-tuning seed {finetune_seed}) "
                         f"stopped at step "
                         f"{summary['preempted_at_step']}; rerun the same command to resume")
    test = summary["test"]
    members = {"en": (SOURCE,), **groups}
    return {"arm": arm, "seed": seed, "finetune_seed": finetune_seed, "languages": groups,
            "test": test,
            "groups": {group: {metric: float(np.mean([test[metric][lang] for lang in langs]))
                               for metric in ("accuracy", "balanced_accuracy")}
                       for group, langs in members.items() if langs},
            "best_validation_accuracy": summary["best_validation_accuracy"],
            "num_steps": summary["num_steps"], "config": setting.config,
            "seconds": round(time.time() - started)}


def run_finetuning(setting: Setting, arms: Sequence[str], seeds: Sequence[int],
                   finetune_seeds: Sequence[int]) -> str:
    """Every missing arm x pretraining seed x fine-tuning seed, then the table. The
    fine-tuning seeds of one pretraining run follow each other, so it is trained once."""
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"fine-tuning needs a pretrained arm; unknown {sorted(unknown)}, "
                         f"choose from {ARMS}")
    todo = [(arm, seed, finetune_seed) for seed in seeds for arm in arms
            for finetune_seed in finetune_seeds]
    for arm, seed, finetune_seed in todo:
        path = finetune_result_path(setting, arm, seed, finetune_seed)
        if not path.exists():
            files.write_json_atomic(path, finetune_arm(setting, arm, seed, finetune_seed))
            print(f"fine-tuned {arm} seed {seed} (fine-tuning seed {finetune_seed}): {path}",
                  flush=True)
    return format_finetuning(setting)


def _stat(values: List[float]) -> str:
    if not values:
        return "–"
    spread = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
    return f"{np.mean(values):.3f}{spread}"


def _probe(setting: Setting, arm: str, seed: int) -> Dict[str, float]:
    """The linear probe's balanced accuracy per group (centred, headline layer) and bag of
    subwords', from the arm's own result file, where it exists."""
    path = result_path(setting, arm, seed)
    if not path.exists():
        return {}
    result = json.loads(path.read_text())
    layer = str(headline_layer(len(result["retrieval"]["messages"]["raw"]) - 1))
    probe = result["transfer"]["model"]["centered"][layer]
    bag = result["transfer"]["bag_of_subwords"]
    members = {"en": (SOURCE,), **result["languages"]}
    out = {}
    for group, langs in members.items():
        if langs:
            out[f"probe/{group}"] = float(np.mean([probe[lang]["balanced_accuracy"]
                                                   for lang in langs]))
            out[f"bag/{group}"] = float(np.mean([bag[lang]["balanced_accuracy"]
                                                 for lang in langs]))
    return out


def format_finetuning(setting: Setting) -> str:
    """Markdown: fine-tuned balanced accuracy per language group (mean ± sd over every
    pretraining x fine-tuning seed) beside the linear probe on frozen vectors (one per
    pretraining seed) and bag of subwords."""
    rows, bag = [], {}
    for arm in ARMS:
        results = [json.loads(p.read_text()) for p in sorted(
            (setting.out / "results" / "finetune").glob(f"{arm}_seed*_ft*.json"))]
        if not results:
            continue
        pretrained = sorted({r["seed"] for r in results})
        tuned = len({r["finetune_seed"] for r in results})
        probes = [_probe(setting, arm, seed) for seed in pretrained]
        cells = [_stat([r["groups"][g]["balanced_accuracy"] for r in results
                        if g in r["groups"]]) for g in GROUPS]
        cells += [_stat([p[f"probe/{g}"] for p in probes if f"probe/{g}" in p])
                  for g in ("parallel", "monolingual_only")]
        rows.append(f"| {arm} | {len(pretrained)} × {tuned} | " + " | ".join(cells) + " |")
        for p in probes:
            for g in ("parallel", "monolingual_only"):
                if f"bag/{g}" in p:
                    bag[g] = p[f"bag/{g}"]
    if not rows:
        return "no fine-tuning results yet"
    header = ("| arm | seeds: pretraining × fine-tuning | fine-tuned: en | "
              "X with parallel data | X without | linear probe: X with | X without |\n"
              "|---|---|---|---|---|---|---|")
    bag_line = ("\n\nBag of subwords (the same probe on subword counts): "
                f"{bag['parallel']:.3f} with parallel data, {bag['monolingual_only']:.3f} "
                "without." if len(bag) == 2 else "")
    return (header + "\n" + "\n".join(rows) + "\n\nBalanced accuracy (mean recall over the "
            "three packages) on the test split's messages, mean ± sd over every run; "
            "fine-tuned on English training messages only, best step chosen on English "
            "validation; the probe is fitted on English frozen vectors (centred, headline "
            "layer), one per pretraining seed." + bag_line)
