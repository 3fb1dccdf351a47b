from pathlib import Path

import gin
import pytest

from ernie_m_jax.configs import BTMLMConfig, ModelConfig, SpecialTokens, model_config

GIN_DIR = Path(__file__).resolve().parents[1] / "gin"


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
def test_model_gin_files_bind_the_presets(size):
    gin.parse_config_file(str(GIN_DIR / "models" / f"{size}.gin"))
    assert ModelConfig() == model_config(size)


def test_base_is_the_released_shape():
    base = model_config("base")
    assert (base.num_layers, base.hidden_size, base.num_heads, base.mlp_dim, base.vocab_size,
            base.max_position_embeddings) == (12, 768, 12, 3072, 250_002, 514)
    large = model_config("large")
    assert (large.num_layers, large.hidden_size, large.num_heads, large.mlp_dim) == \
        (24, 1024, 16, 4096)


def test_wrong_gin_binding_fails_with_gins_message():
    with pytest.raises(ValueError, match="num_layer"):
        gin.parse_config("ModelConfig.num_layer = 3")


def test_gin_binding_of_an_invalid_value_names_the_field():
    gin.parse_config("ModelConfig.num_heads = 5")
    with pytest.raises(ValueError, match="not divisible by num_heads=5"):
        ModelConfig()


def test_special_tokens_must_fit_and_differ():
    with pytest.raises(ValueError, match="distinct"):
        SpecialTokens(mask_id=0)
    with pytest.raises(ValueError, match="does not fit a vocabulary of 100"):
        SpecialTokens(mask_id=250_001).check_vocab(100)


@pytest.mark.parametrize("kwargs,match", [(dict(placeholder_ratio=0), "placeholder_ratio"),
                                          (dict(temperature=-1), "temperature"),
                                          (dict(top_k=-2), "top_k"),
                                          (dict(target_languages=(-1,)), "target_languages"),
                                          (dict(length_factors=(1.0, 0.0)), "length_factors")])
def test_bad_btmlm_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BTMLMConfig(**kwargs)


def test_reading_a_config_in_isolation_leaves_the_callers_config_as_it_was():
    """`gin_config.isolated` (how a saved run's config.gin is read) restores the caller's
    imports, macros and references; inside, only the other config is seen."""
    from ernie_m_jax import gin_config, train

    gin_config.parse(["runs/demo_cpu.gin"], ["NUM_STEPS=700", "BATCH_SIZE=16"])
    before, text = train.Experiment.from_gin(), gin.config_str()
    with gin_config.isolated():
        assert gin.config_str() == ""  # the control: nothing of the caller's is left inside
        gin_config.parse(["runs/pretrain_stage1.gin", "models/tiny.gin"],
                         ["MONO_MIXTURE='a.mono'", "PARA_MIXTURE='a.para'", "NUM_STEPS=10",
                          "SpecialTokens.mask_id=4", "TrainConfig.init_from=None"])
        inside = train.Experiment.from_gin()
    assert inside.data.mono_mixture == "a.mono" and inside.model.num_layers == 2
    after = train.Experiment.from_gin()
    assert after == before and after.data.batch_sizes["tlm"] == 16
    assert gin.config_str() == text and after.train.data_setup is before.train.data_setup


@pytest.mark.parametrize("mesh,shape,gathered", [
    ("data_parallel", (-1, 1, 1), "word_embeddings"),
    ("fsdp", (1, -1, 1), "word_embeddings"),
    ("fsdp_tensor", (1, -1, 2), "word_embeddings"),
    ("fsdp_gathered", (1, -1, 1), "all"),
])
def test_mesh_presets_bind_the_mesh_and_what_is_gathered_once(mesh, shape, gathered):
    """The presets the README's launch examples and the pod plan's recommendations use, on
    top of a run file: `fsdp_gathered.gin` is FSDP's mesh with every weight gathered once."""
    from ernie_m_jax import gin_config, train

    gin_config.parse(["runs/pretrain_stage1.gin", f"mesh/{mesh}.gin"],
                     ["MONO_MIXTURE = 'm'", "PARA_MIXTURE = 'p'", "NUM_STEPS = 10"])
    exp = train.Experiment.from_gin()
    assert exp.mesh.shape == shape
    assert exp.train.gather_weights_once == gathered
