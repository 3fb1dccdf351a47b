"""T5X-style gin plumbing: `--gin_file=...` (repeatable) and `--gin.NAME=VALUE` flags.

Files are looked up as given, then under the repository's `gin/` folder, so
`--gin_file=runs/demo_cpu.gin` and `include 'models/small.gin'` work from anywhere. A wrong
binding or unknown name raises gin's own error here, before any data is read or compiled.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Sequence, Tuple

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
    """Register the configurables, then parse files and bindings (gin errors propagate)."""
    # Import everything gin files may name, so unknown names are real mistakes.
    import ernie_m_jax.train  # noqa: F401
    import tasks.demo  # noqa: F401

    if GIN_DIR.is_dir():
        gin.add_config_file_search_path(str(GIN_DIR))
    gin.add_config_file_search_path(os.getcwd())
    for path in files:
        if not Path(path).exists() and not (GIN_DIR / path).exists():
            raise FileNotFoundError(f"gin file not found: {path} (also looked in {GIN_DIR})")
    quiet = _DropMissingPathProbes()
    logging.getLogger().addFilter(quiet)
    try:
        gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=False)
    finally:
        logging.getLogger().removeFilter(quiet)


class _DropMissingPathProbes(logging.Filter):
    """gin logs an ERROR for each search-path prefix an include is not under, even when a
    later prefix finds it; real misses still raise IOError."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found:")
