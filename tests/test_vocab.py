import pytest
import sentencepiece as spm

from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.data import corpus, seqio_vocab, vocab


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "demo"
    corpus.build_corpus(out)
    return out


@pytest.mark.slow
def test_vocabulary_is_deterministic_with_the_ernie_m_special_ids(small_corpus, tmp_path):
    a = vocab.train_vocabulary(small_corpus, tmp_path / "a.model", 1000, languages=("de", "en"))
    b = vocab.train_vocabulary(small_corpus, tmp_path / "b.model", 1000, languages=("de", "en"))
    assert a.read_bytes() == b.read_bytes()
    processor = spm.SentencePieceProcessor(model_file=str(a))
    assert [processor.IdToPiece(i) for i in range(5)] == ["[CLS]", "[PAD]", "[SEP]", "[UNK]",
                                                           "[MASK]"]
    loaded = seqio_vocab.load_vocabulary(a)
    assert loaded.vocab_size == 1000
    text = "Die Datei wurde gespeichert. 12 文件"
    ids = loaded.encode(text)
    assert loaded.decode(ids) == text
    assert 3 not in ids  # byte fallback: no [UNK] even for unseen characters
    assert not set(ids) & set(SpecialTokens().all_ids)


def test_only_the_training_split_is_read(small_corpus):
    sentences = set(vocab.training_sentences(small_corpus, ("de",)))
    held_out = set(corpus.read_split(small_corpus, "test", "de").values())
    train = set(corpus.read_split(small_corpus, "train", "de").values())
    assert sentences == train
    assert held_out - train and not (held_out - train) & sentences


def test_missing_or_corrupt_vocabulary_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="SentencePiece model not found"):
        seqio_vocab.load_vocabulary(tmp_path / "nope.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00not a model")
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        seqio_vocab.load_vocabulary(junk)


def test_special_id_mismatch_is_named(small_corpus, tmp_path):
    model = vocab.train_vocabulary(small_corpus, tmp_path / "v.model", 1000, languages=("de",))
    with pytest.raises(ValueError, match="mask_id=999 is not \\[MASK\\]"):
        seqio_vocab.load_vocabulary(model, SpecialTokens(mask_id=999))
