"""The TPU launchers (issue #40): the tested stack pinned on every worker, multislice through
queued resources and xpk, and spot runs that survive preemption, driven against a fake
`gcloud` on PATH that plays Cloud TPU's part."""

import os
import shlex
import subprocess
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from tests.train_runs import ROOT

LAUNCH = ROOT / "launch"
CONSTRAINTS = LAUNCH / "tpu-constraints.txt"


def _pins():
    lines = [line.split("#")[0].strip() for line in CONSTRAINTS.read_text().splitlines()]
    return {Requirement(line).name: Requirement(line) for line in lines if line}


def test_the_tpu_pins_are_the_tested_stack_inside_pyproject_ranges():
    pins = _pins()
    assert set(pins) == {"jax", "jaxlib", "libtpu"}
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges = {Requirement(r).name: Requirement(r).specifier
              for r in project["dependencies"] + project["optional-dependencies"]["tpu"]}
    for name, pin in pins.items():
        (version,) = [spec.version for spec in pin.specifier]
        assert [spec.operator for spec in pin.specifier] == ["=="], pin
        if name in ranges:  # jaxlib comes with jax
            assert ranges[name].contains(version), f"{pin} is outside pyproject's {ranges[name]}"
        # What the tests ran with (the test extra installs libtpu too): the pins move with it.
        assert metadata.version(name) == version, (
            f"{CONSTRAINTS.name} pins {pin}, the tests ran with {metadata.version(name)}: "
            "update the pin to the tested version")
    assert pins["jax"].specifier == pins["jaxlib"].specifier


