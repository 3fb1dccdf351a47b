"""Packed rows (several examples per row): the input, per-example masking, and the proofs that
each objective treats every packed example as if it were alone in its row."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ernie_m_jax import attention_masks
from ernie_m_jax.configs import BTMLMConfig, MaskingConfig, model_config
from ernie_m_jax.data import pipeline
from ernie_m_jax.masking import mask_tokens, maskable_tokens, selection_counts
from ernie_m_jax.model import ErnieM, init_params
from ernie_m_jax.objectives import (
    btmlm_inputs,
    camlm_inputs,
    make_objectives,
    make_prediction_counters,
    mlm_inputs,
)
from tasks import demo
from tests.synthetic import FIRST_WORD_ID, TOKENS

VOCAB = 128
OFFSET = 2  # the model's position offset
# Every maskable token is a prediction and keeps its id: deterministic masking that leaves
# the whole content visible, so equal losses mean equal attention, positions and languages.
KEEP_ALL = MaskingConfig(rate=1.0, mask_prob=0.0, random_prob=0.0)
GREEDY = BTMLMConfig(target_languages=(3,), temperature=0.0)


@pytest.fixture(scope="module")
def model_and_params():
    """Random weights scaled up 5x: attention far from uniform, so that the controls' leaks
    move losses by 0.05-0.3 where initial weights move them by 1e-4."""
    cfg = model_config("tiny", num_layers=3, num_languages=4, dropout_rate=0.0,
                       attention_dropout_rate=0.0)
    params = nn.unbox(init_params(cfg, jax.random.key(1)))["params"]
    return ErnieM(cfg), jax.tree.map(lambda p: 5 * p, params)


def _mono_examples(seed, count, max_words=6):
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(count):
        words = rs.randint(1, max_words + 1)
        ids = [TOKENS.cls_id, *rs.randint(FIRST_WORD_ID, VOCAB, words), TOKENS.sep_id]
        out.append((ids, [1] * len(ids), [int(rs.randint(0, 3))] * len(ids)))
    return out


def _pair_examples(seed, count, max_words=5):
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(count):
        n, m = rs.randint(1, max_words + 1, size=2)
        first = [TOKENS.cls_id, *rs.randint(FIRST_WORD_ID, VOCAB, n), TOKENS.sep_id]
        second = [TOKENS.sep_id, *rs.randint(FIRST_WORD_ID, VOCAB, m), TOKENS.sep_id]
        languages = rs.choice(3, 2, replace=False)
        out.append((first + second, [1] * len(first) + [2] * len(second),
                    [int(languages[0])] * len(first) + [int(languages[1])] * len(second)))
    return out


def _rows(groups, length):
    """One row per group of examples, one after another; packed features iff any group
    holds more than one example."""
    packed = any(len(group) > 1 for group in groups)
    arrays = {k: np.zeros((len(groups), length), np.int32) for k in
              ("input_ids", "segment_ids", "language_ids", "example_ids", "position_ids")}
    arrays["input_ids"][:] = TOKENS.pad_id
    arrays["position_ids"][:] = OFFSET
    for row, group in enumerate(groups):
        column = 0
        for number, (ids, segments, languages) in enumerate(group, start=1):
            span = slice(column, column + len(ids))
            arrays["input_ids"][row, span] = ids
            arrays["segment_ids"][row, span] = segments
            arrays["language_ids"][row, span] = languages
            arrays["example_ids"][row, span] = number
            arrays["position_ids"][row, span] = OFFSET + np.arange(len(ids))
            column += len(ids)
        assert column <= length
    if not packed:
        del arrays["example_ids"], arrays["position_ids"]
    return {k: jnp.asarray(v) for k, v in arrays.items()}


def _groups(examples, length):
    """Greedy packing in order, as seqio's packer does."""
    groups, used = [[]], 0
    for example in examples:
        if used + len(example[0]) > length:
            groups.append([])
            used = 0
        groups[-1].append(example)
        used += len(example[0])
    return groups


