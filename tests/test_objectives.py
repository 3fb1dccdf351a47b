import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ernie_m_jax import attention_masks
from ernie_m_jax.configs import BTMLMConfig, MaskingConfig, model_config
from ernie_m_jax.model import ErnieM, init_params
from ernie_m_jax.objectives import (
    btmlm_generate,
    camlm_inputs,
    make_objectives,
    masked_lm_metrics,
    weighted_loss,
)
from tests.synthetic import TOKENS, monolingual_batch, pair_batch

VOCAB = 128
GREEDY = BTMLMConfig(target_languages=(0, 1, 2), max_placeholders=8, temperature=0.0)


def _three_layer_model():
    cfg = model_config("tiny", num_layers=3, num_languages=4, dropout_rate=0.0,
                       attention_dropout_rate=0.0)
    return ErnieM(cfg), nn.unbox(init_params(cfg, jax.random.key(1)))["params"]


def _perturb(ids, where, seed):
    """Replace `where` tokens with different non-special ids."""
    rs = np.random.RandomState(seed)
    ids = np.asarray(ids)
    shift = rs.randint(1, VOCAB - 5, ids.shape)
    new = 5 + (ids - 5 + shift) % (VOCAB - 5)
    return jnp.asarray(np.where(np.asarray(where), new, ids), jnp.int32)


@pytest.mark.slow
def test_camlm_restores_each_side_without_seeing_its_unmasked_tokens():
    model, params = _three_layer_model()
    batch = pair_batch(0, batch=8, length=24, vocab_size=VOCAB)
    inputs, masked, attention = camlm_inputs(batch, jax.random.key(2), tokens=TOKENS,
                                             masking=MaskingConfig(), vocab_size=VOCAB)

    def logits(ids, mask):
        return model.apply({"params": params}, ids, attention_mask=mask,
                           language_ids=inputs["language_ids"],
                           mlm_positions=masked.mlm_positions)["mlm_logits"]

    pairs = batch["input_ids"].shape[0]
    restored_segment = np.tile([attention_masks.SOURCE, attention_masks.TARGET], pairs)
    own_side = np.asarray(inputs["segment_ids"]) == restored_segment[:, None]
    unmasked_own = own_side & ~np.asarray(masked.masked)  # includes [CLS]/[SEP]
    perturbed = _perturb(masked.input_ids, unmasked_own, seed=3)
    assert (np.asarray(perturbed) != np.asarray(masked.input_ids)).sum() > 50

    slots = np.asarray(masked.mlm_weights) > 0
    assert slots[0::2].sum() > 0 and slots[1::2].sum() > 0
    np.testing.assert_array_equal(inputs["input_ids"][0::2], batch["input_ids"])
    np.testing.assert_array_equal(inputs["input_ids"][1::2], batch["input_ids"])
    camlm_change = np.abs(logits(perturbed, attention) - logits(masked.input_ids, attention))
    assert camlm_change[slots].max() <= 1e-6

    # The same perturbation is visible under TLM's full attention: the test can fail.
    tlm = attention_masks.padding_mask(inputs["segment_ids"])
    tlm_change = np.abs(logits(perturbed, tlm) - logits(masked.input_ids, tlm))
    assert tlm_change[slots].max() > 1e-3


def _generate(model, params, batch, rng, config=GREEDY):
    return btmlm_generate(params, batch, rng, model=model, tokens=TOKENS, btmlm=config)


@pytest.mark.slow
def test_btmlm_generation_depends_only_on_source_and_placeholders():
    model, params = _three_layer_model()
    batch = monolingual_batch(4, batch=8, length=16, vocab_size=VOCAB)
    generate = jax.jit(functools.partial(_generate, model, params))
    reference = generate(batch, jax.random.key(5))
    generated = np.asarray(reference["input_ids"])[:, 16:]

    # Junk in the padding of the source and extra padding columns change nothing.
    junk = dict(batch, input_ids=_perturb(batch["input_ids"], batch["segment_ids"] == 0, 6))
    np.testing.assert_array_equal(
        np.asarray(generate(junk, jax.random.key(5))["input_ids"])[:, 16:], generated)
    wider = {k: jnp.pad(v, ((0, 0), (0, 5)), constant_values=TOKENS.pad_id if k == "input_ids"
                        else 0) for k, v in batch.items()}
    np.testing.assert_array_equal(
        np.asarray(generate(wider, jax.random.key(5))["input_ids"])[:, 21:], generated)
    # ... while the source itself does matter.
    other_source = dict(batch, input_ids=_perturb(
        batch["input_ids"], np.asarray(batch["segment_ids"]) > 0, 7))
    assert not np.array_equal(
        np.asarray(generate(other_source, jax.random.key(5))["input_ids"])[:, 16:], generated)


