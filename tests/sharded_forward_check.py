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
from ernie_m_jax.model import ErnieM, init_params
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
    try:
        partitioning.check_batch_divides(6, mesh)
    except ValueError as err:
        assert "not divisible" in str(err)
    else:
        raise AssertionError("batch 6 on 4 batch shards was accepted")
    gradient_sum_step_equals_accumulation(model, mesh, variables["params"])
    print("SHARDED OK")


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
    variants = {  # name -> (accumulation steps, GradientSum)
        "accumulated": (2, None),
        "data": (1, train.GradientSum(mesh, rules)),
        "data_bf16": (1, train.GradientSum(mesh, rules, dtype="bfloat16")),
    }
    results = {}
    for name, (accum, parts) in variants.items():
        step = train.make_train_step(objectives, weights, sgd, optax.constant_schedule(1.0),
                                     accum, prediction_counters=counters, gradient_sum=parts)
        with partitioning.activate(mesh):
            new_state, metrics = jax.jit(step)(state, jax.device_put(batches, data))
        results[name] = (new_state["params"], {k: float(v) for k, v in metrics.items()})
    assert all(r[1]["finite"] == 1.0 for r in results.values())
    reference_params, reference = results["accumulated"]
    params_f32, metrics_f32 = results["data"]
    for key in reference:
        np.testing.assert_allclose(metrics_f32[key], reference[key], rtol=2e-5, atol=1e-6,
                                   err_msg=key)
    assert reference["mmlm/num_predictions"] > 0 and reference["btmlm/num_predictions"] > 0
    gaps = []
    for a, b, c in zip(jax.tree.leaves(params_f32), jax.tree.leaves(reference_params),
                       jax.tree.leaves(results["data_bf16"][0])):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
        gaps.append(float(np.max(np.abs(np.asarray(c) - np.asarray(b)))))
    assert 1e-6 < max(gaps) < 1e-1, max(gaps)


if __name__ == "__main__":
    sys.exit(main())
