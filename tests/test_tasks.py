"""seqio tasks and mixtures: the demo corpus, added languages, TFDS sources, bad input."""

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.data import pipeline, sources
from tasks import demo, registry, tfds_sources

TOKENS = SpecialTokens()
LANGUAGES = ("de", "fr", "zh_hans")


@pytest.fixture(scope="module")
def demo_data(demo_data_dir):
    return demo.register_demo(data_dir=demo_data_dir, languages=LANGUAGES)


@pytest.fixture(scope="module")
def vocabulary(demo_data):
    return seqio.SentencePieceVocabulary(str(demo_data.vocabulary_path))


def _check_mono_row(ids, segments, languages, expected_language=None):
    n = int((segments == 1).sum())
    assert n >= 3 and (segments[:n] == 1).all() and (segments[n:] == 0).all()
    assert ids[0] == TOKENS.cls_id and ids[n - 1] == TOKENS.sep_id
    assert (ids[n:] == TOKENS.pad_id).all()
    assert not np.isin(ids[1:n - 1], TOKENS.all_ids).any()
    assert len(set(languages[:n])) == 1
    if expected_language is not None:
        assert languages[0] == expected_language


def _check_pair_row(ids, segments, languages):
    n, m = int((segments == 1).sum()), int((segments == 2).sum())
    assert n >= 3 and m >= 3 and (segments[:n] == 1).all() and (segments[n:n + m] == 2).all()
    assert ids[0] == TOKENS.cls_id and ids[n - 1] == TOKENS.sep_id
    assert ids[n] == TOKENS.sep_id and ids[n + m - 1] == TOKENS.sep_id
    assert (ids[n + m:] == TOKENS.pad_id).all()
    assert len(set(languages[:n])) == 1 and len(set(languages[n:n + m])) == 1
    assert languages[0] != languages[n]


def test_demo_tasks_are_named_predictably(demo_data):
    assert demo_data.languages == ("de", "en", "fr", "zh_hans")
    assert registry.task_names(kind="mono") == tuple(f"ernie_m.mono.{lang}" for lang in
                                                     demo_data.languages)
    assert registry.task_names(kind="para") == ("ernie_m.para.en_de", "ernie_m.para.en_fr",
                                                "ernie_m.para.en_zh_hans")
    for name in registry.task_names(kind="mono"):
        task = seqio.get_mixture_or_task(name)
        assert set(task.splits) == {"train", "validation", "test"}


def test_every_objective_gets_batches_of_the_declared_layout(demo_data):
    config = pipeline.DataConfig(mono_length=24, pair_length=40,
                                 batch_sizes={"mmlm": 6, "btmlm": 4, "tlm": 4, "camlm": 2})
    batch = next(pipeline.CheckpointableIterator(
        pipeline.training_dataset(config, ["mmlm", "tlm", "camlm", "btmlm"], tokens=TOKENS)))
    for name, size, length in (("mmlm", 6, 24), ("btmlm", 4, 24), ("tlm", 4, 40),
                               ("camlm", 2, 40)):
        assert set(batch[name]) == {"input_ids", "segment_ids", "language_ids"}
        for array in batch[name].values():
            assert array.shape == (size, length) and array.dtype == np.int32
        rows = zip(*(batch[name][k] for k in ("input_ids", "segment_ids", "language_ids")))
        for row in rows:
            (_check_pair_row if name in ("tlm", "camlm") else _check_mono_row)(*row)


def test_mixture_rates_follow_exponential_smoothing(demo_data):
    for mixture, kind in ((demo.MONO_MIXTURE, "mono"), (demo.PARA_MIXTURE, "para")):
        names = registry.task_names(kind=kind)
        counts = {n: seqio.get_mixture_or_task(n).num_input_examples("train") for n in names}
        total = sum(c ** 0.3 for c in counts.values())
        rates = registry.mixture_rates(mixture)
        for name in names:
            assert rates[name] == pytest.approx(counts[name] ** 0.3 / total)
    assert registry.smoothed_rates({"a": 100, "b": 1}, alpha=1.0) == \
        pytest.approx({"a": 100 / 101, "b": 1 / 101})
    assert registry.smoothed_rates({"a": 100, "b": 1}, alpha=0.0) == \
        pytest.approx({"a": 0.5, "b": 0.5})
    assert registry.smoothed_rates({"a": 1000, "b": 10}, alpha=0.5) == \
        pytest.approx({"a": 10 / 11, "b": 1 / 11}, rel=1e-2)


