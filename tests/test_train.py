"""The training job end to end: CLI, gin, sharding presets, checkpoints, resume."""

import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ernie_m_jax import checkpoints, cli, gin_config, optimizer, saved_run, train
from ernie_m_jax.configs import BTMLMConfig, MaskingConfig
from ernie_m_jax.metrics import read_metrics
from ernie_m_jax.objectives import make_objectives, make_prediction_counters, weighted_loss
from tests import synthetic
from tests.train_runs import as_flags, run, run_eight_device_child, tiny_bindings


@pytest.fixture(scope="module")
def data_dir(demo_data_dir):
    return demo_data_dir


def _check_summary(out, model_dir, tmp_path):
    """The run's closing summary: what it made, its retrieval figures (the same as
    `eval-retrieval` computes on its own) and the next commands with the run's paths."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("trained 40 steps"))
    summary = lines[start:]
    text = "\n".join(summary)
    assert "final loss: mmlm " in text and " btmlm " in text
    assert "MMLM accuracy (validation): de " in text
    header = next(i for i, line in enumerate(summary) if line.startswith("en<->X retrieval"))
    assert "layer 1 of 2" in summary[header]
    row = summary[header + 2].split()  # pair, pairs, raw, centred, bag of subwords
    assert row[0] == "en-de" and int(row[1]) > 100
    raw, centred, bag = map(float, row[2:])
    assert "centred retrieval" in text and "bag of subwords" in text
    for command in (f"tensorboard --logdir {model_dir}",
                    f"ernie-m-jax export-hf --model_dir={model_dir} --out={model_dir}_hf "
                    "--fold_language=mean",
                    f"ernie-m-jax eval-retrieval --model_dir={model_dir} --split=test "
                    "--layer=1 --center",
                    f"ernie-m-jax finetune --gin_file=gin/finetune/packages.gin "
                    f"--init_from={model_dir} --model_dir={model_dir}_packages"):
        assert f"  {command}" in summary, command
    for center, shown in ((True, centred), (False, raw)):
        out_file = tmp_path / f"retrieval_{center}.json"
        assert cli.main(["eval-retrieval", f"--model_dir={model_dir}", "--split=test",
                         "--layer=1", "--task=ernie_m.para.en_de", f"--output={out_file}",
                         *(["--center"] if center else [])]) == 0
        gin.clear_config()
        pair = json.loads(out_file.read_text())["pairs"]["ernie_m.para.en_de"]
        both = (pair["source_to_target"] + pair["target_to_source"]) / 2
        assert abs(both - shown) < 1e-3, (center, both, shown)
    assert 0 < bag < 1


def _losses(model_dir, key="train/loss"):
    return [r[key] for r in read_metrics(model_dir) if key in r]


def _final_params(model_dir):
    """(step, params) of the newest checkpoint, read through the run's own config.gin."""
    loaded = saved_run.load(str(model_dir), setup_data=False)
    gin.clear_config()
    return loaded.step, loaded.params


