"""Hugging Face export/import, embedding and retrieval, against transformers on real sentences.

One tiny model is trained for a few steps on the demo corpus (with language embeddings, as the
demo config has), then exported in both formats and loaded by transformers from the directory
alone.
"""

import dataclasses
import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ernie_m_jax import cli, saved_run
from ernie_m_jax.evaluation import retrieval
from ernie_m_jax.export import hf_export, hf_import, layouts
from ernie_m_jax.model import ErnieM
from tests.train_runs import run, tiny_bindings

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SENTENCES = ["Dies wird auch 1 Übersetzung löschen.", "Seite speichern",
             "Die Datei „%(name)s“ konnte nicht gelesen werden, weil sie zu groß ist.",
             "面包屑开关", "Зберегти"]


@pytest.fixture(scope="module")
def trained(six_step_run):
    loaded = saved_run.load(str(six_step_run))  # read only: exports write elsewhere
    gin.clear_config()
    return loaded


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {fmt: hf_export.export(trained, str(root / fmt), fmt, fold_language="de")
            for fmt in layouts.FORMATS}


def _our_rows(run_, sentences):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(run_.vocabulary_path))
    t = run_.tokens
    return [[t.cls_id, *sp.EncodeAsIds(s), t.sep_id] for s in sentences]


def _padded(rows, pad_id):
    ids = np.full((len(rows), max(map(len, rows))), pad_id, np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids


def _jax_outputs(run_, ids, language):
    keys = ids != run_.model.pad_id
    lang = np.full(ids.shape, run_.language_id(language), np.int32)
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    out = ErnieM(run_.model).apply({"params": run_.params}, jnp.asarray(ids, jnp.int32),
                                   attention_mask=keys, language_ids=lang,
                                   mlm_positions=jnp.asarray(positions, jnp.int32))
    return keys, jax.tree.map(np.asarray, out)


@pytest.mark.slow
def test_tokenizers_give_training_ids_and_both_formats_load_from_the_directory(trained, exports):
    ours = _our_rows(trained, SENTENCES)
    for fmt, out in exports.items():
        tok = transformers.AutoTokenizer.from_pretrained(out)
        assert tok(SENTENCES)["input_ids"] == ours, fmt
        batch = tok(SENTENCES, padding=True)
        np.testing.assert_array_equal(batch["input_ids"], _padded(ours, trained.model.pad_id))
        assert set(batch) == {"input_ids", "attention_mask"}
        assert tok.mask_token_id == trained.tokens.mask_id
    # The ErnieM export also carries what ErnieMTokenizer loads (its ids differ: it pre-splits).
    ernie_tok = transformers.ErnieMTokenizer.from_pretrained(exports["ernie_m"])
    assert ernie_tok.vocab_size == trained.model.vocab_size
    assert ernie_tok.convert_tokens_to_ids("[MASK]") == trained.tokens.mask_id


def test_ernie_m_export_equals_the_jax_model_in_transformers(trained, exports):
    hf = transformers.AutoModel.from_pretrained(exports["ernie_m"]).eval()
    assert type(hf).__name__ == "ErnieMModel"
    tok = transformers.AutoTokenizer.from_pretrained(exports["ernie_m"])
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**batch)
    keys, ours = _jax_outputs(trained, batch["input_ids"].numpy(), "de")
    diff = np.abs(ours["hidden_states"][keys] - theirs.last_hidden_state.numpy()[keys]).max()
    assert diff <= 1e-4, diff
    np.testing.assert_allclose(ours["pooled_output"], theirs.pooler_output.numpy(), atol=1e-4)


