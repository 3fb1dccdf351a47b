"""Our Flax parameter tree <-> Hugging Face state dicts (`ErnieMModel`, `XLMRobertaForMaskedLM`).

One table per format says where each tensor lives on both sides, so export and import are the
same table read in two directions and cannot drift apart. Pure NumPy. torch `Linear` stores
`weight [out, in]`; our kernels are `[*in, *out]` with the heads split out, and the encoder's
layers are stacked on a leading axis (the scanned encoder).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np

from ernie_m_jax.configs import ModelConfig
from ernie_m_jax.model import init_params

StateDict = Dict[str, np.ndarray]
ERNIE_M = "ernie_m"
XLM_ROBERTA = "xlm_roberta"
FORMATS = (ERNIE_M, XLM_ROBERTA)
LANGUAGE_EMBEDDINGS = ("embeddings", "language_embeddings", "embedding")


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor: its Hugging Face name (`{i}` = layer index) and our parameter path."""

    hf_name: str
    path: Tuple[str, ...]
    # "copy": same layout; "weight": a Linear weight from a kernel whose first `in_axes` axes
    # are inputs; "bias": flattened.
    kind: str = "copy"
    in_axes: int = 1

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name


def _linear(hf_prefix: str, path: Tuple[str, ...], in_axes: int = 1) -> List[Tensor]:
    return [Tensor(f"{hf_prefix}.weight", path + ("kernel",), "weight", in_axes),
            Tensor(f"{hf_prefix}.bias", path + ("bias",), "bias")]


def _norm(hf_prefix: str, path: Tuple[str, ...]) -> List[Tensor]:
    return [Tensor(f"{hf_prefix}.weight", path + ("scale",)),
            Tensor(f"{hf_prefix}.bias", path + ("bias",))]


_LAYERS = ("encoder", "layers")
_ATTN = _LAYERS + ("self_attn",)
# The MLM head in XLM-R names; the decoder weight is tied to the word embeddings.
_MLM_HEAD = (_linear("lm_head.dense", ("mlm_head", "dense"))
             + _norm("lm_head.layer_norm", ("mlm_head", "layer_norm"))
             + [Tensor("lm_head.bias", ("mlm_head", "bias"))])

ERNIE_M_ENCODER: Tuple[Tensor, ...] = tuple(
    [Tensor("embeddings.word_embeddings.weight", ("embeddings", "word_embeddings", "embedding")),
     Tensor("embeddings.position_embeddings.weight",
            ("embeddings", "position_embeddings", "embedding"))]
    + _norm("embeddings.layer_norm", ("embeddings", "layer_norm"))
    + [t for proj in ("q_proj", "k_proj", "v_proj")
       for t in _linear(f"encoder.layers.{{i}}.self_attn.self_attn.{proj}", _ATTN + (proj,))]
    + _linear("encoder.layers.{i}.self_attn.out_proj", _ATTN + ("out_proj",), in_axes=2)
    + _linear("encoder.layers.{i}.linear1", _LAYERS + ("linear1",))
    + _linear("encoder.layers.{i}.linear2", _LAYERS + ("linear2",))
    + _norm("encoder.layers.{i}.norm1", _LAYERS + ("norm1",))
    + _norm("encoder.layers.{i}.norm2", _LAYERS + ("norm2",))
    + _linear("pooler.dense", ("pooler",)))
# ErnieMModel has no MLM head: ours is saved beside it (`mlm_head.safetensors`).
ERNIE_M_MLM_HEAD: Tuple[Tensor, ...] = tuple(_MLM_HEAD)