@pytest.mark.slow
def test_cli_trains_every_objective_and_leaves_checkpoints_and_metrics(data_dir, tmp_path,
                                                                      capsys):
    model_dir = tmp_path / "run"
    # 40 steps: enough for every loss to fall well past the 10% below, whatever the data order.
    bindings = tiny_bindings(data_dir, 40)
    argv = ["train", "--gin_file=runs/demo_cpu.gin", f"--model_dir={model_dir}",
            *as_flags(bindings)]
    gin.clear_config()
    try:
        assert cli.main(argv) == 0
    finally:
        gin.clear_config()
    _check_summary(capsys.readouterr().out, model_dir, tmp_path)
    records = read_metrics(model_dir)
    for objective in ("mmlm", "tlm", "camlm", "btmlm"):
        losses = [r[f"train/{objective}/loss"] for r in records if f"train/{objective}/loss" in r]
        assert len(losses) == 40
        assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), (objective, losses)
    last = [r for r in records if "train/loss" in r][-1]
    for key in ("train/learning_rate", "train/grad_norm", "train/tokens_per_second",
                "train/text_tokens_per_second", "train/btmlm/accuracy",
                "train/camlm/num_predictions"):
        assert key in last and np.isfinite(last[key])
    assert 0 < last["train/padding_fraction"] < 1
    assert last["train/text_tokens_per_second"] < last["train/tokens_per_second"]
    evals = [r for r in records if "eval/de/accuracy" in r]
    assert evals and 0 <= evals[-1]["eval/de/accuracy"] <= 1
    # Every checkpoint_every (3) steps and the last, the last keep_checkpoints (3) of them.
    assert sorted(os.listdir(model_dir / "checkpoints"), key=int) == ["36", "39", "40"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(model_dir))


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_parameters(data_dir, six_step_run, tmp_path):
    bindings = tiny_bindings(data_dir, 6)
    straight, interrupted = six_step_run, tmp_path / "interrupted"  # straight: read only
    run(interrupted, bindings, stop_after=3)
    assert checkpoints.latest_step(interrupted / "checkpoints") == 3
    # Same model_dir: picks up params, optimizer, rng and data.
    summary = run(interrupted, bindings)
    assert summary["train_step_compilations"] == 1  # no recompilation after its first step
    step_a, params_a = _final_params(straight)
    step_b, params_b = _final_params(interrupted)
    assert step_a == step_b == 6
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_losses(straight)[3:], _losses(interrupted)[3:], atol=1e-5)

    # Stage 2 starts from these params (fresh optimizer and step), with BTMLM on: its first
    # loss is below a fresh init's on the same first batch (the straight run's first step:
    # same seed and data, loss taken before any update).
    stage2 = tmp_path / "stage2"
    run(stage2, tiny_bindings(data_dir, 1, **{"TrainConfig.init_from": repr(str(straight))}))
    assert _losses(stage2, "train/mmlm/loss")[0] < _losses(straight, "train/mmlm/loss")[0]

    # The 1-device checkpoint, restored onto 8 devices with FSDP and trained there with the
    # FSDP and tensor-parallel presets, gives the single-device losses.
    result = run_eight_device_child(["tests.train_sharding_check", data_dir,
                                     str(tmp_path / "multi"), str(straight)], timeout=900)
    out = json.loads(result.stdout.split("RESULT ", 1)[1])
    reference = _losses(straight)[:3]
    for preset, shards in (("fsdp", 8), ("fsdp_tensor", 8)):
        np.testing.assert_allclose(out[preset]["losses"], reference, rtol=2e-4)
        assert out[preset]["linear1_fraction"] == pytest.approx(1 / shards)
        assert out[preset]["linear1_moment_fractions"] and \
            max(out[preset]["linear1_moment_fractions"]) == pytest.approx(1 / shards)
        assert out[preset]["compilations"] == 1
    assert out["fsdp"]["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert out["fsdp_tensor"]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    assert out["fsdp_tensor"]["q_kernel_fraction"] == pytest.approx(1 / 8)
    assert out["restored"]["step"] == 6
    assert out["restored"]["embedding_fraction"] == pytest.approx(1 / 8)
    expected_sum = sum(np.asarray(x, np.float64).sum() for x in jax.tree.leaves(params_a))
    assert out["restored"]["param_sum"] == pytest.approx(expected_sum, rel=1e-9)


@pytest.mark.slow
def test_several_steps_a_call_train_what_one_step_a_call_trains(data_dir, six_step_run,
                                                                  tmp_path):
    # Three steps a call (one lax.scan), logged and saved every 3, interrupted inside a call
    # (step 4) and resumed: the same params and per-step means as one step a call.
    bindings = tiny_bindings(data_dir, 6, **{"TrainConfig.steps_per_call": 3,
                                             "TrainConfig.log_every": 3})
    calls = tmp_path / "calls"
    first = run(calls, bindings, stop_after=4)
    assert first["train_step_compilations"] == 2  # 3 steps, then 1 to stop at step 4
    assert checkpoints.latest_step(calls / "checkpoints") == 4
    second = run(calls, bindings)
    assert second["train_step_compilations"] == 1  # steps 5-6 (realigned), one call
    step_a, params_a = _final_params(six_step_run)
    step_b, params_b = _final_params(calls)
    assert step_a == step_b == 6
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    one_a_call = _losses(six_step_run)
    logged = [r for r in read_metrics(calls) if "train/loss" in r]
    assert [r["step"] for r in logged] == [3, 6]  # a stop saves; it does not log
    for record, steps in zip(logged, ((0, 3), (4, 6))):
        assert record["train/loss"] == pytest.approx(np.mean(one_a_call[slice(*steps)]),
                                                     rel=1e-5)
    # Positive control: the same steps from another seed end elsewhere.
    other = tmp_path / "other"
    run(other, tiny_bindings(data_dir, 3, **{"TrainConfig.steps_per_call": 3,
                                             "TrainConfig.log_every": 3,
                                             "TrainConfig.seed": 1}))
    _, params_c = _final_params(other)
    assert max(float(np.max(np.abs(a - c))) for a, c in
               zip(jax.tree.leaves(params_a), jax.tree.leaves(params_c))) > 1e-4


@pytest.mark.slow
def test_stages_in_one_run_add_btmlm_at_its_step_and_resume_across_the_boundary(data_dir,
                                                                               tmp_path):
    bindings = tiny_bindings(data_dir, 6, **{"TrainConfig.objective_start_steps":
                                             "{'btmlm': 3}", "TrainConfig.log_every": 2})
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    summary = run(straight, bindings)
    assert summary["train_step_compilations"] == 2  # one step per stage, each compiled once
    records = [r for r in read_metrics(straight) if "train/loss" in r]
    # Logged every 2 steps and at the boundary (3): no interval mixes the stages.
    assert [r["step"] for r in records] == [2, 3, 4, 6]
    for record in records:
        losses = {o: record.get(f"train/{o}/loss") for o in ("mmlm", "tlm", "camlm", "btmlm")}
        assert (losses["btmlm"] is None) == (record["step"] <= 3), record
        # The total is the weighted sum of what ran: nothing of BTMLM's in stage 1.
        assert record["train/loss"] == pytest.approx(sum(v for v in losses.values() if v),
                                                     rel=1e-5)
    # Each stage's throughput counts its own rows: stage 2 adds BTMLM's 8 sentences of 16.
    assert records[0]["train/tokens_per_second"] / records[0]["train/steps_per_second"] == \
        pytest.approx(8 * 16 + 8 * 32 + 8 * 32)
    assert records[-1]["train/tokens_per_second"] / records[-1]["train/steps_per_second"] == \
        pytest.approx(8 * 16 + 8 * 32 + 8 * 32 + 8 * 16)

    # Stopped in stage 1, resumed: the same params as the run that never stopped.
    run(interrupted, bindings, stop_after=2)
    run(interrupted, bindings)
    _, params_a = _final_params(straight)
    _, params_b = _final_params(interrupted)
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # Positive control: the same run with BTMLM from step 0 ends elsewhere.
    all_along = tmp_path / "all_along"
    run(all_along, tiny_bindings(data_dir, 6, **{"TrainConfig.log_every": 2}))
    _, params_c = _final_params(all_along)
    assert max(float(np.max(np.abs(a - c))) for a, c in
               zip(jax.tree.leaves(params_a), jax.tree.leaves(params_c))) > 1e-4


@pytest.mark.parametrize("flag, message", [
    ("--gin.TrainConfig.num_stepz=3", "doesn't have a parameter named 'num_stepz'"),
    ("--gin.NoSuchConfig.value=3", "No configurable matching 'NoSuchConfig'"),
    ("--gin.TrainConfig.objective_weights={'mlm': 1.0}", "unknown objectives ['mlm']"),
    ("--gin.NUM_STEPS=-5", "TrainConfig.num_steps must be positive, got -5"),
    ("--gin.TrainConfig.objective_start_steps={'btmlm': 550}",
     "{'btmlm': 550}: an objective must join at a step in [0, num_steps=550)"),
    # The demo's stage boundary (BTMLM_START = 500) does not follow a shorter run by itself.
    ("--gin.NUM_STEPS=100", "{'btmlm': 500}: an objective must join at a step in "
                            "[0, num_steps=100); lower its start along with num_steps"),
    ("--gin.TrainConfig.objective_start_steps={'btmlm': 5, 'mlm': 3}",
     "names ['mlm'], which objective_weights does not enable"),
    ("--gin.TrainConfig.objective_start_steps={'mmlm': 5, 'tlm': 5, 'camlm': 5, 'btmlm': 5}",
     "leaves the first step with no objective"),
    ("--gin.MeshConfig.shape=(3, 1, 1)", "has 3 devices, there are 1"),
    ("--gin.TrainConfig.steps_per_call=0", "TrainConfig.steps_per_call must be positive"),
    ("--gin.TrainConfig.steps_per_call=4", "steps_per_call=4: log_every=10 is not a "
                                           "multiple of it, so a call would have to stop"),
    ("--gin.TrainConfig.steps_per_call=3", "log_every=10, checkpoint_every=200, "
                                           "eval_every=400, objective_start_steps['btmlm']=500 "
                                           "are not multiples of it"),
    ("--gin_file=runs/nope.gin", "gin file not found: runs/nope.gin"),
])
def test_bad_train_input_fails_with_one_line_before_any_compute(flag, message, tmp_path,
                                                                 capsys):
    model_dir = tmp_path / "never"
    gin.clear_config()
    try:
        assert cli.main(["train", "--gin_file=runs/demo_cpu.gin", f"--model_dir={model_dir}",
                         "--gin.TrainConfig.data_setup=None", flag]) == 2
    finally:
        gin.clear_config()
    err = capsys.readouterr().err.strip()
    assert err.startswith("ernie-m-jax train: error: ") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not model_dir.exists() or not any(model_dir.iterdir())


def test_verbose_train_errors_keep_the_traceback(tmp_path):
    gin.clear_config()
    try:
        with pytest.raises(ValueError, match="num_stepz"):
            cli.main(["train", "--verbose", "--gin_file=runs/demo_cpu.gin",
                      f"--model_dir={tmp_path}", "--gin.TrainConfig.num_stepz=3"])
    finally:
        gin.clear_config()


def test_a_model_dir_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    model_dir = tmp_path / "notes.txt"
    model_dir.write_text("my notes")
    gin.clear_config()
    try:
        assert cli.main(["train", "--gin_file=runs/demo_cpu.gin", f"--model_dir={model_dir}",
                         "--gin.TrainConfig.data_setup=None"]) == 2
    finally:
        gin.clear_config()
    assert "error:" in capsys.readouterr().err
    assert model_dir.read_text() == "my notes"


def test_malformed_flags_and_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="malformed gin flag"):
        gin_config.split_gin_flags(["--gin.TrainConfig.num_steps"])
    with pytest.raises(FileNotFoundError, match="gin file not found: runs/nope.gin"):
        gin_config.parse(["runs/nope.gin"])


