"""Turn a Hugging Face ErnieM or XLM-R checkpoint into a run directory (`ernie-m-jax import-hf`).

The result holds `checkpoints/0` (params only) and a `config.gin` with the matching
`ModelConfig`, so continued pretraining starts from it the way stage 2 starts from stage 1:
`--gin_file=OUT/config.gin --gin.TrainConfig.init_from="'OUT'"` (the paper continued from
XLM-R this way). Tensors a checkpoint may lack (XLM-R's pooler in a masked-LM checkpoint,
any MLM head in an `ErnieMModel`) are initialised fresh and reported; anything else missing
or misshapen is an error that lists it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from ernie_m_jax import checkpoints
from ernie_m_jax.configs import ModelConfig, SpecialTokens
from ernie_m_jax.export import hf_tokenizer, layouts
from ernie_m_jax.export.hf_export import MLM_HEAD_FILE, PROVENANCE_FILE
from ernie_m_jax.run_dir import CONFIG_FILE, VOCAB_FILE, checked_output_dir

MODEL_TYPES = {"ernie_m": layouts.ERNIE_M, "xlm-roberta": layouts.XLM_ROBERTA}
# Tensors initialised fresh when absent.
OPTIONAL_PREFIXES = ("lm_head.", "pooler.", "roberta.pooler.")


def read_config(hf_dir: Path) -> Tuple[dict, str]:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a Hugging Face model directory")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported; this imports "
                         f"{sorted(MODEL_TYPES)}")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"{path}: hidden_act {act!r}; this encoder uses exact GELU")
    return config, MODEL_TYPES[model_type]


def model_config_from_hf(config: Mapping, fmt: str) -> ModelConfig:
    try:
        pad_id = int(config.get("pad_token_id", 1))
        return ModelConfig(
            vocab_size=int(config["vocab_size"]), hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=int(config["num_attention_heads"]),
            mlp_dim=int(config["intermediate_size"]),
            max_position_embeddings=int(config["max_position_embeddings"]),
            position_offset=2 if fmt == layouts.ERNIE_M else pad_id + 1,
            pad_id=pad_id, num_languages=0,
            dropout_rate=float(config.get("hidden_dropout_prob", 0.1)),
            attention_dropout_rate=float(config.get("attention_probs_dropout_prob", 0.1)),
            activation_dropout_rate=float(config.get("act_dropout", 0.0)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-5)),
            initializer_range=float(config.get("initializer_range", 0.02)))
    except KeyError as err:
        raise ValueError(f"config.json lacks {err.args[0]!r}") from None


def read_weights(hf_dir: Path) -> Dict[str, np.ndarray]:
    """All tensors of `model.safetensors` (or its shards, or `pytorch_model.bin`)."""
    from safetensors.numpy import load_file

    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: Dict[str, np.ndarray] = {}
            for shard in shards:
                state.update(load_file(str(hf_dir / shard)))
            return state
    except Exception as err:  # OSError, bad JSON, or safetensors' own SafetensorError
        raise ValueError(f"cannot read the weights in {hf_dir}: {err}") from None
    bin_file = hf_dir / "pytorch_model.bin"
    if bin_file.is_file():
        import torch

        state = torch.load(str(bin_file), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {hf_dir}")


def _canonical_names(state: Mapping[str, np.ndarray], fmt: str) -> Dict[str, np.ndarray]:
    """Names as `ErnieMModel` / `XLMRobertaForMaskedLM` save them, whichever class wrote it."""
    out = {}
    for name, value in state.items():
        if fmt == layouts.ERNIE_M and name.startswith("ernie_m."):
            name = name[len("ernie_m."):]
        if fmt == layouts.XLM_ROBERTA and name.split(".")[0] in ("embeddings", "encoder",
                                                                  "pooler"):
            name = "roberta." + name
        out[name] = value
    return out


def hf_params(hf_dir: Path, seed: int = 0) -> Tuple[dict, ModelConfig, list]:
    """(our params, their ModelConfig, names initialised fresh) for a checkpoint directory."""
    hf_cfg, fmt = read_config(hf_dir)
    config = model_config_from_hf(hf_cfg, fmt)
    state = _canonical_names(read_weights(hf_dir), fmt)
    layout = layouts.LAYOUTS[fmt]
    if fmt == layouts.ERNIE_M and (hf_dir / MLM_HEAD_FILE).is_file():
        from safetensors.numpy import load_file

        state.update(load_file(str(hf_dir / MLM_HEAD_FILE)))
    if fmt == layouts.XLM_ROBERTA and layouts.TOKEN_TYPE_EMBEDDINGS in state:
        # Every token is type 0 here: its embedding is a constant added before the LayerNorm,
        # exactly like a position embedding.
        types = np.asarray(state.pop(layouts.TOKEN_TYPE_EMBEDDINGS), np.float32)
        name = "roberta.embeddings.position_embeddings.weight"
        if name in state:
            state[name] = np.asarray(state[name], np.float32) + types[0]
        if len(types) > 1:
            logging.warning("%s has %d token types; only type 0 is kept", hf_dir, len(types))
    fresh_params = nn.unbox(_init(config, seed))["params"]
    fresh = layouts.to_state_dict(jax.tree.map(np.asarray, fresh_params), config, layout)
    filled = sorted(k for k in fresh if k not in state and k.startswith(OPTIONAL_PREFIXES))
    for name in filled:
        state[name] = fresh[name]
    if filled:
        logging.warning("%s has no %s: initialised fresh", hf_dir, _summary(filled))
    params = layouts.from_state_dict(state, config, layout, what=str(hf_dir))
    return params, config, filled


def _init(config: ModelConfig, seed: int):
    from ernie_m_jax.model import init_params

    return jax.jit(lambda key: init_params(config, key))(jax.random.key(seed))


def _summary(names) -> str:
    groups = sorted({n.rsplit(".", 2)[0] if n.count(".") > 1 else n for n in names})
    return ", ".join(groups)


def special_tokens(hf_dir: Path) -> Optional[SpecialTokens]:
    """Our special-token ids, read from the tokenizer files (None when there are none)."""
    provenance = hf_dir / PROVENANCE_FILE
    if provenance.is_file():
        return SpecialTokens(**json.loads(provenance.read_text())["special_tokens"])
    tokenizer_json = hf_dir / "tokenizer.json"
    special_map = hf_dir / "special_tokens_map.json"
    if not (tokenizer_json.is_file() and special_map.is_file()):
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    pieces = json.loads(special_map.read_text())
    ids = {}
    for name, field in hf_tokenizer.SPECIAL_NAMES.items():
        piece = pieces.get(name)
        piece = piece.get("content") if isinstance(piece, dict) else piece
        token_id = tokenizer.token_to_id(piece) if piece else None
        if token_id is None:
            return None
        ids[field] = token_id
    return SpecialTokens(**ids)


def gin_text(config: ModelConfig, tokens: Optional[SpecialTokens], hf_dir: Path) -> str:
    lines = [f"# Imported from {hf_dir} by `ernie-m-jax import-hf`.",
             "import ernie_m_jax.configs", ""]
    for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim",
                  "max_position_embeddings", "position_offset", "pad_id", "num_languages",
                  "dropout_rate", "attention_dropout_rate", "activation_dropout_rate",
                  "layer_norm_eps", "initializer_range"):
        lines.append(f"ModelConfig.{field} = {getattr(config, field)!r}")
    if tokens is not None:
        lines += [f"SpecialTokens.{f} = {getattr(tokens, f)!r}"
                  for f in ("cls_id", "pad_id", "sep_id", "unk_id", "mask_id")]
    else:
        lines.append("# No tokenizer files were found: bind SpecialTokens.* for its vocabulary.")
    return "\n".join(lines) + "\n"


def import_hf(hf_dir: str, model_dir: str, overwrite: bool = False, seed: int = 0) -> Path:
    hf_path = Path(hf_dir)
    params, config, filled = hf_params(hf_path, seed)
    tokens = special_tokens(hf_path)
    out = checked_output_dir(model_dir, overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    mngr = checkpoints.manager(out / "checkpoints", keep=1, async_save=False)
    with mngr:
        mngr.save(0, args=ocp.args.Composite(**{checkpoints.STATE: ocp.args.StandardSave(
            {"params": params})}), force=True)
        mngr.wait_until_finished()
    text = gin_text(config, tokens, hf_path)
    vocab = hf_path / VOCAB_FILE
    if vocab.is_file():
        shutil.copyfile(vocab, out / VOCAB_FILE)
        text += ("\n# The SentencePiece model the exported run trained with; point your tasks "
                 f"at it, e.g.\n# register_demo.vocabulary_path = '{out / vocab.name}'\n")
    (out / CONFIG_FILE).write_text(text)
    if filled:
        (out / "initialised_fresh.txt").write_text("\n".join(filled) + "\n")
    return Path(out)
