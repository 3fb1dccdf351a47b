"""The four ERNIE-M objectives as pure loss functions `(params, batch, rng) -> (loss, metrics)`.

Bind the static parts once with `make_objectives(...)` (or `functools.partial`); nothing here
knows about meshes, files or gin.

Batches are dicts of int32 `[batch, length]` arrays:
  input_ids     token ids, padded with the pad id
  segment_ids   0 padding, 1 first sentence, 2 second sentence (pairs only)
  language_ids  language of each token (ignored by models without language embeddings)
  position_ids  optional; defaults to `arange(length) + 2`
  example_ids   optional; packed rows number their examples 1, 2, ... (0 on padding), and
                every objective then masks, attends and generates per example
Monolingual batches (MMLM, BTMLM) are `[CLS] x [SEP]`; pair batches (TLM, CAMLM) are
`[CLS] x [SEP] [SEP] y [SEP]` with segment 1 on the first three parts and 2 on the rest
(packed: one after another, positions restarting at each example's [CLS]).
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from ernie_m_jax import attention_masks
from ernie_m_jax.configs import BTMLMConfig, MaskingConfig, SpecialTokens
from ernie_m_jax.masking import (
    MaskedTokens,
    mask_tokens,
    maskable_tokens,
    per_example_sums,
    selection_counts,
)
from ernie_m_jax.model import ErnieM, default_position_ids

Array = jax.Array
Batch = Mapping[str, Array]
Metrics = Dict[str, Array]
LossFn = Callable[[object, Batch, Array], Tuple[Array, Metrics]]

OBJECTIVES = ("mmlm", "tlm", "camlm", "btmlm")
PAIR_OBJECTIVES = ("tlm", "camlm")


def _positions(batch: Batch, offset: int) -> Array:
    if "position_ids" in batch:
        return batch["position_ids"]
    if "example_ids" in batch:  # counting across the row would number every example wrong
        raise ValueError("a packed batch (example_ids) needs position_ids that restart at "
                         "each example (features.pack_rows writes them)")
    return default_position_ids(batch["input_ids"], offset)


def masked_lm_metrics(logits: Array, targets: Array, weights: Array,
                      normalizer: Optional[Array] = None) -> Tuple[Array, Metrics]:
    """Mean cross entropy and accuracy over the weighted prediction slots.

    `normalizer` divides the sums instead of this batch's own prediction count: given the
    count of the whole batch, the losses and accuracies of its microbatches add up to the
    whole batch's (gradient accumulation); `num_predictions` stays this batch's count.
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    count = weights.sum()
    denominator = jnp.maximum(count if normalizer is None else normalizer, 1.0)
    loss = (losses * weights).sum() / denominator
    # Right when the target's logit is the largest (a tie counts as right): a max-reduction,
    # which XLA shares with the softmax's, instead of a separate argmax over the vocabulary.
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    correct = (target_logits >= logits.max(-1)).astype(jnp.float32)
    accuracy = (correct * weights).sum() / denominator
    return loss, {"loss": loss, "accuracy": accuracy, "num_predictions": count}


def _predict(model: ErnieM, params, inputs: Batch, masked: MaskedTokens, attention_mask: Array,
             rng: Array, deterministic: bool, normalizer: Optional[Array]
             ) -> Tuple[Array, Metrics]:
    outputs = model.apply(
        {"params": params},
        masked.input_ids,
        attention_mask=attention_mask,
        position_ids=_positions(inputs, model.config.position_offset),
        language_ids=inputs["language_ids"],
        mlm_positions=masked.mlm_positions,
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
    )
    return masked_lm_metrics(outputs["mlm_logits"], masked.mlm_targets, masked.mlm_weights,
                             normalizer)


