"""T5X-style gin plumbing: `--gin_file=...` (repeatable) and `--gin.NAME=VALUE` flags.

Files are looked up as given, then under the repository's `gin/` folder, so
`--gin_file=runs/demo_cpu.gin` and `include 'models/small.gin'` work from anywhere. A wrong
binding or unknown name raises gin's own error here, before any data is read or compiled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tokenize
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import gin

GIN_DIR = Path(__file__).resolve().parent.parent / "gin"
FLAG_PREFIX = "--gin."


def split_gin_flags(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(other args, bindings) where `--gin.A.b=1` becomes the binding `A.b = 1`."""
    rest, bindings = [], []
    for arg in argv:
        if arg.startswith(FLAG_PREFIX):
            name, sep, value = arg[len(FLAG_PREFIX):].partition("=")
            if not sep or not name:
                raise ValueError(f"malformed gin flag {arg!r}; use --gin.NAME=VALUE")
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
    return rest, bindings


def parse(files: Sequence[str], bindings: Sequence[str] = ()) -> None:
    """Parse files and bindings into gin's global config (gin errors propagate).

    The configurables a file names must be registered: the files import their modules
    (`import ernie_m_jax.train`, `import tasks.demo`), as T5X's do.
    """
    for directory in (str(GIN_DIR), os.getcwd()):
        if Path(directory).is_dir() and directory not in gin.config._LOCATION_PREFIXES:
            gin.add_config_file_search_path(directory)
    for path in files:
        if not Path(path).exists() and not (GIN_DIR / path).exists():
            raise FileNotFoundError(f"gin file not found: {path} (also looked in {GIN_DIR})")
    quiet = _DropMissingPathProbes()
    logging.getLogger().addFilter(quiet)
    try:
        for path in files:  # what gin.parse_config_files_and_bindings does, naming the culprit
            with _naming(f"gin file {path}"):
                gin.parse_config_file(path)
        for binding in bindings:
            name, _, value = binding.partition(" = ")
            with _naming(f"the flag {FLAG_PREFIX}{name}={value}" if value else
                         f"the binding {binding!r}"):
                gin.parse_config(binding)
    finally:
        logging.getLogger().removeFilter(quiet)


# What gin raises for text it cannot parse (a truncated or binary file, a bad flag value).
_PARSE_ERRORS = (SyntaxError, tokenize.TokenError, UnicodeDecodeError)


@contextlib.contextmanager
def _naming(source: str) -> Iterator[None]:
    """gin's tokenizer and decoding errors say neither which file nor which flag: say it."""
    try:
        yield
    except _PARSE_ERRORS as err:
        detail = err.args[0] if isinstance(err, tokenize.TokenError) and err.args else err
        raise ValueError(f"{source} cannot be parsed: {detail}") from err


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Parse and read a config inside, leaving the caller's gin config as it was.

    Reading a saved run must have no side effects, but gin keeps one global config. Its text
    (`gin.config_str()`: imports, macros and every binding, which gin parses back to the same
    values) is set aside and parsed again on exit: gin's public API only.
    """
    saved = gin.config_str()
    gin.clear_config()
    try:
        yield
    finally:
        gin.clear_config()
        gin.parse_config(saved)


class _DropMissingPathProbes(logging.Filter):
    """gin logs an ERROR for each search-path prefix an include is not under, even when a
    later prefix finds it; real misses still raise IOError."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found:")
