"""Continued pretraining from a released checkpoint, end to end, with XLM-R's id layout.

A small SentencePiece model is trained here and laid out as XLM-R's `sentencepiece.bpe.model`
is (nothing downloads); transformers writes a tiny `XLMRobertaForMaskedLM` and its tokenizer
beside it. That directory is imported, trained with all four objectives on the demo corpus
(through `gin/runs/continue_from_hf.gin`), exported as XLM-R, and loaded back by transformers.
"""

import json
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ernie_m_jax import cli, gin_config, saved_run
from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.data import corpus, pipeline, seqio_vocab, vocab
from ernie_m_jax.export import hf_import
from ernie_m_jax.masking import mask_tokens, maskable_tokens
from ernie_m_jax.model import ErnieM
from ernie_m_jax.objectives import mmlm_loss
from ernie_m_jax.run_dir import VOCAB_FILE
from ernie_m_jax.train.config import Experiment
from tests.train_runs import ROOT, run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PIECES = 2000  # SentencePiece pieces; the model has two more ids (<pad>, <mask>)
LANGUAGES = ("de", "fr")


def _sentences(corpus_dir, split, per_language):
    out = {}
    for language in corpus.languages(corpus_dir):
        rows = corpus.read_split(corpus_dir, split, language)
        out[language] = [rows[k] for k in sorted(rows)[:per_language]]
    return out


@pytest.fixture(scope="module")
def corpus_dir(demo_data_dir):
    from tasks import demo

    return demo.register_demo(data_dir=demo_data_dir, languages=LANGUAGES).corpus_dir


