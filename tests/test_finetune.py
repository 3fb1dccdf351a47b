"""Fine-tuning and evaluation: layer-wise learning-rate decay, the package task end to end
through the CLI, resuming, XNLI and PAWS-X on TFDS mock data, classifier exports against
transformers, and the refusals."""

import json
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ernie_m_jax import checkpoints, cli, gin_config
from ernie_m_jax.finetune import loop, run
from ernie_m_jax.finetune.config import FinetuneConfig
from ernie_m_jax.finetune.model import ErnieMClassifier, init_boxed
from ernie_m_jax.finetune.optimizer import finetune_optimizer, layerwise_scales
from tests.train_runs import run as pretrain
from tests.train_runs import tiny_bindings

LANGS = "('de', 'fr')"  # the tiny pretraining run's languages (with English)


def _flags(data_dir, **extra):
    bindings = {"register_packages.data_dir": repr(str(data_dir)), "LANGUAGES": LANGS,
                "FinetuneConfig.batch_size": 16, "FinetuneConfig.max_length": 32,
                "FinetuneConfig.eval_batch_size": 64, "FinetuneConfig.log_every": 4,
                "FinetuneConfig.progress_bar": False, **extra}
    return [f"--gin.{k}={v}" for k, v in bindings.items()]


@pytest.fixture(scope="module")
def pretrained(demo_data_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("ft") / "pretrained"
    pretrain(model_dir, tiny_bindings(demo_data_dir, 4, **{"TrainConfig.checkpoint_every": 4}))
    return str(model_dir)


@pytest.fixture(scope="module")
def finetuned(pretrained, demo_data_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("ft") / "packages")
    out = _cli(["finetune", "--gin_file=gin/finetune/packages.gin",
                f"--init_from={pretrained}", f"--model_dir={model_dir}",
                *_flags(demo_data_dir, **{"FinetuneConfig.num_steps": 24,
                                          "FinetuneConfig.eval_every": 8})])
    return model_dir, out


def _cli(argv):
    import contextlib
    import io

    gin.clear_config()
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            code = cli.main(argv)
    finally:
        gin.clear_config()
    assert code == 0, buffer.getvalue()
    return buffer.getvalue()


def _cli_error(argv, capsys):
    gin.clear_config()
    try:
        code = cli.main(argv)
    finally:
        gin.clear_config()
    assert code == 2
    return " ".join(capsys.readouterr().err.split())


@pytest.mark.slow
def test_layerwise_decay_scales_each_layers_update(tiny_config):
    model = ErnieMClassifier(tiny_config, 3)
    params = nn.unbox(init_boxed(model, jax.random.key(0)))
    assert "mlm_head" not in params["ernie_m"]  # never trained, never exported
    scales = layerwise_scales(params, num_layers=2, decay=0.5)
    assert float(scales["ernie_m"]["embeddings"]["word_embeddings"]["embedding"]) == 0.125
    layer = scales["ernie_m"]["encoder"]["layers"]["linear1"]["kernel"]
    np.testing.assert_array_equal(np.asarray(layer).ravel(), [0.25, 0.5])  # layer 0, 1
    assert float(scales["ernie_m"]["pooler"]["kernel"]) == 1.0
    assert float(scales["classifier"]["kernel"]) == 1.0

    # The optimizer's updates: with decay 0.5 each is its decay-1 twin times the factor.
    def first_update(decay):
        cfg = FinetuneConfig(learning_rate=1e-3, layerwise_decay=decay, warmup_ratio=0.0,
                             weight_decay=0.0, clip_norm=None)
        opt, _ = finetune_optimizer(params, 2, 10, cfg)
        grads = jax.tree.map(jnp.ones_like, params)
        return opt.update(grads, opt.init(params), params)[0]

    decayed, flat = first_update(0.5), first_update(1.0)
    ratio = jax.tree.map(lambda a, b: np.asarray(a / b), decayed, flat)
    np.testing.assert_allclose(ratio["ernie_m"]["embeddings"]["layer_norm"]["scale"], 0.125)
    np.testing.assert_allclose(ratio["ernie_m"]["encoder"]["layers"]["norm1"]["bias"][0], 0.25)
    np.testing.assert_allclose(ratio["ernie_m"]["encoder"]["layers"]["norm1"]["bias"][1], 0.5)
    np.testing.assert_allclose(ratio["classifier"]["bias"], 1.0)


@pytest.mark.slow
def test_finetune_cli_trains_selects_the_best_step_and_scores_every_language(finetuned):
    model_dir, out = finetuned
    assert "test accuracy at step" in out and "average" in out
    for lang in ("de", "en", "fr"):
        assert f"  {lang} " in out
    selection = json.load(open(os.path.join(model_dir, run.SELECTION_FILE)))
    steps = [e["step"] for e in selection["evaluations"]]
    assert steps == [8, 16, 24]
    best = max(selection["evaluations"], key=lambda e: e["accuracy"])
    assert selection["best_step"] == best["step"]
    assert checkpoints.saved_steps(os.path.join(model_dir, run.BEST)) == [best["step"]]
    result = json.load(open(os.path.join(model_dir, f"eval_test_step_{best['step']}.json")))
    assert set(result["accuracy"]) == {"de", "en", "fr"}
    assert result["labels"] == ["Django", "Sphinx", "wagtail"]
    losses = [m["train/loss"] for m in map(json.loads, open(
        os.path.join(model_dir, "metrics.jsonl"))) if "train/loss" in m]
    assert losses[-1] < losses[0], losses  # it learns


@pytest.mark.slow
def test_evaluate_cli_reproduces_the_runs_own_test_scores(finetuned, tmp_path):
    model_dir, _ = finetuned
    output = tmp_path / "test.json"
    out = _cli(["evaluate", f"--model_dir={model_dir}", "--split=test", f"--output={output}"])
    ours = json.load(open(output))
    recorded = json.load(open(os.path.join(model_dir,
                                           f"eval_test_step_{ours['step']}.json")))
    assert ours["accuracy"] == recorded["accuracy"]
    assert f"{ours['average_accuracy']:9.3f}" in out
    assert set(ours["balanced_accuracy"]) == {"de", "en", "fr"}


@pytest.mark.slow
def test_an_interrupted_finetune_resumes_to_the_same_params(pretrained, demo_data_dir,
                                                            tmp_path):
    def finetune(model_dir, stop_after=None):
        gin.clear_config()
        try:
            gin_config.parse(["finetune/packages.gin"], [
                f"FinetuneConfig.init_from = {pretrained!r}",
                *(f[len("--gin."):].replace("=", " = ", 1) for f in _flags(
                    demo_data_dir, **{"FinetuneConfig.num_steps": 10,
                                      "FinetuneConfig.eval_every": 5}))])
            return loop.finetune(str(model_dir), FinetuneConfig(), stop_after=stop_after)
        finally:
            gin.clear_config()

    straight = finetune(tmp_path / "straight")
    assert finetune(tmp_path / "resumed", stop_after=7)["preempted_at_step"] == 7
    resumed = finetune(tmp_path / "resumed")
    assert resumed["test"]["accuracy"] == straight["test"]["accuracy"]
    a = run.load_params(str(tmp_path / "straight"), run.CHECKPOINTS)
    b = run.load_params(str(tmp_path / "resumed"), run.CHECKPOINTS)
    assert a[1] == b[1] == 10
    jax.tree.map(np.testing.assert_array_equal, a[2], b[2])
    sel = [json.load(open(tmp_path / d / run.SELECTION_FILE))["evaluations"]
           for d in ("straight", "resumed")]
    assert sel[0] == sel[1]


@pytest.mark.slow
def test_early_stopping_ends_a_run_that_stops_improving(pretrained, demo_data_dir, tmp_path):
    """A learning rate too small to change a prediction: validation accuracy repeats, so with
    patience 1 the run stops at its second evaluation and keeps the first."""
    model_dir = tmp_path / "stalled"
    out = _cli(["finetune", "--gin_file=gin/finetune/packages.gin", f"--init_from={pretrained}",
                f"--model_dir={model_dir}",
                *_flags(demo_data_dir, **{"FinetuneConfig.num_steps": 10,
                                          "FinetuneConfig.eval_every": 2,
                                          "FinetuneConfig.patience": 1,
                                          "FinetuneConfig.learning_rate": 1e-12})])
    selection = json.load(open(model_dir / run.SELECTION_FILE))
    assert [e["step"] for e in selection["evaluations"]] == [2, 4]
    assert selection["stopped_early_at"] == 4 and selection["best_step"] == 2
    assert "stopped early at step 4" in out and "test accuracy at step 2" in out
    # Positive control: with patience 0 the same run goes on to its last step.
    out = _cli(["finetune", "--gin_file=gin/finetune/packages.gin", f"--init_from={pretrained}",
                f"--model_dir={tmp_path / 'patient'}",
                *_flags(demo_data_dir, **{"FinetuneConfig.num_steps": 6,
                                          "FinetuneConfig.eval_every": 2,
                                          "FinetuneConfig.learning_rate": 1e-12})])
    assert "stopped early" not in out
    assert [e["step"] for e in json.load(open(tmp_path / "patient" / run.SELECTION_FILE))[
        "evaluations"]] == [2, 4, 6]


@pytest.mark.slow
def test_classifier_exports_give_transformers_the_same_logits(finetuned, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model_dir, _ = finetuned
    info, _, params = run.load_params(model_dir)
    sentences = ["Seite speichern", "Die Datei konnte nicht gelesen werden.",
                 "Enregistrer la page", "Build finished with problems."]
    for fmt, kind in (("ernie_m", "ErnieMForSequenceClassification"),
                      ("xlm_roberta", "XLMRobertaForSequenceClassification")):
        out = str(tmp_path / fmt)
        _cli(["export-hf", f"--model_dir={model_dir}", f"--out={out}", f"--format={fmt}",
              "--fold_language=de"])
        hf, loading = transformers.AutoModelForSequenceClassification.from_pretrained(
            out, output_loading_info=True)
        assert type(hf).__name__ == kind
        assert not loading["missing_keys"] and not loading["mismatched_keys"], loading
        assert hf.config.id2label == {0: "Django", 1: "Sphinx", 2: "wagtail"}
        batch = transformers.AutoTokenizer.from_pretrained(out)(
            sentences, padding=True, return_tensors="pt")
        with torch.no_grad():
            theirs = hf.eval()(**batch).logits.numpy()
        ids = batch["input_ids"].numpy().astype(np.int32)
        # Our model sees the padding through its pad id, as the HF tokenizer's mask says.
        ours = ErnieMClassifier(info.model, len(info.labels)).apply(
            {"params": params}, jnp.asarray(ids),
            jnp.full(ids.shape, info.languages["de"], jnp.int32))
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)
        assert np.abs(theirs).max() > 1e-3  # a real signal, not zeros on both sides


@pytest.mark.slow
def test_bad_input_is_refused_with_the_reason(pretrained, finetuned, demo_data_dir, tmp_path,
                                              capsys):
    base = ["finetune", "--gin_file=gin/finetune/packages.gin"]
    err = _cli_error(["evaluate", f"--model_dir={pretrained}"], capsys)
    assert "no classification head" in err and "pretraining run" in err
    err = _cli_error([*base, f"--init_from={tmp_path / 'nothing'}",
                      f"--model_dir={tmp_path / 'a'}", *_flags(demo_data_dir)], capsys)
    assert "not a pretraining run" in err
    err = _cli_error([*base, f"--init_from={finetuned[0]}", f"--model_dir={tmp_path / 'b'}",
                      *_flags(demo_data_dir)], capsys)
    assert "is a fine-tuned classifier" in err
    # A language the pretrained model has no embedding for (it learnt de, en and fr).
    err = _cli_error([*base, f"--init_from={pretrained}", f"--model_dir={tmp_path / 'c'}",
                      *_flags(demo_data_dir, LANGUAGES="('de', 'es')")], capsys)
    assert "none for 'es'" in err
    # Resuming a run with a start point of another shape.
    other = tmp_path / "other"
    pretrain(other, tiny_bindings(demo_data_dir, 2, **{"ModelConfig.num_layers": 1}))
    err = _cli_error([*base, f"--init_from={other}", f"--model_dir={finetuned[0]}",
                      *_flags(demo_data_dir)], capsys)
    assert "another model shape" in err and "1 x 32" in err


@pytest.mark.slow
def test_classification_tasks_refuse_bad_labels_and_empty_splits(pretrained):
    from ernie_m_jax import run_dir
    from ernie_m_jax.data import seqio_vocab
    from ernie_m_jax.finetune import data as data_lib
    from tasks import classification, registry

    vocabulary = seqio_vocab.load_vocabulary(run_dir.vocabulary(pretrained))
    labels = ("yes", "no")
    with pytest.raises(ValueError, match=r"unknown labels \['maybe'\]"):
        classification.add_texts("toy", "en", {"train": [("a", "yes"), ("b", "maybe")]},
                                 labels, vocabulary)
    with pytest.raises(ValueError, match="split 'test' has no examples"):
        classification.add_texts("toy", "en", {"train": [("a", "yes")], "test": []}, labels,
                                 vocabulary)
    task = classification.add_task(  # ids written by hand: one beyond the head
        "ernie_m.cls.toy.de", registry.tensor_source(
            {"train": {"text": ["a", "b"], "label": [0, 7]}}, vocabulary), vocabulary,
        pair=False)
    with pytest.raises(ValueError, match=r"toy.de \[train\]: label id 7 is outside"):
        data_lib.load_split(task.name, "train", 0, 16, run.SpecialTokens(), False, 2)
    good = classification.add_texts("toy", "fr", {"train": [("a", "no"), ("b", "yes")]},
                                    labels, vocabulary)
    examples = data_lib.load_split(good.name, "train", 3, 16, run.SpecialTokens(), False, 2)
    np.testing.assert_array_equal(examples.labels, [1, 0])
    assert (examples.language_ids[:, 0] == 3).all() and examples.input_ids.shape == (2, 16)
    with pytest.raises(ValueError, match="has no 'test' split"):
        data_lib.load_split(good.name, "test", 0, 16, run.SpecialTokens(), False, 2)


# --- XNLI and PAWS-X on mock data ---------------------------------------------------------

MOCK_EXAMPLES = 24
_WORDS = {"de": "Der Hund schläft im Garten", "en": "The dog sleeps in the garden",
          "fr": "Le chien dort dans le jardin"}


def _mock_as_dataset(self, split, *args, **kwargs):
    """Well-formed rows for the builders fine-tuning reads (random bytes would name no
    language)."""
    name = self.name
    langs = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur",
             "vi", "zh")

    def text(lang, i):
        return f"{_WORDS.get(lang, 'x')} {i}"

    def rows():
        for i in range(MOCK_EXAMPLES):
            if name in ("xnli", "xtreme_xnli"):
                yield {"premise": {lang: text(lang, i) for lang in langs},
                       "hypothesis": {"language": list(langs),
                                      "translation": [text(lang, i + 1) for lang in langs]},
                       "label": i % 3}
            elif name == "multi_nli":
                yield {"premise": text("en", i), "hypothesis": text("en", i + 1),
                       "label": i % 3}
            else:  # paws_x_wiki
                lang = self.builder_config.name
                yield {"sentence1": text(lang, i), "sentence2": text(lang, i + 1),
                       "label": i % 2}

    s = tf.TensorSpec((), tf.string)
    if name in ("xnli", "xtreme_xnli"):
        spec = {"premise": {lang: s for lang in langs},
                "hypothesis": {"language": tf.TensorSpec((None,), tf.string),
                               "translation": tf.TensorSpec((None,), tf.string)},
                "label": tf.TensorSpec((), tf.int64)}
    elif name == "multi_nli":
        spec = {"premise": s, "hypothesis": s, "label": tf.TensorSpec((), tf.int64)}
    else:
        spec = {"sentence1": s, "sentence2": s, "label": tf.TensorSpec((), tf.int64)}
    return tf.data.Dataset.from_generator(rows, output_signature=spec)