@pytest.mark.slow
def test_btmlm_pair_layout_positions_and_languages():
    model, params = _three_layer_model()
    batch = monolingual_batch(8, batch=64, length=16, vocab_size=VOCAB, language=1)
    pair = _generate(model, params, batch, jax.random.key(9))
    ids, seg, pos, lang = (np.asarray(pair[k]) for k in
                           ("input_ids", "segment_ids", "position_ids", "language_ids"))
    np.testing.assert_array_equal(ids[:, :16], np.asarray(batch["input_ids"]))
    words = np.isin(np.asarray(batch["input_ids"]), TOKENS.all_ids, invert=True).sum(-1)
    placeholders = seg[:, 16:] == attention_masks.TARGET
    np.testing.assert_array_equal(placeholders.sum(-1), np.clip(words, 1, 8))
    source_length = (np.asarray(batch["segment_ids"]) > 0).sum(-1)
    for row in range(64):
        k = placeholders[row].sum()
        np.testing.assert_array_equal(pos[row, 16:16 + k], source_length[row] + 2 + np.arange(k))
    target_languages = lang[:, 16][placeholders[:, 0]]
    assert set(target_languages.tolist()) == {0, 2}  # never the source's own language 1
    assert (ids[:, 16:][~placeholders] == TOKENS.pad_id).all()


@pytest.mark.slow
def test_btmlm_length_factors_scale_placeholders_by_target_over_source_language():
    model, params = _three_layer_model()
    batch = monolingual_batch(8, batch=64, length=16, vocab_size=VOCAB, language=1)
    words = np.isin(np.asarray(batch["input_ids"]), TOKENS.all_ids, invert=True).sum(-1)
    # Language 1 writes 2 pieces per pivot piece, 0 writes 0.5, 2 has no factor (1); binary
    # fractions, so that float32 rounds exactly as numpy does.
    config = dataclasses.replace(GREEDY, max_placeholders=16, placeholder_ratio=1.5,
                                 length_factors=(0.5, 2.0))
    pair = {k: np.asarray(v) for k, v in
            _generate(model, params, batch, jax.random.key(9), config).items()}
    counts = (pair["segment_ids"][:, 16:] == attention_masks.TARGET).sum(-1)
    target = pair["language_ids"][:, 16]
    ratio = np.where(target == 0, 1.5 * 0.5 / 2.0, 1.5 * 1.0 / 2.0)
    np.testing.assert_array_equal(counts, np.clip(np.round(ratio * words), 1, 16))
    assert {0, 2} <= set(target.tolist())  # both branches were drawn
    # Positive control: without factors every row gets the plain ratio.
    plain = _generate(model, params, batch, jax.random.key(9),
                      dataclasses.replace(config, length_factors=()))
    plain_counts = (np.asarray(plain["segment_ids"])[:, 16:] == attention_masks.TARGET).sum(-1)
    np.testing.assert_array_equal(plain_counts, np.clip(np.round(1.5 * words), 1, 16))
    assert not np.array_equal(counts, plain_counts)


