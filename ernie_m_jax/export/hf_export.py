"""Write a trained run as a Hugging Face checkpoint directory (`ernie-m-jax export-hf`).

`ernie_m`: `ErnieMModel` (`config.json` with `model_type: ernie_m`, `model.safetensors`), our
MLM head beside it in `mlm_head.safetensors` (ErnieM has no MLM class in transformers), the
tokenizer files. `xlm_roberta`: the same encoder as `XLMRobertaForMaskedLM` with its MLM head
and a single all-zero token type, which transformers 4.x and 5.x and sentence-transformers
load. A fine-tuned run (`ernie-m-jax finetune`) is written as `ErnieMForSequenceClassification`
or `XLMRobertaForSequenceClassification` with its label names instead. The output directory
is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
from safetensors.numpy import save_file

from ernie_m_jax import run_dir
from ernie_m_jax.configs import ModelConfig, SpecialTokens
from ernie_m_jax.export import hf_tokenizer, layouts, model_card
from ernie_m_jax.finetune import run as finetune_run
from ernie_m_jax.run_dir import CONFIG_FILE, VOCAB_FILE, checked_output_dir
from ernie_m_jax.saved_run import SavedRun

PROVENANCE_FILE = "ernie_m_jax_export.json"
# Written into every import (`import-hf`), with the Hub id it came from when known.
IMPORT_MARKER = "ernie_m_jax_import.json"
# The model card's license unless `--license` says otherwise: the weights' terms follow the
# training data's, which this project cannot know.
DEFAULT_LICENSE = "other"
MLM_HEAD_FILE = "mlm_head.safetensors"
MEAN = "mean"


def hf_config(config: ModelConfig, tokens: SpecialTokens, fmt: str) -> dict:
    common = {
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "intermediate_size": config.mlp_dim, "hidden_act": "gelu",
        "hidden_dropout_prob": config.dropout_rate,
        "attention_probs_dropout_prob": config.attention_dropout_rate,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range, "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_id, "torch_dtype": "float32",
    }
    if fmt == layouts.ERNIE_M:
        return {"model_type": "ernie_m", "architectures": ["ErnieMModel"],
                "act_dropout": config.activation_dropout_rate, **common}
    return {"model_type": "xlm-roberta", "architectures": ["XLMRobertaForMaskedLM"],
            "type_vocab_size": 1, "position_embedding_type": "absolute",
            "bos_token_id": tokens.cls_id, "eos_token_id": tokens.sep_id, **common}


def _check_positions(config: ModelConfig, fmt: str) -> None:
    # ErnieM numbers positions from 2; XLM-R from pad_id + 1 (for right-padded text).
    wanted = 2 if fmt == layouts.ERNIE_M else config.pad_id + 1
    if config.position_offset != wanted:
        raise ValueError(f"the {fmt} format numbers positions from {wanted}, this model from "
                         f"ModelConfig.position_offset={config.position_offset}")


def fold_languages(run: SavedRun, fold_language: Optional[str]):
    """(params, config) without language embeddings, or a clear refusal."""
    config = run.model
    if not config.num_languages:
        return run.params, config
    if fold_language is None:
        raise ValueError(
            f"this model was trained with language embeddings (ModelConfig.num_languages="
            f"{config.num_languages}), which Hugging Face's ErnieM and XLM-R have no place for. "
            "Pass --fold_language=LANG to add LANG's embedding to every position embedding: "
            "the export then equals this model exactly on text fed as LANG, and encodes every "
            f"other language as if it were LANG; or --fold_language={MEAN} for the mean of the "
            f"run's languages ({sorted(run.languages)}), equal to none of them exactly")
    if fold_language == MEAN:
        ids = sorted(i for i in run.languages.values() if i < config.num_languages)
        if not ids:
            raise ValueError("the run registered no languages to average over")
        table = np.asarray(run.params["embeddings"]["language_embeddings"]["embedding"])
        params = dict(run.params, embeddings=dict(run.params["embeddings"], language_embeddings={
            "embedding": np.concatenate([table, table[ids].mean(0, keepdims=True)])}))
        widened = dataclasses.replace(config, num_languages=len(table) + 1)
        return layouts.fold_language_embedding(params, widened, len(table))
    return layouts.fold_language_embedding(run.params, config, run.language_id(fold_language))


def _check_format(fmt: str) -> None:
    if fmt not in layouts.FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {layouts.FORMATS}")


def _state_dict(params, config: ModelConfig, fmt: str, layout) -> dict:
    """`layout`'s tensors, plus XLM-R's single all-zero token type in that format."""
    state = layouts.to_state_dict(params, config, layout)
    if fmt == layouts.XLM_ROBERTA:
        state[layouts.TOKEN_TYPE_EMBEDDINGS] = np.zeros((1, config.hidden_size), np.float32)
    return state


def export(run: SavedRun, out: str, fmt: str = layouts.ERNIE_M,
           fold_language: Optional[str] = None, overwrite: bool = False,
           license: str = DEFAULT_LICENSE) -> Path:
    _check_format(fmt)
    if run.vocabulary_path is None:
        raise ValueError(f"{run.model_dir}: the run's vocabulary is unknown (its gin config "
                         "registers no tasks); the export needs it for the tokenizer files")
    out_dir = Path(checked_output_dir(out, overwrite, PROVENANCE_FILE))
    params, config = fold_languages(run, fold_language)
    _check_positions(config, fmt)
    if fmt == layouts.ERNIE_M:
        weights = {"model.safetensors": layouts.to_state_dict(params, config,
                                                              layouts.ERNIE_M_ENCODER),
                   MLM_HEAD_FILE: layouts.to_state_dict(params, config,
                                                        layouts.ERNIE_M_MLM_HEAD)}
    else:
        weights = {"model.safetensors": _state_dict(params, config, fmt,
                                                    layouts.XLM_ROBERTA_TENSORS)}
    card = model_card.pretraining_card(
        run.experiment, run.step, list(run.languages), fmt, _export_flags(fmt, fold_language),
        license, base_model(run), model_card.read_retrieval(run.model_dir, run.step),
        fold_language)
    return _write(out_dir, run, fmt, weights, hf_config(config, run.tokens, fmt),
                  {"format": fmt, "model_dir": run.model_dir, "step": run.step,
                   "fold_language": fold_language}, card)


def _export_flags(fmt: str, fold_language: Optional[str]) -> str:
    return f"--format={fmt}" + (f" --fold_language={fold_language}" if fold_language else "")


def base_model(run: SavedRun) -> Optional[str]:
    """The Hub id of the checkpoint a run continued from: recorded by `import-hf` in the
    folder the run started from (`init_from`), or in the run itself if it is an import."""
    init_from = run.experiment.train.init_from if run.experiment else None
    for folder in (run.model_dir, init_from):
        marker = Path(os.fspath(folder)) / IMPORT_MARKER if folder else None
        if marker is not None and marker.is_file():
            try:
                return json.loads(marker.read_text()).get("base_model")
            except ValueError:
                return None
    return None


def _write(out_dir: Path, run: SavedRun, fmt: str, weights: dict, config_json: dict,
           provenance: dict, card: model_card.ModelCard) -> Path:
    """Weights, config, tokenizer, model card, the run's gin config and provenance under a
    temporary name, renamed when whole."""
    tmp = out_dir.parent / (out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    metadata = {"format": "pt", "producer": "ernie_m_jax"}
    for name, state in weights.items():
        save_file(state, str(tmp / name), metadata)
    (tmp / "config.json").write_text(json.dumps(config_json, indent=2))
    hf_tokenizer.write_tokenizer_files(tmp, run.vocabulary_path, run.tokens,
                                       run.model.max_length,
                                       with_ernie_m_files=fmt == layouts.ERNIE_M)
    shutil.copyfile(run.vocabulary_path, tmp / VOCAB_FILE)
    provenance = {**provenance, "special_tokens": dataclasses.asdict(run.tokens)}
    (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    card.save(str(tmp / model_card.CARD_FILE))
    run_config = Path(os.fspath(run.model_dir)) / CONFIG_FILE
    if run_config.is_file():
        shutil.copyfile(run_config, tmp / model_card.CONFIG_COPY)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def classifier_config(config: ModelConfig, tokens: SpecialTokens, fmt: str, labels,
                      problem: str = "single_label_classification") -> dict:
    """The encoder's config as a sequence classifier with its label names."""
    base = hf_config(config, tokens, fmt)
    kind = ("ErnieMForSequenceClassification" if fmt == layouts.ERNIE_M
            else "XLMRobertaForSequenceClassification")
    return {**base, "architectures": [kind], "problem_type": problem,
            "classifier_dropout": None,
            "id2label": {str(i): label for i, label in enumerate(labels)},
            "label2id": {label: i for i, label in enumerate(labels)}}


