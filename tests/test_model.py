import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ernie_m_jax.configs import ModelConfig, model_config
from ernie_m_jax.model import ErnieM, init_params
from tests.synthetic import monolingual_batch

IDS = jnp.asarray([[0, 5, 6, 7, 8, 2, 1, 1], [0, 9, 10, 2, 2, 11, 2, 1]], jnp.int32)
LANGS = jnp.zeros_like(IDS)


def test_every_parameter_has_one_logical_name_per_axis(tiny_config):
    variables = init_params(tiny_config, jax.random.key(0))
    leaves = jax.tree_util.tree_leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert len(leaves) > 20
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim and all(leaf.names), leaf.names
    specs = nn.get_partition_spec(variables)["params"]
    q_kernel = specs["encoder"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q_kernel == jax.sharding.PartitionSpec("layers", "embed", "heads", "kv")
    assert specs["embeddings"]["word_embeddings"]["embedding"] == jax.sharding.PartitionSpec(
        "vocab", "embed")


def test_outputs_have_the_documented_shapes(tiny_model, tiny_params, tiny_config):
    out = tiny_model.apply({"params": tiny_params}, IDS, language_ids=LANGS,
                           mlm_positions=jnp.asarray([[1, 2, 3]] * 2), output_hidden_states=True)
    assert out["hidden_states"].shape == (2, 8, 32)
    assert out["pooled_output"].shape == (2, 32)
    assert out["mlm_logits"].shape == (2, 3, tiny_config.vocab_size)
    assert out["mlm_logits"].dtype == jnp.float32
    assert out["all_hidden_states"].shape == (tiny_config.num_layers + 1, 2, 8, 32)
    np.testing.assert_array_equal(out["all_hidden_states"][-1], out["hidden_states"])


def test_padding_does_not_change_real_tokens(tiny_model, tiny_params):
    short = tiny_model.apply({"params": tiny_params}, IDS[:, :6], language_ids=LANGS[:, :6])
    long = tiny_model.apply({"params": tiny_params},
                            jnp.pad(IDS, ((0, 0), (0, 4)), constant_values=1),
                            language_ids=jnp.pad(LANGS, ((0, 0), (0, 4))))
    np.testing.assert_allclose(long["hidden_states"][0, :5], short["hidden_states"][0, :5],
                               atol=1e-6)


def test_key_padding_mask_equals_its_three_dimensional_form(tiny_model, tiny_params):
    keys = IDS != 1
    a = tiny_model.apply({"params": tiny_params}, IDS, attention_mask=keys.astype(jnp.int32),
                         language_ids=LANGS)
    b = tiny_model.apply({"params": tiny_params}, IDS, language_ids=LANGS,
                         attention_mask=jnp.broadcast_to(keys[:, None, :], (2, 8, 8)))
    np.testing.assert_array_equal(a["hidden_states"], b["hidden_states"])


def test_language_embeddings_are_a_switch(tiny_params, tiny_model):
    assert "language_embeddings" in tiny_params["embeddings"]
    a = tiny_model.apply({"params": tiny_params}, IDS, language_ids=LANGS)
    b = tiny_model.apply({"params": tiny_params}, IDS, language_ids=LANGS + 1)
    assert np.abs(np.asarray(a["hidden_states"] - b["hidden_states"])).max() > 1e-3
    with pytest.raises(ValueError, match="language_ids"):
        tiny_model.apply({"params": tiny_params}, IDS)
    plain = model_config("tiny")
    params = nn.unbox(init_params(plain, jax.random.key(0)))["params"]
    assert "language_embeddings" not in params["embeddings"]


def test_too_long_input_names_the_limit(tiny_model, tiny_params, tiny_config):
    ids = jnp.ones((1, tiny_config.max_length + 1), jnp.int32)
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        tiny_model.apply({"params": tiny_params}, ids, language_ids=jnp.zeros_like(ids))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_weights_and_tracks_float32():
    f32 = model_config("tiny", dropout_rate=0.0)
    bf16 = model_config("tiny", dropout_rate=0.0, dtype="bfloat16")
    variables = nn.unbox(init_params(bf16, jax.random.key(0)))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
    a = ErnieM(f32).apply(variables, IDS, mlm_positions=jnp.asarray([[1, 2]] * 2))
    b = ErnieM(bf16).apply(variables, IDS, mlm_positions=jnp.asarray([[1, 2]] * 2))
    assert b["hidden_states"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(b["hidden_states"], np.float32), a["hidden_states"],
                               atol=0.1)
    np.testing.assert_allclose(b["mlm_logits"], a["mlm_logits"], atol=0.1)


@pytest.mark.parametrize("policy", ["full", "dots"])
@pytest.mark.slow
def test_rematerialisation_changes_nothing_numerically(policy, tiny_params, tiny_config):
    import dataclasses
    batch = monolingual_batch(0, batch=2, length=8)

    def loss(config, params):
        out = ErnieM(config).apply({"params": params}, batch["input_ids"],
                                   language_ids=batch["language_ids"])
        return (out["hidden_states"] ** 2).mean()

    remat = dataclasses.replace(tiny_config, remat_policy=policy)
    g1 = jax.grad(lambda p: loss(tiny_config, p))(tiny_params)
    g2 = jax.grad(lambda p: loss(remat, p))(tiny_params)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("unroll", [2, 3])
@pytest.mark.slow
def test_unrolling_the_layer_scan_changes_nothing(unroll, tiny_config):
    """Same parameter tree, same dropout draws, same gradients: only the loop's shape moves."""
    import dataclasses
    config = dataclasses.replace(tiny_config, num_layers=3)
    unrolled = dataclasses.replace(config, scan_unroll=unroll)
    params = nn.unbox(init_params(config, jax.random.key(0)))["params"]
    assert jax.tree.structure(params) == jax.tree.structure(
        nn.unbox(init_params(unrolled, jax.random.key(0)))["params"])
    batch = monolingual_batch(0, batch=2, length=8)

    def loss(cfg, p):
        out = ErnieM(cfg).apply({"params": p}, batch["input_ids"],
                                language_ids=batch["language_ids"], deterministic=False,
                                rngs={"dropout": jax.random.key(3)})
        return (out["hidden_states"] ** 2).mean()

    (l1, g1), (l2, g2) = (jax.value_and_grad(loss, argnums=1)(c, params)
                          for c in (config, unrolled))
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_dropout_is_active_only_when_not_deterministic():
    config = model_config("tiny")
    variables = nn.unbox(init_params(config, jax.random.key(0)))
    model = ErnieM(config)
    a = model.apply(variables, IDS, deterministic=True)["hidden_states"]
    b = model.apply(variables, IDS, deterministic=True)["hidden_states"]
    c = model.apply(variables, IDS, deterministic=False,
                    rngs={"dropout": jax.random.key(1)})["hidden_states"]
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a - c)).max() > 1e-3


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden_size=30, num_heads=4), "divisible"),
    (dict(num_layers=0), "num_layers"),
    (dict(dtype="float64"), "dtype"),
    (dict(remat_policy="some"), "remat_policy"),
    (dict(scan_unroll=0), "scan_unroll"),
    (dict(dropout_rate=1.0), "dropout_rate"),
    (dict(attention_batch_groups=0), "attention_batch_groups"),
])
def test_bad_model_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_unknown_size_lists_the_choices():
    with pytest.raises(ValueError, match="base"):
        model_config("huge")


