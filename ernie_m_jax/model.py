"""The ERNIE-M encoder in Flax: XLM-R-style embeddings, post-LayerNorm layers, pooler, MLM head.

Functionally equal to the released ERNIE-M (and to XLM-R without token types). The model knows
nothing about objectives: it takes ids, positions, optional language ids and a boolean
`[batch, query, key]` attention mask, and returns hidden states (plus MLM logits at the
positions asked for). Every parameter carries logical axis names ("vocab", "embed", "heads",
"kv", "mlp", "layers", ...) and the main activations are constrained with ("batch", "length",
...) so that one rule table (`partitioning.py`) maps the model onto any device mesh.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ernie_m_jax.configs import ModelConfig

Array = jax.Array


def _logical(init, names):
    return nn.with_logical_partitioning(init, names)


def _kernel_init(config: ModelConfig, names):
    return _logical(nn.initializers.normal(config.initializer_range), names)


def _zeros(names):
    return _logical(nn.initializers.zeros_init(), names)


def _layer_norm(config: ModelConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.compute_dtype,
        param_dtype=config.weight_dtype,
        scale_init=_logical(nn.initializers.ones_init(), ("embed",)),
        bias_init=_zeros(("embed",)),
        name=name,
    )


def gelu(x):
    """The exact (erf) GELU, written as PyTorch and transformers' ErnieM/XLM-R compute it:
    0.5 x (1 + erf(x / sqrt 2)). Same function as `nn.gelu(x, approximate=False)`, whose
    erfc form XLA:CPU evaluates through an exponential (5% of the small model's CPU step)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (2.0 ** -0.5)))


class Projection(nn.Module):
    """Biased linear map over the last `in_axes` axes of `x` into `features` axes.

    Like flax's DenseGeneral, but the kernel is created in its final shape: DenseGeneral
    initialises a flat kernel and reshapes it, which clashes with logical-axis constraints
    under a mesh (flax re-evaluates the initialiser abstractly on every apply).

    The matmul is one 2-D product, tokens x inputs by inputs x outputs. Contracting
    [batch, length, in] directly makes the kernel's gradient contract two leading axes,
    which XLA:CPU lays out again as a transposed copy of every activation gradient first
    (505 -> 428 ms at small@128 once removed); as a 2-D product the BLAS reads it in place.
    """

    features: Tuple[int, ...]
    names: Tuple[str, ...]  # logical names of kernel axes: in axes then out axes
    config: ModelConfig
    in_axes: int = 1

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        in_shape = x.shape[x.ndim - self.in_axes:]
        kernel = self.param("kernel", _kernel_init(cfg, self.names),
                            tuple(in_shape) + tuple(self.features), cfg.weight_dtype)
        bias = self.param("bias", _zeros(self.names[self.in_axes:]), tuple(self.features),
                          cfg.weight_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=cfg.compute_dtype)
        lead = x.shape[:x.ndim - self.in_axes]
        y = jnp.dot(x.reshape(math.prod(lead), math.prod(in_shape)),
                    kernel.reshape(math.prod(in_shape), math.prod(self.features)))
        return y.reshape(lead + tuple(self.features)) + bias


def _dense(config: ModelConfig, features, names, name: str, in_axes: int = 1) -> Projection:
    features = (features,) if isinstance(features, int) else tuple(features)
    return Projection(features, tuple(names), config, in_axes, name=name)


def _embed(config: ModelConfig, num: int, names, name: str) -> nn.Embed:
    return nn.Embed(
        num_embeddings=num,
        features=config.hidden_size,
        dtype=config.compute_dtype,
        param_dtype=config.weight_dtype,
        embedding_init=_kernel_init(config, names),
        name=name,
    )


class Embeddings(nn.Module):
    """Word + learned position (+ optional language) embeddings, LayerNorm, dropout."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.word_embeddings = _embed(cfg, cfg.vocab_size, ("vocab", "embed"), "word_embeddings")
        self.position_embeddings = _embed(
            cfg, cfg.max_position_embeddings, ("position", "embed"), "position_embeddings")
        if cfg.num_languages:
            self.language_embeddings = _embed(
                cfg, cfg.num_languages, ("language", "embed"), "language_embeddings")
        self.layer_norm = _layer_norm(cfg, "layer_norm")
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(self, input_ids, position_ids, language_ids, deterministic: bool):
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        if self.config.num_languages:
            x = x + self.language_embeddings(language_ids)
        x = self.layer_norm(x)
        return self.dropout(x, deterministic=deterministic)

    def attend(self, hidden):
        """Logits against the (tied) word embedding table."""
        return self.word_embeddings.attend(hidden)


ATTENTION_IMPLEMENTATIONS = {"auto": None, "xla": "xla", "cudnn": "cudnn"}


class SelfAttention(nn.Module):
    """Multi-head attention with separate biased q/k/v/out projections and any boolean mask."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask):
        cfg = self.config
        heads = (cfg.num_heads, cfg.head_dim)
        qkv_names = ("embed", "heads", "kv")
        q = _dense(cfg, heads, qkv_names, "q_proj")(x)
        k = _dense(cfg, heads, qkv_names, "k_proj")(x)
        v = _dense(cfg, heads, qkv_names, "v_proj")(x)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        k = nn.with_logical_constraint(k, ("batch", "length", "heads", "kv"))
        v = nn.with_logical_constraint(v, ("batch", "length", "heads", "kv"))
        dropout = not self.deterministic and cfg.attention_dropout_rate > 0
        # One key for every group: Flax's attention dropout draws one [query, key] mask
        # for the whole batch and all heads (`broadcast_dropout`), so each group of rows
        # drops exactly what the whole batch would have.
        rng = self.make_rng("dropout") if dropout else None
        groups = batch_groups(cfg.attention_batch_groups, q.shape[0])
        rows = q.shape[0] // groups

        def rows_of(x, g):  # a mask of one row applies to every row
            return x if x.shape[0] == 1 else x[g * rows:(g + 1) * rows]

        # The groups are separate ops, which XLA:CPU runs concurrently
        # (`ModelConfig.attention_batch_groups`); one group is the whole batch.
        context = _attention(cfg, q, k, v, mask, rng) if groups == 1 else jnp.concatenate([
            _attention(cfg, rows_of(q, g), rows_of(k, g), rows_of(v, g), rows_of(mask, g), rng)
            for g in range(groups)], axis=0)
        context = nn.with_logical_constraint(context, ("batch", "length", "heads", "kv"))
        return _dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), "out_proj",
                      in_axes=2)(context)


