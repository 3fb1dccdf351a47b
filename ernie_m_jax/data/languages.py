"""Language codes -> the integer ids fed to the model's language embedding.

Ids must not change between runs that share a checkpoint, so they are assigned explicitly or
in registration order (the demo registers its languages sorted), and a code never changes id.
"""

from __future__ import annotations

from typing import Dict, Optional

from ernie_m_jax.data.sources import check_language_code

_IDS: Dict[str, int] = {}


def register_language(code: str, language_id: Optional[int] = None) -> int:
    """The id of `code`, assigning the next free one (or `language_id`) on first use."""
    check_language_code(code)
    if code in _IDS:
        if language_id is not None and language_id != _IDS[code]:
            raise ValueError(f"language {code!r} already has id {_IDS[code]}, not {language_id}")
        return _IDS[code]
    if language_id is None:
        language_id = max(_IDS.values(), default=-1) + 1
    owner = next((c for c, i in _IDS.items() if i == language_id), None)
    if owner is not None:
        raise ValueError(f"language id {language_id} is already taken by {owner!r}")
    if language_id < 0:
        raise ValueError(f"language id must be >= 0, got {language_id}")
    _IDS[code] = language_id
    return language_id


def language_id(code: str) -> int:
    if code not in _IDS:
        raise ValueError(f"unknown language {code!r}; registered: {sorted(_IDS)}")
    return _IDS[code]


def registered_languages() -> Dict[str, int]:
    return dict(_IDS)


def check_fits(num_languages: int) -> None:
    """Refuse a model whose language embeddings lack a row for a registered language."""
    too_big = {c: i for c, i in _IDS.items() if i >= num_languages}
    if num_languages and too_big:
        raise ValueError(f"ModelConfig.num_languages={num_languages} has no embedding for "
                         f"languages {too_big}; raise num_languages")