@pytest.mark.slow
@pytest.mark.parametrize("gin_file,setup,translate", [
    ("xnli", "register_xnli", False), ("xnli", "register_xnli", True),
    ("paws_x", "register_paws_x", True)])
def test_xnli_and_paws_x_gin_files_run_end_to_end_on_mock_data(pretrained, tmp_path, gin_file,
                                                               setup, translate):
    model_dir = str(tmp_path / gin_file)
    flags = {f"{setup}.languages": "('de', 'en', 'fr')", "TRANSLATE_TRAIN_ALL": translate,
             "FinetuneConfig.num_steps": 4, "FinetuneConfig.eval_every": 2,
             "FinetuneConfig.batch_size": 8, "FinetuneConfig.max_length": 32,
             "FinetuneConfig.eval_batch_size": 8, "FinetuneConfig.progress_bar": False}
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        out = _cli(["finetune", f"--gin_file=gin/finetune/{gin_file}.gin",
                    f"--init_from={pretrained}", f"--model_dir={model_dir}",
                    *(f"--gin.{k}={v}" for k, v in flags.items())])
        evaluated = _cli(["evaluate", f"--model_dir={model_dir}", "--split=validation"])
    train_languages = 3 if translate else 1
    assert f"an epoch of {train_languages * MOCK_EXAMPLES} examples" in out
    for lang in ("de", "en", "fr"):
        assert f"  {lang} " in out and f"  {lang} " in evaluated
    result = json.load(open(next(p for p in (tmp_path / gin_file).glob("eval_test_*.json"))))
    assert result["examples"] == {"de": MOCK_EXAMPLES, "en": MOCK_EXAMPLES,
                                  "fr": MOCK_EXAMPLES}