_R = "roberta.encoder.layer.{i}."
XLM_ROBERTA_TENSORS: Tuple[Tensor, ...] = tuple(
    [Tensor("roberta.embeddings.word_embeddings.weight",
            ("embeddings", "word_embeddings", "embedding")),
     Tensor("roberta.embeddings.position_embeddings.weight",
            ("embeddings", "position_embeddings", "embedding"))]
    + _norm("roberta.embeddings.LayerNorm", ("embeddings", "layer_norm"))
    + _linear(_R + "attention.self.query", _ATTN + ("q_proj",))
    + _linear(_R + "attention.self.key", _ATTN + ("k_proj",))
    + _linear(_R + "attention.self.value", _ATTN + ("v_proj",))
    + _linear(_R + "attention.output.dense", _ATTN + ("out_proj",), in_axes=2)
    + _norm(_R + "attention.output.LayerNorm", _LAYERS + ("norm1",))
    + _linear(_R + "intermediate.dense", _LAYERS + ("linear1",))
    + _linear(_R + "output.dense", _LAYERS + ("linear2",))
    + _norm(_R + "output.LayerNorm", _LAYERS + ("norm2",))
    # XLMRobertaForMaskedLM ignores the pooler; XLMRobertaModel (sentence-transformers) uses it.
    + _linear("roberta.pooler.dense", ("pooler",))
    + _MLM_HEAD)
# XLM-R has token types; ours are all type 0 with a zero embedding.
TOKEN_TYPE_EMBEDDINGS = "roberta.embeddings.token_type_embeddings.weight"


def _prefixed(tensors: Tuple[Tensor, ...], prefix: str) -> Tuple[Tensor, ...]:
    return tuple(dataclasses.replace(t, hf_name=prefix + t.hf_name) for t in tensors)


# Sequence classifiers (fine-tuned runs: our params plus a `classifier` linear layer).
# `ErnieMForSequenceClassification`: the encoder under `ernie_m.`, pooler -> dropout -> linear.
ERNIE_M_CLASSIFIER: Tuple[Tensor, ...] = (_prefixed(ERNIE_M_ENCODER, "ernie_m.")
                                          + tuple(_linear("classifier", ("classifier",))))
# `XLMRobertaForSequenceClassification` has no pooler; its head is dense -> tanh -> out_proj
# on the first token, which is our pooler followed by our classifier.
XLM_ROBERTA_CLASSIFIER: Tuple[Tensor, ...] = tuple(
    [t for t in XLM_ROBERTA_TENSORS
     if t.hf_name.startswith("roberta.") and not t.hf_name.startswith("roberta.pooler")]
    + _linear("classifier.dense", ("pooler",))
    + _linear("classifier.out_proj", ("classifier",)))

LAYOUTS = {ERNIE_M: ERNIE_M_ENCODER + ERNIE_M_MLM_HEAD, XLM_ROBERTA: XLM_ROBERTA_TENSORS}


def _get(tree: Mapping, path: Tuple[str, ...]) -> np.ndarray:
    for key in path:
        tree = tree[key]
    return np.asarray(tree)