def test_weight_decay_skips_biases_and_layer_norms(tiny_params):
    mask = optimizer.decay_mask(tiny_params)
    assert mask["embeddings"]["word_embeddings"]["embedding"]
    assert mask["encoder"]["layers"]["linear1"]["kernel"]
    assert not mask["encoder"]["layers"]["linear1"]["bias"]
    assert not mask["encoder"]["layers"]["norm1"]["scale"]
    assert not mask["embeddings"]["layer_norm"]["bias"]
    schedule = optimizer.learning_rate_schedule(
        optimizer.OptimizerConfig(learning_rate=1.0, warmup_steps=10), num_steps=110)
    assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(60)) == pytest.approx(0.5) and float(schedule(110)) == pytest.approx(0)


# Masking every word with [MASK] and greedy BTMLM make each objective's inputs independent of
# the random draws, so a split batch sees exactly the tokens of the whole one.
EVERY_WORD = MaskingConfig(rate=1.0, mask_prob=1.0, random_prob=0.0)


def _uneven_batches():
    """Microbatches (of 2 and of 4 rows) holding very different numbers of words."""
    short_then_long = [1, 2, 1, 2, 12, 13, 11, 13]
    pairs = synthetic.pair_batch(3, batch=8, length=24, max_words=8)
    lengths = np.asarray(pairs["segment_ids"] > 0).sum(1)
    order = np.argsort(lengths, kind="stable")  # short pairs first, long ones last
    pairs = {k: v[order] for k, v in pairs.items()}
    return {"mmlm": synthetic.monolingual_rows(short_then_long, seed=1),
            "tlm": pairs, "camlm": pairs,
            "btmlm": synthetic.monolingual_rows(short_then_long[::-1], seed=2)}