def mlm_inputs(batch: Batch, rng: Array, *, tokens: SpecialTokens, masking: MaskingConfig,
               vocab_size: int) -> Tuple[Batch, MaskedTokens, Array]:
    """MMLM's and TLM's (inputs, masking, attention masks): every real token of the example
    (both sentences of a pair) is visible."""
    examples = batch.get("example_ids")
    maskable = maskable_tokens(batch["input_ids"], batch["segment_ids"], tokens)
    masked = mask_tokens(rng, batch["input_ids"], maskable, masking, tokens, vocab_size,
                         example_ids=examples)
    return batch, masked, attention_masks.padding_mask(batch["segment_ids"], examples)


def _full_attention_mlm(params, batch: Batch, rng: Array, *, model: ErnieM,
                        tokens: SpecialTokens, masking: MaskingConfig,
                        deterministic: bool, normalizer: Optional[Array]
                        ) -> Tuple[Array, Metrics]:
    mask_rng, dropout_rng = jax.random.split(rng)
    inputs, masked, attention = mlm_inputs(batch, mask_rng, tokens=tokens, masking=masking,
                                           vocab_size=model.config.vocab_size)
    return _predict(model, params, inputs, masked, attention, dropout_rng, deterministic,
                    normalizer)


def mmlm_loss(params, batch: Batch, rng: Array, *, model: ErnieM, tokens: SpecialTokens,
              masking: MaskingConfig, deterministic: bool = False,
              normalizer: Optional[Array] = None):
    """Multilingual MLM on monolingual `[CLS] x [SEP]` examples."""
    return _full_attention_mlm(params, batch, rng, model=model, tokens=tokens, masking=masking,
                               deterministic=deterministic, normalizer=normalizer)


def tlm_loss(params, batch: Batch, rng: Array, *, model: ErnieM, tokens: SpecialTokens,
             masking: MaskingConfig, deterministic: bool = False,
             normalizer: Optional[Array] = None):
    """Translation LM: MLM over a concatenated pair; every token sees both sentences."""
    return _full_attention_mlm(params, batch, rng, model=model, tokens=tokens, masking=masking,
                               deterministic=deterministic, normalizer=normalizer)


def _directed_example(rng: Array, batch: Batch, restore: int, context: int,
                      tokens: SpecialTokens, masking: MaskingConfig, vocab_size: int,
                      num_slots: Optional[int] = None) -> Tuple[MaskedTokens, Array]:
    """Mask segment `restore` only, with the CAMLM attention rule towards segment `context`."""
    segments, examples = batch["segment_ids"], batch.get("example_ids")
    maskable = maskable_tokens(batch["input_ids"], segments, tokens) & (segments == restore)
    masked = mask_tokens(rng, batch["input_ids"], maskable, masking, tokens, vocab_size,
                         num_slots, example_ids=examples)
    attention = attention_masks.cross_attention_mask(segments, masked.masked, restore, context,
                                                     examples)
    return masked, attention


def camlm_inputs(batch: Batch, rng: Array, *, tokens: SpecialTokens, masking: MaskingConfig,
                 vocab_size: int) -> Tuple[Batch, MaskedTokens, Array]:
    """Two directed examples per pair, interleaved on the batch axis: row 2i restores pair
    i's source, row 2i+1 its target. Returns (inputs, masking, attention masks), all
    [2 * batch, ...].

    Interleaving (stack on a new axis 1, merge it into the batch axis) keeps every pair's
    two rows on the device that holds the pair: concatenating the halves instead moved
    rows between devices (collective-permutes and all-to-alls in the compiled FSDP step).
    """
    source_rng, target_rng = jax.random.split(rng)
    src = _directed_example(source_rng, batch, attention_masks.SOURCE, attention_masks.TARGET,
                            tokens, masking, vocab_size)
    tgt = _directed_example(target_rng, batch, attention_masks.TARGET, attention_masks.SOURCE,
                            tokens, masking, vocab_size)
    both = lambda a, b: jnp.stack([a, b], axis=1).reshape((-1,) + a.shape[1:])
    inputs = {k: both(v, v) for k, v in batch.items()}
    masked = MaskedTokens(*[both(a, b) for a, b in zip(src[0], tgt[0])])
    return inputs, masked, both(src[1], tgt[1])