def test_a_language_added_in_a_few_lines_joins_the_mixture(demo_data, vocabulary, tmp_path):
    train = tmp_path / "xx.txt"
    train.write_text("Ecce prima sententia.\nSecunda sententia hic est.\n  \n"
                     "Tertia et ultima.\n", encoding="utf-8")
    try:
        registry.add_monolingual("xx", {"train": train, "validation": ["Sententia probationis."]},
                                 vocabulary)
        demo.register_demo(data_dir=str(demo_data.corpus_dir.parent), languages=LANGUAGES)
        assert "ernie_m.mono.xx" in registry.mixture_rates(demo.MONO_MIXTURE)
        assert seqio.get_mixture_or_task("ernie_m.mono.xx").num_input_examples("train") == 3
        xx_id = registry.register_language("xx")
        ds = pipeline.evaluation_batches("ernie_m.mono.xx", length=16, batch_size=4,
                                         split="train", tokens=TOKENS)
        batch = next(iter(ds))
        for row in range(3):
            _check_mono_row(batch["input_ids"][row], batch["segment_ids"][row],
                            batch["language_ids"][row], expected_language=xx_id)
        assert (batch["segment_ids"][3] == 0).all()  # the padded row
    finally:
        seqio.TaskRegistry.remove("ernie_m.mono.xx")
        demo.register_demo(data_dir=str(demo_data.corpus_dir.parent), languages=LANGUAGES)
    assert "ernie_m.mono.xx" not in registry.mixture_rates(demo.MONO_MIXTURE)


def test_pipeline_is_deterministic_and_resumes_at_the_exact_batch(demo_data, tmp_path):
    config = pipeline.DataConfig(mono_length=16, pair_length=24, seed=3,
                                 batch_sizes={"mmlm": 4, "tlm": 2})
    make = lambda: pipeline.CheckpointableIterator(
        pipeline.training_dataset(config, ["mmlm", "tlm"], tokens=TOKENS))
    reference = make()
    expected = [next(reference) for _ in range(6)]
    interrupted = make()
    for _ in range(3):
        next(interrupted)
    prefix = interrupted.save(str(tmp_path / "data" / "ckpt"))
    resumed = make()
    resumed.restore(prefix)
    for want in expected[3:]:
        got = next(resumed)
        for objective in want:
            for key in want[objective]:
                np.testing.assert_array_equal(got[objective][key], want[objective][key])
    other_seed = pipeline.CheckpointableIterator(pipeline.training_dataset(
        pipeline.DataConfig(mono_length=16, pair_length=24, seed=4,
                            batch_sizes={"mmlm": 4, "tlm": 2}), ["mmlm", "tlm"], tokens=TOKENS))
    assert not np.array_equal(next(other_seed)["mmlm"]["input_ids"],
                              expected[0]["mmlm"]["input_ids"])


def test_the_saved_input_position_holds_the_task_buffers_and_nothing_more(demo_data,
                                                                          tmp_path):
    """Every checkpoint saves it, on every host: each task's shuffle buffer, never a task's
    whole (in-memory cached) split, which made it 5-8x larger."""
    config = pipeline.DataConfig(mono_length=32, pair_length=64,
                                 batch_sizes={"mmlm": 8, "tlm": 8})
    iterator = pipeline.CheckpointableIterator(
        pipeline.training_dataset(config, ["mmlm", "tlm"], tokens=TOKENS))
    for _ in range(3):
        next(iterator)
    iterator.save(str(tmp_path / "position"))
    saved = sum(p.stat().st_size for p in tmp_path.iterdir())
    tasks = len(pipeline.tasks_of(config.mono_mixture) + pipeline.tasks_of(config.pair_mixture))
    assert tasks == 2 * len(LANGUAGES) + 1  # mono: + English; para: en<->each
    assert saved < tasks * registry.TASK_SHUFFLE_BUFFER * 1024  # under 1 KiB a buffered row


