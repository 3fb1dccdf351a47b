"""One process of a multi-process training run on localhost (see test_distributed.py).

argv: role, data_dir, model_dir [, coordinator, num_processes, process_id]
  role "worker": join the group (2 CPU devices per process) and train 3 steps.
  role "reference": one process with 4 CPU devices, fed both hosts' shards merged in host
                    order, i.e. exactly the global batches the workers assemble.
  role "restore": one process, restores the workers' last checkpoint and prints its step.
Prints one "RESULT <json>" line.
"""

import collections
import json
import sys

role, data_dir, model_dir = sys.argv[1:4]

from ernie_m_jax import distributed  # noqa: E402

if role == "worker":
    address, count, index = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
    distributed.initialize(distributed.ProcessGroup(address, count, index), cpu_devices=2)
else:
    distributed.initialize(cpu_devices=4 if role == "reference" else 1)

import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from ernie_m_jax import checkpoints, gin_config, partitioning, train  # noqa: E402
from ernie_m_jax.configs import SpecialTokens  # noqa: E402
from ernie_m_jax.data import pipeline  # noqa: E402
from ernie_m_jax.metrics import read_metrics  # noqa: E402
from ernie_m_jax.optimizer import make_optimizer  # noqa: E402
from tasks import demo  # noqa: E402
from tests.train_runs import run, tiny_bindings  # noqa: E402

FILES = ("runs/demo_cpu.gin", "mesh/fsdp.gin")
OBJECTIVES = ("mmlm", "tlm", "camlm", "btmlm")
bindings = tiny_bindings(data_dir, 3, **{"TrainConfig.eval_batch_size": 8})


def merged_hosts(shard_info, hosts=2):
    """Both hosts' inputs side by side: what make_array_from_process_local_data builds."""
    del shard_info
    data, tokens = pipeline.DataConfig(), SpecialTokens()  # as the gin files being run bind
    parts = [pipeline.training_dataset(data, OBJECTIVES, seqio.ShardInfo(i, hosts), tokens=tokens)
             for i in range(hosts)]
    return tf.data.Dataset.zip(tuple(parts)).map(lambda *b: {
        o: {k: tf.concat([p[o][k] for p in b], 0) for k in b[0][o]} for o in b[0]})


def final_param_sum():
    gin.clear_config()
    gin_config.parse(FILES, bindings)
    exp = train.Experiment.from_gin()
    gin.clear_config()
    mesh = partitioning.make_mesh(exp.mesh)
    abstract, _ = train.abstract_state(exp.model, make_optimizer(exp.optimizer, 3),
                                       exp.train.seed, mesh, exp.mesh.rules)
    with checkpoints.manager(f"{model_dir}/checkpoints", 3) as mngr:
        restored = checkpoints.restore(mngr, mngr.latest_step(), abstract)
    return int(restored["step"]), float(sum(np.asarray(x, np.float64).sum()
                                            for x in jax.tree.leaves(restored["params"])))


def rows_per_host(hosts=2):
    """Every row each host reads from one task, and the rows of the unsharded task."""
    demo.register_demo(data_dir=data_dir, languages=("de", "fr"))

    def rows(shard):
        return [tuple(r) for b in pipeline.evaluation_batches(
                    "ernie_m.mono.de", 16, 8, "train", shard_info=shard, tokens=SpecialTokens())
                for r, seg in zip(b["input_ids"].tolist(), b["segment_ids"]) if seg.any()]

    return [rows(seqio.ShardInfo(i, hosts)) for i in range(hosts)], rows(seqio.ShardInfo(0, 1))


out = {"process": jax.process_index(), "processes": jax.process_count(),
       "devices": jax.device_count()}
if role == "restore":
    out["step"], out["param_sum"] = final_param_sum()
    shards, everything = rows_per_host()
    # Each example is read by exactly one host (rows are compared as multisets: the corpus
    # has a few identical sentences under different message ids).
    out["each_example_read_once"] = (collections.Counter(shards[0]) +
                                     collections.Counter(shards[1]) ==
                                     collections.Counter(everything))
    out["examples_per_host"] = [len(x) for x in shards]
else:
    run(model_dir, bindings, FILES, input_fn=merged_hosts if role == "reference" else None)
    if jax.process_index() == 0:
        out["losses"] = [r["train/loss"] for r in read_metrics(model_dir) if "train/loss" in r]
    if role == "reference":
        out["step"], out["param_sum"] = final_param_sum()
print("RESULT " + json.dumps(out), flush=True)
