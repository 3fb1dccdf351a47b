"""Multi-process training on localhost: two processes x 2 CPU devices == one x 4 devices."""

import json
import os
import socket
import subprocess
import sys

import gin
import pytest

from ernie_m_jax import cli, distributed
from tasks import demo
from tests.train_runs import ROOT


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _spawn(*args):
    # One device per process: the suite's XLA flags without a simulated device count.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
    return subprocess.Popen([sys.executable, "-m", "tests.multiprocess_check", *map(str, args)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _result(process, timeout=900):
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stdout[-3000:] + stderr[-6000:]
    return json.loads(stdout.split("RESULT ", 1)[1].splitlines()[0])


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_restores_in_one(demo_data_dir,
                                                                          tmp_path):
    demo.register_demo(data_dir=demo_data_dir, languages=("de", "fr"))  # build data once
    address = f"localhost:{_free_port()}"
    workers = [_spawn("worker", demo_data_dir, tmp_path / "multi", address, 2, i)
               for i in range(2)]
    results = [_result(w) for w in workers]
    assert [r["processes"] for r in results] == [2, 2]
    assert [r["devices"] for r in results] == [4, 4]
    reference = _result(_spawn("reference", demo_data_dir, tmp_path / "single"))
    assert reference["processes"] == 1 and reference["devices"] == 4
    assert len(results[0]["losses"]) == 3 and "losses" not in results[1]  # process 0 logs
    assert results[0]["losses"] == pytest.approx(reference["losses"], rel=2e-4)
    restored = _result(_spawn("restore", demo_data_dir, tmp_path / "multi"))
    assert restored["processes"] == 1 and restored["step"] == 3
    assert restored["param_sum"] == pytest.approx(reference["param_sum"], rel=1e-5)
    assert restored["each_example_read_once"] and min(restored["examples_per_host"]) > 100
    # Each process wrote its own input position into the checkpoint.
    data_item = tmp_path / "multi" / "checkpoints" / "3" / "data"
    assert sorted(p.name for p in data_item.iterdir() if p.is_dir()) == ["process_0",
                                                                          "process_1"]


def test_process_group_settings_are_checked():
    with pytest.raises(ValueError, match="give all of"):
        distributed.ProcessGroup("localhost:1234", 2).check()
    with pytest.raises(ValueError, match=r"process_id must be in \[0, num_processes\)"):
        distributed.ProcessGroup("localhost:1234", 2, 2).check()
    with pytest.raises(ValueError, match="host:port"):
        distributed.ProcessGroup("localhost", 2, 0).check()
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}
    assert distributed.from_environment(env) == distributed.ProcessGroup("10.0.0.1:8476", 4, 3)
    with pytest.raises(ValueError, match="must be integers"):
        distributed.from_environment({**env, "JAX_PROCESS_ID": "x"})
    assert distributed.cluster_visible({"SLURM_NTASKS": "16"})
    assert distributed.cluster_visible({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"})
    assert not distributed.cluster_visible({"SLURM_NTASKS": "1", "TPU_WORKER_HOSTNAMES": "w0"})


def test_a_mesh_that_does_not_fit_the_devices_fails_before_compiling(demo_data_dir, tmp_path,
                                                                    capsys):
    from tests.train_runs import as_flags, tiny_bindings

    flags = as_flags(tiny_bindings(demo_data_dir, 2))
    for mesh, message in (("(3, 1, 1)", "has 3 devices, there are 1"),):
        gin.clear_config()
        try:
            assert cli.main(["train", "--gin_file=runs/demo_cpu.gin",
                             f"--model_dir={tmp_path / 'm'}", *flags,
                             f"--gin.MeshConfig.shape={mesh}"]) == 2
        finally:
            gin.clear_config()
        assert message in capsys.readouterr().err
    assert not (tmp_path / "m" / "checkpoints").exists()
    assert not (tmp_path / "m" / "config.gin").exists()  # a refused start writes nothing


def _dry_run(script, *args):
    # --dry-run first: everything after "--" goes to the trainer.
    result = subprocess.run(["bash", str(ROOT / "launch" / script), "--dry-run", *args],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    return result


def test_tpu_launch_dry_run_prints_the_commands_for_a_slice():
    import shlex

    result = _dry_run("tpu_vm.sh", "--name", "ernie-m", "--zone", "us-central2-b",
                      "--accelerator", "v4-32", "--gin_file", "gin/runs/pretrain_stage1.gin",
                      "--gin_file", "gin/mesh/fsdp.gin", "--model_dir", "gs://b/stage1", "--",
                      "--gin.NUM_STEPS=100", "--gin.MONO_MIXTURE='my.mono'")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.strip().splitlines()]
    assert [c[:5] for c in commands[1:]] == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create"],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
        ["gcloud", "compute", "tpus", "tpu-vm", "delete"]]
    create, scp, ssh = commands[1:4]
    assert "--accelerator-type=v4-32" in create and "--worker=all" in scp + ssh
    remote = next(a for a in ssh if a.startswith("--command="))[len("--command="):]
    train = shlex.split(remote.split("&& ", )[-1])
    assert train[:2] == ["ernie-m-jax", "train"]
    assert "--gin_file=gin/mesh/fsdp.gin" in train and "--gin.MONO_MIXTURE='my.mono'" in train
    assert "--model_dir=gs://b/stage1" in train
    missing = _dry_run("tpu_vm.sh", "--name", "x")
    assert missing.returncode == 2 and "missing --zone" in missing.stderr


def test_gpu_launch_dry_run_gives_every_process_its_id():
    import shlex

    result = _dry_run("gpu_hosts.sh", "--hosts", "gpu-a,gpu-b", "--gpus_per_host", "8",
                      "--per_gpu", "--gin_file", "gin/runs/pretrain_stage1.gin",
                      "--model_dir", "/shared/run", "--", "--gin.NUM_STEPS=100")
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.strip().splitlines()]
    assert len(lines) == 16 and {line[1] for line in lines} == {"gpu-a", "gpu-b"}
    for index, (ssh, host, remote) in enumerate(lines):
        assert ssh == "ssh" and host == ("gpu-a" if index < 8 else "gpu-b")
        assert f"JAX_PROCESS_ID={index} " in remote and "JAX_NUM_PROCESSES=16 " in remote
        assert "JAX_COORDINATOR_ADDRESS=gpu-a:8476 " in remote
        assert f"CUDA_VISIBLE_DEVICES={index % 8} " in remote
        assert remote.rstrip().endswith("--gin.NUM_STEPS=100")
    per_host = _dry_run("gpu_hosts.sh", "--hosts", "a,b", "--gin_file", "x.gin",
                        "--model_dir", "/m")
    assert len(per_host.stdout.strip().splitlines()) == 2
    assert _dry_run("gpu_hosts.sh", "--hosts", "a").returncode == 2