def _attention(cfg: ModelConfig, q, k, v, mask, dropout_rng):
    """Softmax attention over [batch, length, heads, head_dim] inputs; dropout on its
    weights where `dropout_rng` is given."""
    if dropout_rng is None:
        # JAX's fused attention (cuDNN flash attention on GPUs where it applies, XLA
        # elsewhere); softmax in float32 either way.
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask[:, None, :, :],
            implementation=ATTENTION_IMPLEMENTATIONS[cfg.attention_implementation])
    return nn.dot_product_attention(  # attention dropout needs the weights explicitly
        q, k, v,
        mask=mask[:, None, :, :],
        dropout_rng=dropout_rng,
        dropout_rate=cfg.attention_dropout_rate,
        deterministic=False,
        dtype=cfg.compute_dtype,
        force_fp32_for_softmax=True,
    )


def batch_groups(most: Optional[int], batch: int) -> int:
    """How many slices of `batch` rows attention runs as separate ops: the largest count up
    to `most` (None: 1) that divides the batch."""
    groups = min(most or 1, batch)
    while batch % groups:
        groups -= 1
    return groups


class EncoderLayer(nn.Module):
    """One post-LayerNorm Transformer layer (ERNIE-M / XLM-R / BERT order)."""

    config: ModelConfig
    deterministic: bool = True
    collect_hidden: bool = False

    @nn.compact
    def __call__(self, x, mask):
        cfg = self.config
        dropout = functools.partial(nn.Dropout(cfg.dropout_rate), deterministic=self.deterministic)
        attn = SelfAttention(cfg, self.deterministic, name="self_attn")(x, mask)
        x = _layer_norm(cfg, "norm1")(x + dropout(attn))
        h = _dense(cfg, cfg.mlp_dim, ("embed", "mlp"), "linear1")(x)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = nn.Dropout(cfg.activation_dropout_rate)(
            gelu(h), deterministic=self.deterministic)
        h = _dense(cfg, cfg.hidden_size, ("mlp", "embed"), "linear2")(h)
        x = _layer_norm(cfg, "norm2")(x + dropout(h))
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, (x if self.collect_hidden else None)