@pytest.mark.slow
def test_mlm_bias_is_a_plain_per_token_bias_with_a_summed_gradient(tiny_config):
    """The head adds its bias as a rank-1 product (for XLA:CPU's sake): the logits and the
    bias gradient must be exactly those of `logits + bias`."""
    params = nn.unbox(init_params(tiny_config, jax.random.key(0)))["params"]
    bias = jax.random.normal(jax.random.key(1), params["mlm_head"]["bias"].shape)
    params = {**params, "mlm_head": {**params["mlm_head"], "bias": bias}}
    batch = monolingual_batch(0, batch=2, length=8)
    positions = jnp.array([[1, 3, 5], [2, 4, 6]])
    weights = jax.random.normal(jax.random.key(2), (2, 3, tiny_config.vocab_size))

    def head(p):
        return ErnieM(tiny_config).apply({"params": p}, batch["input_ids"],
                                         language_ids=batch["language_ids"],
                                         mlm_positions=positions)["mlm_logits"]

    without_bias = {**params, "mlm_head": {**params["mlm_head"],
                                           "bias": jnp.zeros_like(bias)}}
    np.testing.assert_array_equal(head(params), head(without_bias) + bias)
    grad = jax.grad(lambda p: (head(p) * weights).sum())(params)["mlm_head"]["bias"]
    np.testing.assert_allclose(grad, weights.sum((0, 1)), rtol=1e-5, atol=1e-5)


