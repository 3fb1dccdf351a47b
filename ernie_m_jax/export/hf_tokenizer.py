"""Hugging Face tokenizer files that give exactly the ids training used.

Training tokenizes with SentencePiece (through seqio), in the vocabulary's id layout
(`data/vocab.py`). For this project's own layout neither HF slow tokenizer does that:
`XLMRobertaTokenizer` shifts every id by fairseq's offset, and `ErnieMTokenizer` pre-splits
CJK characters, some punctuation and digit runs (on the demo corpus that changes the ids of
~15% of Latin-script and nearly all Chinese and Japanese sentences). So every export carries a
`tokenizer.json` built from the SentencePiece model itself (Unigram with its scores, its
normalisation, byte fallback) in the run's id layout plus the special-token template, and
`tokenizer_config.json` points `AutoTokenizer` at it. The ErnieM export also keeps the files
`ErnieMTokenizer` loads, for tools that insist on that class. A fairseq-layout run (continued
from XLM-R) exports as `XLMRobertaTokenizer` with its `sentencepiece.bpe.model`, whose ids it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.data import vocab

SPECIAL_NAMES = {"cls_token": "cls_id", "sep_token": "sep_id", "pad_token": "pad_id",
                 "unk_token": "unk_id", "mask_token": "mask_id"}


def _special_pieces(model_pieces, tokens: SpecialTokens) -> dict:
    return {name: model_pieces[getattr(tokens, field)] for name, field in SPECIAL_NAMES.items()}


def fast_tokenizer(sp_model_path: Path, tokens: SpecialTokens):
    """A `tokenizers.Tokenizer` equal to the SentencePiece model in its id layout, with
    [CLS] x [SEP] and [CLS] x [SEP] [SEP] y [SEP] templates (the rows `data/features.py`
    builds)."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(sp_model_path).read_bytes())
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        raise ValueError(f"{sp_model_path}: only unigram SentencePiece models can be exported, "
                         f"not model_type {proto.trainer_spec.model_type}")
    info = vocab.inspect(sp_model_path)
    vocab.check_special_tokens(info, tokens)
    pieces = [(p.piece, p.score) for p in proto.pieces]
    control = sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL
    if info.layout == vocab.FAIRSEQ:  # as transformers' XLM-R converter lays it out
        pieces = ([(p, 0.0) for p in vocab.FAIRSEQ_HEAD]
                  + pieces[len(vocab.SENTENCEPIECE_DEFAULT_HEAD):]
                  + [(vocab.FAIRSEQ_PIECES["mask_id"], 0.0)])
        special = [*vocab.FAIRSEQ_HEAD, vocab.FAIRSEQ_PIECES["mask_id"]]
    else:
        special = [p.piece for p in proto.pieces if p.type == control]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=info.tokens.unk_id,
                                         byte_fallback=proto.trainer_spec.byte_fallback))
    # SentencePiece's normalisation: its precompiled NFKC map, then (remove_extra_whitespaces)
    # no leading/trailing spaces and runs of spaces collapsed.
    steps = [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if proto.normalizer_spec.precompiled_charsmap:
        steps.insert(0, normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581",
                                                       prepend_scheme="always")
    tokenizer.decoder = decoders.Sequence([
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(content=" ", left=1)])
    tokenizer.add_special_tokens([AddedToken(p, normalized=False, special=True)
                                  for p in special])
    cls, sep = pieces[tokens.cls_id][0], pieces[tokens.sep_id][0]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} {sep} $B {sep}",
        special_tokens=[(cls, tokens.cls_id), (sep, tokens.sep_id)])
    return tokenizer


def write_tokenizer_files(out: Path, sp_model_path: Path, tokens: SpecialTokens,
                          model_max_length: int, with_ernie_m_files: bool) -> None:
    text_ids = vocab.TextIds(sp_model_path)
    model_pieces = text_ids.info.pieces(text_ids.processor)
    special = _special_pieces(model_pieces, tokens)
    fairseq = text_ids.info.layout == vocab.FAIRSEQ
    fast_tokenizer(sp_model_path, tokens).save(str(out / "tokenizer.json"))
    # No token_type_ids: ErnieMModel takes none and XLM-R's single type is all zeros.
    # A fairseq-layout vocabulary is XLMRobertaTokenizer's own: name it, so its slow class
    # (which reads sentencepiece.bpe.model) gives the same ids as tokenizer.json.
    tokenizer_class = ("XLMRobertaTokenizer" if fairseq and not with_ernie_m_files
                       else "PreTrainedTokenizerFast")
    config = {"tokenizer_class": tokenizer_class, "model_max_length": model_max_length,
              "model_input_names": ["input_ids", "attention_mask"],
              "clean_up_tokenization_spaces": False, "do_lower_case": False, **special}
    if with_ernie_m_files or fairseq:
        shutil.copyfile(sp_model_path, out / "sentencepiece.bpe.model")
    if with_ernie_m_files:
        (out / "vocab.txt").write_text("".join(p + "\n" for p in model_pieces),
                                       encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False))