@pytest.mark.slow
def test_gradient_accumulation_is_the_whole_batch_on_the_real_objectives(tiny_model,
                                                                         tiny_params):
    objectives = make_objectives(tiny_model, synthetic.TOKENS, EVERY_WORD,
                                 BTMLMConfig(target_languages=(1, 2), temperature=0.0,
                                             max_placeholders=8))
    counters = make_prediction_counters(synthetic.TOKENS, EVERY_WORD)
    weights = {"mmlm": 1.0, "tlm": 0.5, "camlm": 1.0, "btmlm": 2.0}
    batches = _uneven_batches()
    sgd = optax.sgd(1.0)
    state = {"params": tiny_params, "opt_state": sgd.init(tiny_params),
             "step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(0)),
             **{k: jnp.zeros((), jnp.int32) for k in train.COUNTERS}}
    results = {}
    for accum in (1, 2):
        step = jax.jit(train.make_train_step(objectives, weights, sgd,
                                             optax.constant_schedule(1.0), accum,
                                             prediction_counters=counters))
        new_state, metrics = step(state, batches)
        results[accum] = (new_state["params"], {k: float(v) for k, v in metrics.items()})
    full_params, full = results[1]
    for name in weights:  # the counters agree with what the objectives predicted
        assert full[f"{name}/num_predictions"] == float(counters[name](batches[name])) > 0
    for accum in (2,):
        params, metrics = results[accum]
        for key in full:
            assert metrics[key] == pytest.approx(full[key], rel=2e-5, abs=1e-6), (accum, key)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(full_params)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)

    # Positive control: averaging the microbatches' own mean-loss gradients, as a naive
    # accumulation would, moves the parameters elsewhere on these uneven microbatches.
    halves = [{o: {k: v[i * 4:(i + 1) * 4] for k, v in b.items()} for o, b in batches.items()}
              for i in range(2)]
    grad = jax.jit(jax.grad(lambda p, b: weighted_loss(p, b, jax.random.key(0), objectives,
                                                       weights)[0]))
    naive = jax.tree.map(lambda a, b: (a + b) / 2, *[grad(tiny_params, h) for h in halves])
    exact = jax.tree.map(jnp.subtract, tiny_params, full_params)  # sgd(1.0): the gradient
    gap = optax.tree.norm(jax.tree.map(jnp.subtract, naive, exact))
    assert float(gap) > 0.05 * float(optax.tree.norm(exact))