@pytest.fixture(scope="module")
def release(corpus_dir, tmp_path_factory):
    """What a user downloads: config.json, model.safetensors, XLM-R's tokenizer files."""
    out = tmp_path_factory.mktemp("release") / "xlmr_tiny"
    out.mkdir()
    # Every language's script, so the layout is tested on all of them.
    sentences = [s for rows in _sentences(corpus_dir, "train", 40).values() for s in rows]
    model = vocab.train_vocabulary(corpus_dir, out / "spm.model", PIECES, layout=vocab.FAIRSEQ,
                                   sentences=sentences)
    tokenizer = transformers.XLMRobertaTokenizer(vocab_file=str(model))
    tokenizer.save_pretrained(out)
    (out / "spm.model").unlink()
    torch.manual_seed(0)
    hf = transformers.XLMRobertaForMaskedLM(transformers.XLMRobertaConfig(
        vocab_size=PIECES + 2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=66, type_vocab_size=1,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
    hf.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory):
    return hf_import.import_hf(str(release), str(tmp_path_factory.mktemp("imp") / "xlmr_run"))


@pytest.mark.slow
def test_fairseq_vocabulary_gives_xlm_roberta_tokenizer_ids_in_every_script(release,
                                                                           corpus_dir):
    import tensorflow as tf

    spm_file = release / hf_import.SPM_FILE
    slow = transformers.XLMRobertaTokenizer.from_pretrained(release)
    fast = transformers.XLMRobertaTokenizerFast.from_pretrained(release, from_slow=True)
    vocabulary = seqio_vocab.load_vocabulary(spm_file)
    text_ids = vocab.TextIds(spm_file)
    info = vocab.inspect(spm_file)
    assert info.layout == vocab.FAIRSEQ and vocabulary.vocab_size == len(slow) == PIECES + 2
    assert info.tokens == SpecialTokens(cls_id=slow.cls_token_id, pad_id=slow.pad_token_id,
                                        sep_id=slow.sep_token_id, unk_id=slow.unk_token_id,
                                        mask_id=slow.mask_token_id)
    held_out = _sentences(corpus_dir, "validation", 12)
    assert len(held_out) > 100
    texts = [s for rows in held_out.values() for s in rows]
    theirs = slow(texts, add_special_tokens=False)["input_ids"]
    assert fast(texts, add_special_tokens=False)["input_ids"] == theirs
    assert text_ids.encode(texts) == theirs
    assert [list(vocabulary.encode(t)) for t in texts] == theirs
    assert vocabulary.encode_tf(tf.constant(texts)).to_list() == theirs
    assert any(vocab.FAIRSEQ_UNK in row for row in theirs)  # unseen characters: <unk> is 3
    # Positive control: SentencePiece's own ids (what the tasks fed before) are not theirs.
    own = text_ids.processor.EncodeAsIds(texts)
    assert sum(a != b for a, b in zip(own, theirs)) == len(texts)
    assert vocabulary.decode(vocabulary.encode("Seite speichern")) == "Seite speichern"
    assert text_ids.decode([0, *theirs[0], 2, 1]) == slow.decode(theirs[0])


def test_import_brings_the_vocabulary_and_its_special_ids(release, imported):
    assert (imported / VOCAB_FILE).read_bytes() == \
        (release / hf_import.SPM_FILE).read_bytes()
    config = (imported / "config.gin").read_text()
    assert f"SpecialTokens.mask_id = {PIECES + 1}" in config
    assert f"VOCABULARY = '{imported / VOCAB_FILE}'" in config
    assert f"IMPORTED_DIR = '{imported}'" in config
    run_ = saved_run.load(str(imported))
    gin.clear_config()
    assert run_.tokens == vocab.inspect(run_.vocabulary_path).tokens
    assert run_.model.vocab_size == PIECES + 2


def _copy(release, tmp_path, name):
    return shutil.copytree(release, tmp_path / name)


@pytest.mark.slow
def test_bad_vocabularies_fail_with_the_mismatch_and_write_nothing(release, corpus_dir, tmp_path):
    bigger = _copy(release, tmp_path, "bigger")
    sentences = [s for rows in _sentences(corpus_dir, "train", 40).values() for s in rows]
    vocab.train_vocabulary(corpus_dir, bigger / hf_import.SPM_FILE, PIECES + 100,
                           layout=vocab.FAIRSEQ, sentences=sentences)
    with pytest.raises(ValueError, match=f"has {PIECES + 102} ids but the checkpoint's word "
                                         f"embedding has {PIECES + 2} rows"):
        hf_import.import_hf(str(bigger), str(tmp_path / "o1"))

    no_model = _copy(release, tmp_path, "no_model")
    (no_model / hf_import.SPM_FILE).unlink()
    with pytest.raises(ValueError, match="has tokenizer files .*tokenizer_config.json.* but no "
                                         "SentencePiece model"):
        hf_import.import_hf(str(no_model), str(tmp_path / "o2"))

    shuffled = _copy(release, tmp_path, "shuffled")
    pieces = vocab.inspect(shuffled / hf_import.SPM_FILE).pieces(
        vocab.TextIds(shuffled / hf_import.SPM_FILE).processor)
    (shuffled / "vocab.txt").write_text("\n".join(pieces[:4] + pieces[5:] + pieces[4:5]) + "\n")
    with pytest.raises(ValueError, match="does not number sentencepiece.bpe.model's pieces"):
        hf_import.import_hf(str(shuffled), str(tmp_path / "o3"))
    # ERNIE-M spells its specials [CLS] ... [MASK]; with the pieces in place it is accepted.
    names = ["[CLS]", "[PAD]", "[SEP]", "[UNK]"] + pieces[4:-1] + ["[MASK]"]
    (shuffled / "vocab.txt").write_text("\n".join(names) + "\n")
    ernie_like = hf_import.import_hf(str(shuffled), str(tmp_path / "o4"))
    assert f"SpecialTokens.mask_id = {PIECES + 1}" in (ernie_like / "config.gin").read_text()
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


def _gin_files(imported, tmp_path, demo_data_dir):
    """continue_from_hf.gin, then the imported config, then the demo data and tiny sizes."""
    data = tmp_path / "demo_data.gin"
    data.write_text("\n".join([
        "import tasks.demo",
        "TrainConfig.data_setup = @register_demo",
        "register_demo.vocabulary_path = %VOCABULARY",
        f"register_demo.data_dir = {str(demo_data_dir)!r}",
        f"register_demo.languages = {LANGUAGES!r}",
        "MONO_MIXTURE = 'ernie_m.demo.mono'", "PARA_MIXTURE = 'ernie_m.demo.para'",
        "NUM_STEPS = 10", "MONO_LENGTH = 16", "PAIR_LENGTH = 32", "BATCH_SIZE = 8",
        "LEARNING_RATE = 3e-3", "WARMUP_STEPS = 1",
        "ModelConfig.dtype = 'float32'", "ModelConfig.remat_policy = 'none'",
        "TrainConfig.log_every = 1", "TrainConfig.eval_every = 0",
        "TrainConfig.progress_bar = False", ""]))
    return [str(ROOT / "gin/runs/continue_from_hf.gin"), str(imported / "config.gin"), str(data)]


def test_wrong_special_ids_for_the_vocabulary_stop_training(imported, tmp_path, demo_data_dir):
    files = _gin_files(imported, tmp_path, demo_data_dir)
    # [MASK] = 4 is this project's own layout; in XLM-R's it is a real piece.
    with pytest.raises(ValueError, match=f"SpecialTokens.mask_id=4 is not <mask> .* \\(<mask> "
                                         f"is {PIECES + 1}\\)"):
        run(tmp_path / "wrong", ["SpecialTokens.mask_id = 4"], files=files)
    assert not (tmp_path / "wrong" / "checkpoints").exists()


@pytest.mark.slow
def test_the_imported_models_first_mlm_loss_is_transformers_loss(release, imported, tmp_path,
                                                                demo_data_dir):
    """Same masked batch from the real pipeline, before any update: ids, positions and the
    MLM head line up with transformers'."""
    files = _gin_files(imported, tmp_path, demo_data_dir)
    gin.clear_config()
    try:
        gin_config.parse(files)
        exp = Experiment.from_gin()
        exp.train.data_setup()
        batch = next(pipeline.training_dataset(exp.data, ("mmlm",), tokens=exp.tokens)
                     .as_numpy_iterator())["mmlm"]
        batch = jax.tree.map(jnp.asarray, batch)
    finally:
        gin.clear_config()
    start = saved_run.load(str(imported))
    gin.clear_config()
    model = ErnieM(exp.model)
    rng = jax.random.key(3)
    ours, metrics = mmlm_loss(start.params, batch, rng, model=model, tokens=exp.tokens,
                              masking=exp.masking, deterministic=True)
    mask_rng, _ = jax.random.split(rng)
    maskable = maskable_tokens(batch["input_ids"], batch["segment_ids"], exp.tokens)
    masked = mask_tokens(mask_rng, batch["input_ids"], maskable, exp.masking,
                         exp.tokens, exp.model.vocab_size)
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    rows, slots = np.nonzero(np.asarray(masked.mlm_weights))
    positions = np.asarray(masked.mlm_positions)[rows, slots]
    labels[rows, positions] = np.asarray(masked.mlm_targets)[rows, slots]
    assert int(metrics["num_predictions"]) == (labels != -100).sum() > 10
    hf = transformers.XLMRobertaForMaskedLM.from_pretrained(release).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(np.asarray(masked.input_ids), dtype=torch.long),
                    attention_mask=torch.tensor(np.asarray(batch["segment_ids"]) > 0,
                                                dtype=torch.long),
                    labels=torch.tensor(labels)).loss.item()
    np.testing.assert_allclose(float(ours), theirs, rtol=1e-5)
    # Positive control: the same text under SentencePiece's own ids scores differently.
    spm_ids = jnp.where(batch["input_ids"] > vocab.FAIRSEQ_UNK, batch["input_ids"] - 1,
                        batch["input_ids"])
    shifted, _ = mmlm_loss(start.params, dict(batch, input_ids=spm_ids), rng, model=model,
                           tokens=exp.tokens, masking=exp.masking, deterministic=True)
    assert abs(float(shifted) - theirs) > 1e-3