@pytest.mark.slow
def test_btmlm_pair_separators_frame_the_pseudo_sentence_like_a_camlm_target():
    model, params = _three_layer_model()
    batch = monolingual_batch(8, batch=64, length=16, vocab_size=VOCAB, language=1)
    framed_config = dataclasses.replace(GREEDY, pair_separators=True)
    framed = {k: np.asarray(v) for k, v in
              _generate(model, params, batch, jax.random.key(9), framed_config).items()}
    plain = np.asarray(_generate(model, params, batch, jax.random.key(9))["input_ids"])
    words = np.isin(np.asarray(batch["input_ids"]), TOKENS.all_ids, invert=True).sum(-1)
    source_length = (np.asarray(batch["segment_ids"]) > 0).sum(-1)
    assert framed["input_ids"].shape[1] == 16 + 8 + 2
    moved = 0
    for row in range(64):
        k = min(max(words[row], 1), 8)
        block = framed["input_ids"][row, 16:]
        # `[SEP] y [SEP]` then padding, as `features.pair_row` lays out a parallel target.
        assert block[0] == block[k + 1] == TOKENS.sep_id
        assert not np.isin(block[1:k + 1], TOKENS.all_ids).any()
        assert (block[k + 2:] == TOKENS.pad_id).all()
        np.testing.assert_array_equal(framed["segment_ids"][row, 16:],  # 2, then padding
                                      np.where(np.arange(10) < k + 2, 2, 0))
        # Contiguous positions: the first pseudo token one after the opening [SEP].
        np.testing.assert_array_equal(framed["position_ids"][row, 16:16 + k + 2],
                                      source_length[row] + 2 + np.arange(k + 2))
        assert len(set(framed["language_ids"][row, 16:].tolist())) == 1
        moved += not np.array_equal(block[1:k + 1], plain[row, 16:16 + k])
    # The placeholders' positions shifted by one, so greedy generation reads differently:
    # the framing is not a relabelling of the same outputs.
    assert moved > 0


@pytest.mark.slow
def test_btmlm_generation_never_emits_special_ids():
    model, params = _three_layer_model()
    bias = params["mlm_head"]["bias"].at[jnp.asarray(TOKENS.all_ids)].set(100.0)
    params = {**params, "mlm_head": {**params["mlm_head"], "bias": bias}}
    batch = monolingual_batch(10, batch=8, vocab_size=VOCAB)
    for config in (GREEDY, BTMLMConfig(target_languages=(0, 2), temperature=1.0, top_k=5)):
        pair = _generate(model, params, batch, jax.random.key(11), config)
        placeholders = np.asarray(pair["segment_ids"]) == attention_masks.TARGET
        assert not np.isin(np.asarray(pair["input_ids"])[placeholders], TOKENS.all_ids).any()
    # Without the exclusion the biased head would emit special ids: the check above can fail.
    raw = model.apply({"params": params}, batch["input_ids"], language_ids=batch["language_ids"],
                      mlm_positions=jnp.zeros((8, 1), jnp.int32))["mlm_logits"]
    assert np.isin(np.asarray(raw.argmax(-1)), TOKENS.all_ids).all()


@pytest.mark.parametrize("k", [1, 3, 10, 40])  # 40: past PEEL_TOP_K_UP_TO, lax.top_k itself
def test_kth_largest_matches_top_k_with_ties(k):
    from ernie_m_jax.objectives import PEEL_TOP_K_UP_TO, kth_largest

    values = jnp.round(jax.random.normal(jax.random.key(k), (4, 6, 300)) * 4) / 4  # many ties
    expected = jax.lax.top_k(values, k)[0][..., -1:]
    np.testing.assert_array_equal(jax.jit(lambda v: kth_largest(v, k))(values), expected)
    # Positive control: removing every copy of the maximum at once (ignoring ties) differs.
    if 1 < k <= PEEL_TOP_K_UP_TO:
        naive = values
        for _ in range(k - 1):
            naive = jnp.where(naive >= naive.max(-1, keepdims=True), -jnp.inf, naive)
        assert not np.array_equal(naive.max(-1, keepdims=True), expected)