def camlm_loss(params, batch: Batch, rng: Array, *, model: ErnieM, tokens: SpecialTokens,
               masking: MaskingConfig, deterministic: bool = False,
               normalizer: Optional[Array] = None):
    """Cross-attention MLM on pairs, leak-free by construction.

    Each pair is used twice: once masking the source and restoring it from the target and the
    masked source positions, once the other way round (`attention_masks.cross_attention_mask`).
    Within a direction the context sentence never attends back to the restored sentence, so no
    unmasked token of the restored sentence is reachable through any number of layers. (The
    paper's single pass masks both sides at once and lets each side read the other, which
    leaks unmasked tokens back through the second layer; it is deliberately not offered.)
    """
    mask_rng, dropout_rng = jax.random.split(rng)
    inputs, masked, attention = camlm_inputs(batch, mask_rng, tokens=tokens, masking=masking,
                                             vocab_size=model.config.vocab_size)
    return _predict(model, params, inputs, masked, attention, dropout_rng, deterministic,
                    normalizer)


def _draw_target_languages(rng: Array, source_languages: Array, choices: Tuple[int, ...]) -> Array:
    """One language per example (any shape) from `choices`, never the example's own when
    avoidable."""
    options = jnp.asarray(choices, jnp.int32)
    allowed = options != source_languages[..., None]
    allowed = jnp.where(allowed.any(-1, keepdims=True), allowed, True)
    scores = jnp.where(allowed, jax.random.uniform(rng, allowed.shape), -1.0)
    return options[scores.argmax(-1)]


# Up to this k, the k-th largest logit is found by peeling off k - 1 maxima (k reductions);
# XLA:CPU lowers `lax.top_k` to a full sort, ~7x slower for k = 10 over 8,000 pieces.
PEEL_TOP_K_UP_TO = 16


def kth_largest(logits: Array, k: int) -> Array:
    """The k-th largest value along the last axis (ties counted, as `lax.top_k`), keepdims."""
    if k > PEEL_TOP_K_UP_TO:
        return jax.lax.top_k(logits, k)[0][..., -1:]
    vocab = jnp.arange(logits.shape[-1])
    for _ in range(k - 1):  # one occurrence at a time, so tied values count separately
        logits = jnp.where(vocab == logits.argmax(-1, keepdims=True), -jnp.inf, logits)
    return logits.max(-1, keepdims=True)


def _sample(rng: Array, logits: Array, temperature: float, top_k: int) -> Array:
    if temperature == 0:
        return logits.argmax(-1).astype(jnp.int32)
    if top_k:
        kth = kth_largest(logits, top_k)
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits / temperature).astype(jnp.int32)


def placeholder_ratios(btmlm: BTMLMConfig, source_languages: Array,
                       target_languages: Array) -> Array:
    """Placeholders per source token of each row: `placeholder_ratio`, scaled by the target
    language's `length_factors` over the source's."""
    if not btmlm.length_factors:
        return jnp.full(source_languages.shape, btmlm.placeholder_ratio, jnp.float32)
    factors = jnp.asarray((*btmlm.length_factors, 1.0), jnp.float32)  # past the end: 1
    last = len(btmlm.length_factors)
    return btmlm.placeholder_ratio * factors[jnp.minimum(target_languages, last)] / \
        factors[jnp.minimum(source_languages, last)]


def pseudo_sentence_columns(btmlm: BTMLMConfig, slots: int) -> int:
    """Columns BTMLM appends to the source for `slots` placeholders (plus the two framing
    [SEP]s with `pair_separators`)."""
    return slots + (2 if btmlm.pair_separators else 0)


