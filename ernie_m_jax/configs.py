"""Frozen, gin-bindable configuration dataclasses.

Configs are plain data so that a run is fully described by its gin files and flags; nothing
below reads files, touches devices or imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import gin
import jax.numpy as jnp

_FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def _check_dtype(field_name: str, value: str) -> None:
    if value not in _FLOAT_DTYPES:
        raise ValueError(f"{field_name}={value!r} is not one of {_FLOAT_DTYPES}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of the ERNIE-M encoder (XLM-R layout, post-LayerNorm).

    Defaults are the released ERNIE-M base model; `MODEL_PRESETS` holds the other sizes.
    """

    vocab_size: int = 250_002
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    # 512 positions plus the two-position offset inherited from fairseq/XLM-R.
    max_position_embeddings: int = 514
    position_offset: int = 2
    pad_id: int = 1
    # 0 disables language embeddings (the released checkpoints have none).
    num_languages: int = 0
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    # Dropout between the MLP's GELU and its output projection (ERNIE-M's act_dropout: 0).
    activation_dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    dtype: str = "float32"  # activations / matmul inputs
    param_dtype: str = "float32"  # master weights
    # "none" keeps every activation; "full" recomputes each layer in the backward pass;
    # "dots" saves only matmul outputs without batch dims (jax.checkpoint_policies).
    remat_policy: str = "none"
    # jax.nn.dot_product_attention's backend: "auto" lets JAX choose (cuDNN flash attention
    # on GPUs that support the shapes and dtype, XLA otherwise), or force "xla" / "cudnn".
    # Training with attention dropout uses Flax's unfused attention instead.
    attention_implementation: str = "auto"
    # Layers per iteration of the scanned layer loop (jax.lax.scan's `unroll`): num_layers
    # unrolls it fully, trading compile time for a step without the loop's stacked buffers.
    scan_unroll: int = 1
    # Attention as up to this many independent attentions over slices of the batch (the
    # most that divide it), the same numbers to float rounding. XLA:CPU runs a dot with
    # batch dimensions, the attention's [batch x heads] products, on one thread; separate
    # ones its executor runs on several cores at once (small@128 on 2 cores: 2.5-5%). None: the
    # train step decides from its mesh (`partitioning.attention_batch_groups`: the host's
    # cores on a mesh of one CPU device, else 1, where slicing a sharded batch moves data).
    attention_batch_groups: Optional[int] = None

    def __post_init__(self):
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim",
                    "max_position_embeddings")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"ModelConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}")
        if self.num_languages < 0:
            raise ValueError(f"ModelConfig.num_languages must be >= 0, got {self.num_languages}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"ModelConfig.pad_id={self.pad_id} is outside the vocabulary")
        if self.position_offset < 0 or self.position_offset >= self.max_position_embeddings:
            raise ValueError(f"ModelConfig.position_offset={self.position_offset} is invalid")
        for name in ("dropout_rate", "attention_dropout_rate", "activation_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ModelConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        _check_dtype("ModelConfig.dtype", self.dtype)
        _check_dtype("ModelConfig.param_dtype", self.param_dtype)
        if self.attention_implementation not in ("auto", "xla", "cudnn"):
            raise ValueError(f"ModelConfig.attention_implementation="
                             f"{self.attention_implementation!r} is not one of auto/xla/cudnn")
        if self.attention_batch_groups is not None and self.attention_batch_groups < 1:
            raise ValueError(f"ModelConfig.attention_batch_groups must be >= 1 or None, "
                             f"got {self.attention_batch_groups}")
        if self.scan_unroll < 1:
            raise ValueError(f"ModelConfig.scan_unroll must be >= 1, got {self.scan_unroll}")
        if self.remat_policy not in ("none", "full", "dots"):
            raise ValueError(
                f"ModelConfig.remat_policy={self.remat_policy!r} is not one of none/full/dots")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_length(self) -> int:
        """Longest sequence the position table can embed."""
        return self.max_position_embeddings - self.position_offset

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        return jnp.dtype(self.param_dtype)


MODEL_PRESETS = {
    # Tests: seconds on 2 CPU cores.
    "tiny": dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64,
                 max_position_embeddings=130),
    # CPU demo on the embedded corpus.
    "small": dict(vocab_size=8000, hidden_size=256, num_layers=4, num_heads=4, mlp_dim=1024,
                  max_position_embeddings=258, scan_unroll=4),
    "base": dict(vocab_size=250_002, hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
                 max_position_embeddings=514),
    "large": dict(vocab_size=250_002, hidden_size=1024, num_layers=24, num_heads=16,
                  mlp_dim=4096, max_position_embeddings=514),
}


def model_config(size: str, **overrides) -> ModelConfig:
    """A preset size with optional field overrides, e.g. `model_config("tiny", num_layers=3)`."""
    if size not in MODEL_PRESETS:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(MODEL_PRESETS)}")
    return ModelConfig(**{**MODEL_PRESETS[size], **overrides})


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens, laid out like ERNIE-M / XLM-R: [CLS]=0 [PAD]=1 [SEP]=2 [UNK]=3.

    [MASK] is 4 in the vocabularies this project trains; the released 250,002-piece
    ERNIE-M / XLM-R vocabulary (fairseq's layout) has it at 250001. `data.vocab.inspect`
    derives them from a vocabulary file, `import-hf` writes them, and `train` checks the
    bound ones against its mixtures' vocabulary.
    """

    cls_id: int = 0
    pad_id: int = 1
    sep_id: int = 2
    unk_id: int = 3
    mask_id: int = 4

    def __post_init__(self):
        ids = self.all_ids
        if len(set(ids)) != len(ids):
            raise ValueError(f"special token ids must be distinct, got {self}")
        if min(ids) < 0:
            raise ValueError(f"special token ids must be non-negative, got {self}")

    @property
    def all_ids(self) -> Tuple[int, ...]:
        return (self.cls_id, self.pad_id, self.sep_id, self.unk_id, self.mask_id)

    def check_vocab(self, vocab_size: int) -> None:
        if max(self.all_ids) >= vocab_size:
            raise ValueError(
                f"special token id {max(self.all_ids)} does not fit a vocabulary of {vocab_size}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """BERT-style token masking: `rate` of the maskable tokens, split mask/random/keep."""

    rate: float = 0.15
    mask_prob: float = 0.8
    random_prob: float = 0.1
    # keep_prob is the rest: 1 - mask_prob - random_prob.
    # Static number of prediction slots per sequence; None means ceil(rate * length) + 1.
    max_predictions: Optional[int] = None

    def __post_init__(self):
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"MaskingConfig.rate must be in (0, 1], got {self.rate}")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1:
            raise ValueError(
                "MaskingConfig.mask_prob and random_prob must be >= 0 and sum to at most 1, "
                f"got {self.mask_prob} and {self.random_prob}")
        if self.max_predictions is not None and self.max_predictions <= 0:
            raise ValueError(
                f"MaskingConfig.max_predictions must be positive, got {self.max_predictions}")

    def num_slots(self, length: int) -> int:
        if self.max_predictions is not None:
            return min(self.max_predictions, length)
        return min(length, math.ceil(self.rate * length) + 1)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BTMLMConfig:
    """Back-translation MLM: how stage 1 generates the pseudo-parallel sentence."""

    # Number of placeholders per example = round(ratio * source tokens), at least 1 and at
    # most `max_placeholders` (a static shape; None means the source length).
    placeholder_ratio: float = 1.0
    max_placeholders: Optional[int] = None
    # 0 means greedy (argmax); otherwise sample from softmax(logits / temperature).
    temperature: float = 1.0
    # 0 disables top-k filtering.
    top_k: int = 0
    # Language ids the pseudo sentence may be generated in; the source's own is never drawn.
    target_languages: Tuple[int, ...] = ()
    # Where `target_languages` is unset, the run fills it from its mixtures: every language
    # of the monolingual one, or with this, only those the pair mixture holds too (the ones
    # CAMLM taught the model to write). Ignored where `target_languages` is set.
    parallel_targets_only: bool = False
    # Frame the pseudo sentence as the second sentence of a pair, `[SEP] y [SEP]`, so that
    # placeholders sit at the positions CAMLM's targets held in stage 1 (one after the opening
    # [SEP]) and stage 2 reads the same layout as a parallel pair. Off: `[CLS] x [SEP] y`.
    pair_separators: bool = False
    # Pieces per source piece differ by language (de/ru/pl ~1.3 per English piece, zh ~1):
    # entry i is language id i's length relative to a common pivot, and a pseudo sentence
    # from language s into t gets `placeholder_ratio * f[t] / f[s]` placeholders per source
    # token (ids past the end count 1). Empty: every pair gets `placeholder_ratio`.
    length_factors: Tuple[float, ...] = ()
    # Where `length_factors` is empty, the run measures them on its pair mixture's training
    # data (`train.resolve.pair_length_factors`); languages without parallel data keep 1.
    fit_length_factors: bool = False

    def __post_init__(self):
        if any(not f > 0 for f in self.length_factors):
            raise ValueError(f"BTMLMConfig.length_factors must be positive, got "
                             f"{self.length_factors}")
        if self.placeholder_ratio <= 0:
            raise ValueError(
                f"BTMLMConfig.placeholder_ratio must be positive, got {self.placeholder_ratio}")
        if self.max_placeholders is not None and self.max_placeholders <= 0:
            raise ValueError(
                f"BTMLMConfig.max_placeholders must be positive, got {self.max_placeholders}")
        if self.temperature < 0:
            raise ValueError(f"BTMLMConfig.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"BTMLMConfig.top_k must be >= 0, got {self.top_k}")
        if any(lang < 0 for lang in self.target_languages):
            raise ValueError(
                f"BTMLMConfig.target_languages must be language ids >= 0, "
                f"got {self.target_languages}")
