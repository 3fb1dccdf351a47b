"""The `README.md` an export carries: Hugging Face metadata (languages, license, library,
pipeline tag, base model) in `huggingface_hub.ModelCardData`, then what is known of the run
(objectives and steps, tokens seen, retrieval figures if they were scored, the command that
reproduces it from the gin config shipped beside the weights)."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from huggingface_hub import ModelCard, ModelCardData

from ernie_m_jax import run_dir
from ernie_m_jax.configs import ModelConfig
from ernie_m_jax.train.config import Experiment

CARD_FILE = "README.md"
CONFIG_COPY = "ernie_m_jax_config.gin"  # the run's config.gin, shipped for reproduction
PROJECT = "ernie-m-jax"
# A Hub id (`org/name` or a legacy bare name), and the Hugging Face cache's folder for one.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_CACHE_FOLDER = re.compile(r"models--([\w.-]+)--([\w.-]+)")


def hub_id(hf_dir: Path, config: Mapping) -> Optional[str]:
    """The Hub id a Hugging Face folder was saved from, if it says (`_name_or_path`) or sits
    in the Hugging Face cache; None for a local folder of unknown origin."""
    name = config.get("_name_or_path")
    if isinstance(name, str) and _HUB_ID.match(name) and not os.path.exists(name):
        return name
    found = _CACHE_FOLDER.search(str(hf_dir))
    return f"{found.group(1)}/{found.group(2)}" if found else None


def hf_languages(codes: Sequence[str]) -> List[str]:
    """Our language codes (`zh_hans`, `pt_BR`) as the Hub's (ISO 639-1/3: `zh`, `pt`)."""
    return sorted({code.split("_")[0].split("-")[0].lower() for code in codes})


def tokens_seen(exp: Experiment, steps: int) -> int:
    """Rows x length of every objective's batch over `steps` steps (padding included), stage
    by stage: an objective counts from the step it joins."""
    edges = [0, *[b for b in exp.train.stage_boundaries() if b < steps], steps]
    total = 0
    for begin, end in zip(edges, edges[1:]):
        shapes = exp.stage(begin).batch_shapes()
        total += (end - begin) * sum(rows * length for rows, length in shapes.values())
    return total


def schedule(exp: Experiment) -> str:
    """`MMLM, TLM, CAMLM from step 0; BTMLM from step 500`."""
    starts: Dict[int, List[str]] = {}
    for objective in exp.train.enabled:
        starts.setdefault(exp.train.objective_start_steps.get(objective, 0), []).append(
            objective.upper())
    return "; ".join(f"{', '.join(names)} from step {step:,}"
                     for step, names in sorted(starts.items()))


def read_retrieval(model_dir: os.PathLike, step: int) -> Optional[dict]:
    path = Path(os.fspath(model_dir)) / run_dir.RETRIEVAL_FILE.format(step=step)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:  # a damaged record is no reason to fail an export
        return None


def _model_lines(config: ModelConfig) -> List[str]:
    return [f"- encoder: {config.num_layers} layers x {config.hidden_size} hidden, "
            f"{config.num_heads} heads, MLP {config.mlp_dim}, vocabulary {config.vocab_size:,}, "
            f"{config.max_length} positions (post-LayerNorm, XLM-R-shaped)"]


def _retrieval_lines(scores: Optional[dict], step: int) -> List[str]:
    if not scores:
        return ["Not scored for this step (`ernie-m-jax train` scores en<->X retrieval at the "
                "end of a run; `ernie-m-jax eval-retrieval` on the run scores any step)."]
    lines = [f"en<->X retrieval on the test split of the run's parallel tasks, step {step:,}, "
             f"layer {scores['layer']}, mean-pooled, accuracy both directions averaged:", "",
             "| pair | pairs | raw | centred | bag of subwords |", "|---|---|---|---|---|"]
    for pair, s in scores["pairs"].items():
        lines.append(f"| {pair} | {s['pairs']} | {s['raw']:.3f} | {s['centred']:.3f} | "
                     f"{s['bag_of_subwords']:.3f} |")
    mean = scores["mean"]
    lines.append(f"| mean | | {mean['raw']:.3f} | {mean['centred']:.3f} | "
                 f"{mean['bag_of_subwords']:.3f} |")
    return lines