def test_hosts_read_disjoint_shards_with_their_share_of_the_batch(demo_data):
    shards = []
    for index in range(2):
        ds = pipeline.evaluation_batches("ernie_m.mono.de", 32, 8, split="validation",
                                         shard_info=seqio.ShardInfo(index, 2), tokens=TOKENS)
        shards.append({tuple(row) for b in ds for row, seg in zip(b["input_ids"],
                                                                  b["segment_ids"]) if seg.any()})
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    config = pipeline.DataConfig(batch_sizes={"mmlm": 8})
    batch = next(iter(pipeline.training_dataset(config, ["mmlm"], seqio.ShardInfo(1, 2),
                                                tokens=TOKENS)))
    assert batch["mmlm"]["input_ids"].shape[0] == 4
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        pipeline.training_dataset(config, ["mmlm"], seqio.ShardInfo(0, 3), tokens=TOKENS)


@pytest.mark.slow
def test_tfds_tasks_produce_batches_under_mock_data(vocabulary):
    with tfds.testing.mock_data(num_examples=8):
        tfds_sources.add_mc4_language("de", vocabulary, data_dir="/nonexistent")
        tfds_sources.add_translation_pair("de", "en", "wmt19_translate/de-en:1.0.0", vocabulary,
                                          data_dir="/nonexistent")
        tfds_sources.add_translation_pair("en", "fr", "para_crawl/enfr:1.2.0", vocabulary,
                                          data_dir="/nonexistent", splits=("train",))
        mono = next(iter(pipeline.evaluation_batches("ernie_m.mc4.mono.de", 32, 4,
                                                     split="train", tokens=TOKENS)))
        for row in zip(mono["input_ids"], mono["segment_ids"], mono["language_ids"]):
            _check_mono_row(*row)
        names = ["ernie_m.tfds.para.de_en", "ernie_m.tfds.para.en_fr"]
        # Mock data has no split sizes: TFDS mixtures take their counts from the dataset info.
        registry.add_mixture("test.tfds.para", names, counts={names[0]: 400, names[1]: 100})
        assert registry.mixture_rates("test.tfds.para")[names[0]] == \
            pytest.approx(4 ** 0.3 / (4 ** 0.3 + 1))
        for name in names:  # a DataConfig may name a single task instead of a mixture
            ds = pipeline.training_dataset(
                pipeline.DataConfig(pair_mixture=name, pair_length=32,
                                    batch_sizes={"tlm": 4}), ["tlm"], tokens=TOKENS)
            batch = next(iter(ds))["tlm"]
            for row in zip(*(batch[k].numpy() for k in ("input_ids", "segment_ids",
                                                         "language_ids"))):
                _check_pair_row(*row)


def test_bad_text_is_skipped_and_counted():
    lines = ["Good line.", "   ", "", b"\xff\xfe broken", "x" * 50, "Another good one."]
    kept, skips = sources.clean_lines(lines, max_chars=40)
    assert kept == ["Good line.", "Another good one."]
    assert skips == {"empty": 2, "invalid_utf8": 1, "too_long": 1}
    pairs = [("Hello.", "Hallo."), ("Only source.", "  "), ("", "Nur Ziel."), ("", "")]
    kept, skips = sources.clean_pairs(pairs)
    assert kept == [("Hello.", "Hallo.")]
    assert skips == {"one_side_empty": 2, "empty": 2}


