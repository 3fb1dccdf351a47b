"""ERNIE-M's claim in miniature: do CAMLM and BTMLM align languages beyond MMLM + TLM, above
all for languages without parallel data?

    ernie-m-jax experiment paper-in-miniature [--config cpu|tiny] [--seeds 0,1,2]
        [--arms mmlm,mmlm_tlm,mmlm_tlm_camlm,ernie_m] [--out DIR] [--steps N] [--update_readme]

Arms share the model, the steps and the tokens per step (`gin/arms/*.gin`); `ernie_m` runs
stage 1 (MMLM+TLM+CAMLM) for `STAGE1_FRACTION` of the steps (half), then stage 2 (all four,
BTMLM included) from it for the rest. Each finished arm x seed writes
`results/<arm>_seed<k>.json` and is skipped on a rerun, so the experiment can be completed over
several sittings (training itself resumes from its checkpoints too). `summary.json` (mean and
spread over seeds) and `plot.png` are rewritten from whatever results exist; `--update_readme`
writes the tables into README.md.

Evaluation is on the test split, for en<->X with X with and without parallel training data:
retrieval accuracy in both directions at every layer with mean pooling, raw and with each
language's mean vector subtracted (the corpus has format placeholders and markup stripped,
which UI catalogs share across languages); zero-shot cross-lingual transfer, XNLI's question
in miniature: a linear probe fitted at every layer on English messages to tell which package
(Django, Wagtail, Sphinx) a message comes from, scored on the other languages' translations
of held-out messages; MMLM accuracy per language; and two baselines in the same tables: a
randomly initialised model and bag of subwords.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import gin
import numpy as np

from ernie_m_jax import files

GIN_DIR = Path(__file__).resolve().parent / "gin"
README = Path(__file__).resolve().parent / "README.md"  # tables between results markers
CONFIGS = {"cpu": "paper_cpu.gin", "tiny": "paper_tiny.gin"}
ARMS = ("mmlm", "mmlm_tlm", "mmlm_tlm_camlm", "ernie_m")
RANDOM_INIT, BAG_OF_SUBWORDS = "random_init", "bag_of_subwords"
SOURCE = "en"
MONO_MIXTURE, PARA_MIXTURE = "paper.mono", "paper.para"
@gin.configurable
def register_experiment_data(data_dir: Optional[str] = None, vocab_size: int = 8000,
                             parallel_languages: Sequence[str] = ("de", "fr", "es", "ru",
                                                                  "zh_hans"),
                             monolingual_only_languages: Sequence[str] = (
                                 "it", "pt", "nl", "pl", "tr", "ar", "ja")):
    """The demo corpus's tasks for these languages, and mixtures in which only
    `parallel_languages` have parallel data."""
    from tasks import registry
    from tasks.demo import register_demo

    overlap = set(parallel_languages) & set(monolingual_only_languages)
    if overlap:
        raise ValueError(f"languages {sorted(overlap)} are both parallel and monolingual-only")
    demo = register_demo(data_dir, vocab_size,
                         languages=(SOURCE, *parallel_languages, *monolingual_only_languages))
    mono = [registry.mono_task_name(lang)
            for lang in (SOURCE, *parallel_languages, *monolingual_only_languages)]
    registry.add_mixture(MONO_MIXTURE, mono)
    registry.add_mixture(PARA_MIXTURE, [registry.para_task_name(SOURCE, lang)
                                        for lang in parallel_languages])
    return demo


class RunStopped(RuntimeError):
    """A run ended early (SIGTERM/SIGINT): its result must not be written as finished."""


@dataclasses.dataclass(frozen=True)
class Setting:
    config: str
    out: Path
    steps: Optional[int] = None  # overrides NUM_STEPS
    bindings: Tuple[str, ...] = ()  # extra gin bindings for every run, e.g. a data_dir
    # ernie_m only: start stage 2 from this finished stage-1 run ("{seed}" is filled in)
    # instead of training stage 1, so probes of stage-2 knobs share the arm's stage 1.
    stage1_from: Optional[str] = None

    def files(self, *arm_files: str) -> List[str]:
        return [str(GIN_DIR / CONFIGS[self.config]),
                *[str(GIN_DIR / "arms" / f) for f in arm_files]]


def _parse(setting: Setting, arm_files: Sequence[str], bindings: Sequence[str]) -> None:
    from ernie_m_jax import gin_config

    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    gin_config.parse(setting.files(*arm_files), [*setting.bindings, *bindings])


def _train(setting: Setting, model_dir: Path, arm_files: Sequence[str], seed: int,
           steps: int, extra: Sequence[str] = ()) -> Dict[str, float]:
    from ernie_m_jax import train

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


# ----------------------------------------------------------------------------- evaluation


def experiment_languages() -> Dict[str, Tuple[str, ...]]:
    """Languages with and without parallel training data, read from the registered mixtures."""
    import seqio

    from tasks import registry

    para_prefix = f"{registry.DEFAULT_COLLECTION}.{registry.PARA}.{SOURCE}_"
    parallel = tuple(t.name[len(para_prefix):]
                     for t in seqio.get_mixture_or_task(PARA_MIXTURE).tasks)
    mono_prefix = f"{registry.DEFAULT_COLLECTION}.{registry.MONO}."
    mono = [t.name[len(mono_prefix):] for t in seqio.get_mixture_or_task(MONO_MIXTURE).tasks]
    return {"parallel": parallel,
            "monolingual_only": tuple(l for l in mono if l != SOURCE and l not in parallel)}


def _corpus_dir(run) -> Path:
    path = Path(run.vocabulary_path).parent / "demo_corpus"
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"the demo corpus is not next to the run's vocabulary ({path})")
    return path


def pair_sets(run, languages: Sequence[str], encoder) -> List:
    """Test-split en<->X pairs as token ids. The demo corpus drops format placeholders and
    markup when it is built (`CorpusConfig.strip_placeholders`), so shared `%(name)s`, tags
    and the like cannot make retrieval easy here."""
    from ernie_m_jax.data import corpus
    from ernie_m_jax.evaluation.retrieval import PairSet

    data_dir = _corpus_dir(run)
    english = corpus.read_split(data_dir, "test", SOURCE)
    sets = []
    for lang in languages:
        other = corpus.read_split(data_dir, "test", lang)
        pairs = [(english[k], other[k]) for k in sorted(other) if k in english]
        src, tgt = zip(*pairs)
        sets.append(PairSet(f"{SOURCE}-{lang}", encoder.tokenize(src), encoder.tokenize(tgt),
                            run.language_id(SOURCE), run.language_id(lang)))
    return sets


def _layer_results(encoder, sets, num_layers: int) -> Dict[str, Dict[str, Dict[str, dict]]]:
    """{"raw"/"centered": {layer: {pair: accuracies}}}, every layer from one pass per side."""
    from ernie_m_jax.evaluation.retrieval import retrieval_accuracy

    out: Dict[str, Dict[str, Dict[str, dict]]] = {"raw": {}, "centered": {}}
    for pairs in sets:
        src = encoder.embed_ids(pairs.source, pairs.source_language)
        tgt = encoder.embed_ids(pairs.target, pairs.target_language)
        for layer in range(num_layers + 1):
            for variant in out:
                out[variant].setdefault(str(layer), {})[pairs.name] = retrieval_accuracy(
                    src[:, layer], tgt[:, layer], pairs, center=variant == "centered")
    return out


def _bag_results(sets, vocab_size: int) -> Dict[str, dict]:
    from ernie_m_jax.evaluation.retrieval import bag_of_subwords, retrieval_accuracy

    return {p.name: retrieval_accuracy(bag_of_subwords(p.source, vocab_size),
                                       bag_of_subwords(p.target, vocab_size), p)
            for p in sets}


@dataclasses.dataclass(frozen=True)
class TransferSets:
    """Which package a message comes from: English training messages to fit on, held-out
    messages per language (English included) to test on."""
    classes: Tuple[str, ...]
    train_ids: List[List[int]]
    train_labels: np.ndarray
    tests: Dict[str, Tuple[List[List[int]], np.ndarray]]


def transfer_sets(run, languages: Sequence[str], encoder) -> TransferSets:
    """Messages of exactly one package (Django, Wagtail or Sphinx), labelled with it; a
    translation shares its message's key and so its label. No test message is trained on,
    in any language (the corpus splits by message)."""
    from ernie_m_jax.data import corpus

    data_dir = _corpus_dir(run)
    packages = {k: p[0] for k, p in corpus.read_packages(data_dir).items() if len(p) == 1}
    classes = tuple(sorted(set(packages.values())))

    def labelled(split: str, lang: str):
        rows = corpus.read_split(data_dir, split, lang)
        keys = [k for k in sorted(rows) if k in packages]
        return (encoder.tokenize([rows[k] for k in keys]),
                np.array([classes.index(packages[k]) for k in keys], np.int32))

    train_ids, train_labels = labelled("train", SOURCE)
    return TransferSets(classes, train_ids, train_labels,
                        {lang: labelled("test", lang) for lang in (SOURCE, *languages)})


def _transfer_results(encoder, sets: TransferSets, num_layers: int, run) -> Dict[str, dict]:
    """{"raw"/"centered": {layer: {language: scores}}}: a linear probe fitted on English at
    each layer, scored on every language's held-out messages."""
    from ernie_m_jax.evaluation import transfer

    train = encoder.embed_ids(sets.train_ids, run.language_id(SOURCE))
    tests = {lang: (encoder.embed_ids(ids, run.language_id(lang)), labels)
             for lang, (ids, labels) in sets.tests.items()}
    out: Dict[str, dict] = {"raw": {}, "centered": {}}
    for layer in range(num_layers + 1):
        layer_tests = {lang: (f[:, layer], labels) for lang, (f, labels) in tests.items()}
        for variant in out:
            out[variant][str(layer)] = transfer.zero_shot(
                train[:, layer], sets.train_labels, layer_tests, len(sets.classes),
                centered=variant == "centered")
    return out