def _activation_sized_copies(hlo: str, elements: int) -> int:
    """Copies and transposes (fused or not) of an activation-sized f32 array in compiled HLO."""
    ops = re.findall(r"%(\w+)(?:\.\d+)? = f32\[([\d,]+)\]\S* (\w+)\(", hlo)
    return sum(1 for name, dims, op in ops
               if (op in ("copy", "transpose") or name.startswith(("copy", "transpose")))
               and math.prod(map(int, dims.split(","))) == elements)


def test_projection_gradients_read_activations_in_place_on_cpu():
    """The weight gradient of a projection over [batch, length, features] contracts tokens: as
    one 2-D matmul XLA:CPU reads the activation gradient in place, where contracting the two
    leading axes directly first writes a transposed copy of it (the control)."""
    from ernie_m_jax.model import Projection

    config = model_config("tiny")
    x = jnp.ones((4, 16, 32))
    layer = Projection((64,), ("embed", "mlp"), config)
    params = nn.unbox(layer.init(jax.random.key(0), x))["params"]

    def loss(p, x):
        return jnp.sum(jnp.sin(layer.apply({"params": p}, x)))

    def loss_contracting_two_axes(p, x):
        y = jax.lax.dot_general(x, p["kernel"], (((2,), (0,)), ((), ()))) + p["bias"]
        return jnp.sum(jnp.sin(y))

    def copies(fn):
        grads = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(params, x).compile().as_text()
        return _activation_sized_copies(grads, 4 * 16 * 64)

    assert copies(loss_contracting_two_axes) >= 1  # control: the layout XLA:CPU inserts
    assert copies(loss) == 0


def _batched_dots(hlo: str) -> int:
    return len(re.findall(r" dot\([^)]*\), lhs_batch_dims=", hlo))


@pytest.mark.parametrize("deterministic", [True, False])
def test_attention_in_batch_groups_equals_the_whole_batch(deterministic):
    """`ModelConfig.attention_batch_groups` (for XLA:CPU, which runs a batched matmul on one
    thread) splits attention into independent ops over slices of the batch: the outputs and
    gradients are the whole batch's (dropout on too: one key, one broadcast mask), and the
    compiled forward holds one batched product per group. Control: another dropout key."""
    ids = jnp.asarray(np.random.RandomState(0).randint(5, 100, (4, 16)), jnp.int32)
    params = nn.unbox(init_params(model_config("tiny"), jax.random.key(0)))

    def forward(groups, key=1):
        model = ErnieM(model_config("tiny", attention_batch_groups=groups))
        def loss(p):
            out = model.apply(p, ids, deterministic=deterministic,
                              rngs={"dropout": jax.random.key(key)})["hidden_states"]
            return (out ** 2).mean(), out
        fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
        (_, out), grads = fn(params)
        return out, grads, fn.lower(params).compile().as_text()

    whole, whole_grads, whole_hlo = forward(1)
    for groups in (2, 4):
        out, grads, hlo = forward(groups)
        np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(whole_grads)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        assert _batched_dots(hlo) == groups * _batched_dots(whole_hlo) > 0
    if not deterministic:
        other, _, _ = forward(2, key=2)
        assert np.abs(np.asarray(other - whole)).max() > 1e-3


def test_attention_batch_groups_divide_the_batch():
    from ernie_m_jax.model import batch_groups

    assert [batch_groups(most, 6) for most in (None, 1, 2, 4, 6, 16)] == [1, 1, 2, 3, 6, 6]
    assert batch_groups(2, 1) == 1
