import json
import textwrap

import pytest

from ernie_m_jax.data import corpus

PO_HEADER = textwrap.dedent('''\
    msgid ""
    msgstr ""
    "Content-Type: text/plain; charset=UTF-8\\n"

    ''')


def _write_po(root, language, body, name="demo.po"):
    path = root / "app" / "locale" / language / "LC_MESSAGES" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PO_HEADER + textwrap.dedent(body), encoding="utf-8")
    return path


DE = '''\
    msgid "Save"
    msgstr "Speichern"

    msgid "Hello <b>%(name)s</b>, you have {count} new &amp; unread messages"
    msgstr "Hallo <b>%(name)s</b>, Sie haben {count} neue &amp; ungelesene Nachrichten"

    #, fuzzy
    msgid "Maybe"
    msgstr "Vielleicht"

    msgid "Untranslated"
    msgstr ""

    msgid "%s"
    msgstr "%s"

    msgctxt "month"
    msgid "May"
    msgstr "Mai"

    msgid "one file"
    msgid_plural "%(n)s files"
    msgstr[0] "eine Datei"
    msgstr[1] "%(n)s Dateien"

    msgid "Cafe\u0301 100%% done"
    msgstr "Cafe\u0301 zu 100%% fertig"
    '''

FR = '''\
    msgid "Save"
    msgstr "Enregistrer"

    msgctxt "month"
    msgid "May"
    msgstr "Mai"
    '''


def _config(root, **kwargs):
    source = corpus.CatalogSource("demo", "1.0", "demo", "demo", root=str(root))
    return corpus.CorpusConfig(sources=(source,), min_train_messages=0, **kwargs)


def _all_rows(out, language):
    rows = {}
    for split in corpus.SPLITS:
        rows.update(corpus.read_split(out, split, language))
    return rows


def test_catalogs_are_cleaned_and_bad_entries_counted(tmp_path):
    _write_po(tmp_path / "src", "de", DE)
    _write_po(tmp_path / "src", "fr", FR)
    manifest = corpus.build_corpus(tmp_path / "out", _config(tmp_path / "src"))
    de = _all_rows(tmp_path / "out", "de")
    en = _all_rows(tmp_path / "out", "en")
    assert sorted(de.values()) == sorted([
        "Speichern", "Hallo , Sie haben neue & ungelesene Nachrichten", "Mai", "eine Datei",
        "Café zu 100% fertig"])
    assert "Hello , you have new & unread messages" in en.values()
    assert "Café 100% done" in en.values()  # NFC: e + combining accent -> é
    assert manifest["skipped"] == {"fuzzy_or_obsolete": 1, "untranslated": 1,
                                   "empty_after_cleaning": 1}
    # The same English message has one key in every language; context keeps "May"s apart.
    fr = _all_rows(tmp_path / "out", "fr")
    assert set(fr) < set(de) and de[next(k for k, v in fr.items() if v == "Mai")] == "Mai"
    assert manifest["languages"] == ["de", "en", "fr"]


def test_keeping_placeholders_keeps_them_consistently(tmp_path):
    _write_po(tmp_path / "src", "de", DE)
    corpus.build_corpus(tmp_path / "out", _config(tmp_path / "src", strip_placeholders=False))
    de = _all_rows(tmp_path / "out", "de").values()
    assert "Hallo <b>%(name)s</b>, Sie haben {count} neue & ungelesene Nachrichten" in de


def test_unreadable_catalogs_are_skipped_and_counted(tmp_path):
    _write_po(tmp_path / "src", "de", DE)
    bad = tmp_path / "src" / "app" / "locale" / "xx" / "LC_MESSAGES" / "demo.po"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(PO_HEADER.encode() + b'msgid "a"\nmsgstr "\xff\xfe\x00 broken\n')
    manifest = corpus.build_corpus(tmp_path / "out", _config(tmp_path / "src"))
    assert manifest["skipped"]["unreadable_catalog"] == 1
    assert "xx" not in manifest["languages"]


@pytest.fixture(scope="module")
def django_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("django") / "corpus"
    return out, corpus.build_corpus(out)


