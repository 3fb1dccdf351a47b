"""Hugging Face tokenizer files that give exactly the ids training used.

Training tokenizes with plain SentencePiece (through seqio). Neither HF slow tokenizer does
that for our vocabularies: `XLMRobertaTokenizer` shifts every id by fairseq's offset, and
`ErnieMTokenizer` pre-splits CJK characters, some punctuation and digit runs (on the demo
corpus that changes the ids of ~15% of Latin-script and nearly all Chinese and Japanese
sentences). So every export carries a `tokenizer.json` built from the SentencePiece model
itself (Unigram with its scores, its normalisation, byte fallback) plus our special-token
template, and `tokenizer_config.json` points `AutoTokenizer` at it. The ErnieM export also
keeps the files `ErnieMTokenizer` loads, for tools that insist on that class.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ernie_m_jax.configs import SpecialTokens

SPECIAL_NAMES = {"cls_token": "cls_id", "sep_token": "sep_id", "pad_token": "pad_id",
                 "unk_token": "unk_id", "mask_token": "mask_id"}


def _special_pieces(processor, tokens: SpecialTokens) -> dict:
    return {name: processor.IdToPiece(getattr(tokens, field))
            for name, field in SPECIAL_NAMES.items()}


def fast_tokenizer(sp_model_path: Path, tokens: SpecialTokens = SpecialTokens()):
    """A `tokenizers.Tokenizer` equal to the SentencePiece model, with [CLS] x [SEP] and
    [CLS] x [SEP] [SEP] y [SEP] templates (the rows `data/features.py` builds)."""
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

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(sp_model_path).read_bytes())
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        raise ValueError(f"{sp_model_path}: only unigram SentencePiece models can be exported, "
                         f"not model_type {proto.trainer_spec.model_type}")
    pieces = [(p.piece, p.score) for p in proto.pieces]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=proto.trainer_spec.unk_id,
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
    control = sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL
    tokenizer.add_special_tokens([AddedToken(p.piece, normalized=False, special=True)
                                  for p in proto.pieces if p.type == control])
    cls, sep = pieces[tokens.cls_id][0], pieces[tokens.sep_id][0]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} {sep} $B {sep}",
        special_tokens=[(cls, tokens.cls_id), (sep, tokens.sep_id)])
    return tokenizer


def write_tokenizer_files(out: Path, sp_model_path: Path, tokens: SpecialTokens,
                          model_max_length: int, with_ernie_m_files: bool) -> None:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    special = _special_pieces(processor, tokens)
    fast_tokenizer(sp_model_path, tokens).save(str(out / "tokenizer.json"))
    # No token_type_ids: ErnieMModel takes none and XLM-R's single type is all zeros.
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "model_input_names": ["input_ids", "attention_mask"],
              "clean_up_tokenization_spaces": False, "do_lower_case": False, **special}
    if with_ernie_m_files:
        shutil.copyfile(sp_model_path, out / "sentencepiece.bpe.model")
        pieces = [processor.IdToPiece(i) for i in range(processor.GetPieceSize())]
        (out / "vocab.txt").write_text("".join(p + "\n" for p in pieces), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False))