def test_xlm_roberta_export_equals_the_jax_model_with_its_mlm_head(trained, exports):
    out = exports["xlm_roberta"]
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert type(hf).__name__ == "XLMRobertaForMaskedLM"
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    tok = transformers.AutoTokenizer.from_pretrained(out)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf.eval()(**batch, output_hidden_states=True)
    keys, ours = _jax_outputs(trained, batch["input_ids"].numpy(), "de")
    diff = np.abs(ours["hidden_states"][keys] - theirs.hidden_states[-1].numpy()[keys]).max()
    assert diff <= 1e-4, diff
    logits = np.abs(ours["mlm_logits"][keys] - theirs.logits.numpy()[keys]).max()
    assert logits <= 1e-4, logits
    # sentence-transformers' path (AutoModel) finds the pooler as well.
    _, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"], info


def test_jax_to_hf_to_jax_round_trip_is_bit_exact(trained, exports, tmp_path):
    folded, config = layouts.fold_language_embedding(trained.params, trained.model,
                                                     trained.language_id("de"))
    for fmt, out in exports.items():
        model_dir = hf_import.import_hf(str(out), str(tmp_path / fmt))
        back = saved_run.load(str(model_dir))
        gin.clear_config()
        # How the loop runs (scan_unroll) is not part of an HF checkpoint; the shapes are.
        assert dataclasses.replace(back.model, scan_unroll=config.scan_unroll) == config
        assert back.tokens == trained.tokens
        assert back.vocabulary_path.read_bytes() == trained.vocabulary_path.read_bytes()
        same = jax.tree.map(np.array_equal, folded, back.params)
        assert all(jax.tree.leaves(same)), (fmt, same)
        assert not (model_dir / "initialised_fresh.txt").exists()


@pytest.mark.slow
def test_pretraining_continues_from_an_imported_checkpoint(trained, exports, demo_data_dir,
                                                          tmp_path):
    """init_from an import-hf directory: with a vanishing learning rate (Adam moves each
    weight by about that much) the params stay the imported ones, so training started there."""
    imported = hf_import.import_hf(str(exports["ernie_m"]), str(tmp_path / "imported"))
    bindings = tiny_bindings(demo_data_dir, 2, **{
        "ModelConfig.num_languages": 0, "OBJECTIVE_WEIGHTS": "{'mmlm': 1.0}",
        "TrainConfig.objective_start_steps": "{}",
        "LEARNING_RATE": 1e-12, "TrainConfig.init_from": repr(str(imported))})
    run(tmp_path / "continued", bindings, files=("runs/demo_cpu.gin", f"{imported}/config.gin"))
    start = saved_run.load(str(imported))
    gin.clear_config()
    end = saved_run.load(str(tmp_path / "continued"))
    gin.clear_config()
    assert end.step == 2
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-9),
                 start.params, end.params)


def test_models_with_language_embeddings_are_refused_without_a_fold(trained, tmp_path):
    with pytest.raises(ValueError, match="--fold_language=LANG"):
        hf_export.export(trained, str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        hf_export.export(trained, str(tmp_path / "x"), fold_language="xx")
    # "mean": the average language row, folded in.
    params, config = hf_export.fold_languages(trained, "mean")
    table = trained.params["embeddings"]["language_embeddings"]["embedding"]
    mean = table[sorted(trained.languages.values())].mean(0)
    np.testing.assert_allclose(
        params["embeddings"]["position_embeddings"]["embedding"],
        trained.params["embeddings"]["position_embeddings"]["embedding"] + mean, rtol=1e-6)
    assert config.num_languages == 0


@pytest.mark.slow
def test_checkpoints_written_by_transformers_import_and_agree(tmp_path):
    """Genuine HF-written checkpoints: XLM-R with a non-zero token-type row and no pooler in
    the masked-LM class; an ErnieMModel with no MLM head."""
    kwargs = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=40, pad_token_id=1)
    torch.manual_seed(0)
    xlmr = transformers.XLMRobertaForMaskedLM(transformers.XLMRobertaConfig(
        type_vocab_size=1, **kwargs)).eval()
    ernie = transformers.ErnieMModel(transformers.ErnieMConfig(**kwargs)).eval()
    ids = torch.tensor([[0, 5, 9, 17, 2, 1, 1], [0, 44, 2, 1, 1, 1, 1]])
    mask = (ids != 1).long()
    for name, hf in (("xlmr", xlmr), ("ernie", ernie)):
        hf.save_pretrained(tmp_path / name)
        model_dir = hf_import.import_hf(str(tmp_path / name), str(tmp_path / f"{name}_run"))
        run_ = saved_run.load(str(model_dir))
        gin.clear_config()
        fresh = (model_dir / "initialised_fresh.txt").read_text().split()
        assert any(n.startswith("lm_head.") for n in fresh) == (name == "ernie")
        assert any("pooler" in n for n in fresh) == (name == "xlmr")
        with torch.no_grad():
            theirs = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        keys, ours = _jax_outputs(run_, ids.numpy(), None)
        np.testing.assert_allclose(ours["hidden_states"][keys],
                                   theirs.hidden_states[-1].numpy()[keys], atol=1e-5)
        if name == "xlmr":
            np.testing.assert_allclose(ours["mlm_logits"][keys], theirs.logits.numpy()[keys],
                                       atol=1e-5)


