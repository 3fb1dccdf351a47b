"""SentencePiece vocabularies in the two id layouts a run can use, and training our own.

- `sentencepiece` (the vocabularies this project trains): ids are SentencePiece's own, and the
  special tokens are pieces of the model: [CLS]=0 [PAD]=1 [SEP]=2 [UNK]=3 [MASK]=4
  (`configs.SpecialTokens()`). Training reads only the training split, in a fixed order with
  one thread, so the model file is the same on every run.
- `fairseq` (released XLM-R and ERNIE-M `sentencepiece.bpe.model` files): the model has
  SentencePiece's default <unk>=0 <s>=1 </s>=2 and no pad or mask piece; fairseq numbers
  <s>=0 <pad>=1 </s>=2 <unk>=3, every other piece at its SentencePiece id + 1, and <mask>
  last (250001 in the 250,002-id vocabulary), exactly as `XLMRobertaTokenizer` does.

The layout is read off the model file, and the special-token ids follow from it
(`special_tokens`), so a run never types them by hand.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import List, Optional, Sequence

import sentencepiece as spm

from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.data import corpus

SENTENCEPIECE, FAIRSEQ = "sentencepiece", "fairseq"
LAYOUTS = (SENTENCEPIECE, FAIRSEQ)
# SpecialTokens field -> the piece that must sit at that id, per layout.
SPECIAL_PIECES = {"cls_id": "[CLS]", "pad_id": "[PAD]", "sep_id": "[SEP]", "unk_id": "[UNK]",
                  "mask_id": "[MASK]"}
FAIRSEQ_PIECES = {"cls_id": "<s>", "pad_id": "<pad>", "sep_id": "</s>", "unk_id": "<unk>",
                  "mask_id": "<mask>"}
# fairseq's dictionary puts these four first; SentencePiece's own first three (<unk> <s> </s>)
# are then never produced from text, and every later piece moves up by one.
FAIRSEQ_HEAD = ("<s>", "<pad>", "</s>", "<unk>")
FAIRSEQ_OFFSET = 1
FAIRSEQ_UNK = 3
SENTENCEPIECE_DEFAULT_HEAD = ("<unk>", "<s>", "</s>")


def training_sentences(corpus_dir: os.PathLike, languages: Sequence[str] = ()) -> list:
    """Every training-split sentence of the given (default: all) languages, in a fixed order."""
    languages = list(languages) or list(corpus.languages(corpus_dir))
    sentences = []
    for language in sorted(languages):
        rows = corpus.read_split(corpus_dir, "train", language)
        sentences.extend(rows[key] for key in sorted(rows))
    return sentences


def train_vocabulary(corpus_dir: os.PathLike, model_path: os.PathLike, vocab_size: int = 8000,
                     languages: Sequence[str] = (), layout: str = SENTENCEPIECE,
                     sentences: Optional[Sequence[str]] = None) -> Path:
    """Train a unigram SentencePiece model on the training split (or on `sentences`);
    returns the .model path. `layout=fairseq` lays it out as XLM-R's is (SentencePiece's
    default <unk> <s> </s>, no pad, mask or byte pieces): `vocab_size` pieces, two more ids."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown vocabulary layout {layout!r}; one of {LAYOUTS}")
    if sentences is None:
        sentences = training_sentences(corpus_dir, languages)
    if not sentences:
        raise ValueError(f"no training sentences in {corpus_dir} for languages {languages}")
    if layout == SENTENCEPIECE:
        specials = dict(
            byte_fallback=True,  # no [UNK] for rare characters
            bos_id=0, pad_id=1, eos_id=2, unk_id=3,
            bos_piece="[CLS]", pad_piece="[PAD]", eos_piece="[SEP]", unk_piece="[UNK]",
            control_symbols=["[MASK]"])
    else:
        specials = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=0.9995,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
        **specials,
    )
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_suffix(".tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(model_path)
    return model_path


@dataclasses.dataclass(frozen=True)
class VocabularyInfo:
    """What a SentencePiece model file means as model ids: its layout, size and specials."""

    path: Path
    layout: str
    num_pieces: int  # SentencePiece's own piece count
    vocab_size: int  # model ids (fairseq adds <pad> and <mask>)
    tokens: SpecialTokens

    def pieces(self, processor) -> List[str]:
        """Every model id's token string, in id order (a `vocab.txt`)."""
        own = [processor.IdToPiece(i) for i in range(self.num_pieces)]
        if self.layout == SENTENCEPIECE:
            return own
        return [*FAIRSEQ_HEAD, *own[len(SENTENCEPIECE_DEFAULT_HEAD):],
                FAIRSEQ_PIECES["mask_id"]]

    def to_model_ids(self, ids: Sequence[int]) -> List[int]:
        return list(ids) if self.layout == SENTENCEPIECE else fairseq_ids(ids)

    def to_sentencepiece_ids(self, ids: Sequence[int]) -> List[int]:
        if self.layout == SENTENCEPIECE:
            return list(ids)
        return sentencepiece_ids_of_fairseq(ids, self.num_pieces)


def fairseq_ids(ids: Sequence[int]) -> List[int]:
    """SentencePiece ids -> fairseq's (SentencePiece's <unk>, id 0, is fairseq's 3)."""
    return [FAIRSEQ_UNK if i == 0 else i + FAIRSEQ_OFFSET for i in ids]


def sentencepiece_ids_of_fairseq(ids: Sequence[int], num_pieces: int) -> List[int]:
    """fairseq ids -> SentencePiece's: <unk> becomes 0; <s> <pad> </s> <mask> and ids out of
    range are dropped."""
    return [0 if i == FAIRSEQ_UNK else i - FAIRSEQ_OFFSET for i in ids
            if FAIRSEQ_UNK <= i <= num_pieces]


def _processor(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"SentencePiece model not found: {path}")
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{path} is not a valid SentencePiece model: {err}") from None
    return processor


def inspect(model_path: os.PathLike, processor=None) -> VocabularyInfo:
    """Recognise the file's layout and derive its special-token ids, or say why not."""
    path = Path(model_path)
    processor = processor or _processor(path)
    n = processor.GetPieceSize()
    head = tuple(processor.IdToPiece(i) for i in range(min(n, 3)))
    has_own_specials = all(processor.IdToPiece(processor.PieceToId(p)) == p
                           for p in SPECIAL_PIECES.values())
    if has_own_specials:
        ids = {field: processor.PieceToId(piece) for field, piece in SPECIAL_PIECES.items()}
        return VocabularyInfo(path, SENTENCEPIECE, n, n, SpecialTokens(**ids))
    if head == SENTENCEPIECE_DEFAULT_HEAD and processor.unk_id() == 0:
        tokens = SpecialTokens(cls_id=0, pad_id=1, sep_id=2, unk_id=FAIRSEQ_UNK,
                               mask_id=n + FAIRSEQ_OFFSET)
        return VocabularyInfo(path, FAIRSEQ, n, n + 2, tokens)
    raise ValueError(
        f"{path}: neither vocabulary layout: it has no {'/'.join(SPECIAL_PIECES.values())} "
        f"pieces (this project's layout) and does not start with SentencePiece's "
        f"{'/'.join(SENTENCEPIECE_DEFAULT_HEAD)} (fairseq's, as in XLM-R and ERNIE-M); it "
        f"starts with {list(head)}")


def check_special_tokens(info: VocabularyInfo, tokens: SpecialTokens) -> None:
    """`tokens` (e.g. the run's gin-bound SpecialTokens) must be the vocabulary's own."""
    names = SPECIAL_PIECES if info.layout == SENTENCEPIECE else FAIRSEQ_PIECES
    for field, piece in names.items():
        given, own = getattr(tokens, field), getattr(info.tokens, field)
        if given != own:
            raise ValueError(
                f"{info.path}: SpecialTokens.{field}={given} is not {piece} in this "
                f"{info.layout}-layout vocabulary of {info.vocab_size} ids ({piece} is {own}); "
                f"bind SpecialTokens.{field} = {own}")


class TextIds:
    """Text -> model ids (no special tokens) without TensorFlow, in the file's layout."""

    def __init__(self, model_path: os.PathLike):
        path = Path(model_path)
        self.processor = _processor(path)
        self.info = inspect(path, self.processor)

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        return [self.info.to_model_ids(row) for row in self.processor.EncodeAsIds(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.DecodeIds(self.info.to_sentencepiece_ids([int(i) for i in ids]))

