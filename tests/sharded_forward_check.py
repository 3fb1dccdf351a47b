"""Run in a subprocess with 8 simulated CPU devices (see test_partitioning.py).

On a data x fsdp x tensor = 2x2x2 mesh: parameters are created sharded by the logical-axis
rules, and the forward pass and the CAMLM loss + gradient equal the single-device results.
The train step with its gradients summed across the data axis once (`GradientSum`, what a
multislice mesh runs) equals the same step accumulated over two microbatches.
"""

import functools
import sys

import flax.linen as nn
import jax
import numpy as np

from ernie_m_jax import partitioning
from ernie_m_jax.configs import MaskingConfig, model_config
from ernie_m_jax.model import ErnieM, init_params, with_gathered_weights
from ernie_m_jax.objectives import camlm_loss
from tests.synthetic import TOKENS, pair_batch


def main():
    assert jax.device_count() == 8, jax.device_count()
    config = model_config("tiny", num_languages=4, dropout_rate=0.0, attention_dropout_rate=0.0)
    model = ErnieM(config)
    init = functools.partial(init_params, config)
    rng = jax.random.key(0)
    batch = pair_batch(1, batch=8, length=24)

    single = nn.unbox(init(rng))
    loss_fn = functools.partial(camlm_loss, model=model, tokens=TOKENS, masking=MaskingConfig(),
                                deterministic=True)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (ref_loss, _), ref_grads = jax.jit(grad_fn)(single["params"], batch, jax.random.key(1))
    ref_hidden = jax.jit(lambda v, b: model.apply(v, b["input_ids"],
                                                  language_ids=b["language_ids"]))(single, batch)

    mesh = partitioning.make_mesh(partitioning.MeshConfig(shape=(2, 2, 2)))
    variables, shardings = partitioning.sharded_init(init, rng, mesh)
    kernel = variables["params"]["encoder"]["layers"]["linear1"]["kernel"]
    assert shardings["params"]["encoder"]["layers"]["linear1"]["kernel"].spec == \
        jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert partitioning.addressable_fraction(kernel) == 0.25
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(single)):
        np.testing.assert_allclose(a, b, atol=1e-7)

    data = partitioning.data_sharding(mesh)
    partitioning.check_batch_divides(8, mesh)
    sharded_batch = jax.device_put(batch, data)
    with partitioning.activate(mesh):
        forward = jax.jit(lambda v, b: model.apply(v, b["input_ids"],
                                                   language_ids=b["language_ids"]),
                          in_shardings=(shardings, data))
        hidden = forward(variables, sharded_batch)
        step = jax.jit(grad_fn, in_shardings=(shardings["params"], data,
                                              partitioning.replicated(mesh)),
                       out_shardings=((partitioning.replicated(mesh), None),
                                      shardings["params"]))
        (loss, _), grads = step(variables["params"], sharded_batch, jax.random.key(1))
    sharding = hidden["hidden_states"].sharding
    assert sharding.spec[0] == ("data", "fsdp"), sharding
    np.testing.assert_allclose(hidden["hidden_states"], ref_hidden["hidden_states"], atol=2e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    progress("forward, CAMLM loss and gradient equal one device's")
    try:
        partitioning.check_batch_divides(6, mesh)
    except ValueError as err:
        assert "not divisible" in str(err)
    else:
        raise AssertionError("batch 6 on 4 batch shards was accepted")
    gradient_sum_step_equals_accumulation(model, mesh, variables["params"])
    progress("GradientSum steps equal accumulated microbatches")
    weights_gathered_once_leave_no_collective_in_the_layer_loop(config)
    progress("weights gathered once: no collective in the layer loop")
    for shape in ((1, 8, 1), (2, 2, 2), (2, 4, 1)):
        scattered_sum_is_the_sum_in_each_weights_shards(shape)
        progress(f"scattered_sum on mesh {shape}")
    print("SHARDED OK")


def progress(done: str):
    """A line as each part passes, flushed: a child that stops shows how far it got."""
    print(f"passed: {done}", flush=True)


def gradient_sum_step_equals_accumulation(model, mesh, params):
    """Part i of the data axis holds the i-th half of the batch and folds i into the step's
    key, as microbatch i of two does: the same step, to float tolerance; summed in bf16
    across the axis, close but not equal (the dtype is honoured)."""
    import optax

    from ernie_m_jax import train
    from ernie_m_jax.configs import BTMLMConfig
    from ernie_m_jax.objectives import make_objectives, make_prediction_counters
    from tests.synthetic import monolingual_rows

    masking = MaskingConfig(rate=0.5)
    objectives = make_objectives(model, TOKENS, masking, BTMLMConfig(
        target_languages=(1, 2), temperature=0.0, max_placeholders=8))
    counters = make_prediction_counters(TOKENS, masking)
    weights = {"mmlm": 1.0, "camlm": 1.0, "btmlm": 0.5}
    # 16 rows: each microbatch keeps rows on every one of the 4 batch shards.
    pairs = pair_batch(3, batch=16, length=24, max_words=8)
    batches = {"mmlm": monolingual_rows([1, 2, 1, 2, 12, 13, 11, 13] * 2, seed=1),
               "camlm": pairs,
               "btmlm": monolingual_rows([3, 9, 2, 14, 5, 1, 8, 12] * 2, seed=2)}
    sgd = optax.sgd(1.0)
    state = {"params": params, "opt_state": sgd.init(params),
             "step": jax.numpy.zeros((), "int32"), "rng": jax.random.key_data(jax.random.key(0)),
             **{k: jax.numpy.zeros((), "int32") for k in train.COUNTERS}}
    data = partitioning.data_sharding(mesh)
    rules = partitioning.LOGICAL_AXIS_RULES
    specs = jax.tree.map(lambda x: x.sharding.spec, params)
    every_weight = functools.partial(with_gathered_weights, config=model.config, which="all")
    variants = {  # name -> (accumulation steps, GradientSum, weights gathered once)
        "accumulated": (2, None, lambda p: p),
        "data": (1, train.GradientSum(mesh, rules), lambda p: p),
        "data_bf16": (1, train.GradientSum(mesh, rules, dtype="bfloat16"), lambda p: p),
        "data_gathered": (1, train.GradientSum(mesh, rules), every_weight),
        # Every chip's rows a part, each sum scattered into the weights' shards (what
        # gather_weights_once="all" builds): the same step as 4 microbatches, on one device
        # (the reference that found tests/mesh_gradient_check.py's wrong gradients).
        "accumulated4_one_device": (4, None, lambda p: p),
        "scattered": (1, train.GradientSum(mesh, rules, ("data", "fsdp"), scatter_to=specs),
                      every_weight),
    }
    results = {}
    for name, (accum, parts, shared) in variants.items():
        step = train.make_train_step(objectives, weights, sgd, optax.constant_schedule(1.0),
                                     accum, prediction_counters=counters, gradient_sum=parts,
                                     shared_params=shared)
        if name.endswith("_one_device"):
            one = jax.devices()[0]
            new_state, metrics = jax.jit(step)(jax.device_put(jax.tree.map(np.asarray, state),
                                                              one), jax.device_put(batches, one))
        else:
            with partitioning.activate(mesh):
                new_state, metrics = jax.jit(step)(state, jax.device_put(batches, data))
        results[name] = (new_state["params"], {k: float(v) for k, v in metrics.items()})
        progress(f"step variant {name} ran")
    assert all(r[1]["finite"] == 1.0 for r in results.values())
    reference_params, reference = results["accumulated"]
    params_f32, metrics_f32 = results["data"]
    for key in reference:
        for name in ("data", "data_gathered"):
            np.testing.assert_allclose(results[name][1][key], reference[key], rtol=2e-5,
                                       atol=1e-6, err_msg=f"{name}: {key}")
    for a, b in zip(jax.tree.leaves(results["data_gathered"][0]),
                    jax.tree.leaves(reference_params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    for key in reference:
        np.testing.assert_allclose(results["scattered"][1][key],
                                   results["accumulated4_one_device"][1][key], rtol=2e-5,
                                   atol=1e-6, err_msg=f"scattered: {key}")
    for a, b in zip(jax.tree.leaves(results["scattered"][0]),
                    jax.tree.leaves(results["accumulated4_one_device"][0])):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert reference["mmlm/num_predictions"] > 0 and reference["btmlm/num_predictions"] > 0
    gaps = []
    for a, b, c in zip(jax.tree.leaves(params_f32), jax.tree.leaves(reference_params),
                       jax.tree.leaves(results["data_bf16"][0])):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
        gaps.append(float(np.max(np.abs(np.asarray(c) - np.asarray(b)))))
    assert 1e-6 < max(gaps) < 1e-1, max(gaps)


def weights_gathered_once_leave_no_collective_in_the_layer_loop(config):
    """On an FSDP mesh of 8, the step that gathers every weight once (`TrainConfig.
    gather_weights_once="all"`) runs no collective inside the scanned layer loops: each
    chip's rows are a part whose gradient is summed with the others' once
    (`train.GradientSum` over the batch axes). The table-only step (the control) gathers
    each layer's weights there, per layer per pass."""
    from ernie_m_jax import optimizer, train
    from ernie_m_jax.aot import hlo
    from ernie_m_jax.configs import BTMLMConfig, SpecialTokens
    from ernie_m_jax.data import pipeline

    mesh = partitioning.make_mesh(partitioning.MeshConfig(shape=(1, 8, 1)))
    looped = {}
    for which in ("word_embeddings", "all"):
        exp = train.Experiment(
            train.TrainConfig(num_steps=10, objective_weights={"mmlm": 1.0, "tlm": 1.0},
                              gather_weights_once=which),
            config, pipeline.DataConfig(batch_sizes={"mmlm": 8, "tlm": 8}, mono_length=16,
                                        pair_length=16),
            partitioning.MeshConfig(shape=(1, 8, 1)), optimizer.OptimizerConfig(),
            MaskingConfig(), BTMLMConfig(), SpecialTokens())
        step = train.build_train_step(exp, mesh)
        with partitioning.activate(mesh, exp.mesh.rules):
            text = step.fn.lower(step.abstract_state, step.abstract_batches()).compile().as_text()
        collectives = hlo.parse(text)
        assert collectives, which
        # Collectives run in a loop: executions beyond the instruction's pieces.
        looped[which] = sum(c.executions - c.pieces for c in collectives)
    assert looped["word_embeddings"] > 0, looped
    assert looped["all"] == 0, looped


def scattered_sum_is_the_sum_in_each_weights_shards(shape):
    """`train.scattered_sum` of parts laid over the batch axes equals their plain sum,
    returned in each weight's FSDP sharding, whichever dimension FSDP splits."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from ernie_m_jax.train.step import scattered_sum

    mesh = partitioning.make_mesh(partitioning.MeshConfig(shape=shape))
    axes = tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1)
    parts = int(np.prod([mesh.shape[a] for a in axes]))
    rng = np.random.default_rng(0)
    stacked = {"rows": rng.normal(size=(parts, 8, 6)).astype(np.float32),
               "columns": rng.normal(size=(parts, 3, 16, 4)).astype(np.float32),
               "bias": rng.normal(size=(parts, 4)).astype(np.float32)}
    specs = {"rows": P("fsdp", "tensor"), "columns": P(None, "fsdp", "tensor"),
             "bias": P("tensor")}
    with jax.set_mesh(mesh):
        placed = jax.device_put(stacked, NamedSharding(mesh, P(axes)))
        summed = jax.jit(lambda t: scattered_sum(t, specs, mesh, axes))(placed)
    for name, value in stacked.items():
        np.testing.assert_allclose(summed[name], value.sum(0), rtol=1e-5, atol=1e-5)
        fsdp_dims = [d for d, e in enumerate(specs[name]) if e == "fsdp"]
        assert [d for d, e in enumerate(summed[name].sharding.spec) if e == "fsdp"] == \
            fsdp_dims, (name, summed[name].sharding.spec)


if __name__ == "__main__":
    sys.exit(main())
