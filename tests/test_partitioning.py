import subprocess
import sys
from pathlib import Path

import jax
import pytest

from ernie_m_jax import partitioning
from tests.train_runs import eight_device_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sharded_model_equals_single_device_on_eight_simulated_devices():
    # The device count must be fixed before JAX starts, hence a fresh interpreter.
    env = eight_device_env()
    result = subprocess.run([sys.executable, "-m", "tests.sharded_forward_check"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
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
    result = subprocess.run([sys.executable, "-m", "tests.mesh_gradient_check", slots],
                            cwd=ROOT, env=eight_device_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-500:] + result.stderr[-2000:]
