"""What pod teams run around training (issue #40): profiles, model cards, launchers."""

import glob

import gin
import pytest

from ernie_m_jax import profiling
from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.train.config import TrainConfig
from tests.train_runs import run, tiny_bindings


@pytest.fixture(autouse=True)
def _no_gin_left_behind():
    gin.clear_config()
    yield
    gin.clear_config()


def _traced_steps(model_dir):
    """{step_num} of the `train` step annotations in every trace the run wrote."""
    from jax.profiler import ProfileData

    steps = set()
    for path in glob.glob(f"{model_dir}/plugins/profile/*/*.xplane.pb"):
        for plane in ProfileData.from_file(path).planes:
            for line in plane.lines:
                steps.update(dict(e.stats)["step_num"] for e in line.events if e.name == "train")
    return steps


@pytest.mark.slow
def test_profile_steps_write_a_trace_of_exactly_those_steps(demo_data_dir, tmp_path):
    model_dir = tmp_path / "run"
    run(model_dir, tiny_bindings(demo_data_dir, 4, **{"TrainConfig.profile_steps": (2, 3),
                                                      "TrainConfig.checkpoint_every": 4}))
    traces = glob.glob(f"{model_dir}/plugins/profile/*/*.xplane.pb")
    assert len(traces) == 1  # one host, one window
    assert _traced_steps(model_dir) == {2, 3}
    # Without the setting nothing is traced (the control for the count above).
    run(tmp_path / "plain", tiny_bindings(demo_data_dir, 2))
    assert not (tmp_path / "plain" / "plugins").exists()


@pytest.mark.parametrize("steps, message", [
    ((0, 2), "1 <= first <= last"), ((3, 2), "1 <= first <= last"),
    ((2, 11), "num_steps=10"), ((2,), "() or \\(first, last\\)")])