def test_btmlm_sampling_is_deterministic_per_rng():
    model, params = _three_layer_model()
    batch = monolingual_batch(12, batch=8, vocab_size=VOCAB)
    config = BTMLMConfig(target_languages=(0, 2), temperature=1.0)
    a = _generate(model, params, batch, jax.random.key(13), config)["input_ids"]
    b = _generate(model, params, batch, jax.random.key(13), config)["input_ids"]
    c = _generate(model, params, batch, jax.random.key(14), config)["input_ids"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_btmlm_generation_is_one_compiled_forward_pass():
    model, params = _three_layer_model()
    config = BTMLMConfig(target_languages=(0, 2), temperature=0.7, top_k=10)
    generate = jax.jit(functools.partial(_generate, model, config=config))
    for seed in range(3):
        generate(params, monolingual_batch(seed, batch=4, vocab_size=VOCAB),
                 jax.random.key(seed))
    assert generate._cache_size() == 1

    jaxpr = jax.make_jaxpr(functools.partial(_generate, model, config=config))(
        params, monolingual_batch(0, batch=4, vocab_size=VOCAB), jax.random.key(0)).jaxpr
    primitives = [eqn.primitive.name for eqn in _equations(jaxpr)]
    assert "while" not in primitives  # no per-token loop
    scans = [eqn for eqn in _equations(jaxpr) if eqn.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == 3  # the one layer stack


PAIR = pair_batch(20, batch=4, length=24, vocab_size=VOCAB)
MONO = monolingual_batch(21, batch=4, length=16, vocab_size=VOCAB)


@pytest.mark.parametrize("name,batch", [("mmlm", MONO), ("tlm", PAIR), ("camlm", PAIR),
                                        ("btmlm", MONO)])
@pytest.mark.slow
def test_each_objective_overfits_one_batch(name, batch, tiny_model, tiny_params):
    objective = make_objectives(tiny_model, TOKENS, MaskingConfig(),
                                BTMLMConfig(target_languages=(0, 2), max_placeholders=8),
                                deterministic=True)[name]
    rng = jax.random.key(22)
    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state):
        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics, grads

    params, opt_state = tiny_params, optimizer.init(tiny_params)
    params, opt_state, first, grads = step(params, opt_state)
    for group in ("embeddings", "encoder", "mlm_head"):
        norm = optax.tree.norm(grads[group])
        assert np.isfinite(norm) and norm > 0, group
    for _ in range(100):
        params, opt_state, metrics, _ = step(params, opt_state)
    assert first["num_predictions"] > 0
    assert metrics["loss"] < 0.2 * first["loss"], (first["loss"], metrics["loss"])
    assert metrics["accuracy"] > 0.9


@pytest.mark.slow
def test_weighted_loss_is_the_weighted_sum(tiny_model, tiny_params):
    objectives = make_objectives(tiny_model, TOKENS, MaskingConfig())
    batches = {"mmlm": MONO, "camlm": PAIR}
    total, metrics = weighted_loss(tiny_params, batches, jax.random.key(0), objectives,
                                   {"mmlm": 2.0, "camlm": 0.5, "tlm": 0.0})
    np.testing.assert_allclose(total, 2.0 * metrics["mmlm/loss"] + 0.5 * metrics["camlm/loss"],
                               rtol=1e-6)
    assert "tlm/loss" not in metrics
    with pytest.raises(ValueError, match="unknown objectives"):
        weighted_loss(tiny_params, batches, jax.random.key(0), objectives, {"xlm": 1.0})
    with pytest.raises(ValueError, match="no batch"):
        weighted_loss(tiny_params, batches, jax.random.key(0), objectives, {"tlm": 1.0})


def test_btmlm_rejects_languages_the_model_cannot_embed(tiny_model):
    with pytest.raises(ValueError, match="target_languages"):
        make_objectives(tiny_model, TOKENS, MaskingConfig(), BTMLMConfig(target_languages=(9,)))


def test_masked_lm_metrics_match_a_plain_argmax_reference():
    logits = jax.random.normal(jax.random.key(0), (3, 5, 50))
    targets = jax.random.randint(jax.random.key(1), (3, 5), 0, 50)
    targets = targets.at[0, :3].set(logits[0, :3].argmax(-1))  # some right answers
    weights = jnp.ones((3, 5)).at[2, 3:].set(0.0)
    loss, metrics = masked_lm_metrics(logits, targets, weights)
    right = np.asarray(logits.argmax(-1) == targets, np.float32) * np.asarray(weights)
    assert metrics["accuracy"] == pytest.approx(right.sum() / 13)
    assert metrics["accuracy"] >= 3 / 13
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    assert loss == pytest.approx(float((nll * weights).sum() / 13), rel=1e-6)
    assert metrics["num_predictions"] == 13
