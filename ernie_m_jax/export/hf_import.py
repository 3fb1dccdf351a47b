"""Turn a Hugging Face ErnieM or XLM-R checkpoint into a run directory (`ernie-m-jax import-hf`).

The result holds `checkpoints/0` (params only), the vocabulary (copied to the run's
`ernie_m_jax_vocab.model`, in its id layout) and a `config.gin` with the matching
`ModelConfig`, the vocabulary's special ids and the macros `IMPORTED_DIR` and `VOCABULARY`,
so continued pretraining (`gin/runs/continue_from_hf.gin`) starts from it the way stage 2
starts from stage 1 (the paper continued from XLM-R this way). The vocabulary is recognised
as our own export's, ERNIE-M's `vocab.txt` + `sentencepiece.bpe.model`, or XLM-R's
fairseq-offset `sentencepiece.bpe.model`. Tensors a checkpoint may lack (XLM-R's pooler in a
masked-LM checkpoint, any MLM head in an `ErnieMModel`) are initialised fresh and reported;
anything else missing or misshapen is an error that lists it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from safetensors import safe_open
from safetensors.numpy import load_file

from ernie_m_jax import checkpoints
from ernie_m_jax.configs import ModelConfig, SpecialTokens
from ernie_m_jax.data import vocab
from ernie_m_jax.export import layouts, model_card
from ernie_m_jax.export.hf_export import IMPORT_MARKER, MLM_HEAD_FILE, PROVENANCE_FILE
from ernie_m_jax.model import init_params
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


def inside(hf_dir: Path, name: str) -> Path:
    """`hf_dir / name`, refused unless it stays inside `hf_dir` (an index names its shards:
    `../../etc/passwd` must not be opened). Symbolic links are the folder owner's own (the
    Hugging Face cache links snapshots to blobs) and are followed."""
    candidate = Path(os.path.normpath(hf_dir / name))
    root = Path(os.path.normpath(hf_dir))
    if Path(name).is_absolute() or (candidate != root and root not in candidate.parents):
        raise ValueError(f"{hf_dir}: the file {name!r} lies outside the folder; every file a "
                         "Hugging Face directory names must be inside it")
    return candidate


def safetensors_files(hf_dir: Path) -> Sequence[Path]:
    """`model.safetensors`, or the shards its index names; [] if the folder has neither."""
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if not index.is_file():
        return []
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{index} is not a safetensors index ({type(err).__name__}: {err}); "
                         "it needs a weight_map of tensor name -> shard file") from None
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"{index}: weight_map's values must be shard file names")
    return [inside(hf_dir, name) for name in names]


def weight_shapes(files: Sequence[Path]) -> Dict[str, Tuple[int, ...]]:
    """{tensor name: shape} from the safetensors headers alone: no tensor is read."""
    shapes = {}
    for file in files:
        try:
            with safe_open(str(file), framework="numpy") as f:
                for name in f.keys():
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        except Exception as err:  # OSError, or safetensors' own SafetensorError
            raise ValueError(f"cannot read the weights in {file}: {err}") from None
    return shapes


def load_safetensors(files: Sequence[Path]) -> Dict[str, np.ndarray]:
    """Every tensor of `files`; one that cannot be read is an error naming it."""
    state: Dict[str, np.ndarray] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as err:  # OSError, or safetensors' own SafetensorError
            raise ValueError(f"cannot read the weights in {file}: {err}") from None
    return state


def read_weights(hf_dir: Path, safetensors: Optional[Sequence[Path]] = None
                 ) -> Dict[str, np.ndarray]:
    """All tensors of `model.safetensors` (or its shards, or `pytorch_model.bin`);
    `safetensors`: those files, when the caller has listed them already."""
    files = safetensors_files(hf_dir) if safetensors is None else safetensors
    if files:
        return load_safetensors(files)
    bin_file = hf_dir / "pytorch_model.bin"
    if bin_file.is_file():
        return read_torch_bin(bin_file)
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {hf_dir}")


def read_torch_bin(bin_file: Path) -> Dict[str, np.ndarray]:
    """A PyTorch state dict, read with `weights_only=True`: tensors only, never code."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{bin_file} is a PyTorch pickle and torch is not installed: "
                         "`pip install torch`, or convert it to model.safetensors") from None
    try:
        state = torch.load(str(bin_file), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for anything but tensors
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{bin_file} cannot be read as plain tensors ({type(err).__name__}: "
                         f"{first}); only weights are loaded, never pickled code") from None
    if not isinstance(state, dict):
        raise ValueError(f"{bin_file} holds a {type(state).__name__}, not a state dict")
    return {k: v.float().numpy() for k, v in state.items()}


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
    layout = layouts.LAYOUTS[fmt]
    head = hf_dir / MLM_HEAD_FILE
    heads = [head] if fmt == layouts.ERNIE_M and head.is_file() else []

    def check_fits(shapes: Mapping[str, Tuple[int, ...]]) -> None:
        shapes = {k: v for k, v in _canonical_names(shapes, fmt).items()
                  if k != layouts.TOKEN_TYPE_EMBEDDINGS}
        layouts.check_shapes_fit(shapes, config, layout, f"{hf_dir} (config.json and weights)",
                                 optional=OPTIONAL_PREFIXES)

    safetensors = safetensors_files(hf_dir)
    if safetensors:  # the config against the headers, before a tensor is read or a model built
        check_fits(weight_shapes([*safetensors, *heads]))
    state = {**read_weights(hf_dir, safetensors), **load_safetensors(heads)}
    if not safetensors:  # a PyTorch pickle has no header: checked once read
        check_fits({k: v.shape for k, v in state.items()})
    state = _canonical_names(state, fmt)
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
    return jax.jit(lambda key: init_params(config, key))(jax.random.key(seed))


def _summary(names) -> str:
    groups = sorted({n.rsplit(".", 2)[0] if n.count(".") > 1 else n for n in names})
    return ", ".join(groups)


SPM_FILE = "sentencepiece.bpe.model"  # XLM-R's and ERNIE-M's name for it
# Files that say a directory has a tokenizer, recognised or not.
TOKENIZER_FILES = (SPM_FILE, "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", VOCAB_FILE)


@dataclasses.dataclass(frozen=True)
class HfVocabulary:
    """The SentencePiece model of an HF directory, as a run will tokenize with it."""

    source: Path  # the .model file to copy
    kind: str  # how it was recognised, for messages
    info: vocab.VocabularyInfo


def _vocab_txt_matches(lines, info: vocab.VocabularyInfo, processor) -> bool:
    """ERNIE-M's vocab.txt names every id: the pieces must sit where the layout puts them
    (its special tokens may be spelt [CLS] ... [MASK] instead of <s> ... <mask>)."""
    if len(lines) != info.vocab_size:
        return False
    special = set(info.tokens.all_ids)
    pieces = info.pieces(processor)
    return all(lines[i] == pieces[i] for i in range(len(pieces)) if i not in special)


def hf_vocabulary(hf_dir: Path) -> Optional[HfVocabulary]:
    """The directory's vocabulary in a layout we can train with; None if it has no tokenizer
    files at all; an error naming what was found otherwise."""
    if (hf_dir / PROVENANCE_FILE).is_file() and (hf_dir / VOCAB_FILE).is_file():
        return HfVocabulary(hf_dir / VOCAB_FILE, "this project's export",
                            vocab.inspect(hf_dir / VOCAB_FILE))
    spm_file = hf_dir / SPM_FILE
    if spm_file.is_file():
        text_ids = vocab.TextIds(spm_file)
        info = text_ids.info
        txt = hf_dir / "vocab.txt"
        if txt.is_file():
            lines = txt.read_text(encoding="utf-8").split("\n")
            lines = lines[:-1] if lines and lines[-1] == "" else lines
            if not _vocab_txt_matches(lines, info, text_ids.processor):
                raise ValueError(
                    f"{txt} ({len(lines)} lines) does not number {SPM_FILE}'s pieces in "
                    f"either layout (the {info.layout} layout of that model has "
                    f"{info.vocab_size} ids); cannot tell which ids the checkpoint was "
                    "trained with")
            return HfVocabulary(spm_file, f"ERNIE-M vocab.txt + {SPM_FILE}", info)
        return HfVocabulary(spm_file, f"{info.layout}-layout {SPM_FILE}", info)
    present = [f for f in TOKENIZER_FILES if (hf_dir / f).is_file()]
    if present:
        raise ValueError(
            f"{hf_dir} has tokenizer files ({', '.join(present)}) but no SentencePiece model "
            f"this project can tokenize with: expected {SPM_FILE} (XLM-R, fairseq ids), "
            f"vocab.txt + {SPM_FILE} (ERNIE-M) or {VOCAB_FILE} with {PROVENANCE_FILE} (an "
            "ernie-m-jax export)")
    return None


def special_tokens(hf_dir: Path, found: Optional[HfVocabulary]) -> Optional[SpecialTokens]:
    """Our special-token ids: an export's own record, else those the vocabulary implies."""
    provenance = hf_dir / PROVENANCE_FILE
    if provenance.is_file():
        return SpecialTokens(**json.loads(provenance.read_text())["special_tokens"])
    return None if found is None else found.info.tokens


def check_vocabulary_fits(found: HfVocabulary, tokens: SpecialTokens, config: ModelConfig,
                          hf_dir: Path) -> None:
    vocab.check_special_tokens(found.info, tokens)
    rows = config.vocab_size
    ids = found.info.vocab_size
    # A run of ours may pad its embedding past its vocabulary; a release may not differ.
    if ids > rows or (ids != rows and found.source.name != VOCAB_FILE):
        raise ValueError(
            f"{hf_dir}: the vocabulary ({found.kind}) has {ids} ids but the checkpoint's "
            f"word embedding has {rows} rows (config.json vocab_size); they must agree")


def gin_text(config: ModelConfig, tokens: Optional[SpecialTokens], hf_dir: Path,
             out, found: Optional[HfVocabulary]) -> str:
    lines = [f"# Imported from {hf_dir} by `ernie-m-jax import-hf`.",
             "import ernie_m_jax.configs", "",
             "# The run to continue from (gin/runs/continue_from_hf.gin: TrainConfig.init_from).",
             f"IMPORTED_DIR = {str(out)!r}"]
    if found is not None:
        lines += [f"# Its vocabulary ({found.kind}, {found.info.layout} ids, "
                  f"{found.info.vocab_size} of them): register your tasks with it, e.g.",
                  "#   register_demo.vocabulary_path = %VOCABULARY",
                  f"VOCABULARY = {str(out / VOCAB_FILE)!r}"]
    else:
        lines += ["# No tokenizer files were found: set VOCABULARY to the SentencePiece model "
                  "the checkpoint was trained with.", "VOCABULARY = %gin.REQUIRED"]
    lines.append("")
    for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim",
                  "max_position_embeddings", "position_offset", "pad_id", "num_languages",
                  "dropout_rate", "attention_dropout_rate", "activation_dropout_rate",
                  "layer_norm_eps", "initializer_range"):
        lines.append(f"ModelConfig.{field} = {getattr(config, field)!r}")
    if tokens is not None:
        lines += [f"SpecialTokens.{f} = {getattr(tokens, f)!r}"
                  for f in ("cls_id", "pad_id", "sep_id", "unk_id", "mask_id")]
    else:
        lines.append("# Bind SpecialTokens.* for its vocabulary.")
    return "\n".join(lines) + "\n"


