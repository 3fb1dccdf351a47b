"""Parameter layout of Hugging Face's `ErnieMModel`: our Flax tree <-> its state dict.

Pure NumPy on both sides, so it serves export (safetensors), import and the equivalence tests
alike. torch `Linear` stores `[out, in]`; our kernels are `[in, ...out]` with the heads split
out and the layers stacked on a leading axis (the scanned encoder).
"""

from __future__ import annotations

from typing import Dict, Mapping

import numpy as np

from ernie_m_jax.configs import ModelConfig

StateDict = Dict[str, np.ndarray]


def _linear(kernel: np.ndarray, bias: np.ndarray, in_dims: int):
    """A Flax kernel `[*in, *out]` and bias `[*out]` as torch `weight [out, in]`, `bias [out]`."""
    n_in = int(np.prod(kernel.shape[:in_dims]))
    return kernel.reshape(n_in, -1).T, bias.reshape(-1)


def encoder_state_dict(params: Mapping, config: ModelConfig) -> StateDict:
    """`ErnieMModel` state dict (embeddings, layers, pooler) from our `params` collection."""
    if config.num_languages:
        raise ValueError(
            "ErnieMModel has no language embeddings; this model was trained with "
            f"num_languages={config.num_languages}")
    emb = params["embeddings"]
    state: StateDict = {
        "embeddings.word_embeddings.weight": emb["word_embeddings"]["embedding"],
        "embeddings.position_embeddings.weight": emb["position_embeddings"]["embedding"],
        "embeddings.layer_norm.weight": emb["layer_norm"]["scale"],
        "embeddings.layer_norm.bias": emb["layer_norm"]["bias"],
    }
    stacked = {name: {k: np.asarray(v) for k, v in sub.items()}
               for name, sub in _flat_modules(params["encoder"]["layers"]).items()}
    for i in range(config.num_layers):
        layer = {name: {k: v[i] for k, v in sub.items()} for name, sub in stacked.items()}
        prefix = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj"):
            w, b = _linear(layer[f"self_attn/{proj}"]["kernel"], layer[f"self_attn/{proj}"]["bias"], 1)
            state[f"{prefix}self_attn.self_attn.{proj}.weight"] = w
            state[f"{prefix}self_attn.self_attn.{proj}.bias"] = b
        w, b = _linear(layer["self_attn/out_proj"]["kernel"], layer["self_attn/out_proj"]["bias"], 2)
        state[f"{prefix}self_attn.out_proj.weight"] = w
        state[f"{prefix}self_attn.out_proj.bias"] = b
        for dense in ("linear1", "linear2"):
            w, b = _linear(layer[dense]["kernel"], layer[dense]["bias"], 1)
            state[f"{prefix}{dense}.weight"] = w
            state[f"{prefix}{dense}.bias"] = b
        for norm in ("norm1", "norm2"):
            state[f"{prefix}{norm}.weight"] = layer[norm]["scale"]
            state[f"{prefix}{norm}.bias"] = layer[norm]["bias"]
    w, b = _linear(params["pooler"]["kernel"], params["pooler"]["bias"], 1)
    state["pooler.dense.weight"] = w
    state["pooler.dense.bias"] = b
    return {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in state.items()}


def _flat_modules(tree: Mapping, prefix: str = "") -> Dict[str, Dict[str, np.ndarray]]:
    """{"self_attn/q_proj": {"kernel": ..., "bias": ...}, "norm1": {...}, ...}."""
    out: Dict[str, Dict[str, np.ndarray]] = {}
    leaves = {k: v for k, v in tree.items() if not isinstance(v, Mapping)}
    if leaves:
        out[prefix.rstrip("/")] = leaves
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat_modules(v, f"{prefix}{k}/"))
    return out
