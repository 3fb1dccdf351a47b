"""Run in a subprocess with 8 simulated CPU devices (see test_partitioning.py).

On a data x fsdp x tensor = 2x2x2 mesh: parameters are created sharded by the logical-axis
rules, and the forward pass and the CAMLM loss + gradient equal the single-device results.
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
    print("SHARDED OK")


if __name__ == "__main__":
    sys.exit(main())
