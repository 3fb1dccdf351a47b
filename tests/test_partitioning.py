import jax
import pytest

from ernie_m_jax import cpu_devices, partitioning
from tests.train_runs import run_eight_device_child


@pytest.mark.slow
def test_sharded_model_equals_single_device_on_eight_simulated_devices():
    # The device count must be fixed before JAX starts, hence a fresh interpreter.
    result = run_eight_device_child(["tests.sharded_forward_check"])
    assert "SHARDED OK" in result.stdout


def test_mesh_shape_resolution():
    config = partitioning.MeshConfig(shape=(-1, 2, 1))
    assert config.resolve(8) == (4, 2, 1)
    with pytest.raises(ValueError, match="needs a multiple of 2 devices, there are 3"):
        config.resolve(3)
    with pytest.raises(ValueError, match="has 4 devices, there are 8"):
        partitioning.MeshConfig(shape=(2, 2, 1)).resolve(8)
    with pytest.raises(ValueError, match="at most one -1"):
        partitioning.MeshConfig(shape=(-1, -1, 1))
    with pytest.raises(ValueError, match="differ in length"):
        partitioning.MeshConfig(shape=(1, 1))


def test_single_device_mesh_and_data_sharding():
    mesh = partitioning.make_mesh(partitioning.MeshConfig(), devices=jax.devices()[:1])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert partitioning.data_sharding(mesh).spec == \
        jax.sharding.PartitionSpec(("data", "fsdp"), None)


@pytest.mark.parametrize("shape, rows, shards", [
    ((2, 4, 1), 12, 8),  # the batch is split over data x fsdp
    ((1, 4, 2), 6, 4),  # tensor parallelism does not split the batch
    ((8, 1, 1), 4, 8),
])
def test_batch_check_counts_the_batch_shards_of_an_eight_device_mesh(shape, rows, shards):
    mesh = jax.sharding.AbstractMesh(shape, partitioning.MESH_AXES)  # shapes only, no devices
    partitioning.check_batch_divides(2 * shards, mesh)
    with pytest.raises(ValueError, match=f"global batch size {rows} is not divisible by the "
                                         f"{shards} batch shards"):
        partitioning.check_batch_divides(rows, mesh)


@pytest.mark.parametrize("slots", ["3", "9"])
def test_mlm_head_gradients_on_a_data_fsdp_tensor_mesh_equal_one_device(slots):
    """9 slots gave other gradients than one device before the MLM head put its hidden
    state back in the `embed` layout (3 slots, the control, always agreed)."""
    run_eight_device_child(["tests.mesh_gradient_check", slots])


class _Mesh:
    """What `attention_batch_groups` reads of a mesh: its size and its devices' platform."""

    def __init__(self, size, platform):
        import numpy as np
        self.size = size
        self.devices = np.array([type("Device", (), {"platform": platform})()] * size)


def test_attention_batch_groups_follow_the_mesh(monkeypatch):
    """One group per core the process may use on a mesh of one CPU device (XLA:CPU runs a
    batched matmul on one thread); 1 on several devices (the batch is sharded) and on
    accelerators, including a TPU slice compiled from this CPU host."""
    monkeypatch.setattr(cpu_devices.os, "sched_getaffinity", lambda pid: {0, 1, 2},
                        raising=False)
    assert partitioning.attention_batch_groups(_Mesh(1, "cpu")) == 3
    assert partitioning.attention_batch_groups(_Mesh(8, "cpu")) == 1
    assert partitioning.attention_batch_groups(_Mesh(1, "tpu")) == 1
    assert partitioning.attention_batch_groups(_Mesh(1, "gpu")) == 1


def test_the_step_builder_decides_what_the_config_leaves_to_the_mesh():
    """`for_mesh` fills `attention_batch_groups` only where the config leaves it (None), and
    both step builders (pretraining, fine-tuning) build their model with the result; a
    value given is kept."""
    from ernie_m_jax import optimizer, train
    from ernie_m_jax.configs import BTMLMConfig, MaskingConfig, SpecialTokens, model_config
    from ernie_m_jax.data import pipeline

    mesh = partitioning.make_mesh(partitioning.MeshConfig(), jax.devices()[:1])
    cores = partitioning.attention_batch_groups(mesh)
    assert cores >= 1
    given = model_config("tiny", attention_batch_groups=1)
    assert partitioning.for_mesh(given, mesh) is given
    left = model_config("tiny")
    assert left.attention_batch_groups is None
    assert partitioning.for_mesh(left, mesh).attention_batch_groups == cores
    exp = train.Experiment(
        train.TrainConfig(num_steps=10, objective_weights={"mmlm": 1.0}), left,
        pipeline.DataConfig(batch_sizes={"mmlm": 4}, mono_length=16, pair_length=16),
        partitioning.MeshConfig(shape=(1, 1, 1)), optimizer.OptimizerConfig(),
        MaskingConfig(), BTMLMConfig(), SpecialTokens())
    assert train.build_train_step(exp, mesh).model.config.attention_batch_groups == cores
    from ernie_m_jax.finetune.config import FinetuneConfig
    from ernie_m_jax.finetune.step import build_finetune_step

    tuned = build_finetune_step(left, 3, FinetuneConfig(), 10, mesh,
                                partitioning.LOGICAL_AXIS_RULES)
    assert tuned.model.config.attention_batch_groups == cores