@pytest.mark.slow
def test_django_corpus_is_deterministic_and_cached(django_corpus, tmp_path):
    out, manifest = django_corpus
    again = corpus.build_corpus(tmp_path / "again")
    assert again == manifest
    assert len(manifest["languages"]) >= 95
    # Django + Wagtail + Sphinx: the larger languages reach thousands of messages.
    assert manifest["counts"]["fr"]["train"] > 2000 and manifest["counts"]["ja"]["test"] > 10
    assert sum(c["train"] for c in manifest["counts"].values()) > 100_000
    stamp = (out / corpus.MANIFEST).stat().st_mtime_ns
    assert corpus.load_or_build(out) == manifest
    assert (out / corpus.MANIFEST).stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_damaged_cache_is_rebuilt(tmp_path):
    src = tmp_path / "src"
    _write_po(src, "de", DE)
    config = _config(src)
    manifest = corpus.build_corpus(tmp_path / "out", config)
    victim = next((tmp_path / "out" / "train").glob("*.tsv"))
    victim.write_text("truncated")
    assert corpus.load_or_build(tmp_path / "out", config) == manifest
    (tmp_path / "out" / corpus.MANIFEST).write_text("{not json")
    assert corpus.load_or_build(tmp_path / "out", config) == manifest
    (tmp_path / "out" / corpus.PACKAGES).unlink()
    assert corpus.load_or_build(tmp_path / "out", config) == manifest
    assert corpus.read_packages(tmp_path / "out")


def test_no_held_out_message_is_seen_in_training_in_any_language(django_corpus):
    out, manifest = django_corpus
    keys = {split: set() for split in corpus.SPLITS}
    for language in manifest["languages"]:
        for split in corpus.SPLITS:
            keys[split] |= set(corpus.read_split(out, split, language))
    assert keys["test"] and keys["validation"]
    assert not keys["test"] & keys["train"]
    assert not keys["validation"] & keys["train"]
    assert not keys["test"] & keys["validation"]
    assert json.loads((out / corpus.MANIFEST).read_text()) == manifest


def test_unknown_language_and_split_are_named(django_corpus):
    out, _ = django_corpus
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        corpus.read_split(out, "train", "klingon")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        corpus.read_split(out, "dev", "de")


def test_pinned_source_version_is_enforced():
    with pytest.raises(RuntimeError, match="pinned to Django==0.1"):
        corpus.CatalogSource("Django", "0.1", "django", "django").catalogs()
    with pytest.raises(FileNotFoundError, match="not installed"):
        corpus.CatalogSource("no-such-dist-xyz", "1", "nosuch", "x").catalogs()


def test_locale_names_are_unified_across_packages():
    assert corpus.normalize_locale("de_DE") == "de"
    assert corpus.normalize_locale("az_AZ") == "az"
    assert corpus.normalize_locale("ca@valencia") == "ca_valencia"
    assert corpus.normalize_locale("zh_CN") == "zh_hans"
    assert corpus.normalize_locale("zh_Hant") == "zh_hant"
    assert corpus.normalize_locale("pt-BR") == "pt_br"


def test_a_message_shared_by_two_packages_is_one_message(tmp_path):
    _write_po(tmp_path / "a", "de_DE", DE)
    _write_po(tmp_path / "b", "de", FR.replace("Enregistrer", "Sichern"))
    sources = tuple(corpus.CatalogSource(name, "1.0", name, "demo", root=str(tmp_path / name))
                    for name in ("a", "b"))
    corpus.build_corpus(tmp_path / "out", corpus.CorpusConfig(sources=sources,
                                                              min_train_messages=0))
    rows = _all_rows(tmp_path / "out", "de")
    assert list(rows.values()).count("Speichern") == 1  # first package wins, one key
    assert "Sichern" not in rows.values()
    # ... and the message's label names both packages; a message of one package, that one.
    packages = corpus.read_packages(tmp_path / "out")
    by_text = {text: packages[key] for key, text in rows.items()}
    assert by_text["Speichern"] == ("a", "b")
    assert by_text["Mai"] == ("a", "b")
    assert by_text["Café zu 100% fertig".replace("é", "é")] == ("a",)
    assert set(packages) == set(_all_rows(tmp_path / "out", "en"))