def test_a_profile_window_outside_the_run_is_refused(steps, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(num_steps=10, profile_steps=steps)
    TrainConfig(num_steps=10, profile_steps=(1, 10))  # the whole run is a valid window


def test_a_window_resumed_past_its_start_traces_the_rest(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(profiling.jax.profiler, "start_trace", lambda d: calls.append("start"))
    monkeypatch.setattr(profiling.jax.profiler, "stop_trace", lambda: calls.append("stop"))
    window = profiling.ProfileWindow(str(tmp_path), (3, 6))
    for step in range(5, 9):  # resumed after step 4
        with window.step(step):
            calls.append(step)
        window.after(step, None)
    assert calls == ["start", 5, 6, "stop", 7, 8]
    assert window.stop() is None  # stopped once
    # Calls of several steps (TrainConfig.steps_per_call): the calls that hold the window's
    # steps are traced, and the one ending at its last step stops the trace.
    calls.clear()
    window = profiling.ProfileWindow(str(tmp_path), (3, 4))
    for first in (1, 3, 5):
        with window.step(first, first + 1):
            calls.append(first)
        window.after(first + 1, None)
    assert calls == [1, "start", 3, "stop", 5]
    with pytest.raises(ValueError, match=r"steps_per_call=2: profile_steps' last step=5 is not"):
        TrainConfig(num_steps=10, profile_steps=(3, 5), steps_per_call=2, log_every=2,
                    checkpoint_every=2)


@pytest.mark.slow
def test_an_export_carries_a_model_card_hugging_face_can_parse(demo_data_dir, tmp_path,
                                                              capsys):
    import json

    from huggingface_hub import ModelCard

    from ernie_m_jax import cli, run_dir
    from ernie_m_jax.export import model_card
    from tests.train_runs import as_flags

    model_dir = tmp_path / "run"
    assert cli.main(["train", "--gin_file=runs/demo_cpu.gin", f"--model_dir={model_dir}",
                     *as_flags(tiny_bindings(demo_data_dir, 3))]) == 0
    scored = json.loads((model_dir / run_dir.RETRIEVAL_FILE.format(step=3)).read_text())
    assert list(scored["pairs"]) == ["en-de"] and scored["layer"] == 1
    out = tmp_path / "hf"
    assert cli.main(["export-hf", f"--model_dir={model_dir}", f"--out={out}",
                     "--format=xlm_roberta", "--fold_language=mean",
                     "--license=apache-2.0"]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.language == ["de", "en", "fr"] and card.data.license == "apache-2.0"
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "fill-mask")
    assert card.data.base_model is None  # trained from scratch
    # tiny_bindings: 8 rows of 16 for the monolingual objectives (MMLM, BTMLM) and 8 of 32
    # for the pairs (TLM, CAMLM), all from step 0.
    assert "- steps: 3 of 3 configured" in card.text
    assert f"- tokens seen: {3 * (2 * 8 * 16 + 2 * 8 * 32):,}" in card.text
    assert "MMLM, TLM, CAMLM, BTMLM from step 0" in card.text
    pair = scored["pairs"]["en-de"]
    assert f"| en-de | {pair['pairs']} | {pair['raw']:.3f} | {pair['centred']:.3f} |" in card.text
    assert (out / model_card.CONFIG_COPY).read_text() == \
        (model_dir / run_dir.CONFIG_FILE).read_text()
    assert "--gin_file=ernie_m_jax_config.gin" in card.text

    # Continued from a Hub checkpoint: import-hf records its id, the card names it.
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(
        {**config, "_name_or_path": "FacebookAI/xlm-roberta-base"}))
    imported, again = tmp_path / "imported", tmp_path / "imported_hf"
    assert cli.main(["import-hf", f"--hf_dir={out}", f"--model_dir={imported}"]) == 0
    assert cli.main(["export-hf", f"--model_dir={imported}", f"--out={again}",
                     "--format=xlm_roberta"]) == 0
    card = ModelCard.load(again / "README.md")
    assert card.data.base_model == "FacebookAI/xlm-roberta-base"
    assert card.data.license == "other" and "Not scored for this step" in card.text


def test_hub_ids_and_language_codes_for_the_card(tmp_path):
    from ernie_m_jax.export import model_card

    assert model_card.hub_id(tmp_path, {"_name_or_path": "xlm-roberta-base"}) == \
        "xlm-roberta-base"
    assert model_card.hub_id(tmp_path, {"_name_or_path": str(tmp_path)}) is None  # a folder
    cache = tmp_path / "models--FacebookAI--xlm-roberta-large" / "snapshots" / "abc123"
    assert model_card.hub_id(cache, {}) == "FacebookAI/xlm-roberta-large"
    assert model_card.hub_id(tmp_path / "my_model", {}) is None
    assert model_card.hf_languages(["zh_hans", "zh_hant", "pt_BR", "en"]) == ["en", "pt", "zh"]


def test_tokens_seen_count_each_objective_from_the_step_it_joins(demo_data_dir):
    from ernie_m_jax import gin_config
    from ernie_m_jax.export import model_card
    from ernie_m_jax.train.config import Experiment

    gin_config.parse(["runs/demo_cpu.gin"], tiny_bindings(demo_data_dir, 10) + [
        "BTMLM_START = 4"])
    exp = Experiment.from_gin()
    # Steps 1-4: MMLM (8 x 16), TLM and CAMLM (8 x 32 each); steps 5-10 add BTMLM (8 x 16).
    stage1, stage2 = 8 * 16 + 2 * 8 * 32, 2 * 8 * 16 + 2 * 8 * 32
    assert model_card.tokens_seen(exp, 3) == 3 * stage1
    assert model_card.tokens_seen(exp, 10) == 4 * stage1 + 6 * stage2
    assert model_card.schedule(exp) == "MMLM, TLM, CAMLM from step 0; BTMLM from step 4"


def _tiny_tfds_datasets(data_dir):
    """Two TFDS datasets prepared offline in `data_dir`: one laid out as mC4 (`text`, splits
    `de` and `de-validation`), one as a translation set (`de`, `en`)."""
    import tensorflow_datasets as tfds

    german = [f"Satz Nummer {i} über Übersetzung und Sprache." for i in range(40)]
    english = [f"Sentence number {i} about translation and language." for i in range(40)]

    class ErnieMTinyMono(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"de": self._generate_examples(german[:32]),
                    "de-validation": self._generate_examples(german[32:])}

        def _generate_examples(self, lines):
            for i, line in enumerate(lines):
                yield i, {"text": line}

    class ErnieMTinyPairs(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"de": tfds.features.Text(), "en": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 32),
                    "validation": self._generate_examples(32, 40)}

        def _generate_examples(self, start, end):
            for i in range(start, end):
                yield i, {"de": german[i], "en": english[i]}

    for builder in (ErnieMTinyMono, ErnieMTinyPairs):
        builder(data_dir=str(data_dir)).download_and_prepare()
    return "ernie_m_tiny_mono:1.0.0", "ernie_m_tiny_pairs:1.0.0"