def _bag_transfer(sets: TransferSets, vocab_size: int) -> Dict[str, dict]:
    from ernie_m_jax.evaluation import transfer
    from ernie_m_jax.evaluation.retrieval import bag_of_subwords

    tests = {lang: (bag_of_subwords(ids, vocab_size), labels)
             for lang, (ids, labels) in sets.tests.items()}
    return transfer.zero_shot(bag_of_subwords(sets.train_ids, vocab_size), sets.train_labels,
                              tests, len(sets.classes))


def evaluate_run(run) -> dict:
    """Retrieval at every layer, raw and centred, with bag-of-subwords on the same pairs, and
    zero-shot package classification from English; the run's tasks must be registered."""
    from ernie_m_jax.evaluation.embedding import SentenceEncoder

    languages = experiment_languages()
    encoder = SentenceEncoder(run, pooling="mean", layer=None, batch_size=64)
    every = [*languages["parallel"], *languages["monolingual_only"]]
    result = {"languages": languages, "retrieval": {}, "bag_of_subwords": {}, "pairs": {}}
    sets = pair_sets(run, every, encoder)
    result["retrieval"]["messages"] = _layer_results(encoder, sets, run.model.num_layers)
    result["bag_of_subwords"]["messages"] = _bag_results(sets, run.model.vocab_size)
    result["pairs"]["messages"] = {p.name: len(p.source) for p in sets}
    labelled = transfer_sets(run, every, encoder)
    result["transfer"] = {
        "classes": list(labelled.classes),
        "train_examples": len(labelled.train_ids),
        "model": _transfer_results(encoder, labelled, run.model.num_layers, run),
        "bag_of_subwords": _bag_transfer(labelled, run.model.vocab_size)}
    return result