def _pseudo_block(count: Array, frame: int, block: int) -> Dict[str, Array]:
    """Lay each example's pseudo sentence (`frame` [SEP]s, `count[:, e]` placeholders,
    `frame` [SEP]s) one after another into `block` columns: [batch, block] arrays naming
    each column's example (`owner`), its offset in that example's pseudo sentence, and
    whether it is a placeholder or separator. An example that would overflow the block gets
    fewer placeholders, or none and no separators."""
    need = jnp.where(count > 0, count + 2 * frame, 0)
    start = jnp.cumsum(need, axis=1) - need
    count = jnp.clip(jnp.minimum(count, block - start - 2 * frame), 0)
    need = jnp.where(count > 0, count + 2 * frame, 0)
    end = start + need
    column = jnp.arange(block)
    owner = jax.vmap(lambda ends: jnp.searchsorted(ends, column, side="right", method="sort"))(end)
    owner = jnp.minimum(owner, count.shape[1] - 1)
    offset = column[None, :] - jnp.take_along_axis(start, owner, axis=1)
    owned = jnp.take_along_axis(count, owner, axis=1)
    inside = (offset >= 0) & (offset < jnp.take_along_axis(need, owner, axis=1))
    placeholder = inside & (offset >= frame) & (offset < frame + owned)
    separator = inside & ((offset == 0) | (offset == frame + owned)) if frame else \
        jnp.zeros_like(placeholder)
    return {"owner": owner, "offset": offset, "placeholder": placeholder,
            "separator": separator}


def btmlm_generate(params, batch: Batch, rng: Array, *, model: ErnieM, tokens: SpecialTokens,
                   btmlm: BTMLMConfig) -> Dict[str, Array]:
    """BTMLM stage 1: fill k appended placeholders in one non-autoregressive forward pass.

    Placeholders are [MASK] tokens tagged with a drawn target language and the positions that
    follow the source (after an opening [SEP] with `pair_separators`, closed by another, as
    the second sentence of a CAMLM pair). They see the source and each other, never the
    separators, and the source sees only itself: CAMLM's rule for restoring a target whose
    every token is masked. Special ids are never emitted and no gradient flows.
    Returns the pseudo-parallel pair `source + generated` (segments 1 and 2).

    A packed row (`example_ids`) gets one pseudo sentence per example, side by side in the
    appended block, each with its example's id, positions following its example's source,
    and its own target language: every example is generated and restored as if alone.
    """
    cfg = model.config
    ids, segments = batch["input_ids"], batch["segment_ids"]
    packed = "example_ids" in batch
    examples = batch["example_ids"] if packed else (segments > 0).astype(jnp.int32)
    batch_size, source_length = ids.shape
    slots = btmlm.max_placeholders or source_length
    block = pseudo_sentence_columns(btmlm, slots)
    frame = (block - slots) // 2  # separators on each side of the placeholders
    if source_length + block > cfg.max_length:
        raise ValueError(
            f"BTMLM needs {source_length} source + {block} placeholder"
            f"{' and separator' if frame else ''} positions, more than the model's "
            f"{cfg.max_length}; lower BTMLMConfig.max_placeholders or the source length")
    language_rng, sample_rng = jax.random.split(rng)
    # Per example (column e of [batch, examples]; column 0 is padding): its language, its
    # words and its last position. Unpacked rows are one example each.
    width = source_length + 1 if packed else 2
    per_example = lambda values, reduce="add": per_example_sums(
        values, examples, reduce)[:, :width]
    real = segments > 0
    exists = per_example(real.astype(jnp.int32)) > 0
    source_languages = per_example(jnp.where(real, batch["language_ids"], 0), "max")
    if btmlm.target_languages:
        target = _draw_target_languages(language_rng, source_languages, btmlm.target_languages)
    else:
        target = source_languages
    words = per_example(maskable_tokens(ids, segments, tokens).astype(jnp.int32))
    count = jnp.clip(jnp.round(placeholder_ratios(btmlm, source_languages, target) * words),
                     1, slots).astype(jnp.int32)
    count = jnp.where(exists & (jnp.arange(width) > 0), count, 0)
    layout = _pseudo_block(count, frame, block)
    owner, placeholder, separator = layout["owner"], layout["placeholder"], layout["separator"]
    in_pseudo = placeholder | separator

    source_positions = _positions(batch, cfg.position_offset)
    last_position = per_example(jnp.where(real, source_positions, 0), "max")
    # Unused slots are padding; keep their positions inside the table.
    block_positions = jnp.minimum(
        jnp.take_along_axis(last_position, owner, axis=1) + 1 + layout["offset"],
        cfg.max_position_embeddings - 1)
    block_languages = jnp.take_along_axis(target, owner, axis=1)

    block_ids = jnp.where(placeholder, tokens.mask_id,
                          jnp.where(separator, tokens.sep_id, tokens.pad_id))
    pair = {
        "input_ids": jnp.concatenate([ids, block_ids.astype(ids.dtype)], axis=1),
        "segment_ids": jnp.concatenate(
            [segments, jnp.where(in_pseudo, attention_masks.TARGET, 0).astype(segments.dtype)],
            axis=1),
        "language_ids": jnp.concatenate(
            [batch["language_ids"], block_languages.astype(batch["language_ids"].dtype)], axis=1),
        "position_ids": jnp.concatenate(
            [source_positions, block_positions.astype(source_positions.dtype)], axis=1),
    }
    if packed:
        pair["example_ids"] = jnp.concatenate(
            [examples, jnp.where(in_pseudo, owner, 0).astype(examples.dtype)], axis=1)
    is_placeholder = jnp.concatenate([jnp.zeros_like(segments, bool), placeholder], axis=1)
    # The placeholders' columns in order (at most `slots` of them), then the other columns.
    placeholder_columns = jnp.argsort(~placeholder, axis=1, stable=True)[:, :slots]
    outputs = model.apply(
        {"params": jax.lax.stop_gradient(params)},
        pair["input_ids"],
        attention_mask=attention_masks.generation_mask(pair["segment_ids"], is_placeholder,
                                                       pair.get("example_ids")),
        position_ids=pair["position_ids"],
        language_ids=pair["language_ids"],
        mlm_positions=(source_length + placeholder_columns).astype(jnp.int32),
        deterministic=True,
    )
    logits = outputs["mlm_logits"]
    special = jnp.asarray([s for s in tokens.all_ids if s < cfg.vocab_size], jnp.int32)
    logits = logits.at[..., special].set(-jnp.inf)
    generated = _sample(sample_rng, logits, btmlm.temperature, btmlm.top_k)
    rows = jnp.arange(batch_size)[:, None]
    generated = jnp.zeros_like(block_ids).at[rows, placeholder_columns].set(generated)
    pair["input_ids"] = jnp.concatenate(
        [ids, jnp.where(placeholder, generated, block_ids).astype(ids.dtype)], axis=1)
    return jax.lax.stop_gradient(pair)