def _dry_run(script, *args):
    return subprocess.run(["bash", str(LAUNCH / script), "--dry-run", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


TRAIN_ARGS = ["--gin_file", "gin/runs/pretrain_stage2.gin", "--gin_file", "gin/mesh/fsdp.gin",
              "--model_dir", "gs://b/stage2", "--", "--gin.NUM_STEPS=100"]


@pytest.mark.parametrize("script", ["tpu_vm.sh", "tpu_multislice.sh"])
def test_every_worker_installs_the_pinned_stack(script):
    result = _dry_run(script, "--name", "e", "--zone", "z", "--accelerator", "v4-32",
                      *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    ssh = shlex.split(next(line for line in result.stdout.splitlines() if " ssh " in line))
    remote = next(a for a in ssh if a.startswith("--command="))
    assert "pip install -q -e '.[tpu]' -c launch/tpu-constraints.txt" in remote
    assert "jax[tpu]" not in remote  # no unpinned install beside it


def test_multislice_queued_resources_dry_run():
    result = _dry_run("tpu_multislice.sh", "--name", "e", "--zone", "us-west4-a",
                      "--accelerator", "v5e-256", "--num_slices", "2", "--spot", *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.strip().splitlines()]
    assert commands[0][:3] == ["git", "-C", str(ROOT)]
    create, describe, scp0, scp1, ssh, delete = commands[1:]
    assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert {"--node-count=2", "--node-prefix=e", "--accelerator-type=v5e-256",
            "--spot"} <= set(create)
    assert describe[4] == "describe" and delete[4] == "delete"
    assert (scp0[4], scp1[4]) == ("scp", "scp") and \
        [a.split(":")[0] for a in (scp0[6], scp1[6])] == ["e-0", "e-1"]
    assert {"--node=all", "--worker=all"} <= set(ssh)
    train = shlex.split(next(a for a in ssh if a.startswith("--command=")).split("&& ")[-1])
    assert train[:3] == ["ernie-m-jax", "train", "--model_dir=gs://b/stage2"]
    assert train[-1] == "--gin.NUM_STEPS=100"


def test_multislice_xpk_dry_run():
    result = _dry_run("tpu_multislice.sh", "--via", "xpk", "--cluster", "gke", "--name", "e",
                      "--zone", "us-west4-a", "--accelerator", "v5e-256", "--num_slices", "2",
                      "--max_restarts", "20", *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    (xpk,) = [shlex.split(line) for line in result.stdout.strip().splitlines()]
    assert xpk[:3] == ["xpk", "workload", "create"]
    assert {"--cluster=gke", "--workload=e", "--tpu-type=v5litepod-256", "--num-slices=2",
            "--max-restarts=20", f"--script-dir={ROOT}"} <= set(xpk)
    command = next(a for a in xpk if a.startswith("--command="))[len("--command="):]
    assert command.startswith("pip install -q -e '.[tpu]' -c launch/tpu-constraints.txt && ")
    assert shlex.split(command.split("&& ")[-1])[:2] == ["ernie-m-jax", "train"]


@pytest.mark.parametrize("args, message", [
    (["--num_slices", "2", "--model_dir", "/local/run"], "use a gs:// bucket"),
    (["--num_slices", "0"], "--num_slices must be a positive integer"),
    (["--via", "xpk"], "--via xpk needs --cluster"),
    (["--via", "xpk", "--cluster", "c", "--spot"], "xpk cluster create --spot"),
    (["--via", "slurm"], "--via must be queued or xpk")])
def test_multislice_refuses_what_cannot_work(args, message):
    base = ["--name", "e", "--zone", "z", "--accelerator", "v5e-8", "--gin_file", "a.gin",
            "--model_dir", "gs://b/r"]
    result = _dry_run("tpu_multislice.sh", *base, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Cloud TPU for the launcher's tests: logs each call; a queued resource is ACTIVE once
# created; `ssh` preempts it (PREEMPT more times) or fails on a live slice (DIE more times).
echo "$*" >> "$FAKE/log"
take() { local n; n=$(cat "$FAKE/$1" 2>/dev/null || echo 0)
         if [ "$n" -gt 0 ]; then echo $((n - 1)) > "$FAKE/$1"; return 0; fi; return 1; }
case "$*" in
  *"queued-resources create"*) echo ACTIVE > "$FAKE/state" ;;
  *"queued-resources describe"*) cat "$FAKE/state" 2>/dev/null || exit 1 ;;
  *"queued-resources delete"*) rm -f "$FAKE/state" ;;
  *"queued-resources ssh"*)
    if take PREEMPT; then echo SUSPENDED > "$FAKE/state"; exit 255; fi
    if take DIE; then exit 1; fi ;;
esac
exit 0
"""


def _spot_run(tmp_path, preempt=0, die=0, max_restarts=3):
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    gcloud = fake / "bin" / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    (fake / "PREEMPT").write_text(str(preempt))
    (fake / "DIE").write_text(str(die))
    env = {**os.environ, "PATH": f"{fake / 'bin'}:{os.environ['PATH']}", "FAKE": str(fake),
           "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(LAUNCH / "tpu_multislice.sh"), "--name", "e", "--zone", "z",
         "--accelerator", "v5e-256", "--num_slices", "2", "--spot", "--max_restarts",
         str(max_restarts), "--restart_wait", "0", "--poll", "0", *TRAIN_ARGS],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    calls = [line.split()[2:4] for line in (fake / "log").read_text().splitlines()]
    return result, [" ".join(c) for c in calls]


def test_a_preempted_spot_run_is_recreated_and_resumed(tmp_path):
    result, calls = _spot_run(tmp_path, preempt=1)
    assert result.returncode == 0, result.stderr
    assert "was preempted; recreating" in result.stderr and "after 1 restart(s)" in result.stdout
    attempt = ["queued-resources create", "queued-resources describe", "tpu-vm scp",
               "tpu-vm scp", "queued-resources ssh", "queued-resources describe"]
    # Preempted during the first run: deleted, requested again, the same command run again
    # (it resumes from the newest checkpoint); deleted at the end.
    assert calls == attempt + ["queued-resources delete"] + attempt + ["queued-resources delete"]
    assert (tmp_path / "ernie-m-jax-e.tar.gz").is_file()  # what the workers unpack


def test_a_job_that_dies_on_a_live_slice_reruns_there(tmp_path):
    result, calls = _spot_run(tmp_path, die=1)
    assert result.returncode == 0, result.stderr
    assert "died on a live slice" in result.stderr
    assert calls.count("queued-resources create") == 1
    assert calls.count("queued-resources ssh") == 2


def test_restarts_are_capped(tmp_path):
    result, calls = _spot_run(tmp_path, preempt=5, max_restarts=1)
    assert result.returncode == 1
    assert "stopped after 1 restart(s) (--max_restarts 1)" in result.stderr
    assert "rerun this command to resume" in result.stderr
    assert calls.count("queued-resources create") == 2
    assert calls[-1] == "queued-resources delete"  # nothing left running


def test_the_data_axis_spans_the_slices():
    from ernie_m_jax.partitioning import MeshConfig

    fsdp = MeshConfig(shape=(1, -1, 1))
    assert fsdp.across_slices(2).shape == (2, -1, 1)
    assert fsdp.across_slices(1) is fsdp
    assert MeshConfig(shape=(4, -1, 1)).across_slices(2).shape == (4, -1, 1)  # as configured
    assert MeshConfig(shape=(2, 8, 2)).across_slices(2).resolve(32) == (2, 8, 2)
