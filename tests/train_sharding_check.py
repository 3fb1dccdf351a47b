"""Run in a fresh interpreter with 8 simulated CPU devices (see test_train.py).

argv: data_dir, work_dir, single-device checkpoint dir. Prints one JSON line:
per mesh preset the logged losses and how finely the params are split, plus the
single-device checkpoint restored onto an FSDP mesh.
"""

import json
import sys

import gin
import jax
import numpy as np

from ernie_m_jax import checkpoints, gin_config, partitioning, train
from ernie_m_jax.metrics import read_metrics
from ernie_m_jax.optimizer import make_optimizer
from tests.train_runs import run, tiny_bindings

data_dir, work_dir, single_dir = sys.argv[1:4]
assert jax.device_count() == 8, jax.devices()
out = {}
for preset in ("fsdp", "fsdp_tensor"):
    bindings = tiny_bindings(data_dir, 3)
    files = ("runs/demo_cpu.gin", f"mesh/{preset}.gin")
    model_dir = f"{work_dir}/{preset}"
    summary = run(model_dir, bindings, files)
    # Inspect where the trained parameters live.
    gin.clear_config()
    gin_config.parse(files, bindings)
    exp = train.Experiment.from_gin()
    gin.clear_config()
    mesh = partitioning.make_mesh(exp.mesh)
    optimizer = make_optimizer(exp.optimizer, exp.train.num_steps)
    abstract, _ = train.abstract_state(exp.model, optimizer, exp.train.seed, mesh,
                                       exp.mesh.rules)
    mngr = checkpoints.manager(f"{model_dir}/checkpoints", 3)
    restored = checkpoints.restore(mngr, 3, abstract)
    mngr.close()
    layers = restored["params"]["encoder"]["layers"]
    out[preset] = {
        "mesh": dict(mesh.shape),
        "losses": [r["train/loss"] for r in read_metrics(model_dir) if "train/loss" in r],
        "q_kernel_fraction": partitioning.addressable_fraction(
            layers["self_attn"]["q_proj"]["kernel"]),
        "linear1_fraction": partitioning.addressable_fraction(layers["linear1"]["kernel"]),
        # Adam's moments for linear1 are placed like the kernel itself.
        "linear1_moment_fractions": [
            partitioning.addressable_fraction(x) for x in jax.tree.leaves(restored["opt_state"])
            if x.shape == layers["linear1"]["kernel"].shape],
        "compilations": summary.get("train_step_compilations"),
    }

# The single-device checkpoint restored onto 8 devices (FSDP).
gin.clear_config()
bindings = tiny_bindings(data_dir, 6)
gin_config.parse(("runs/demo_cpu.gin", "mesh/fsdp.gin"), bindings)
exp = train.Experiment.from_gin()
gin.clear_config()
mesh = partitioning.make_mesh(exp.mesh)
abstract, _ = train.abstract_state(exp.model, make_optimizer(exp.optimizer, 6), exp.train.seed,
                                   mesh, exp.mesh.rules)
mngr = checkpoints.manager(f"{single_dir}/checkpoints", 3)
step = mngr.latest_step()
restored = checkpoints.restore(mngr, step, abstract)
mngr.close()
embedding = restored["params"]["embeddings"]["word_embeddings"]["embedding"]
out["restored"] = {
    "step": int(restored["step"]),
    "embedding_fraction": partitioning.addressable_fraction(embedding),
    "param_sum": float(sum(np.asarray(x, np.float64).sum()
                           for x in jax.tree.leaves(restored["params"]))),
}
print("RESULT " + json.dumps(out))