def test_bad_registrations_name_the_problem(demo_data, vocabulary, tmp_path):
    with pytest.raises(ValueError, match="invalid language code 'German!'"):
        registry.add_monolingual("German!", {"train": ["Hallo."]}, vocabulary)
    with pytest.raises(ValueError, match=r"unknown demo languages \['qq'\]"):
        demo.register_demo(data_dir=str(demo_data.corpus_dir.parent), languages=("de", "qq"))
    with pytest.raises(ValueError, match="no usable text"):
        registry.add_monolingual("yy", {"train": ["", "  ", b"\xc3\x28"]}, vocabulary)
    with pytest.raises(FileNotFoundError, match="text file not found"):
        registry.add_monolingual("yy", {"train": tmp_path / "missing.txt"}, vocabulary)
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.txt").write_text("eins\n")
    with pytest.raises(ValueError, match="parallel files must align"):
        registry.add_parallel("en", "de", {"train": (tmp_path / "a.txt", tmp_path / "b.txt")},
                              vocabulary)
    with pytest.raises(FileNotFoundError, match="SentencePiece model not found"):
        demo.register_demo(data_dir=str(demo_data.corpus_dir.parent), languages=("de",),
                           vocabulary_path=str(tmp_path / "missing.model"))
    with pytest.raises(ValueError, match="unknown tasks"):
        registry.add_mixture("test.bad", ["ernie_m.mono.nope"])
    with pytest.raises(ValueError, match="enabled but DataConfig.batch_sizes"):
        pipeline.DataConfig(batch_sizes={"mmlm": 4}).enabled(["mmlm", "tlm"])
    with pytest.raises(ValueError, match="unknown objectives"):
        pipeline.DataConfig(batch_sizes={"mlm": 4})


def test_over_long_pairs_keep_both_sentences_and_trim_the_longer_first():
    import tensorflow as tf

    from ernie_m_jax.data import features
    example = {"source": tf.range(10, 40), "target": tf.range(50, 55),
               "source_language": tf.constant(1), "target_language": tf.constant(2)}
    row = {k: v.numpy() for k, v in features.pair_row(example, length=20, tokens=TOKENS).items()}
    segments = row["segment_ids"]
    assert (segments == 1).sum() == 2 + 11 and (segments == 2).sum() == 2 + 5
    np.testing.assert_array_equal(row["input_ids"][1:12], np.arange(10, 21))
    keep = [features.fit_pair(tf.constant(a), tf.constant(b), 16) for a, b in
            ((30, 30), (3, 30), (30, 3), (4, 5))]
    assert [(int(a), int(b)) for a, b in keep] == [(8, 8), (3, 13), (13, 3), (4, 5)]
    mono = features.monolingual_row({"text": tf.range(5, 100), "language": tf.constant(7)}, 12,
                                    tokens=TOKENS)
    assert mono["input_ids"].numpy()[-1] == TOKENS.sep_id
    assert (mono["language_ids"].numpy() == 7).all()


def test_btmlm_targets_come_from_the_mixtures_and_can_be_limited_to_parallel_languages(
        demo_data):
    import types

    from ernie_m_jax.configs import BTMLMConfig
    from ernie_m_jax.data import languages
    from ernie_m_jax.train.resolve import pair_mixture_languages, resolved_btmlm

    registry.add_mixture("test.para.two", ["ernie_m.para.en_de", "ernie_m.para.en_zh_hans"])
    assert pair_mixture_languages("test.para.two") == {"en", "de", "zh_hans"}
    registry.add_mixture("test.mono.all", registry.task_names(kind="mono"))

    def targets(btmlm, pair_mixture="test.para.two"):
        exp = types.SimpleNamespace(
            btmlm=btmlm, train=types.SimpleNamespace(enabled=("mmlm", "btmlm")),
            data=types.SimpleNamespace(mono_mixture="test.mono.all", pair_mixture=pair_mixture),
            model=types.SimpleNamespace(num_languages=0))
        return {code for code, i in languages.registered_languages().items()
                if i in resolved_btmlm(exp).target_languages}

    assert targets(BTMLMConfig()) == {"de", "en", "fr", "zh_hans"}  # every monolingual one
    # fr has monolingual data only: no longer a target.
    assert targets(BTMLMConfig(parallel_targets_only=True)) == {"de", "en", "zh_hans"}
    registry.add_mixture("test.para.one", ["ernie_m.para.en_de"])
    registry.add_mixture("test.mono.one", ["ernie_m.mono.de", "ernie_m.mono.fr"])
    with pytest.raises(ValueError, match=r"leaves \['de'\]"):
        exp = types.SimpleNamespace(
            btmlm=BTMLMConfig(parallel_targets_only=True),
            train=types.SimpleNamespace(enabled=("btmlm",)),
            data=types.SimpleNamespace(mono_mixture="test.mono.one", pair_mixture="test.para.one"),
            model=types.SimpleNamespace(num_languages=0))
        resolved_btmlm(exp)
    # Languages given explicitly win.
    assert targets(BTMLMConfig(parallel_targets_only=True, target_languages=(
        languages.language_id("fr"),))) == {"fr"}