def _reproduce(export_flags: str) -> List[str]:
    return ["The run's full gin config is `ernie_m_jax_config.gin` in this folder (its data "
            "paths are those of the machine it ran on):", "", "```bash",
            f"ernie-m-jax train --gin_file={CONFIG_COPY} --model_dir=NEW_RUN",
            f"ernie-m-jax export-hf --model_dir=NEW_RUN --out=NEW_EXPORT {export_flags}".rstrip(),
            "```"]


def _card(data: ModelCardData, title: str, sections: Sequence[tuple]) -> ModelCard:
    body = [f"# {title}", ""]
    for heading, lines in sections:
        body += [f"## {heading}", "", *lines, ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def pretraining_card(exp: Experiment, step: int, languages: Sequence[str], fmt: str,
                     export_flags: str, license: str, base_model: Optional[str],
                     retrieval: Optional[dict], folded: Optional[str]) -> ModelCard:
    kind = "XLMRobertaForMaskedLM" if fmt == "xlm_roberta" else "ErnieMModel"
    data = ModelCardData(
        language=hf_languages(languages) or None, license=license,
        library_name="transformers",
        pipeline_tag="fill-mask" if fmt == "xlm_roberta" else "feature-extraction",
        base_model=base_model, tags=["ernie-m", PROJECT, "multilingual", "cross-lingual"])
    training = [
        f"- objectives: {schedule(exp)} (ERNIE-M, Ouyang et al., 2021)",
        f"- steps: {step:,} of {exp.train.num_steps:,} configured",
        f"- tokens seen: {tokens_seen(exp, step):,} (rows x length of every objective's "
        "batch, padding included)",
        f"- languages: {', '.join(sorted(languages))}",
        *_model_lines(exp.model)]
    if base_model:
        training.append(f"- continued from [{base_model}](https://huggingface.co/{base_model})")
    if folded:
        training.append(f"- language embeddings folded into the position embeddings "
                        f"(`--fold_language={folded}`)")
    usage = ["```python", "from transformers import AutoModel, AutoTokenizer", "",
             'tokenizer = AutoTokenizer.from_pretrained("PATH")',
             f'model = AutoModel.from_pretrained("PATH")  # {kind}', "```"]
    return _card(data, f"An ERNIE-M-style encoder trained with {PROJECT}", [
        ("Use", [f"Loads with `transformers` as `{kind}` (`{fmt}` format).", "", *usage]),
        ("Training", training),
        ("Evaluation", _retrieval_lines(retrieval, step)),
        ("Reproduce", _reproduce(export_flags))])


def classifier_card(model: ModelConfig, task: str, labels: Sequence[str], init_from: str,
                    step: int, languages: Sequence[str], fmt: str, export_flags: str,
                    license: str, test: Optional[dict]) -> ModelCard:
    kind = ("XLMRobertaForSequenceClassification" if fmt == "xlm_roberta"
            else "ErnieMForSequenceClassification")
    data = ModelCardData(language=hf_languages(languages) or None, license=license,
                         library_name="transformers", pipeline_tag="text-classification",
                         tags=["ernie-m", PROJECT, "multilingual"])
    evaluation = ["Not evaluated on the test split."]
    if test:
        evaluation = [f"Test accuracy per language at step {test.get('step', step)}:", "",
                      "| language | accuracy |", "|---|---|"]
        for language, accuracy in sorted(test.get("accuracy", {}).items()):
            evaluation.append(f"| {language} | {accuracy:.3f} |")
        evaluation.append(f"| average | {test['average_accuracy']:.3f} |")
    return _card(data, f"A {task} classifier fine-tuned with {PROJECT}", [
        ("Use", [f"Loads with `transformers` as `{kind}`; labels: "
                 f"{', '.join(map(str, labels))}."]),
        ("Training", [f"- fine-tuned from `{init_from}` for {step:,} steps (model "
                      "selection's best step)", *_model_lines(model)]),
        ("Evaluation", evaluation),
        ("Reproduce", ["The fine-tuning run's gin config is `ernie_m_jax_config.gin` in this "
                       "folder:", "", "```bash",
                       f"ernie-m-jax finetune --gin_file={CONFIG_COPY} "
                       f"--init_from={shlex.quote(init_from)} --model_dir=NEW_RUN",
                       f"ernie-m-jax export-hf --model_dir=NEW_RUN --out=NEW_EXPORT "
                       f"{export_flags}".rstrip(), "```"])])