def test_bad_hf_directories_get_clear_errors(exports, tmp_path):
    from safetensors.numpy import load_file, save_file

    def copy_of(name):
        import shutil

        return shutil.copytree(exports["xlm_roberta"], tmp_path / name)

    unknown = copy_of("unknown")
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps(dict(config, model_type="bert")))
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        hf_import.import_hf(str(unknown), str(tmp_path / "o1"))

    missing = copy_of("missing")
    state = load_file(str(missing / "model.safetensors"))
    del state["roberta.encoder.layer.1.output.dense.weight"]
    state["roberta.embeddings.word_embeddings.weight"] = np.zeros((7, 3), np.float32)
    save_file(state, str(missing / "model.safetensors"))
    with pytest.raises(ValueError, match=r"1 tensors missing .*layer\.1\.output\.dense\.weight.*"
                                         r"1 with another shape .*word_embeddings.*\(7, 3\)"):
        hf_import.import_hf(str(missing), str(tmp_path / "o2"))

    corrupt = copy_of("corrupt")
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="cannot read the weights"):
        hf_import.import_hf(str(corrupt), str(tmp_path / "o3"))

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        hf_import.import_hf(str(exports["ernie_m"]), str(tmp_path / "taken"))
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_embed_cli_writes_the_models_pooled_vectors(trained, tmp_path, capsys):
    lines = SENTENCES + ["", "Speichern"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = _padded(_our_rows(trained, lines), trained.model.pad_id)
    keys = ids != trained.model.pad_id
    lang = np.full(ids.shape, trained.language_id("de"), np.int32)
    out = ErnieM(trained.model).apply({"params": trained.params}, ids, attention_mask=keys,
                                      language_ids=lang, output_hidden_states=True)
    for pooling, layer in (("mean", 1), ("cls", -1)):
        hidden = np.asarray(out["all_hidden_states"][layer])
        expected = (hidden[:, 0] if pooling == "cls" else
                    (hidden * keys[..., None]).sum(1) / keys.sum(1, keepdims=True))
        path = tmp_path / f"{pooling}.npy"
        argv = ["embed", f"--model_dir={trained.model_dir}", f"--input={tmp_path / 'in.txt'}",
                f"--output={path}", "--language=de", f"--pooling={pooling}",
                f"--layer={layer}", "--batch_size=3"]
        assert cli.main(argv) == 0
        gin.clear_config()
        np.testing.assert_allclose(np.load(path), expected, atol=1e-5)

    (tmp_path / "bad.txt").write_bytes(b"fine\nnot \xff utf-8\n")
    argv = ["embed", f"--model_dir={trained.model_dir}", f"--input={tmp_path / 'bad.txt'}",
            f"--output={tmp_path / 'bad.npy'}", "--language=de"]
    assert cli.main(argv) == 2
    gin.clear_config()
    assert "line 2 is not valid UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "bad.npy").exists()


def test_encoders_of_one_model_shape_share_their_compiled_forward(trained):
    """Scoring several runs of one size (the experiments' arms) compiles once per batch
    shape, not once per run; another layer is another program (positive control)."""
    from ernie_m_jax.evaluation import embedding

    rows = _our_rows(trained, SENTENCES)
    first = embedding.SentenceEncoder(trained, layer=None, batch_size=4)
    vectors = first.embed_ids(rows, trained.language_id("de"))
    compiled = embedding._pooled_hidden._cache_size()
    second = embedding.SentenceEncoder(trained, layer=None, batch_size=4)
    np.testing.assert_array_equal(second.embed_ids(rows, trained.language_id("de")), vectors)
    assert embedding._pooled_hidden._cache_size() == compiled
    embedding.SentenceEncoder(trained, layer=1, batch_size=4).embed_ids(rows)
    assert embedding._pooled_hidden._cache_size() > compiled


def test_retrieval_accuracy_on_sets_with_known_answers():
    rs = np.random.RandomState(0)
    src = rs.normal(size=(6, 8))
    rows = [[i] for i in range(6)]
    pairs = retrieval.PairSet("toy", rows, rows)
    perfect = retrieval.retrieval_accuracy(src, src + 0.01 * rs.normal(size=src.shape), pairs)
    assert perfect["source_to_target"] == perfect["target_to_source"] == 1.0
    swapped = src.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # two targets trade places: 4 of 6 right both ways
    result = retrieval.retrieval_accuracy(src, swapped, pairs)
    assert result["source_to_target"] == result["target_to_source"] == pytest.approx(4 / 6)
    # A duplicated translation may be retrieved as either copy: the swap is no longer wrong.
    dup = retrieval.PairSet("dup", rows, [[0], [0], [2], [3], [4], [5]])
    assert retrieval.retrieval_accuracy(src, swapped, dup)["source_to_target"] == 1.0
    # A constant offset per side (a "language vector") hides the answer until centred.
    offset = np.zeros(8)
    offset[0] = 100.0
    shifted = retrieval.retrieval_accuracy(src + offset, src - offset, pairs)
    centred = retrieval.retrieval_accuracy(src + offset, src - offset, pairs, center=True)
    assert shifted["source_to_target"] < 1.0 and centred["source_to_target"] == 1.0
    bags = retrieval.bag_of_subwords([[1, 2, 2], [3]], 5)
    np.testing.assert_array_equal(bags, [[0, 1, 2, 0, 0], [0, 0, 0, 1, 0]])
    with pytest.raises(ValueError, match="aligned"):
        retrieval.PairSet("bad", rows, rows[:2])


def test_eval_retrieval_cli_on_files_and_tasks(trained, tmp_path, capsys):
    (tmp_path / "a.txt").write_text("\n".join(SENTENCES), encoding="utf-8")
    out = tmp_path / "files.json"
    argv = ["eval-retrieval", f"--model_dir={trained.model_dir}",
            f"--source_file={tmp_path / 'a.txt'}", f"--target_file={tmp_path / 'a.txt'}",
            "--source_language=de", "--target_language=de", f"--output={out}"]
    assert cli.main(argv) == 0
    gin.clear_config()
    result = json.loads(out.read_text())
    assert result["mean_source_to_target"] == result["mean_target_to_source"] == 1.0

    out = tmp_path / "tasks.json"
    argv = ["eval-retrieval", f"--model_dir={trained.model_dir}", "--split=validation",
            "--max_examples=20", "--layer=1", "--center", f"--output={out}"]
    assert cli.main(argv) == 0
    gin.clear_config()
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["pairs"]) == {"ernie_m.para.en_de", "ernie_m.para.en_fr"}
    for name, r in result["pairs"].items():
        assert r["pairs"] == 20 and 0.0 <= r["source_to_target"] <= 1.0
        assert name in table
    assert result["settings"]["layer"] == 1 and result["settings"]["center"]
    assert os.path.exists(out)