@pytest.mark.parametrize("which", ["word_embeddings", "all"])
@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-6), ("bfloat16", 2e-2)])
@pytest.mark.slow
def test_gathering_weights_once_changes_no_loss_or_gradient(which, dtype, tolerance,
                                                             tiny_config, tiny_params):
    """The step gathers the tied table (or every weight) once for every objective and
    reduce-scatters the gradient once (`model.with_gathered_weights`); the maths must be
    untouched, and the gradients come back in the weights' own dtype."""
    import dataclasses

    from ernie_m_jax.model import ErnieM, with_gathered_weights

    config = dataclasses.replace(tiny_config, dtype=dtype)
    objectives = make_objectives(ErnieM(config), synthetic.TOKENS, EVERY_WORD,
                                 BTMLMConfig(target_languages=(1, 2), temperature=0.0,
                                             max_placeholders=8))
    weights = {"mmlm": 1.0, "tlm": 0.5, "camlm": 1.0, "btmlm": 2.0}
    batches = _uneven_batches()

    def loss(params, shared):
        params = with_gathered_weights(params, config, which) if shared else params
        return weighted_loss(params, batches, jax.random.key(3), objectives, weights)[0]

    plain, plain_grads = jax.jit(jax.value_and_grad(lambda p: loss(p, False)))(tiny_params)
    shared, grads = jax.jit(jax.value_and_grad(lambda p: loss(p, True)))(tiny_params)
    assert float(shared) == pytest.approx(float(plain), rel=1e-6)
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
        scale = float(jnp.max(jnp.abs(b))) + 1e-12
        assert float(jnp.max(jnp.abs(a - b))) <= tolerance * scale