def import_hf(hf_dir: str, model_dir: str, overwrite: bool = False, seed: int = 0) -> Path:
    hf_path = Path(hf_dir)
    found = hf_vocabulary(hf_path)  # before the weights: a bad tokenizer fails fast
    params, config, filled = hf_params(hf_path, seed)
    tokens = special_tokens(hf_path, found)
    if found is not None:
        check_vocabulary_fits(found, tokens, config, hf_path)
    else:
        logging.warning("%s has no tokenizer files: bind VOCABULARY and SpecialTokens for the "
                        "vocabulary its checkpoint was trained with", hf_path)
    out = checked_output_dir(model_dir, overwrite, IMPORT_MARKER)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    mngr = checkpoints.manager(out / "checkpoints", keep=1, async_save=False)
    with mngr:
        mngr.save(0, args=ocp.args.Composite(**{checkpoints.STATE: ocp.args.StandardSave(
            {"params": params})}), force=True)
        mngr.wait_until_finished()
    if found is not None:
        shutil.copyfile(found.source, out / VOCAB_FILE)
    (out / CONFIG_FILE).write_text(gin_text(config, tokens, hf_path, out, found))
    if filled:
        (out / "initialised_fresh.txt").write_text("\n".join(filled) + "\n")
    (out / IMPORT_MARKER).write_text(json.dumps(
        {"hf_dir": str(hf_path.resolve()), "initialised_fresh": filled,
         "base_model": model_card.hub_id(hf_path, read_config(hf_path)[0])}, indent=1) + "\n")
    return Path(out)
