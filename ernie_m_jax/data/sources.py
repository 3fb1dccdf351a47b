"""Text going into seqio tasks: checked once, with every rejected line counted and named.

Python-side sources (files, lists of strings, the demo corpus) are checked here before they
become a `tf.data.Dataset`: invalid UTF-8, empty or whitespace-only lines, over-long lines and
pairs with one side empty are skipped and counted (`SkipCounts`), never passed on as garbage.
TFDS-backed sources are checked inside the graph by `tf_clean_text` / `tf_keep_nonempty`
(invalid bytes become U+FFFD there, since a graph cannot log per example).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import unicodedata
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import tensorflow as tf

from ernie_m_jax import files

DEFAULT_MAX_CHARS = 2000
TextLike = Union[str, bytes]
# A language code as used in task names: ISO 639 plus optional script/region, e.g. zh_hans.
_LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(_[a-z0-9]{2,8})*$")
_SPACES = re.compile(r"\s+")
# Format characters that carry meaning in real text (ZWJ/ZWNJ in Indic and Persian scripts).
_FORMAT_CHARS = {"\u200c", "\u200d"}


class SkipCounts(collections.Counter):
    """Why lines were dropped, e.g. {"empty": 3, "invalid_utf8": 1}."""

    def report(self, what: str) -> None:
        if self:
            logging.warning("%s: skipped %s", what, dict(sorted(self.items())))


def check_language_code(code: str) -> str:
    """Task names embed the code, so it must be a plain lowercase code such as `de` or `pt_br`."""
    if not isinstance(code, str) or not _LANGUAGE_CODE.match(code):
        raise ValueError(
            f"invalid language code {code!r}: use a lowercase ISO 639 code with optional "
            f"_script/_region parts, e.g. 'de', 'zh_hans', 'pt_br'")
    return code


def clean_line(line: TextLike, max_chars: int, skips: SkipCounts) -> str:
    """The NFC-normalised, stripped line, or "" (and a counted reason) if it is unusable."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            skips["invalid_utf8"] += 1
            return ""
    # NULs and other control characters (tabs and newlines included) become spaces.
    text = "".join(ch if unicodedata.category(ch)[0] != "C" or ch in _FORMAT_CHARS else " "
                   for ch in unicodedata.normalize("NFC", line))
    text = _SPACES.sub(" ", text).strip()
    if not text:
        skips["empty"] += 1
        return ""
    if len(text) > max_chars:
        skips["too_long"] += 1
        return ""
    return text


def clean_lines(lines: Iterable[TextLike], max_chars: int = DEFAULT_MAX_CHARS
                ) -> Tuple[List[str], SkipCounts]:
    skips = SkipCounts()
    kept = [text for text in (clean_line(line, max_chars, skips) for line in lines) if text]
    return kept, skips


def clean_pairs(pairs: Iterable[Tuple[TextLike, TextLike]], max_chars: int = DEFAULT_MAX_CHARS
                ) -> Tuple[List[Tuple[str, str]], SkipCounts]:
    """Pairs with either side unusable are dropped whole (counted as `one_side_<reason>`)."""
    skips = SkipCounts()
    kept = []
    for source, target in pairs:
        side = SkipCounts()
        a, b = clean_line(source, max_chars, side), clean_line(target, max_chars, side)
        if a and b:
            kept.append((a, b))
        else:
            for reason, n in side.items():
                skips[f"one_side_{reason}" if (a or b) else reason] += n
    return kept, skips


def read_lines(path: os.PathLike) -> List[bytes]:
    """Raw lines of a text file (one sentence per line); decoding is `clean_lines`' job."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    return files.split_lines(path.read_bytes())


SplitTexts = Mapping[str, Union[Sequence[TextLike], os.PathLike]]


def load_split_texts(texts: SplitTexts, max_chars: int, what: str) -> Dict[str, List[str]]:
    """{split: lines or a path to a one-sentence-per-line file} -> {split: checked lines}."""
    out = {}
    for split, value in texts.items():
        lines = read_lines(value) if isinstance(value, (str, os.PathLike)) else value
        kept, skips = clean_lines(lines, max_chars)
        origin = f" from {value}" if isinstance(value, (str, os.PathLike)) else ""
        skips.report(f"{what} [{split}]{origin}")
        if not kept:
            raise ValueError(f"{what} [{split}]: no usable text{origin} "
                             f"({len(lines)} lines, skipped {dict(skips)})")
        out[split] = kept
    return out


def tf_clean_text(text: tf.Tensor) -> tf.Tensor:
    """Graph-side cleaning for TFDS text: invalid UTF-8 -> U+FFFD, surrounding space stripped."""
    text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
    return tf.strings.strip(text)


def tf_keep_nonempty(*texts: tf.Tensor) -> tf.Tensor:
    keep = tf.constant(True)
    for text in texts:
        keep = tf.logical_and(keep, tf.strings.length(text) > 0)
    return keep