def test_gathering_all_weights_casts_what_the_model_casts_and_names_bad_choices(tiny_config,
                                                                                tiny_params):
    """Kernels and embedding tables come out in the compute dtype (the model casts them
    anyway); biases and LayerNorm keep float32 (the model reads LayerNorm and the vocabulary
    bias in float32). An unknown choice is refused by name, here and in TrainConfig."""
    import dataclasses

    from ernie_m_jax.model import with_gathered_weights

    config = dataclasses.replace(tiny_config, dtype="bfloat16")
    gathered = with_gathered_weights(tiny_params, config, "all")
    flat = {jax.tree_util.keystr(p): v.dtype
            for p, v in jax.tree_util.tree_flatten_with_path(gathered)[0]}
    kernels = {k for k in flat if k.endswith("['kernel']") or k.endswith("['embedding']")}
    assert {"['embeddings']['word_embeddings']['embedding']", "['pooler']['kernel']",
            "['encoder']['layers']['self_attn']['q_proj']['kernel']"} <= kernels
    assert all(flat[k] == jnp.bfloat16 for k in kernels)
    assert all(flat[k] == jnp.float32 for k in set(flat) - kernels)
    only_table = with_gathered_weights(tiny_params, config, "word_embeddings")
    assert only_table["embeddings"]["word_embeddings"]["embedding"].dtype == jnp.bfloat16
    assert only_table["pooler"]["kernel"].dtype == jnp.float32
    with pytest.raises(ValueError, match="'layers'.*choose from"):
        with_gathered_weights(tiny_params, config, "layers")
    with pytest.raises(ValueError, match="gather_weights_once must be one of"):
        train.TrainConfig(gather_weights_once="layers")


def test_accumulation_needs_counters_and_rows_that_split(tiny_model, tiny_params):
    objectives = make_objectives(tiny_model, synthetic.TOKENS, EVERY_WORD)
    sgd = optax.sgd(0.1)
    with pytest.raises(ValueError, match=r"no counter for \['mmlm'\]"):
        train.make_train_step(objectives, {"mmlm": 1.0}, sgd, optax.constant_schedule(0.1), 2)
    state = {"params": tiny_params, "opt_state": sgd.init(tiny_params),
             "step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(0)),
             **{k: jnp.zeros((), jnp.int32) for k in train.COUNTERS}}
    step = train.make_train_step(objectives, {"mmlm": 1.0}, sgd, optax.constant_schedule(0.1),
                                 3, prediction_counters=make_prediction_counters(
                                     synthetic.TOKENS, EVERY_WORD))
    with pytest.raises(ValueError, match="does not split into 3"):
        jax.jit(step)(state, {"mmlm": _uneven_batches()["mmlm"]})


def test_the_step_builder_reads_no_data_and_resolve_reads_the_mixtures(monkeypatch):
    """Configuration is resolved at the edge: `build_train_step` (BTMLM included) is built and
    traced with every way of reaching the data failing; `resolve`, the edge, does reach it."""
    import seqio

    from ernie_m_jax import partitioning
    from ernie_m_jax.configs import SpecialTokens, model_config
    from ernie_m_jax.data import pipeline

    def no_data(*args, **kwargs):
        raise AssertionError("the data registry was read")

    for registry in (seqio.TaskRegistry, seqio.MixtureRegistry):
        monkeypatch.setattr(registry, "get", no_data)
    monkeypatch.setattr(seqio, "get_mixture_or_task", no_data)
    monkeypatch.setattr(pipeline, "tasks_of", no_data)
    objectives = {"mmlm": 1.0, "btmlm": 1.0}
    exp = train.Experiment(
        train.TrainConfig(num_steps=10, objective_weights=objectives),
        model_config("tiny", num_languages=4),
        pipeline.DataConfig(batch_sizes={"mmlm": 4, "btmlm": 4}, mono_length=16,
                            pair_length=16),
        partitioning.MeshConfig(shape=(1, 1, 1)), optimizer.OptimizerConfig(), MaskingConfig(),
        BTMLMConfig(target_languages=(1, 2), fit_length_factors=True, max_placeholders=4),
        SpecialTokens())
    mesh = partitioning.make_mesh(exp.mesh, jax.devices()[:1])
    built = train.build_train_step(exp, mesh)
    with partitioning.activate(mesh, exp.mesh.rules):
        built.fn.lower(built.abstract_state, built.abstract_batches())
    assert built.btmlm == exp.btmlm  # as given: no length factors were measured
    # Positive control: resolving reads the pair mixture (fit_length_factors) and so fails.
    with pytest.raises(AssertionError, match="registry was read"):
        train.resolve(exp)
    assert train.resolve(exp, read_data=False) == exp  # languages given, nothing to read
