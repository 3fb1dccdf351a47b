"""Run in a subprocess with 8 simulated CPU devices (see test_partitioning.py).

On a data x FSDP x tensor = 2x2x2 mesh with one row per batch shard (4 rows), the MLM
head's logits at 8 or more slots per row gave the same loss as on one device but other
gradients (0.1-0.5 off; 3-7 slots agreed, as did 2 rows per shard and every other 8-device
mesh tried), until `model.MLMHead` put its hidden state back in the `embed` layout before
the tied decoder. Exits 0 when the gradients agree with one device's, 1 when they differ.
"""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ernie_m_jax import partitioning
from ernie_m_jax.configs import model_config
from ernie_m_jax.model import ErnieM, init_params
from tests.synthetic import monolingual_rows


def main() -> int:
    assert jax.device_count() == 8, jax.device_count()
    config = model_config("tiny", num_languages=4, dropout_rate=0.0, attention_dropout_rate=0.0)
    model = ErnieM(config)
    batch = jax.tree.map(lambda x: x[:4], monolingual_rows([1, 2, 1, 2], seed=1))
    slots = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    positions = jnp.array([[1, 0, 2, 3, 4, 5, 6, 7, 8], [2, 1, 0, 3, 4, 5, 6, 7, 8]] * 2)[:, :slots]

    def loss(params, rows):
        out = model.apply({"params": params}, rows["input_ids"],
                          language_ids=rows["language_ids"], mlm_positions=positions)
        return jnp.sum(jnp.sin(out["mlm_logits"][..., :50]))

    results = []
    for shape in ((1, 1, 1), (2, 2, 2)):
        devices = jax.devices()[:int(np.prod(shape))]
        mesh = partitioning.make_mesh(partitioning.MeshConfig(shape=shape), devices)
        variables, _ = partitioning.sharded_init(functools.partial(init_params, config),
                                                 jax.random.key(0), mesh)
        with partitioning.activate(mesh):
            rows = jax.device_put(batch, partitioning.data_sharding(mesh))
            value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"], rows)
        results.append((float(value), [np.asarray(g) for g in jax.tree.leaves(grads)]))
    (one, one_grads), (mesh_value, mesh_grads) = results
    assert abs(one - mesh_value) < 1e-4 * abs(one), (one, mesh_value)  # the loss agrees
    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(one_grads, mesh_grads))
    print(f"largest gradient difference {gap:.3g} ({slots} slots)")
    return 0 if gap < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