_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Encoder(nn.Module):
    """The layer stack, scanned so that compile time does not grow with depth."""

    config: ModelConfig
    deterministic: bool = True
    collect_hidden: bool = False

    @nn.compact
    def __call__(self, x, mask):
        cfg = self.config
        layer = EncoderLayer
        if cfg.remat_policy != "none":
            layer = nn.remat(layer, prevent_cse=False, policy=_REMAT_POLICIES[cfg.remat_policy])
        stack = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,),
            length=cfg.num_layers,
            unroll=cfg.scan_unroll,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        return stack(cfg, self.deterministic, self.collect_hidden, name="layers")(x, mask)


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> tied decoder + bias (the XLM-R / RoBERTa LM head)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden, embeddings: Embeddings):
        cfg = self.config
        h = _dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "dense")(hidden)
        h = gelu(h)
        h = _layer_norm(cfg, "layer_norm")(h)
        # Back to the `embed` layout before the tied decoder: left to propagate, the dense
        # layer's `embed_out` split (over `tensor`) met the table's `vocab` split and XLA's
        # partitioner produced wrong gradients on a data x FSDP x tensor mesh with one row
        # per batch shard (tests/mesh_gradient_check.py).
        h = nn.with_logical_constraint(h, ("batch", "length", "embed"))
        logits = embeddings.attend(h).astype(jnp.float32)
        bias = self.param("bias", _zeros(("vocab",)), (cfg.vocab_size,), cfg.weight_dtype)
        # Added as the rank-1 product ones x bias (exactly the broadcast sum) so that the
        # bias gradient is a matrix-vector product: as a broadcast add it is a column
        # reduction of the [predictions, vocab] logit gradient, which XLA:CPU runs ~50x
        # slower (about 10% of a base-size CPU step; benchmarks/README.md).
        ones = jnp.ones(logits.shape[:-1] + (1,), jnp.float32)
        return logits + jnp.dot(ones, bias.astype(jnp.float32)[None, :])


def padding_attention_mask(input_ids: Array, pad_id: int) -> Array:
    """[batch, query, key] mask letting every query see every non-padding key."""
    keys = input_ids != pad_id
    return jnp.broadcast_to(keys[:, None, :], input_ids.shape + input_ids.shape[-1:])


def default_position_ids(input_ids: Array, offset: int) -> Array:
    """ERNIE-M numbering: 0-based index plus the fairseq offset of 2, regardless of padding."""
    length = input_ids.shape[-1]
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32) + offset, input_ids.shape)


