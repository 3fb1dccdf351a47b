"""The embedded demo corpus: real multi-way parallel text from gettext catalogs on PyPI.

Packages such as Django ship the same English UI messages translated into ~100 languages as
`.po` catalogs. We read a *pinned* version of them (installed as a dependency, never
committed), clean each message, and split by message so that no held-out message is seen in
training in any language. The build is deterministic and cached: a manifest records what was
read, per-language counts, what was skipped and why, and a hash of the output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import polib

SPLITS = ("train", "validation", "test")
SOURCE_LANGUAGE = "en"
MANIFEST = "manifest.json"
# `<corpus>/packages.tsv`: message key -> the packages it comes from, a label for
# cross-lingual transfer tasks (a message's translations share its key, hence its label).
PACKAGES = "packages.tsv"
FORMAT_VERSION = 3

_PRINTF = re.compile(r"%(\([^)]*\))?[-#0 +]*\d*(\.\d+)?[sdifgGeExXoucr%]")
_BRACES = re.compile(r"\{[^{}\s]*\}")
_MARKUP = re.compile(r"<[^<>]{1,200}>")
_SPACE = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class CatalogSource:
    """Catalogs `<root>/**/locale/<lang>/LC_MESSAGES/<domain>.po` of one pinned package.

    `root=None` means the installed package `package`, whose version must equal `version`
    (so the corpus is the same on every machine).
    """

    package: str  # distribution name on PyPI
    version: str
    module: str  # import name, which locates the installed files
    domain: str
    root: Optional[str] = None

    def catalogs(self) -> Dict[str, List[Path]]:
        root = Path(self.root) if self.root else self._installed_root()
        found: Dict[str, List[Path]] = defaultdict(list)
        for path in sorted(root.glob(f"**/locale/*/LC_MESSAGES/{self.domain}.po")):
            found[normalize_locale(path.parts[-3])].append(path)
        if not found:
            raise FileNotFoundError(f"no {self.domain}.po catalogs under {root}")
        return dict(found)

    def _installed_root(self) -> Path:
        try:
            installed = importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(
                f"the demo corpus is built from {self.package}=={self.version}'s catalogs, and "
                f"{self.package} is not installed (pip install -e . installs it)") from None
        if installed != self.version:
            raise RuntimeError(
                f"the demo corpus is pinned to {self.package}=={self.version} but {installed} is "
                f"installed; reinstall the project's dependencies")
        spec = importlib.util.find_spec(self.module)
        return Path(list(spec.submodule_search_locations)[0])


# Several packages, so that the larger languages reach a few thousand messages.
DEFAULT_SOURCES = (
    CatalogSource("Django", "5.2.19", "django", "django"),
    CatalogSource("wagtail", "8.0", "wagtail", "django"),
    CatalogSource("Sphinx", "8.2.3", "sphinx", "sphinx"),
)
# Catalog directory names that mean a language another package spells differently.
LOCALE_ALIASES = {"zh_cn": "zh_hans", "zh_sg": "zh_hans", "zh_tw": "zh_hant",
                  "zh_hk": "zh_hant", "pt_pt": "pt", "nb_no": "nb", "sr_rs": "sr", "he_il": "he"}


def normalize_locale(name: str) -> str:
    """`de_DE` -> `de`, `ca@valencia` -> `ca_valencia`, `zh_CN` -> `zh_hans`: one code per
    language across packages, usable in task names."""
    code = name.lower().replace("-", "_").replace("@", "_")
    parts = code.split("_")
    if len(parts) == 2 and parts[0] == parts[1]:
        code = parts[0]
    return LOCALE_ALIASES.get(code, code)


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    sources: Tuple[CatalogSource, ...] = DEFAULT_SOURCES
    # Share of messages (by message id, across all languages) held out per split.
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    strip_placeholders: bool = True
    # Languages with fewer training messages are left out.
    min_train_messages: int = 100
    max_chars: int = 1000

    def __post_init__(self):
        if not 0 <= self.validation_fraction < 1 or not 0 <= self.test_fraction < 1 or \
                self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("CorpusConfig fractions must be in [0, 1) and sum to less than 1")


def clean_text(text: str, strip_placeholders: bool = True) -> str:
    """Unescape, drop format placeholders and markup (if asked), NFC-normalise, squash spaces."""
    text = html.unescape(text)
    if strip_placeholders:
        text = _PRINTF.sub(lambda m: "%" if m.group(0) == "%%" else " ", text)
        text = _BRACES.sub(" ", text)
        text = _MARKUP.sub(" ", text)
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return _SPACE.sub(" ", text).strip()


def message_key(entry: polib.POEntry) -> str:
    """Stable id of one English message (its context and text), shared by all languages and
    packages: the same message in two packages is one message, in one split."""
    raw = "\x00".join([entry.msgctxt or "", entry.msgid])
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:20]


def split_of(key: str, config: CorpusConfig) -> str:
    bucket = int(key[:8], 16) / 0xFFFFFFFF
    if bucket < config.test_fraction:
        return "test"
    if bucket < config.test_fraction + config.validation_fraction:
        return "validation"
    return "train"


def read_catalog(path: Path, config: CorpusConfig, skipped: Counter
                 ) -> Iterable[Tuple[str, str, str]]:
    """(key, english, translation) for each usable entry; the rest are counted in `skipped`."""
    try:
        catalog = polib.pofile(str(path))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        logging.warning("skipping unreadable catalog %s: %s", path, err)
        skipped["unreadable_catalog"] += 1
        return
    for entry in catalog:
        if entry.obsolete or entry.fuzzy:
            skipped["fuzzy_or_obsolete"] += 1
            continue
        translation = entry.msgstr
        if entry.msgid_plural:
            translation = entry.msgstr_plural.get(0, "") if entry.msgstr_plural else ""
        if not translation.strip():
            skipped["untranslated"] += 1
            continue
        english = clean_text(entry.msgid, config.strip_placeholders)
        translation = clean_text(translation, config.strip_placeholders)
        if not english or not translation:
            skipped["empty_after_cleaning"] += 1
            continue
        if len(english) > config.max_chars or len(translation) > config.max_chars:
            skipped["too_long"] += 1
            continue
        yield message_key(entry), english, translation


def collect(config: CorpusConfig
            ) -> Tuple[Dict[str, Dict[str, str]], Dict[str, List[str]], Counter]:
    """{language: {key: text}} over all sources (first occurrence of a key wins), and
    {key: packages it occurs in}."""
    texts: Dict[str, Dict[str, str]] = defaultdict(dict)
    origins: Dict[str, List[str]] = defaultdict(list)
    skipped: Counter = Counter()
    for source in config.sources:
        for language, paths in sorted(source.catalogs().items()):
            if language == SOURCE_LANGUAGE or language.startswith(SOURCE_LANGUAGE + "_"):
                continue  # the English originals come from msgid; en_GB etc. are near-copies
            for path in paths:
                for key, english, translation in read_catalog(path, config, skipped):
                    texts[SOURCE_LANGUAGE].setdefault(key, english)
                    texts[language].setdefault(key, translation)
                    if source.package not in origins[key]:
                        origins[key].append(source.package)
    return texts, dict(origins), skipped


def _write_split_files(texts: Dict[str, Dict[str, str]], out: Path, config: CorpusConfig
                       ) -> Dict[str, Dict[str, int]]:
    counts: Dict[str, Dict[str, int]] = {}
    for language in sorted(texts):
        by_split: Dict[str, List[Tuple[str, str]]] = {s: [] for s in SPLITS}
        for key, text in texts[language].items():
            by_split[split_of(key, config)].append((key, text))
        if len(by_split["train"]) < config.min_train_messages:
            continue
        counts[language] = {}
        for split in SPLITS:
            rows = sorted(by_split[split])
            (out / split).mkdir(parents=True, exist_ok=True)
            with open(out / split / f"{language}.tsv", "w", encoding="utf-8", newline="\n") as f:
                for key, text in rows:
                    f.write(f"{key}\t{text}\n")
            counts[language][split] = len(rows)
    return counts


def _write_packages(origins: Dict[str, List[str]], out: Path) -> None:
    with open(out / PACKAGES, "w", encoding="utf-8", newline="\n") as f:
        for key in sorted(origins):
            f.write(f"{key}\t{','.join(sorted(origins[key]))}\n")


def _content_hash(root: Path) -> str:
    """Of the texts alone: the vocabulary's cache key."""
    digest = hashlib.sha256()
    for path in sorted(root.glob("*/*.tsv")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _file_hash(path: Path) -> Optional[str]:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _config_record(config: CorpusConfig) -> dict:
    record = dataclasses.asdict(config)
    record["sources"] = [dataclasses.asdict(s) for s in config.sources]
    record["format_version"] = FORMAT_VERSION
    return record


def build_corpus(out_dir: os.PathLike, config: CorpusConfig = CorpusConfig()) -> dict:
    """Build into `out_dir` (replacing it whole, atomically) and return the manifest."""
    out_dir = Path(out_dir)
    texts, origins, skipped = collect(config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        counts = _write_split_files(texts, staging, config)
        _write_packages(origins, staging)
        manifest = {
            "config": _config_record(config),
            "languages": sorted(counts),
            "counts": counts,
            "skipped": dict(sorted(skipped.items())),
            "content_sha256": _content_hash(staging),
            "packages_sha256": _file_hash(staging / PACKAGES),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def load_or_build(out_dir: os.PathLike, config: CorpusConfig = CorpusConfig()) -> dict:
    """The cached corpus if it was built with this config and is intact, else a fresh build."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("config") == json.loads(json.dumps(_config_record(config))) and \
                    manifest.get("content_sha256") == _content_hash(out_dir) and \
                    manifest.get("packages_sha256") == _file_hash(out_dir / PACKAGES):
                return manifest
            logging.warning("corpus in %s is stale or damaged; rebuilding", out_dir)
        except (OSError, ValueError) as err:
            logging.warning("unreadable corpus manifest %s (%s); rebuilding", manifest_path, err)
    return build_corpus(out_dir, config)


def read_split(corpus_dir: os.PathLike, split: str, language: str) -> Dict[str, str]:
    """{message key: text} of one language in one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    path = Path(corpus_dir) / split / f"{language}.tsv"
    if not path.exists():
        known = sorted(p.stem for p in (Path(corpus_dir) / split).glob("*.tsv"))
        raise ValueError(f"unknown language {language!r} in {corpus_dir}; known: {known}")
    rows = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, text = line.rstrip("\n").split("\t", 1)
            rows[key] = text
    return rows


def read_packages(corpus_dir: os.PathLike) -> Dict[str, Tuple[str, ...]]:
    """{message key: the packages (`CatalogSource.package`) it occurs in}."""
    path = Path(corpus_dir) / PACKAGES
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; rebuild the corpus (format version "
                                f"{FORMAT_VERSION} records each message's packages)")
    rows = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, packages = line.rstrip("\n").split("\t", 1)
            rows[key] = tuple(packages.split(","))
    return rows


def languages(corpus_dir: os.PathLike) -> Sequence[str]:
    return json.loads((Path(corpus_dir) / MANIFEST).read_text())["languages"]
