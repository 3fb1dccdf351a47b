"""The Flax encoder equals Hugging Face's ErnieMModel given the same weights."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from ernie_m_jax.configs import model_config
from ernie_m_jax.export import layouts
from ernie_m_jax.model import ErnieM, init_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.slow
def test_flax_encoder_matches_transformers_ernie_m():
    config = model_config("tiny", num_layers=3)
    params = nn.unbox(init_params(config, jax.random.key(3)))["params"]
    # Non-trivial LayerNorm and bias values, so a swapped or transposed tensor shows.
    params = jax.tree_util.tree_map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size), x.shape), params)
    hf = transformers.ErnieMModel(transformers.ErnieMConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_dim, max_position_embeddings=config.max_position_embeddings,
        layer_norm_eps=config.layer_norm_eps, pad_token_id=config.pad_id)).eval()
    state = {k: torch.from_numpy(np.array(v)) for k, v in
             layouts.to_state_dict(params, config, layouts.ERNIE_M_ENCODER).items()}
    hf.load_state_dict(state, strict=True)

    rs = np.random.RandomState(0)
    ids = rs.randint(5, config.vocab_size, (3, 12))
    ids[:, 0] = 0
    ids[0, 7:] = config.pad_id
    ids[1, 10:] = config.pad_id
    keys = ids != config.pad_id
    ours = ErnieM(config).apply({"params": params}, ids, attention_mask=keys)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(keys.astype(np.int64)))
    np.testing.assert_allclose(np.asarray(ours["hidden_states"])[keys],
                               theirs.last_hidden_state.numpy()[keys], atol=1e-5)
    np.testing.assert_allclose(ours["pooled_output"], theirs.pooler_output.numpy(), atol=1e-5)


def test_models_with_language_embeddings_refuse_the_hf_layouts():
    config = model_config("tiny", num_languages=2)
    params = nn.unbox(init_params(config, jax.random.key(0)))["params"]
    for layout in layouts.LAYOUTS.values():
        with pytest.raises(ValueError, match="language embeddings.*--fold_language"):
            layouts.to_state_dict(params, config, layout)


def test_folding_a_language_embedding_is_exact_for_that_language():
    config = model_config("tiny", num_languages=3)
    params = nn.unbox(init_params(config, jax.random.key(1)))["params"]
    folded, plain = layouts.fold_language_embedding(params, config, 2)
    assert plain.num_languages == 0 and "language_embeddings" not in folded["embeddings"]
    ids = np.array([[0, 7, 9, 11, 2, 1]])
    ours = ErnieM(config).apply({"params": params}, ids, language_ids=np.full(ids.shape, 2))
    theirs = ErnieM(plain).apply({"params": folded}, ids)
    np.testing.assert_allclose(ours["hidden_states"], theirs["hidden_states"], atol=1e-6)
    other = ErnieM(config).apply({"params": params}, ids, language_ids=np.zeros_like(ids))
    assert np.abs(other["hidden_states"] - theirs["hidden_states"]).max() > 1e-3