def test_attention_never_crosses_examples_and_padding_queries_keep_the_rule():
    segments = jnp.asarray([[1, 1, 2, 1, 2, 2, 0]])
    examples = jnp.asarray([[1, 1, 1, 2, 2, 2, 0]])
    mask = np.asarray(attention_masks.padding_mask(segments, examples))[0]
    same = np.asarray(examples[0][:, None] == examples[0][None, :])
    np.testing.assert_array_equal(mask[:6, :], same[:6, :] & (np.asarray(segments[0]) > 0))
    np.testing.assert_array_equal(mask[6], np.asarray(segments[0]) > 0)
    masked = jnp.asarray([[False, True, False, False, False, False, False]])
    camlm = np.asarray(attention_masks.cross_attention_mask(segments, masked, 1, 2, examples))[0]
    # Example 1's masked source token reads its own target (2) and itself (1), never
    # example 2's target (4, 5); example 2's source (3) reads only its own target.
    np.testing.assert_array_equal(camlm[1], [0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(camlm[3], [0, 0, 0, 0, 1, 1, 0])
    unpacked = np.asarray(attention_masks.cross_attention_mask(segments, masked, 1, 2))[0]
    assert unpacked[1, 4] and unpacked[3, 2]  # control: without example ids they cross


@pytest.mark.slow
def test_masking_picks_each_examples_share_and_the_counter_knows_how_many():
    # Five examples of three words: 15% of each is one token (at least one), five in all,
    # where 15% of the row's fifteen words would be two.
    groups = [[([TOKENS.cls_id, 7, 8, 9, TOKENS.sep_id], [1] * 5, [1] * 5)] * 5] * 8
    batch = _rows(groups, 32)
    maskable = maskable_tokens(batch["input_ids"], batch["segment_ids"], TOKENS)
    config = MaskingConfig()
    slots = config.num_slots(32)
    masked = mask_tokens(jax.random.key(0), batch["input_ids"], maskable, config, TOKENS,
                         VOCAB, example_ids=batch["example_ids"])
    chosen = np.asarray(masked.masked)
    examples = np.asarray(batch["example_ids"])
    for number in range(1, 6):
        np.testing.assert_array_equal((chosen & (examples == number)).sum(-1), 1)
    assert not (chosen & ~np.asarray(maskable)).any()
    assert float(masked.mlm_weights.sum()) == 40 == float(
        selection_counts(maskable, config, slots, batch["example_ids"]).sum())
    # Different draws pick different tokens of each example.
    again = mask_tokens(jax.random.key(1), batch["input_ids"], maskable, config, TOKENS, VOCAB,
                        example_ids=batch["example_ids"])
    assert (np.asarray(again.masked) != chosen).any()
    # Control: unpacked, the row is one example and gets round(0.15 * 15) = 2.
    whole = mask_tokens(jax.random.key(0), batch["input_ids"], maskable, config, TOKENS, VOCAB)
    np.testing.assert_array_equal(np.asarray(whole.masked).sum(-1), 2)


@pytest.mark.slow
def test_masking_counts_per_example_on_random_packs_never_exceed_the_slots():
    groups = _groups(_mono_examples(3, 200, max_words=12), 48)
    batch = _rows(groups, 48)
    maskable = maskable_tokens(batch["input_ids"], batch["segment_ids"], TOKENS)
    config = MaskingConfig(rate=0.3)
    slots = config.num_slots(48)
    masked = mask_tokens(jax.random.key(4), batch["input_ids"], maskable, config, TOKENS, VOCAB,
                         example_ids=batch["example_ids"])
    chosen, examples = np.asarray(masked.masked), np.asarray(batch["example_ids"])
    words = np.asarray(maskable)
    for row in range(len(groups)):
        wanted = [max(1, round(0.3 * words[row][examples[row] == e].sum()))
                  for e in range(1, len(groups[row]) + 1)]
        got = [chosen[row][examples[row] == e].sum() for e in range(1, len(groups[row]) + 1)]
        if sum(wanted) <= slots:
            assert got == wanted
        else:
            assert sum(got) == slots
    counted = selection_counts(maskable, config, slots, batch["example_ids"])
    np.testing.assert_array_equal(np.asarray(masked.mlm_weights).sum(-1), counted)


def _losses(model, params, batch, name, rng=jax.random.key(7), masking=KEEP_ALL):
    objectives = make_objectives(model, TOKENS, masking, GREEDY, deterministic=True)
    loss, metrics = objectives[name](params, batch, rng)
    return float(loss), float(metrics["num_predictions"])


@pytest.mark.parametrize("name", ["mmlm", "tlm", "camlm", "btmlm"])
@pytest.mark.slow
def test_a_packed_rows_loss_is_its_examples_token_weighted_loss(name, model_and_params):
    model, params = model_and_params
    examples = (_pair_examples(11, 12) if name in ("tlm", "camlm")
                else _mono_examples(11, 12))
    groups = _groups(examples, 40)
    assert max(len(g) for g in groups) >= 3
    packed = _rows(groups, 40)
    alone = _rows([[e] for e in examples], 20)
    packed_loss, packed_count = _losses(model, params, packed, name)
    alone_loss, alone_count = _losses(model, params, alone, name)
    assert packed_count == alone_count > 40
    assert packed_loss == pytest.approx(alone_loss, rel=1e-5, abs=1e-5)
    counters = make_prediction_counters(TOKENS, KEEP_ALL)
    assert float(counters[name](packed)) == packed_count
    # Control: the same rows read as one example each (no example ids) do not match.
    crossed = {k: v for k, v in packed.items() if k != "example_ids"}
    crossed_loss, _ = _losses(model, params, crossed, name)
    assert abs(crossed_loss - alone_loss) > 1e-2


@pytest.mark.slow
def test_a_packed_batch_without_positions_is_refused_by_name(model_and_params):
    model, params = model_and_params
    packed = _rows(_groups(_mono_examples(1, 6), 30), 30)
    del packed["position_ids"]
    for name in ("mmlm", "btmlm"):
        with pytest.raises(ValueError, match="packed batch .* needs position_ids"):
            _losses(model, params, packed, name)


@pytest.mark.slow
def test_btmlm_generates_each_packed_example_as_if_it_were_alone(model_and_params):
    model, params = model_and_params
    examples = _mono_examples(5, 9)
    groups = _groups(examples, 30)
    packed = _rows(groups, 30)
    alone = _rows([[e] for e in examples], 10)
    rng = jax.random.key(2)
    pair, _, _ = btmlm_inputs(params, packed, rng, model=model, tokens=TOKENS, masking=KEEP_ALL,
                              btmlm=GREEDY)
    single, _, _ = btmlm_inputs(params, alone, rng, model=model, tokens=TOKENS,
                                masking=KEEP_ALL, btmlm=GREEDY)
    index = 0
    for row, group in enumerate(groups):
        for number in range(1, len(group) + 1):
            pseudo = (np.asarray(pair["example_ids"][row]) == number) & \
                (np.asarray(pair["segment_ids"][row]) == attention_masks.TARGET)
            alone_pseudo = np.asarray(single["segment_ids"][index]) == attention_masks.TARGET
            for key in ("input_ids", "position_ids", "language_ids"):
                np.testing.assert_array_equal(np.asarray(pair[key][row])[pseudo],
                                              np.asarray(single[key][index])[alone_pseudo])
            index += 1


def _slot_logits(model, params, inputs, masked, attention):
    return np.asarray(model.apply(
        {"params": params}, masked.input_ids, attention_mask=attention,
        position_ids=inputs["position_ids"], language_ids=inputs["language_ids"],
        mlm_positions=masked.mlm_positions)["mlm_logits"])


def _inputs(name, model, params, batch, rng):
    common = dict(tokens=TOKENS, masking=MaskingConfig())
    if name == "btmlm":
        return btmlm_inputs(params, batch, rng, model=model, btmlm=GREEDY, **common)
    build = camlm_inputs if name == "camlm" else mlm_inputs
    return build(batch, rng, vocab_size=VOCAB, **common)


@pytest.mark.parametrize("name", ["mmlm", "tlm", "camlm", "btmlm"])
@pytest.mark.slow
def test_perturbing_one_packed_example_changes_no_other_examples_predictions(
        name, model_and_params):
    model, params = model_and_params
    examples = (_pair_examples(21, 40, max_words=8) if name in ("tlm", "camlm")
                else _mono_examples(21, 40, max_words=10))
    groups = _groups(examples, 48)
    batch = _rows(groups, 48)
    examples_of = np.asarray(batch["example_ids"])
    victim = examples_of == 2  # the second example of every row
    words = victim & ~np.isin(np.asarray(batch["input_ids"]), TOKENS.all_ids)
    changed = dict(batch, input_ids=jnp.asarray(np.where(
        words, FIRST_WORD_ID + (np.asarray(batch["input_ids"]) - FIRST_WORD_ID + 17)
        % (VOCAB - FIRST_WORD_ID), np.asarray(batch["input_ids"]))))
    rng = jax.random.key(3)

    # Each prediction slot's example: CAMLM uses every row twice (one row per direction),
    # BTMLM restores the source, so every real slot points into the first 48 columns.
    row_examples = np.repeat(examples_of, 2, axis=0) if name == "camlm" else examples_of

    def slots_and_logits(rows, keep_examples=True):
        if not keep_examples:
            rows = {k: v for k, v in rows.items() if k != "example_ids"}
        inputs, masked, attention = _inputs(name, model, params, rows, rng)
        positions = np.minimum(np.asarray(masked.mlm_positions), 47)
        owner = np.take_along_axis(row_examples, positions, axis=1)
        return owner, np.asarray(masked.mlm_weights) > 0, _slot_logits(
            model, params, inputs, masked, attention)

    owner, real, before = slots_and_logits(batch)
    _, _, after = slots_and_logits(changed)
    others = real & (owner != 2)
    assert others.sum() > 30 and (real & (owner == 2)).sum() > 5
    assert np.abs(after - before)[others].max() <= 1e-5
    assert np.abs(after - before)[real & (owner == 2)].max() > 1e-3  # the victim did change
    # Control: without example ids, the same perturbation reaches the other examples.
    owner, real, crossed_before = slots_and_logits(batch, keep_examples=False)
    _, _, crossed_after = slots_and_logits(changed, keep_examples=False)
    assert np.abs(crossed_after - crossed_before)[real & (owner != 2)].max() > 1e-3


@pytest.fixture(scope="module")
def demo_data(demo_data_dir):
    return demo.register_demo(data_dir=demo_data_dir, languages=("de", "fr"))


def _examples_of(rows, packed):
    """The examples of a batch's rows, in order, as tuples of token ids."""
    out = []
    for row in range(rows["input_ids"].shape[0]):
        numbers = rows["example_ids"][row] if packed else (rows["segment_ids"][row] > 0)
        for number in range(1, int(numbers.max()) + 1):
            out.append(tuple(rows["input_ids"][row][numbers == number]))
    return out


@pytest.mark.parametrize("name,length", [("mmlm", 40), ("tlm", 64)])
def test_packed_input_holds_the_same_examples_in_order_and_fills_the_rows(
        demo_data, name, length):
    kind = "mono_length" if name == "mmlm" else "pair_length"
    config = pipeline.DataConfig(**{kind: length}, seed=5, batch_sizes={name: 16})
    unpacked = iter(pipeline.training_dataset(config, [name], tokens=TOKENS))
    packed = iter(pipeline.training_dataset(dataclasses.replace(config, pack=True), [name],
                                            tokens=TOKENS))
    one_each = [e for _ in range(8) for e in _examples_of(
        {k: v.numpy() for k, v in next(unpacked)[name].items()}, False)]
    rows = {k: v.numpy() for k, v in next(packed)[name].items()}
    together = _examples_of(rows, True)
    assert len(together) >= 1.5 * 16
    assert together == one_each[:len(together)]
    real = rows["segment_ids"] > 0
    for row in range(16):
        numbers = rows["example_ids"][row]
        assert (numbers[real[row]] > 0).all() and (numbers[~real[row]] == 0).all()
        assert (np.diff(numbers[real[row]]) >= 0).all()
        for number in range(1, numbers.max() + 1):
            where = numbers == number
            np.testing.assert_array_equal(rows["position_ids"][row][where],
                                          OFFSET + np.arange(where.sum()))
            assert rows["input_ids"][row][where][0] == TOKENS.cls_id
            assert rows["input_ids"][row][where][-1] == TOKENS.sep_id
        assert (rows["input_ids"][row][~real[row]] == TOKENS.pad_id).all()
    unpacked_rows = next(iter(pipeline.training_dataset(config, [name], tokens=TOKENS)))[name]
    assert real.mean() > 1.5 * (unpacked_rows["segment_ids"].numpy() > 0).mean()


def test_packed_input_resumes_at_the_exact_batch(demo_data, tmp_path):
    config = pipeline.DataConfig(mono_length=32, pair_length=48, seed=3, pack=True,
                                 batch_sizes={"mmlm": 4, "btmlm": 2, "tlm": 2, "camlm": 2})
    objectives = ["mmlm", "tlm", "camlm", "btmlm"]
    make = lambda: pipeline.CheckpointableIterator(
        pipeline.training_dataset(config, objectives, tokens=TOKENS))
    reference = make()
    expected = [next(reference) for _ in range(5)]
    interrupted = make()
    for _ in range(2):
        next(interrupted)
    prefix = interrupted.save(str(tmp_path / "position"))
    resumed = make()
    resumed.restore(prefix)
    for want in expected[2:]:
        got = next(resumed)
        for objective in want:
            assert set(got[objective]) == {"input_ids", "segment_ids", "language_ids",
                                           "example_ids", "position_ids"}
            for key in want[objective]:
                np.testing.assert_array_equal(got[objective][key], want[objective][key])


@pytest.mark.slow
def test_a_packed_run_trains_all_four_objectives(demo_data_dir, tmp_path):
    from tests.train_runs import run, tiny_bindings

    final = run(tmp_path / "run", tiny_bindings(demo_data_dir, 3, PACK=True,
                                                MONO_LENGTH=32, PAIR_LENGTH=48))
    for name in ("mmlm", "tlm", "camlm", "btmlm"):
        assert np.isfinite(final[f"train/{name}/loss"]) and final[f"train/{name}/loss"] > 0
    assert final["train/padding_fraction"] < 0.3  # packed: most positions hold text


@pytest.mark.parametrize("files,bindings", [
    (("runs/pretrain_stage1.gin",), ("MONO_MIXTURE = 'm'", "PARA_MIXTURE = 'p'",
                                      "NUM_STEPS = 10")),
    (("runs/pretrain_stage2.gin",), ("MONO_MIXTURE = 'm'", "PARA_MIXTURE = 'p'",
                                      "NUM_STEPS = 10", "STAGE1_DIR = '/s1'")),
    (("runs/continue_from_hf.gin",), ("MONO_MIXTURE = 'm'", "PARA_MIXTURE = 'p'",
                                       "NUM_STEPS = 10", "IMPORTED_DIR = '/hf'",
                                       "VOCABULARY = '/v.model'")),
    (("runs/demo_cpu.gin",), ()),
])
def test_the_pretraining_run_files_and_the_demo_pack(files, bindings):
    import gin

    from ernie_m_jax import gin_config
    from ernie_m_jax.data import features
    from ernie_m_jax.train import Experiment

    gin.clear_config()
    try:
        gin_config.parse(files, bindings)
        exp = Experiment.from_gin()
        assert exp.data.pack
        gin_config.parse((), ("PACK = False",))
        assert not Experiment.from_gin().data.pack  # one switch turns it off
    finally:
        gin.clear_config()
    assert features.model_features(exp.data.pack) == features.PACKED_FEATURES