def export_classifier(model_dir: str, out: str, fmt: str = layouts.ERNIE_M,
                      fold_language: Optional[str] = None, overwrite: bool = False,
                      checkpoint: str = "best", license: str = DEFAULT_LICENSE) -> Path:
    """A fine-tuned run's classifier (model selection's best step) as
    `ErnieMForSequenceClassification` or `XLMRobertaForSequenceClassification`."""
    _check_format(fmt)
    info, step, params = finetune_run.load_params(
        model_dir, finetune_run.BEST if checkpoint == "best" else finetune_run.CHECKPOINTS)
    vocab = run_dir.vocabulary(model_dir)
    if vocab is None:
        raise ValueError(f"{model_dir}: the run keeps no vocabulary; the export needs it")
    out_dir = Path(checked_output_dir(out, overwrite, PROVENANCE_FILE))
    encoder = SavedRun(model_dir=str(model_dir), step=step, model=info.model,
                       tokens=info.tokens, params=params["ernie_m"],
                       vocabulary_path=Path(os.fspath(vocab)), languages=info.languages,
                       experiment=None)
    encoder_params, config = fold_languages(encoder, fold_language)
    _check_positions(config, fmt)
    tree = {**encoder_params, "classifier": params["classifier"]}
    layout = layouts.ERNIE_M_CLASSIFIER if fmt == layouts.ERNIE_M else \
        layouts.XLM_ROBERTA_CLASSIFIER
    test = Path(os.fspath(model_dir)) / f"eval_test_step_{step}.json"
    card = model_card.classifier_card(
        info.model, info.task, info.labels, info.init_from, step, list(info.languages), fmt,
        _export_flags(fmt, fold_language), license,
        json.loads(test.read_text()) if test.is_file() else None)
    return _write(out_dir, dataclasses.replace(encoder, model=config), fmt,
                  {"model.safetensors": _state_dict(tree, config, fmt, layout)},
                  classifier_config(config, info.tokens, fmt, info.labels),
                  {"format": fmt, "model_dir": str(model_dir), "step": step,
                   "checkpoint": checkpoint, "task": info.task, "labels": list(info.labels),
                   "fold_language": fold_language}, card)