def test_btmlm_length_factors_are_measured_on_the_pair_mixture(demo_data, vocabulary):
    import types

    from ernie_m_jax.configs import BTMLMConfig
    from ernie_m_jax.data import corpus, languages
    from ernie_m_jax.train.resolve import pair_length_factors, resolved_btmlm

    registry.add_mixture("test.para.lengths", ["ernie_m.para.en_de", "ernie_m.para.en_zh_hans"])
    factors = pair_length_factors("test.para.lengths", max_examples=100_000)
    english = corpus.read_split(demo_data.corpus_dir, "train", "en")

    def pieces_per_english_piece(lang):  # independently: the training pairs, tokenized
        other = corpus.read_split(demo_data.corpus_dir, "train", lang)
        keys = [k for k in other if k in english]
        return sum(len(vocabulary.encode(other[k])) for k in keys) / sum(
            len(vocabulary.encode(english[k])) for k in keys)

    assert factors["en"] == 1.0 and set(factors) == {"en", "de", "zh_hans"}
    for lang in ("de", "zh_hans"):
        assert factors[lang] == pytest.approx(pieces_per_english_piece(lang), rel=0.02), lang
    assert factors["de"] > 1.1 > factors["zh_hans"]  # German runs longer than Chinese
    # A pair without English joins through the language it shares; one sharing none fails.
    registry.add_parallel("de", "fr", {"train": [("eins zwei drei vier", "un deux")]},
                          vocabulary)
    registry.add_mixture("test.para.chain", ["ernie_m.para.en_de", "ernie_m.para.de_fr"])
    chained = pair_length_factors("test.para.chain", max_examples=100_000)
    assert chained["fr"] == pytest.approx(chained["de"] * len(vocabulary.encode("un deux")) /
                                          len(vocabulary.encode("eins zwei drei vier")))
    registry.add_parallel("fr", "zh_hans", {"train": [("un deux", "一二")]}, vocabulary)
    registry.add_mixture("test.para.apart", ["ernie_m.para.en_de", "ernie_m.para.fr_zh_hans"])
    with pytest.raises(ValueError, match=r"share no language with the others"):
        pair_length_factors("test.para.apart")

    def resolved(read_data=True):
        exp = types.SimpleNamespace(
            btmlm=BTMLMConfig(fit_length_factors=True, target_languages=(0, 1)),
            train=types.SimpleNamespace(enabled=("btmlm",)),
            data=types.SimpleNamespace(mono_mixture="ernie_m.demo.mono",
                                       pair_mixture="test.para.lengths"),
            model=types.SimpleNamespace(num_languages=0))
        return resolved_btmlm(exp, read_data=read_data).length_factors

    fitted = resolved()
    for lang, factor in pair_length_factors("test.para.lengths").items():  # 2,000 pairs
        assert fitted[languages.language_id(lang)] == pytest.approx(factor)
    assert fitted[languages.language_id("fr")] == 1.0  # no parallel data: no scaling
    assert resolved(read_data=False) == ()  # ahead-of-time compilation reads no data