def btmlm_inputs(params, batch: Batch, rng: Array, *, model: ErnieM, tokens: SpecialTokens,
                 masking: MaskingConfig, btmlm: BTMLMConfig) -> Tuple[Batch, MaskedTokens, Array]:
    """BTMLM's stage 1 and stage 2 inputs: the generated pair, its masked source and the
    CAMLM attention masks restoring the source from the pseudo sentence."""
    generate_rng, mask_rng = jax.random.split(rng)
    pair = btmlm_generate(params, batch, generate_rng, model=model, tokens=tokens, btmlm=btmlm)
    source_slots = masking.num_slots(batch["input_ids"].shape[1])
    masked, attention = _directed_example(
        mask_rng, pair, attention_masks.SOURCE, attention_masks.TARGET, tokens, masking,
        model.config.vocab_size, num_slots=source_slots)
    return pair, masked, attention


def btmlm_loss(params, batch: Batch, rng: Array, *, model: ErnieM, tokens: SpecialTokens,
               masking: MaskingConfig, btmlm: BTMLMConfig, deterministic: bool = False,
               normalizer: Optional[Array] = None):
    """Back-translation MLM on monolingual examples: generate (stage 1), then restore the
    masked source from the pseudo sentence under the CAMLM rule (stage 2)."""
    inputs_rng, dropout_rng = jax.random.split(rng)
    pair, masked, attention = btmlm_inputs(params, batch, inputs_rng, model=model,
                                           tokens=tokens, masking=masking, btmlm=btmlm)
    return _predict(model, params, pair, masked, attention, dropout_rng, deterministic,
                    normalizer)


