"""From result files to the claim: per-run metrics, the mean and spread over seeds
(`summary.json`), the plot, and the README's markdown tables."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ernie_m_jax import files
from experiments.paper_in_miniature.setting import (
    BAG_OF_SUBWORDS,
    KNOWN_ARMS,
    SOURCE,
    Setting,
    result_path,
)


def headline_layer(num_layers: int) -> int:
    """Fixed before looking at results: the middle of the stack (XTREME reads a middle
    layer, e.g. 8 of 12)."""
    return math.ceil(num_layers * 2 / 3)


def _mean_both_ways(per_pair: Dict[str, dict], languages: Sequence[str]) -> float:
    values = [(per_pair[f"{SOURCE}-{lang}"]["source_to_target"]
               + per_pair[f"{SOURCE}-{lang}"]["target_to_source"]) / 2 for lang in languages]
    return float(np.mean(values)) if values else float("nan")


def run_metrics(result: dict) -> Dict[str, float]:
    """Flat metrics of one result: retrieval (mean of both directions) per group, text,
    variant and layer; MMLM accuracy per group."""
    groups = result["languages"]
    out: Dict[str, float] = {}
    for text, variants in result["retrieval"].items():
        for variant, layers in variants.items():
            for layer, per_pair in layers.items():
                for group, langs in groups.items():
                    key = f"retrieval/{text}/{variant}/layer{layer}/{group}"
                    out[key] = _mean_both_ways(per_pair, langs)
    for text, per_pair in result["bag_of_subwords"].items():
        for group, langs in groups.items():
            out[f"bag_of_subwords/{text}/{group}"] = _mean_both_ways(per_pair, langs)
    if "transfer" in result:
        groups_and_english = {**groups, SOURCE: (SOURCE,)}

        def mean_balanced(per_language: Dict[str, dict], langs: Sequence[str]) -> float:
            return float(np.mean([per_language[lang]["balanced_accuracy"] for lang in langs]))

        for variant, layers in result["transfer"]["model"].items():
            for layer, per_language in layers.items():
                for group, langs in groups_and_english.items():
                    out[f"transfer/{variant}/layer{layer}/{group}"] = mean_balanced(
                        per_language, langs)
        for group, langs in groups_and_english.items():
            out[f"transfer/bag_of_subwords/{group}"] = mean_balanced(
                result["transfer"]["bag_of_subwords"], langs)
    for group, langs in groups.items():
        accs = [result["mlm_accuracy"][lang] for lang in langs if lang in result["mlm_accuracy"]]
        if accs:
            out[f"mlm_accuracy/{group}"] = float(np.mean(accs))
    # The same figures on the split settings are chosen by, and on packages pretraining
    # never saw.
    for part in ("validation", "out_of_domain"):
        if part in result:
            scores = run_metrics({**result[part], "mlm_accuracy": {}})
            out.update({f"{part}/{k}": v for k, v in scores.items()})
    return out


def summarise(out: Path) -> dict:
    """Mean, sample standard deviation and n over seeds, per arm and metric."""
    by_arm: Dict[str, List[Dict[str, float]]] = {}
    layers = None
    for path in sorted((out / "results").glob("*_seed*.json")):
        result = json.loads(path.read_text())
        by_arm.setdefault(result["arm"], []).append(run_metrics(result))
        layers = len(result["retrieval"]["messages"]["raw"]) - 1
    summary = {"headline_layer": headline_layer(layers) if layers else None, "arms": {}}
    for arm, runs in by_arm.items():
        keys = sorted(set().union(*runs))
        summary["arms"][arm] = {
            k: {"mean": float(np.mean([r[k] for r in runs if k in r])),
                "std": float(np.std([r[k] for r in runs if k in r],
                                    ddof=1)) if len(runs) > 1 else 0.0,
                "n": sum(k in r for r in runs)} for k in keys}
    files.write_json_atomic(out / "summary.json", summary)
    return summary


def _bars(ax, summary: dict, arms: Sequence[str], key: str, baseline: str,
          ylabel: str) -> None:
    """Grouped bars per arm (X with / without parallel data) with the baseline dashed."""
    width = 0.38
    for i, group in enumerate(("parallel", "monolingual_only")):
        stats = [summary["arms"][a].get(key.format(group=group), {}) for a in arms]
        ax.bar(np.arange(len(arms)) + (i - 0.5) * width, [s.get("mean", np.nan) for s in stats],
               width, yerr=[s.get("std", 0.0) for s in stats], capsize=3,
               label=f"en<->X, X {'with' if group == 'parallel' else 'without'} parallel data")
        bag = summary["arms"][arms[0]].get(baseline.format(group=group), {}).get("mean")
        if bag is not None:
            ax.axhline(bag, color=f"C{i}", linestyle="--", linewidth=1)
    ax.set_xticks(np.arange(len(arms)), arms, rotation=15)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def plot(summary: dict, path: Path) -> Optional[Path]:
    """Bars of the headline retrieval and zero-shot transfer per arm, with and without
    parallel data; bag-of-subwords dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib is not installed (pip install -e '.[experiments]'): "
                        "no plot")
        return None
    layer = summary["headline_layer"]
    arms = [a for a in KNOWN_ARMS if a in summary["arms"]]
    if layer is None or not arms:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    _bars(left, summary, arms, f"retrieval/messages/centered/layer{layer}/{{group}}",
          "bag_of_subwords/messages/{group}", f"retrieval accuracy (layer {layer}, centred)")
    left.set_title("Retrieval of held-out translations", fontsize=10)
    _bars(right, summary, arms, f"transfer/centered/layer{layer}/{{group}}",
          "transfer/bag_of_subwords/{group}", f"balanced accuracy (layer {layer}, centred)")
    right.axhline(1 / 3, color="grey", linestyle=":", linewidth=1)
    right.set_title("Zero-shot package classification from English (dotted: chance)",
                    fontsize=10)
    fig.suptitle("Paper in miniature (mean ± std over seeds; dashed: bag of subwords)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _table(summary: dict, columns: Sequence[Tuple[str, str]],
           baseline: Sequence[Optional[str]], only_with: Optional[str] = None) -> List[str]:
    """Markdown rows, one per arm (those with metric `only_with`, if given), and a
    bag-of-subwords row with `baseline`'s keys."""
    lines = ["| arm | " + " | ".join(c for c, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]

    def cell(stats: Optional[dict]) -> str:
        if not stats or np.isnan(stats["mean"]):
            return "–"
        return f"{stats['mean']:.3f} ± {stats['std']:.3f} ({stats['n']})"

    arms = [a for a in KNOWN_ARMS if a in summary["arms"]
            and (only_with is None or only_with in summary["arms"][a])]
    for arm in arms:
        lines.append(f"| {arm} | " + " | ".join(cell(summary["arms"][arm].get(k))
                                                for _, k in columns) + " |")
    if arms:
        first = summary["arms"][arms[0]]
        lines.append(f"| {BAG_OF_SUBWORDS} | " + " | ".join(
            cell(first.get(k)) if k else "–" for k in baseline) + " |")
    return lines


def format_probes(arm_out: Path, probes_out: Path, arm: str = "ernie_m") -> str:
    """One markdown row per stage-2 probe (a folder of `probes_out`) and per seed, beside
    the arm's own result for that seed: headline-layer retrieval and transfer, with / without
    parallel data. Rows are labelled by the gin bindings each probe recorded."""
    rows = []
    for path in sorted(probes_out.glob(f"*/results/{arm}_seed*.json")):
        probe = json.loads(path.read_text())
        own = result_path(Setting(probe["config"], arm_out), arm, probe["seed"])
        if not own.exists():
            raise ValueError(f"{path}: no {arm} result of seed {probe['seed']} in {arm_out} "
                             f"to compare it with")
        rows.append((path.parents[1].name, probe, json.loads(own.read_text())))
    if not rows:
        return "(no probes yet)"
    rows.sort(key=lambda row: (row[1]["seed"], row[0]))
    layer = headline_layer(len(rows[0][1]["retrieval"]["messages"]["raw"]) - 1)
    keys = [f"retrieval/messages/centered/layer{layer}", f"retrieval/messages/raw/layer{layer}",
            f"transfer/centered/layer{layer}"]
    lines = [f"| stage 2 | seed | retrieval L{layer} centred, with / without | "
             f"raw L{layer}, with / without | transfer L{layer} centred, with / without |",
             "|---|---|---|---|---|"]

    def cells(result: dict) -> str:
        metrics = run_metrics(result)
        return " | ".join(f"{metrics[f'{k}/parallel']:.3f} / {metrics[f'{k}/monolingual_only']:.3f}"
                          for k in keys)

    shown = set()
    for name, probe, own in rows:
        if probe["seed"] not in shown:
            shown.add(probe["seed"])
            lines.append(f"| `{arm}` arm as configured | {probe['seed']} | {cells(own)} |")
        knobs = "; ".join(f"`{b}`" for b in probe.get("bindings", ()))
        lines.append(f"| {name}: {knobs} | {probe['seed']} | {cells(probe)} |")
    return "\n".join(lines)


def _part_table(summary: dict, part: str, label: str, columns: Sequence[Tuple[str, str]],
                baseline: Sequence[Optional[str]]) -> List[str]:
    """A table of `columns` as scored on one part of the results (`validation`,
    `out_of_domain`), for the arms that have it; none where no arm does."""
    first = f"{part}/{columns[0][1]}"
    if not any(first in arm for arm in summary["arms"].values()):
        return []
    return ["", *_table(summary, [(f"{label}: {name}", f"{part}/{key}") for name, key in columns],
                        [f"{part}/{key}" if key else None for key in baseline], only_with=first)]


def format_summary(summary: dict) -> str:
    """Markdown tables, mean ± sample standard deviation over seeds (n): headline-layer
    retrieval (centred and raw; mean of both directions) with MMLM accuracy, and zero-shot
    package classification (balanced accuracy; chance is 1/3)."""
    layer = summary.get("headline_layer")
    if layer is None:
        return "(no results yet)"
    retrieval = [
        (f"retrieval L{layer} centred, with parallel",
         f"retrieval/messages/centered/layer{layer}/parallel"),
        (f"retrieval L{layer} centred, without parallel",
         f"retrieval/messages/centered/layer{layer}/monolingual_only"),
        (f"raw L{layer}, with", f"retrieval/messages/raw/layer{layer}/parallel"),
        (f"raw L{layer}, without", f"retrieval/messages/raw/layer{layer}/monolingual_only"),
        ("MMLM acc., with", "mlm_accuracy/parallel"),
        ("MMLM acc., without", "mlm_accuracy/monolingual_only"),
    ]
    lines = _table(summary, retrieval, [f"bag_of_subwords/messages/{g}"
                                        for g in ("parallel", "monolingual_only")]
                   + [None] * 4)
    transfer = [
        (f"transfer L{layer} centred, en (in-language)",
         f"transfer/centered/layer{layer}/{SOURCE}"),
        (f"transfer L{layer} centred, with parallel", f"transfer/centered/layer{layer}/parallel"),
        (f"transfer L{layer} centred, without parallel",
         f"transfer/centered/layer{layer}/monolingual_only"),
        (f"raw L{layer}, with", f"transfer/raw/layer{layer}/parallel"),
        (f"raw L{layer}, without", f"transfer/raw/layer{layer}/monolingual_only"),
    ]
    if any(k in arm for arm in summary["arms"].values() for _, k in transfer):
        lines += ["", *_table(summary, transfer, [
            f"transfer/bag_of_subwords/{g}" for g in (SOURCE, "parallel", "monolingual_only")]
            + [None] * 2)]
    groups = ("parallel", "monolingual_only")
    bags = [f"bag_of_subwords/messages/{g}" for g in groups]
    transfer_bags = [f"transfer/bag_of_subwords/{g}" for g in groups]
    # The split settings are chosen by, then packages pretraining never saw.
    lines += _part_table(summary, "validation", "validation", retrieval[:2] + transfer[1:3],
                         bags + transfer_bags)
    lines += _part_table(summary, "out_of_domain", "held-out packages",
                         retrieval[:4] + transfer[1:3], bags + [None] * 2 + transfer_bags)
    return "\n".join(lines)