def _set(tree: dict, path: Tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _to_hf(t: Tensor, ours: np.ndarray) -> np.ndarray:
    if t.kind == "weight":
        return ours.reshape(int(np.prod(ours.shape[:t.in_axes])), -1).T
    if t.kind == "bias":
        return ours.reshape(-1)
    return ours


def _from_hf(t: Tensor, theirs: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    if t.kind == "weight":
        return theirs.T.reshape(shape)
    return theirs.reshape(shape)


def expected_shapes(config: ModelConfig) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    """Our parameter shapes for `config`, without allocating anything."""
    params = jax.eval_shape(lambda: nn.unbox(init_params(config, jax.random.key(0)))["params"])
    return {tuple(p.key for p in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def hf_shape(t: Tensor, ours: Tuple[int, ...]) -> Tuple[int, ...]:
    """The Hugging Face shape of one of our arrays of shape `ours` (one layer's, for
    per-layer tensors): what `_to_hf` makes of it, computed without allocating it."""
    if t.kind == "weight":
        return (int(np.prod(ours[t.in_axes:])), int(np.prod(ours[:t.in_axes])))
    if t.kind == "bias":
        return (int(np.prod(ours)),)
    return tuple(ours)


def hf_shapes(config: ModelConfig, layout: Tuple[Tensor, ...]) -> Dict[str, Tuple[int, ...]]:
    """{Hugging Face name: shape} of every tensor `layout` holds for `config`."""
    shapes = expected_shapes(config)
    out = {}
    for t in layout:
        shape = shapes[t.path]
        if t.per_layer:
            for i in range(config.num_layers):
                out[t.hf_name.format(i=i)] = hf_shape(t, shape[1:])
        else:
            out[t.hf_name] = hf_shape(t, shape)
    return out


def check_shapes_fit(shapes: Mapping[str, Tuple[int, ...]], config: ModelConfig,
                     layout: Tuple[Tensor, ...], what: str = "checkpoint",
                     optional: Tuple[str, ...] = ()) -> None:
    """One error listing every tensor of `layout` that `shapes` (a checkpoint's, e.g. read
    from safetensors headers) lacks or holds in another shape; names starting with one of
    `optional` may be absent. Nothing is allocated: a config.json that does not fit its
    weights is refused before a model of its size is built."""
    missing, wrong = [], []
    for name, want in hf_shapes(config, layout).items():
        if name not in shapes:
            if not name.startswith(optional):
                missing.append(name)
        elif tuple(shapes[name]) != want:
            wrong.append(f"{name}: {tuple(shapes[name])}, expected {want}")
    _raise_misfit(what, missing, wrong)


def _raise_misfit(what: str, missing: Sequence[str], wrong: Sequence[str]) -> None:
    if not (missing or wrong):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {list(missing[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} with another shape (e.g. {list(wrong[:3])})")
    raise ValueError(f"{what} does not fit this model: " + "; ".join(problems))


def to_state_dict(params: Mapping, config: ModelConfig, layout: Tuple[Tensor, ...]) -> StateDict:
    """The state dict of `layout` (float32, contiguous) from our `params` collection."""
    if config.num_languages:
        raise ValueError(
            f"this model has language embeddings (ModelConfig.num_languages="
            f"{config.num_languages}), which Hugging Face's ErnieM and XLM-R have no place for; "
            "fold one into the position embeddings first (export: --fold_language)")
    state: StateDict = {}
    for t in layout:
        ours = _get(params, t.path)
        if t.per_layer:
            for i in range(config.num_layers):
                state[t.hf_name.format(i=i)] = _to_hf(t, ours[i])
        else:
            state[t.hf_name] = _to_hf(t, ours)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


def from_state_dict(state: Mapping[str, np.ndarray], config: ModelConfig,
                    layout: Tuple[Tensor, ...], what: str = "checkpoint") -> dict:
    """Our `params` collection from a state dict; every tensor of `layout` must be present
    with the shape `config` implies (one error lists every problem)."""
    shapes = expected_shapes(config)
    params: dict = {}
    missing, wrong = [], []
    for t in layout:
        shape = shapes[t.path]
        names = ([t.hf_name.format(i=i) for i in range(config.num_layers)] if t.per_layer
                 else [t.hf_name])
        one_shape = shape[1:] if t.per_layer else shape
        want = hf_shape(t, one_shape)
        parts = []
        for name in names:
            if name not in state:
                missing.append(name)
                continue
            theirs = np.asarray(state[name], np.float32)
            if theirs.shape != want:
                wrong.append(f"{name}: {theirs.shape}, expected {want}")
                continue
            parts.append(_from_hf(t, theirs, one_shape))
        if len(parts) == len(names):
            _set(params, t.path, np.stack(parts) if t.per_layer else parts[0])
    _raise_misfit(what, missing, wrong)
    return params


def fold_language_embedding(params: Mapping, config: ModelConfig, language_id: int
                            ) -> Tuple[dict, ModelConfig]:
    """Params and config without language embeddings, row `language_id` added to every
    position embedding: word + position + language is summed before the LayerNorm, so the
    result equals the original model exactly on text given that language id."""
    if not config.num_languages:
        return dict(params), config
    if not 0 <= language_id < config.num_languages:
        raise ValueError(f"language id {language_id} is outside the model's "
                         f"{config.num_languages} language embeddings")
    table = _get(params, LANGUAGE_EMBEDDINGS)
    embeddings = {k: v for k, v in params["embeddings"].items() if k != "language_embeddings"}
    position = np.asarray(embeddings["position_embeddings"]["embedding"])
    embeddings["position_embeddings"] = {"embedding": position + table[language_id]}
    folded = dict(params, embeddings=embeddings)
    return folded, dataclasses.replace(config, num_languages=0)