@pytest.mark.slow
def test_tasks_cached_with_beam_are_what_training_reads(demo_data_dir, tmp_path, capsys):
    """`cache-tasks` (seqio + Apache Beam's DirectRunner) caches a run's TFDS tasks; training
    then reads the cache alone: the prepared datasets are deleted first, and without the
    cache the same run cannot read its data (the control)."""
    import shutil

    from ernie_m_jax import cli
    from tasks import demo
    from tests.train_runs import as_flags

    vocabulary = demo.register_demo(data_dir=demo_data_dir, languages=("de",)).vocabulary_path
    gin.clear_config()
    tfds_dir, cache_dir = tmp_path / "tensorflow_datasets", tmp_path / "seqio_cache"
    mono, pairs = _tiny_tfds_datasets(tfds_dir)
    tfds_run = ["--gin_file=runs/demo_cpu.gin", "--gin_file=data/tfds.gin",
                *as_flags(tiny_bindings(demo_data_dir, 2)),
                f"--gin.VOCABULARY={str(vocabulary)!r}", f"--gin.TFDS_DATA_DIR={str(tfds_dir)!r}",
                "--gin.MC4_LANGUAGES=('de',)", f"--gin.register_tfds.mc4_name={mono!r}",
                f"--gin.TRANSLATION_SETS={{'de-en': {pairs!r}}}",
                "--gin.register_tfds.counts={'ernie_m.mc4.mono.de': 32, "
                "'ernie_m.tfds.para.de_en': 32}", f"--gin.CACHE_DIR={str(cache_dir)!r}",
                "--gin.TrainConfig.eval_languages=()"]
    assert cli.main(["cache-tasks", *tfds_run]) == 0
    assert "cached 2 tasks" in capsys.readouterr().out
    for task in ("ernie_m.mc4.mono.de", "ernie_m.tfds.para.de_en"):
        assert (cache_dir / task / "COMPLETED").is_file()
        assert list((cache_dir / task).glob("train.tfrecord-*"))
    shutil.rmtree(tfds_dir)  # from here on only the cache holds the data
    gin.clear_config()
    assert cli.main(["train", f"--model_dir={tmp_path / 'cached'}", *tfds_run,
                     "--gin.USE_CACHED_TASKS=True"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    gin.clear_config()
    with pytest.raises(Exception):  # the control: uncached, the deleted data is missed
        cli.main(["train", f"--model_dir={tmp_path / 'uncached'}", *tfds_run, "--verbose"])


def test_reading_uncached_tasks_from_the_cache_is_one_clear_error(demo_data_dir):
    from ernie_m_jax.data import pipeline
    from tasks import demo

    demo.register_demo(data_dir=demo_data_dir, languages=("de",))
    config = pipeline.DataConfig(mono_mixture="ernie_m.demo.mono", batch_sizes={"mmlm": 2},
                                 mono_length=16, use_cached=True)
    with pytest.raises(FileNotFoundError, match=r"no seqio cache of \['ernie_m.mono.de'.*"
                                                r"ernie-m-jax cache-tasks"):
        pipeline.training_dataset(config, ["mmlm"], tokens=SpecialTokens())
