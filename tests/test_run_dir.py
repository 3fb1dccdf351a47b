"""A run directory describes itself: export, embedding and evaluation read nothing else, and
reading a run leaves the caller's gin config alone."""

import json
import shutil

import gin
import numpy as np
import pytest

from ernie_m_jax import cli, run_dir, saved_run
from tests.train_runs import run, tiny_bindings


@pytest.fixture(scope="module")
def run_without_data(demo_data_dir, tmp_path_factory):
    """A tiny run trained on its own copy of the demo data, which is then deleted."""
    root = tmp_path_factory.mktemp("self_contained")
    data_dir = root / "data"
    shutil.copytree(demo_data_dir, data_dir)
    model_dir = root / "run"
    run(model_dir, tiny_bindings(data_dir, 3))
    shutil.rmtree(data_dir)
    return model_dir


def test_the_run_keeps_its_vocabulary_and_language_ids(run_without_data):
    assert (run_without_data / run_dir.VOCAB_FILE).stat().st_size > 1000
    ids = json.loads((run_without_data / run_dir.LANGUAGES_FILE).read_text())
    assert ids == {"de": 0, "fr": 1}  # tiny_bindings' languages, in registration order
    assert "import tasks.demo" in (run_without_data / run_dir.CONFIG_FILE).read_text()


@pytest.mark.slow
def test_export_embed_and_evaluate_without_the_training_data(run_without_data, tmp_path,
                                                             capsys):
    loaded = saved_run.load(str(run_without_data), setup_data=False)
    assert loaded.step == 3 and loaded.languages == {"de": 0, "fr": 1}
    assert loaded.vocabulary_path == run_without_data / run_dir.VOCAB_FILE

    common = [f"--model_dir={run_without_data}"]
    assert cli.main(["export-hf", *common, f"--out={tmp_path / 'hf'}",
                     "--fold_language=mean"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    source, target = tmp_path / "de.txt", tmp_path / "fr.txt"
    source.write_text("Seite speichern\nDatei löschen\nAbbrechen\n", encoding="utf-8")
    target.write_text("Enregistrer la page\nSupprimer le fichier\nAnnuler\n", encoding="utf-8")
    assert cli.main(["embed", *common, f"--input={source}", "--language=de",
                     f"--output={tmp_path / 'v.npy'}"]) == 0
    assert np.load(tmp_path / "v.npy").shape == (3, 32)
    assert cli.main(["eval-retrieval", *common, f"--source_file={source}",
                     f"--target_file={target}", "--source_language=de", "--target_language=fr",
                     f"--output={tmp_path / 'r.json'}"]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["settings"]["step"] == 3
    capsys.readouterr()


def test_reading_a_run_leaves_the_callers_gin_config_alone(run_without_data):
    gin.clear_config()
    try:
        gin.parse_config("import ernie_m_jax.configs\nModelConfig.hidden_size = 48")
        loaded = saved_run.load(str(run_without_data))
        assert loaded.model.hidden_size == 32  # the run's own config was read ...
        assert gin.query_parameter("ModelConfig.hidden_size") == 48  # ... and put away
        assert "TrainConfig.num_steps" not in gin.config_str()
    finally:
        gin.clear_config()


# Characters that str.splitlines() breaks at but that do not end a line in a text file.
NOT_NEWLINES = ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]


@pytest.mark.slow
def test_every_command_that_reads_lines_keeps_one_row_per_line(run_without_data, tmp_path):
    common = [f"--model_dir={run_without_data}"]
    for index, char in enumerate(NOT_NEWLINES):
        source, target = tmp_path / f"de{index}.txt", tmp_path / f"fr{index}.txt"
        source.write_bytes(f"Seite{char}speichern\r\nDatei löschen\nAbbrechen".encode())
        target.write_bytes(f"Enregistrer{char}la page\nSupprimer\nAnnuler\n".encode())
        vectors = tmp_path / f"v{index}.npy"
        assert cli.main(["embed", *common, f"--input={source}", "--language=de",
                         f"--output={vectors}"]) == 0
        assert np.load(vectors).shape[0] == 3, repr(char)
        out = tmp_path / f"r{index}.json"
        assert cli.main(["eval-retrieval", *common, f"--source_file={source}",
                         f"--target_file={target}", "--source_language=de",
                         "--target_language=fr", f"--output={out}"]) == 0
        (pairs,) = json.loads(out.read_text())["pairs"].values()
        assert pairs["pairs"] == 3, repr(char)


def test_data_sources_read_one_row_per_line(tmp_path):
    from ernie_m_jax.data import sources

    for index, char in enumerate(NOT_NEWLINES):
        path = tmp_path / f"{index}.txt"
        path.write_bytes(f"eins{char}zwei\r\ndrei\nvier".encode())
        assert sources.read_lines(path) == [f"eins{char}zwei".encode(), b"drei", b"vier"]
        lines = sources.load_split_texts({"train": path}, max_chars=1000, what="test")["train"]
        assert len(lines) == 3, repr(char)
