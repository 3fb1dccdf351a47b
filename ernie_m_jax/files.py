"""Writing results so that a crash or a full disk never leaves half a file behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, AnyStr, List, Tuple

from etils import epath


def write_text_atomic(path: os.PathLike, text: str):
    """Write beside `path`, then rename over it: readers see the old file or the new one.

    An object-store URL (gs://...) is written as one object, which such stores make visible
    whole or not at all (and they cannot rename); `pathlib` would turn it into a local path."""
    if "://" in os.fspath(path):
        target = epath.Path(os.fspath(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def split_lines(data: AnyStr) -> List[AnyStr]:
    r"""Lines of a text: what ends in \n (or \r\n), and a last line without one.

    Not `str.splitlines()`, which also breaks at \f, \v, \x1c-\x1e, \x85, \u2028 and
    \u2029 (and, for bytes, at a lone \r): a file's rows must be its lines, or parallel files
    fall out of step.
    """
    newline, carriage = ("\n", "\r") if isinstance(data, str) else (b"\n", b"\r")
    lines = data.split(newline)
    if lines and not lines[-1]:
        lines.pop()  # the text ended with a newline
    return [line[:-1] if line.endswith(carriage) else line for line in lines]


def write_json_atomic(path: os.PathLike, data: Any, indent: int = 1):
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


class DamagedFileError(ValueError):
    """A file this project wrote (or reads) that no longer parses: named, with what to do."""


def read_json(path: os.PathLike, remedy: str, kind: type = dict) -> Any:
    """A JSON file's value, which must be a `kind`; a damaged one (not UTF-8, not JSON, or
    another kind of value) is one error naming the file, what is wrong and `remedy`."""
    target = epath.Path(os.fspath(path))
    try:
        value = json.loads(target.read_bytes().decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError both are
        raise DamagedFileError(f"{path} is damaged ({err}); {remedy}") from None
    if not isinstance(value, kind):
        raise DamagedFileError(f"{path} is damaged (it holds a JSON {type(value).__name__}, "
                               f"not a {kind.__name__}); {remedy}")
    return value


def _split_marked_block(path: Path, name: str) -> Tuple[str, str, str, str, str]:
    """(head, begin, block, end, tail) of a markdown file's one `results:NAME` block."""
    begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    content = path.read_text(encoding="utf-8")
    if content.count(begin) != 1 or content.count(end) != 1 or \
            content.index(begin) > content.index(end):
        raise ValueError(f"{path} needs exactly one {begin} ... {end} block")
    head, rest = content.split(begin, 1)
    block, tail = rest.split(end, 1)
    return head, begin, block, end, tail


def replace_marked_block(path: os.PathLike, name: str, text: str) -> Path:
    """Put `text` between `<!-- results:NAME -->` and `<!-- /results:NAME -->` in a markdown
    file, so that a README's generated tables are regenerated in place, never pasted."""
    path = Path(path)
    head, begin, _, end, tail = _split_marked_block(path, name)
    return write_text_atomic(path, f"{head}{begin}\n{text}\n{end}{tail}")


def read_marked_block(path: os.PathLike, name: str) -> str:
    """The text that `replace_marked_block` put in the `results:NAME` block (to check a
    committed table against what its results generate)."""
    _, _, block, _, _ = _split_marked_block(Path(path), name)
    return block.removeprefix("\n").removesuffix("\n")