@pytest.mark.slow
def test_continued_pretraining_round_trip_through_transformers(release, imported, tmp_path,
                                                               demo_data_dir, capsys):
    files = _gin_files(imported, tmp_path, demo_data_dir)
    model_dir = tmp_path / "continued"
    run(model_dir, [], files=files)
    logged = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().split("\n")
              if line.strip()]
    losses = {o: [m[f"train/{o}/loss"] for m in logged if f"train/{o}/loss" in m]
              for o in ("mmlm", "tlm", "camlm", "btmlm")}
    for objective, values in losses.items():
        assert len(values) == 10 and np.isfinite(values).all(), (objective, values)
    assert np.mean(losses["mmlm"][-3:]) < np.mean(losses["mmlm"][:3]) - 0.1, losses["mmlm"]

    out = tmp_path / "export"
    assert cli.main(["export-hf", f"--model_dir={model_dir}", f"--out={out}",
                     "--format=xlm_roberta"]) == 0
    trained = saved_run.load(str(model_dir))
    gin.clear_config()
    assert trained.step == 10
    sentences = ["Die Datei „%(name)s“ konnte nicht gelesen werden.", "Seite speichern",
                 "Enregistrer la page", "面包屑开关", "Зберегти"]
    original = transformers.XLMRobertaTokenizer.from_pretrained(release)
    expected = original(sentences, padding=True)["input_ids"]
    for tokenizer in (transformers.AutoTokenizer.from_pretrained(out),
                      transformers.XLMRobertaTokenizer.from_pretrained(out)):
        assert tokenizer(sentences, padding=True)["input_ids"] == expected, type(tokenizer)
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    ids = np.asarray(expected)
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != 1)).logits
    keys = ids != trained.model.pad_id
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    ours = ErnieM(trained.model).apply(
        {"params": trained.params}, jnp.asarray(ids, jnp.int32), attention_mask=keys,
        language_ids=np.zeros(ids.shape, np.int32),
        mlm_positions=jnp.asarray(positions, jnp.int32))["mlm_logits"]
    np.testing.assert_allclose(np.asarray(ours)[keys], theirs.numpy()[keys], atol=1e-4)
    # Training moved the weights: the export is not the release.
    released = transformers.AutoModelForMaskedLM.from_pretrained(release).eval()
    with torch.no_grad():
        before = released(input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != 1))
    assert np.abs(before.logits.numpy()[keys] - theirs.numpy()[keys]).max() > 1e-2