# ----------------------------------------------------------------------------- arms


def _result_path(setting: Setting, arm: str, seed: int) -> Path:
    return setting.out / "results" / f"{arm}_seed{seed}.json"


def _mlm_accuracy(summary: Dict[str, float]) -> Dict[str, float]:
    return {k.split("/")[1]: v for k, v in summary.items()
            if k.startswith("eval/") and k.endswith("/accuracy") and k.count("/") == 2}


def _finished_stage1(setting: Setting, seed: int, steps: int) -> str:
    """`setting.stage1_from` for this seed, checked to hold a stage 1 of exactly `steps`."""
    from ernie_m_jax import checkpoints

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


def run_arm(setting: Setting, arm: str, seed: int) -> dict:
    """Train (or resume) one arm with one seed, evaluate it, write its result file."""
    from ernie_m_jax import saved_run

    steps = total_steps(setting)
    model_dir = setting.out / "runs" / f"{arm}_seed{seed}"
    started = time.time()
    extra: Dict[str, object] = {}
    if arm == "ernie_m":
        first = extra["stage1_steps"] = stage1_steps(setting)
        if setting.stage1_from:
            stage1 = extra["stage1_from"] = _finished_stage1(setting, seed, first)
        else:
            stage1 = str(model_dir / "stage1")
            _train(setting, Path(stage1), ["mmlm_tlm_camlm.gin"], seed, first)
        summary = _train(setting, model_dir / "stage2", ["ernie_m_stage2.gin"], seed,
                         steps - first, [f"TrainConfig.init_from = {stage1!r}"])
        final_dir = model_dir / "stage2"
    else:
        summary = _train(setting, model_dir, [f"{arm}.gin"], seed, steps)
        final_dir = model_dir
    trained = time.time()
    run = saved_run.load(str(final_dir))
    try:
        result = evaluate_run(run)
    finally:
        gin.clear_config()
    # Seconds of this sitting (a resumed run counts only what was left to train).
    extra["seconds"] = {"train": round(trained - started), "evaluate": round(time.time() - trained)}
    result.update(arm=arm, seed=seed, steps=steps, mlm_accuracy=_mlm_accuracy(summary),
                  final_losses={k: v for k, v in summary.items()
                                if k.startswith("train/") and k.endswith("loss")}, **extra)
    return result


