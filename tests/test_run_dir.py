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


@pytest.mark.slow
def test_the_run_keeps_its_vocabulary_and_language_ids(run_without_data):
    assert (run_without_data / run_dir.VOCAB_FILE).stat().st_size > 1000
    ids = json.loads((run_without_data / run_dir.LANGUAGES_FILE).read_text())
    assert ids == {"de": 0, "en": 1, "fr": 2}  # tiny_bindings' two, English, sorted
    assert "import tasks.demo" in (run_without_data / run_dir.CONFIG_FILE).read_text()


@pytest.mark.slow
def test_export_embed_and_evaluate_without_the_training_data(run_without_data, tmp_path,
                                                             capsys):
    loaded = saved_run.load(str(run_without_data), setup_data=False)
    assert loaded.step == 3 and loaded.languages == {"de": 0, "en": 1, "fr": 2}
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


@pytest.mark.parametrize("where", ["is", "inside", "holds"])
def test_an_export_never_writes_into_a_training_run(where, run_without_data, capsys):
    out = {"is": run_without_data, "inside": run_without_data / "export",
           "holds": run_without_data.parent}[where]
    before = sorted(p.name for p in run_without_data.iterdir())
    config = (run_without_data / run_dir.CONFIG_FILE).read_text()
    assert cli.main(["export-hf", f"--model_dir={run_without_data}", f"--out={out}",
                     "--overwrite", "--fold_language=mean"]) == 2
    err = capsys.readouterr().err
    assert f"the training run {run_without_data}" in err and "outside any run" in err
    assert sorted(p.name for p in run_without_data.iterdir()) == before
    assert (run_without_data / run_dir.CONFIG_FILE).read_text() == config


def test_a_missing_step_lists_the_saved_ones_and_a_missing_output_folder_fails_first(
        run_without_data, tmp_path, capsys, monkeypatch):
    assert cli.main(["embed", f"--model_dir={run_without_data}", "--step=99",
                     f"--input={__file__}", f"--output={tmp_path / 'v.npy'}",
                     "--language=de"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint of step 99" in err and "its steps are 3" in err
    monkeypatch.setattr(saved_run, "load", lambda *a, **k: pytest.fail("loaded the model"))
    assert cli.main(["embed", f"--model_dir={run_without_data}", f"--input={__file__}",
                     f"--output={tmp_path / 'missing' / 'v.npy'}", "--language=de"]) == 2
    assert "its folder does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_a_refused_or_finished_start_leaves_the_runs_config_alone(run_without_data,
                                                                  demo_data_dir, capsys):
    from ernie_m_jax import checkpoints
    from tests.train_runs import as_flags

    config = (run_without_data / run_dir.CONFIG_FILE).read_text()
    history = sorted(p.name for p in (run_without_data / run_dir.CONFIG_HISTORY).iterdir())
    assert history == ["start_step_0.gin"]
    with pytest.raises(checkpoints.ShapeMismatchError):
        run(run_without_data, tiny_bindings(demo_data_dir, 6, **{"ModelConfig.hidden_size": 64}))
    gin.clear_config()
    try:  # already at NUM_STEPS: nothing to do, and said so
        assert cli.main(["train", "--gin_file=runs/demo_cpu.gin",
                         f"--model_dir={run_without_data}",
                         *as_flags(tiny_bindings(demo_data_dir, 3))]) == 0
    finally:
        gin.clear_config()
    assert "is already at step 3" in capsys.readouterr().out
    assert (run_without_data / run_dir.CONFIG_FILE).read_text() == config
    assert sorted(p.name for p in (run_without_data / run_dir.CONFIG_HISTORY).iterdir()) == \
        history


def test_a_run_on_an_object_store_writes_its_files_there(tmp_path, monkeypatch):
    """gs:// run directories (TPU VMs) keep their config and language ids in the bucket:
    `pathlib` would have turned the URL into a local `gs:/...` folder."""
    import os

    from etils.epath import gpath, testing

    # epath takes TensorFlow's gfile for gs:// whenever TensorFlow is installed, around the
    # mock: route it to the mock backend, which maps the bucket to a local folder.
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    bucket = tmp_path / "bucket"
    local = lambda p: os.fspath(p).replace("gs://bucket", str(bucket))
    monkeypatch.chdir(tmp_path)  # where a collapsed `gs:/bucket/...` would land
    in_bucket = lambda original, p, *args, **kwargs: original(local(p), *args, **kwargs)
    fns = {name: in_bucket for name in ("open", "exists", "isdir", "makedirs", "mkdir")}
    with testing.mock_epath(**fns):
        run_dir.write_config("gs://bucket/run", "ModelConfig.num_layers = 2\n", 0)
        run_dir.write_languages("gs://bucket/run", {"de": 0, "en": 1})
        assert run_dir.languages("gs://bucket/run") == {"de": 0, "en": 1}
    assert "num_layers = 2" in (bucket / "run" / run_dir.CONFIG_FILE).read_text()
    assert (bucket / "run" / run_dir.CONFIG_HISTORY / "start_step_0.gin").exists()
    assert not (tmp_path / "gs:").exists()