def make_objectives(model: ErnieM, tokens: SpecialTokens, masking: MaskingConfig,
                    btmlm: Optional[BTMLMConfig] = None,
                    deterministic: bool = False) -> Dict[str, LossFn]:
    """The objectives with their static parts bound: name -> (params, batch, rng) -> loss."""
    tokens.check_vocab(model.config.vocab_size)
    common = dict(model=model, tokens=tokens, masking=masking, deterministic=deterministic)
    objectives = {
        "mmlm": functools.partial(mmlm_loss, **common),
        "tlm": functools.partial(tlm_loss, **common),
        "camlm": functools.partial(camlm_loss, **common),
    }
    if btmlm is not None:
        if model.config.num_languages and any(
                lang >= model.config.num_languages for lang in btmlm.target_languages):
            raise ValueError(
                f"BTMLMConfig.target_languages={btmlm.target_languages} has ids outside the "
                f"model's {model.config.num_languages} language embeddings")
        objectives["btmlm"] = functools.partial(btmlm_loss, btmlm=btmlm, **common)
    return objectives


def _selected(batch: Batch, tokens: SpecialTokens, masking: MaskingConfig,
              segment: Optional[int] = None) -> Array:
    """How many tokens of `batch` (of one segment) `mask_tokens` selects, summed."""
    segments = batch["segment_ids"]
    maskable = maskable_tokens(batch["input_ids"], segments, tokens)
    if segment is not None:
        maskable = maskable & (segments == segment)
    slots = masking.num_slots(batch["input_ids"].shape[1])
    return selection_counts(maskable, masking, slots, batch.get("example_ids")
                            ).sum().astype(jnp.float32)


def make_prediction_counters(tokens: SpecialTokens, masking: MaskingConfig
                             ) -> Dict[str, Callable[[Batch], Array]]:
    """name -> batch -> the number of predictions the objective makes on it, before masking.

    Gradient accumulation divides each microbatch's summed loss by its whole batch's count,
    so that the accumulated loss and gradient are the whole batch's. (BTMLM masks the source
    with the slots of its length, as MMLM does; CAMLM restores each side in turn.)
    """
    whole = functools.partial(_selected, tokens=tokens, masking=masking)
    both_sides = lambda b: (whole(b, segment=attention_masks.SOURCE)
                            + whole(b, segment=attention_masks.TARGET))
    return {"mmlm": whole, "tlm": whole, "camlm": both_sides, "btmlm": whole}


def weighted_loss(params, batches: Mapping[str, Batch], rng: Array,
                  objectives: Mapping[str, LossFn], weights: Mapping[str, float],
                  normalizers: Optional[Mapping[str, Array]] = None) -> Tuple[Array, Metrics]:
    """sum_k w_k * objective_k(params, batch_k, rng_k), with metrics prefixed by objective.

    `normalizers` (name -> prediction count of the whole batch) make each objective divide
    its summed loss by that count instead of this batch's (see `masked_lm_metrics`).
    """
    unknown = set(weights) - set(objectives)
    if unknown:
        raise ValueError(f"weights name unknown objectives {sorted(unknown)}; "
                         f"available: {sorted(objectives)}")
    missing = [name for name, w in weights.items() if w and name not in batches]
    if missing:
        raise ValueError(f"no batch for weighted objectives {missing}")
    total = jnp.zeros((), jnp.float32)
    metrics: Metrics = {}
    for index, name in enumerate(sorted(weights)):
        if not weights[name]:
            continue
        extra = {} if normalizers is None else {"normalizer": normalizers[name]}
        loss, objective_metrics = objectives[name](params, batches[name],
                                                   jax.random.fold_in(rng, index), **extra)
        total = total + weights[name] * loss
        metrics.update({f"{name}/{k}": v for k, v in objective_metrics.items()})
    metrics["loss"] = total
    return total, metrics