def test_tfds_data_tokenizes_with_the_imported_vocabulary(imported, tmp_path):
    """gin/data/tfds.gin after the imported run's config: mC4 and a translation set (TFDS mock
    data) tokenized with XLM-R's ids through TensorFlow, checked against the run's specials."""
    import tensorflow_datasets as tfds

    files = [str(ROOT / "gin/runs/continue_from_hf.gin"), str(imported / "config.gin"),
             str(ROOT / "gin/data/tfds.gin")]
    names = {"ernie_m.mc4.mono.de": 300, "ernie_m.mc4.mono.fr": 200,
             "ernie_m.tfds.para.de_en": 100}
    bindings = ["TFDS_DATA_DIR = '/nonexistent'", "MC4_LANGUAGES = ('de', 'fr')",
                "TRANSLATION_SETS = {'de-en': 'wmt19_translate/de-en:1.0.0'}",
                f"register_tfds.counts = {names!r}", "NUM_STEPS = 1", "MONO_LENGTH = 16",
                "PAIR_LENGTH = 32", "BATCH_SIZE = 4"]
    gin.clear_config()
    try:
        gin_config.parse(files, bindings)
        exp = Experiment.from_gin()
        with tfds.testing.mock_data(num_examples=8):
            exp.train.data_setup()
            pipeline.check_vocabulary(exp.data, exp.train.enabled, exp.tokens,
                                      exp.model.vocab_size)
            batches = next(pipeline.training_dataset(exp.data, exp.train.enabled,
                                                     tokens=exp.tokens).as_numpy_iterator())
    finally:
        gin.clear_config()
    assert exp.tokens.mask_id == PIECES + 1 and exp.train.init_from == str(imported)
    assert set(batches) == {"mmlm", "tlm", "camlm", "btmlm"}
    for batch in batches.values():
        ids, segments = batch["input_ids"], batch["segment_ids"]
        assert (ids[:, 0] == exp.tokens.cls_id).all() and ids.max() < PIECES + 1
        text = ids[(segments > 0) & ~np.isin(ids, (exp.tokens.cls_id, exp.tokens.sep_id))]
        # Mock text is random characters: mostly <unk> (3), and no fairseq special below it.
        assert text.size and (text >= vocab.FAIRSEQ_UNK).all()