class ErnieM(nn.Module):
    """ERNIE-M encoder with pooler and (optionally evaluated) MLM head.

    Args of `__call__`:
      input_ids: int [batch, length].
      attention_mask: bool [batch, query, key] (any pattern), or [batch, length] key padding
        (1 = real token) as in Hugging Face, or None for "every non-pad token".
      position_ids: int [batch, length]; defaults to `arange(length) + position_offset`.
      language_ids: int [batch, length]; required iff the config has language embeddings,
        ignored otherwise.
      mlm_positions: int [batch, predictions]; when given, MLM logits are computed only there
        (a large saving with a 250k vocabulary).
      deterministic: disables dropout.
      output_hidden_states: also return every layer's output (embeddings first).
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Optional[Array] = None,
        position_ids: Optional[Array] = None,
        language_ids: Optional[Array] = None,
        mlm_positions: Optional[Array] = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
    ) -> Dict[str, Any]:
        cfg = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        batch, length = input_ids.shape
        if length > cfg.max_length:
            raise ValueError(
                f"sequence length {length} exceeds the model's {cfg.max_length} positions "
                f"(max_position_embeddings={cfg.max_position_embeddings} minus offset "
                f"{cfg.position_offset})")
        if attention_mask is None:
            attention_mask = padding_attention_mask(input_ids, cfg.pad_id)
        elif attention_mask.ndim == 2:
            attention_mask = jnp.broadcast_to(
                attention_mask.astype(bool)[:, None, :], (batch, length, length))
        if attention_mask.shape != (batch, length, length):
            raise ValueError(
                f"attention_mask must be [batch, query, key] = {(batch, length, length)} or "
                f"[batch, key], got {attention_mask.shape}")
        attention_mask = attention_mask.astype(bool)
        if position_ids is None:
            position_ids = default_position_ids(input_ids, cfg.position_offset)
        if cfg.num_languages and language_ids is None:
            raise ValueError("this model has language embeddings: pass language_ids")

        input_ids = nn.with_logical_constraint(input_ids, ("batch", "length"))
        embeddings = Embeddings(cfg, name="embeddings")
        x = embeddings(input_ids, position_ids, language_ids, deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        first = x
        x, per_layer = Encoder(cfg, deterministic, output_hidden_states, name="encoder")(
            x, attention_mask)

        pooled = nn.tanh(_dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "pooler")(x[:, 0]))
        outputs = {"hidden_states": x, "pooled_output": pooled}
        if output_hidden_states:
            outputs["all_hidden_states"] = jnp.concatenate([first[None], per_layer], axis=0)
        mlm_head = MLMHead(cfg, name="mlm_head")
        if mlm_positions is not None:
            gathered = jnp.take_along_axis(x, mlm_positions[..., None], axis=1)
            outputs["mlm_logits"] = mlm_head(gathered, embeddings)
        elif self.is_initializing():
            mlm_head(x[:, :1], embeddings)  # create the head's parameters
        return outputs


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _gathered(weight: Array, dtype, weight_dtype, names, gathered_names) -> Array:
    return nn.with_logical_constraint(weight.astype(dtype), gathered_names)


def _gathered_forward(weight: Array, dtype, weight_dtype, names, gathered_names):
    return _gathered(weight, dtype, weight_dtype, names, gathered_names), None


def _gathered_backward(dtype, weight_dtype, names, gathered_names, _, cotangent: Array):
    # Summed over the batch shards straight into the weight's own sharding: one
    # reduce-scatter in the compute dtype, where the transpose of the gather would sum it
    # into a replicated weight first (an all-reduce of twice the bytes) and slice it after.
    sharded = nn.with_logical_constraint(cotangent, names)
    return (sharded.astype(weight_dtype),)


_gathered.defvjp(_gathered_forward, _gathered_backward)

# Leaves the model reads in its compute dtype (Projection, nn.Embed); LayerNorm and the MLM
# head's vocabulary bias read theirs in float32.
_CAST_IN_THE_MODEL = ("kernel", "embedding")
GATHER_CHOICES = ("word_embeddings", "all")


def param_logical_names(config: ModelConfig):
    """The logical axis names of every parameter (a tree like the params, of tuples)."""
    boxed = jax.eval_shape(lambda: init_params(config, jax.random.key(0))["params"])
    specs = nn.get_partition_spec(boxed)
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def with_gathered_weights(params, config: ModelConfig, which: str = "word_embeddings",
                          names=None, gathered_axes=("embed",)):
    """`params` with weights cast to the compute dtype and gathered whole along their
    `gathered_axes` (the logical axes FSDP splits; the others keep their rules), once, for
    every use in a step; their gradients are reduce-scattered once, in the compute dtype.

    `which="word_embeddings"`: only the tied table. Every objective looks ids up in it and
    scores its predictions against it, and BTMLM's generation does both again; under FSDP
    each use gathered the largest weight anew. `which="all"`: every weight (ZeRO-2 rather
    than ZeRO-3): one gather and one reduce-scatter of the model a step instead of one per
    layer per encoder pass (five passes in stage 2, plus recomputation), for a copy of the
    model in the compute dtype on every chip. Vectors (biases, LayerNorm) are gathered but
    keep their dtype. Numerically nothing changes: the model computes its matmuls and
    lookups in `config.compute_dtype` anyway.

    `names`: `param_logical_names(config)`, needed for `which="all"` (computed if omitted).
    """
    if which not in GATHER_CHOICES:
        raise ValueError(f"weights gathered once: {which!r}; choose from {GATHER_CHOICES}")
    dropped = set(gathered_axes)

    def gather(weight, weight_names, cast=True):
        gathered_names = tuple(None if n in dropped else n for n in weight_names)
        dtype = config.compute_dtype if cast else weight.dtype
        return _gathered(weight, dtype, weight.dtype, tuple(weight_names), gathered_names)

    if which == "word_embeddings":
        embeddings = params["embeddings"]
        table = gather(embeddings["word_embeddings"]["embedding"], ("vocab", "embed"))
        return {**params, "embeddings": {**embeddings, "word_embeddings": {"embedding": table}}}
    names = param_logical_names(config) if names is None else names
    return jax.tree_util.tree_map_with_path(
        lambda path, w, n: gather(w, n, cast=path[-1].key in _CAST_IN_THE_MODEL), params, names)


def init_params(config: ModelConfig, rng: Array, length: int = 8):
    """Boxed (logically annotated) variables of a freshly initialised model."""
    model = ErnieM(config)
    ids = jnp.full((1, length), config.pad_id + 1, jnp.int32)
    lang = jnp.zeros((1, length), jnp.int32)
    return model.init(rng, ids, language_ids=lang)