def run_random_init(setting: Setting, seed: int) -> dict:
    """The same encoder, untrained: what architecture and shared subwords give by themselves."""
    import flax.linen as nn
    import jax

    from ernie_m_jax import saved_run, train
    from ernie_m_jax.model import init_params
    from tasks import languages

    _parse(setting, ["mmlm.gin"], [f"TrainConfig.seed = {seed}"])
    try:
        exp = train.Experiment.from_gin()
        exp.train.data_setup()
        params = nn.unbox(init_params(exp.model, jax.random.key(seed)))["params"]
        run = saved_run.SavedRun(
            model_dir="", step=0, model=exp.model, tokens=exp.tokens,
            params=jax.tree.map(np.asarray, params),
            vocabulary_path=saved_run.vocabulary_of(exp.data.mono_mixture),
            languages=languages.registered_languages(), experiment=exp)
        result = evaluate_run(run)
    finally:
        gin.clear_config()
    result.update(arm=RANDOM_INIT, seed=seed, steps=0, mlm_accuracy={})
    return result


# ----------------------------------------------------------------------------- summary


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
            return float(np.mean([per_language[l]["balanced_accuracy"] for l in langs]))

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
    arms = [a for a in (RANDOM_INIT, *ARMS) if a in summary["arms"]]
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


def run_experiment(setting: Setting, arms: Sequence[str], seeds: Sequence[int]) -> dict:
    """Every missing arm x seed (random_init included), then the summary and the plot."""
    unknown = set(arms) - set(ARMS) - {RANDOM_INIT}
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; choose from {(RANDOM_INIT, *ARMS)}")
    for seed in seeds:
        for arm in arms:
            path = _result_path(setting, arm, seed)
            if path.exists():
                logging.info("%s exists: skipped", path)
                continue
            result = run_random_init(setting, seed) if arm == RANDOM_INIT else \
                run_arm(setting, arm, seed)
            result["config"] = setting.config
            if setting.bindings:  # a probe's knobs, so its result says what it ran
                result["bindings"] = list(setting.bindings)
            files.write_json_atomic(path, result)
            print(f"finished {arm} seed {seed}: {path}", flush=True)
    summary = summarise(setting.out)
    plot(summary, setting.out / "plot.png")
    return summary


def _table(summary: dict, columns: Sequence[Tuple[str, str]],
           baseline: Sequence[Optional[str]]) -> List[str]:
    """Markdown rows, one per arm, and a bag-of-subwords row with `baseline`'s keys."""
    lines = ["| arm | " + " | ".join(c for c, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]

    def cell(stats: Optional[dict]) -> str:
        if not stats or np.isnan(stats["mean"]):
            return "–"
        return f"{stats['mean']:.3f} ± {stats['std']:.3f} ({stats['n']})"

    arms = [a for a in (RANDOM_INIT, *ARMS) if a in summary["arms"]]
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
        own = _result_path(Setting(probe["config"], arm_out), arm, probe["seed"])
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
    return "\n".join(lines)
