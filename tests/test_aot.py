"""`ernie-m-jax compile`: the real train step compiled for TPU topologies on this CPU host
(libtpu's compile-only devices), its memory, FLOPs and collectives."""

import contextlib
import io
import json

import gin
import pytest

from ernie_m_jax import cli
from ernie_m_jax.aot import compile_step, hardware

TINY = ["--gin_file=runs/pretrain_stage2.gin", "--gin_file=models/tiny.gin",
        "--gin.MONO_MIXTURE='none.mono'", "--gin.PARA_MIXTURE='none.para'",
        "--gin.NUM_STEPS=10", "--gin.MONO_LENGTH=32", "--gin.PAIR_LENGTH=32",
        "--gin.SpecialTokens.mask_id=4"]


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_accelerator_names_follow_cloud_tpu():
    v4 = hardware.parse("v4-32")
    assert (v4.num_chips, v4.topology_name) == (16, "v4:2x2x4")
    assert hardware.parse("v5p-128").topology_name == "v5p:4x4x4"
    assert hardware.parse("v5e-256").topology_name == "v5e:16x16"
    two = hardware.parse("v5e-256", num_slices=2)
    assert (two.num_chips, two.label) == (512, "2 x v5e-256")
    assert hardware.parse("v6e-8").chip.hbm_bytes == 32e9
    with pytest.raises(ValueError, match="unknown TPU accelerator 'v9-8'"):
        hardware.parse("v9-8")
    with pytest.raises(ValueError, match="known sizes are v4-8, v4-16"):
        hardware.parse("v4-12")  # 6 chips: no such slice


@pytest.fixture(scope="module")
def v4_8_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "v4-8.json"
    gin.clear_config()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["compile", *TINY, "--topology=v4-8", "--gin.BATCH_SIZE=16",
                         f"--output={out}"])
    gin.clear_config()
    return code, json.loads(out.read_text()), printed.getvalue()


@pytest.mark.slow
def test_compile_reports_memory_flops_and_fsdp_collectives(v4_8_report, capsys):
    code, report, _ = v4_8_report
    assert code == 0
    assert report["chips"] == 4 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert report["objectives"] == ["mmlm", "tlm", "camlm", "btmlm"]
    memory = report["memory_bytes"]
    assert memory["parameters"] > 0 and memory["temporaries"] > 0 and report["fits"]
    assert memory["total"] >= memory["arguments"] >= memory["parameters"]
    assert report["xla_flops_per_chip"] > 0 and report["model_flops_per_chip"] > 0
    collectives, passes = report["collectives"], report["collective_bytes_by_pass"]
    # FSDP: weights gathered for use in the forward pass, gradients reduced back to their
    # shards in the backward pass (XLA picks reduce-scatter, all-reduce + slice, or a ring of
    # collective-permutes by size; on 4 chips with the tiny model it is all-reduce).
    assert collectives["all-gather"]["executions"] > 0 and passes["forward"]["all-gather"] > 0
    assert sum(passes["backward"][k] for k in ("reduce-scatter", "all-reduce",
                                               "collective-permute")) > 0
    # CAMLM's two directions are interleaved, not concatenated: no rows move between chips.
    assert collectives["collective-permute"]["count"] == 0
    assert 0 < report["roofline_estimate"]["mfu_serial"] <= report["roofline_estimate"][
        "mfu_overlapped"] <= 1


@pytest.mark.slow
def test_an_interconnect_bound_step_is_told_the_rows_that_would_hide_its_collectives(
        v4_8_report):
    """The tiny model on 4 chips computes next to nothing, so its weights' traffic dwarfs
    the compute: the report names the rows for 25%, by `rows_for_overlap`."""
    code, report, printed = v4_8_report
    r = report["roofline_estimate"]
    ratio = (r["ici_seconds"] + r["dcn_seconds"]) / r["compute_seconds"]
    assert ratio > compile_step.OVERLAP_TARGET
    rows = {o: b for o, (b, _) in report["batch_shapes"].items()}
    expected = ", ".join(f"{o} {b} -> {compile_step.rows_for_overlap(b, ratio, 4)}"
                         for o, b in rows.items())
    assert f"collectives take {ratio:.0%} of the compute" in printed
    assert expected in printed


def test_rows_for_overlap_with_known_answers():
    # Base stage 2 on v5e-256 (pod plan): 268% at 512 rows over 256 shards.
    assert compile_step.rows_for_overlap(512, 2.68, 256) == 5632  # 5488 up to 22 x 256
    assert compile_step.rows_for_overlap(64, 0.5, 8) == 128  # twice the rows, half the share
    assert compile_step.rows_for_overlap(512, 0.1, 256) == 512  # already hidden: never fewer


@pytest.mark.slow
def test_a_step_that_does_not_fit_fails_with_the_numbers(capsys):
    # A 10M-piece vocabulary replicated on every chip (data parallelism): its table, AdamW
    # moments and f32 gradient need about 15.7 GiB per v5e chip, which has 14.9. XLA compiles
    # it (its temporaries alone fit), so the total is measured, not refused; this compiles 4x
    # faster than the activations of 65,536 rows.
    code = cli.main(["compile", *TINY, "--gin_file=mesh/data_parallel.gin", "--topology=v5e-4",
                     "--gin.BATCH_SIZE=8", "--gin.ModelConfig.vocab_size=10000000"])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not fit on v5e-4: the step needs" in err and "GiB per chip" in err
    assert "remat_policy='full'" in err and "grad_accum_steps" in err
    assert "FSDP over every chip" in err  # replicated weights: sharding them is the remedy


HOSTILE_COMPILES = {  # what a user may type wrong -> the start of the one error line
    "unknown generation": (["--topology=v9-8"], "unknown TPU accelerator 'v9-8'"),
    "not a TPU name": (["--topology=tpu"], "unknown TPU accelerator 'tpu'"),
    "no such slice": (["--topology=v5e-7"],
                      "v5e-7: v5e slices count chips; known sizes are v5e-1, v5e-4"),
    "no slices": (["--topology=v5e-8", "--num_slices=0"], "--num_slices must be at least 1"),
    "mesh of other size": (["--topology=v5e-8", "--gin.MeshConfig.shape=(1, 3, 1)"],
                           "mesh {'data': 1, 'fsdp': 3, 'tensor': 1} has 3 devices, there are 8"),
    "mesh of other rank": (["--topology=v5e-8", "--gin.MeshConfig.shape=(2, 2, 2, 2)"],
                           "MeshConfig.axes ('data', 'fsdp', 'tensor') and shape (2, 2, 2, 2) "
                           "differ in length"),
    "batch that does not split": (["--topology=v5e-8", "--gin.BATCH_SIZE=12"],
                                  "global batch size 12 is not divisible by the 8 batch shards"),
    # Accumulating 16 rows in 4 steps leaves microbatches of 4 rows for 8 shards: the step
    # used to compile and train on non-finite losses.
    "microbatch that does not split": (
        ["--topology=v5e-8", "--gin.BATCH_SIZE=16", "--gin.TrainConfig.grad_accum_steps=4"],
        "batch_sizes['mmlm']=16 in grad_accum_steps=4 microbatches of 4 rows does not split "
        "over the 8 batch shards"),
    "batch that does not split over slices": (
        ["--topology=v5e-8", "--num_slices=2", "--gin.BATCH_SIZE=8"],
        "global batch size 8 is not divisible by the 16 batch shards"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_COMPILES))
def test_hostile_compiles_fail_in_one_line_before_compiling(case, capsys, monkeypatch):
    import jax

    def never(self, *args, **kwargs):
        raise AssertionError("compiled before the configuration was checked")

    monkeypatch.setattr(jax.stages.Lowered, "compile", never)
    flags, message = HOSTILE_COMPILES[case]
    assert cli.main(["compile", *TINY, *flags]) == 2
    err = capsys.readouterr().err
    assert f"ernie-m-jax compile: error: {message}" in err and len(err.splitlines()) == 1


def test_compile_uses_the_step_builder_that_train_uses(monkeypatch):
    """What is compiled is what is trained: both go through `build_train_step`."""
    from ernie_m_jax.aot import compile_step
    from ernie_m_jax.train import loop, step

    assert compile_step.build_train_step is step.build_train_step
    assert loop.build_train_step is step.build_train_step
    calls = []
    monkeypatch.setattr(compile_step, "build_train_step",
                        lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(
                            RuntimeError("builder called")))
    with pytest.raises(RuntimeError, match="builder called"):
        cli.main(["compile", *TINY, "--topology=v4-8", "--gin.BATCH_SIZE=16"])
    assert len(calls) == 1
    # A run of several steps a call is compiled as its one step, whose figures the report
    # gives (the call loops over it).
    gin.clear_config()
    with pytest.raises(RuntimeError, match="builder called"):
        cli.main(["compile", *TINY, "--topology=v4-8", "--gin.BATCH_SIZE=16",
                  "--gin.TrainConfig.steps_per_call=2", "--gin.TrainConfig.log_every=2",
                  "--gin.TrainConfig.checkpoint_every=2"])
    assert calls[1][0].train.steps_per_call == 1


def test_tensor_parallel_meshes_split_torus_axes_where_they_must():
    """tensor=2 on v5p-128's 4x4x4 torus is no product of whole torus axes: jax.make_mesh
    refuses it (the plan's first fsdp_tensor compile failed so); our mesh splits an axis
    so that each tensor pair is two neighbouring chips."""
    import jax
    import numpy as np

    from ernie_m_jax import partitioning

    devices = hardware.topology_devices(hardware.parse("v5p-128"))
    with pytest.raises(NotImplementedError):
        jax.make_mesh((1, 32, 2), partitioning.MESH_AXES, devices=devices)
    mesh = partitioning.make_mesh(partitioning.MeshConfig(shape=(1, -1, 2)), devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 32, "tensor": 2}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)
    for a, b in mesh.devices.reshape(-1, 2):
        assert np.abs(np.subtract(a.coords, b.coords)).sum() == 1, (a.coords, b.coords)
    two_slices = hardware.topology_devices(hardware.parse("v5e-256", num_slices=2))
    mesh = partitioning.make_mesh(partitioning.MeshConfig(shape=(2, -1, 2)), two_slices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 128, "tensor": 2}
    assert all(len({d.slice_index for d in mesh.devices[i].flat}) == 1 for i in range(2))


def test_a_step_xla_refuses_for_memory_fails_with_the_numbers(monkeypatch, tmp_path, capsys):
    """XLA's TPU compiler refuses a step whose temporaries exceed the chip's usable HBM before
    any memory analysis exists (large stage 2, fsdp_tensor, v4-32): the same not-fits exit,
    and a JSON that says so, not a traceback."""
    import jax

    def refuse(self, *args, **kwargs):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
            "temporaries (36.26G) exceeds available HBM (30.75G).")

    monkeypatch.setattr(jax.stages.Lowered, "compile", refuse)
    out = tmp_path / "refused.json"
    code = cli.main(["compile", *TINY, "--topology=v4-8", "--gin.BATCH_SIZE=16",
                     f"--output={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not fit on v4-8" in err and "36.26 GiB per chip" in err and "30.75 GiB" in err
    assert "remat_policy='full'" in err and "grad_accum_steps" in err
    report = json.loads(out.read_text())
    assert report["fits"] is False and report["chips"] == 4
    assert report["refused_by_compiler"]["temporaries_bytes"] == 36.26 * 2 ** 30

    def fail(self, *args, **kwargs):  # any other compiler error stays itself
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(jax.stages.Lowered, "compile", fail)
    with pytest.raises(jax.errors.JaxRuntimeError, match="something else"):
        cli.main(["compile", *TINY, "--topology=v4-8", "--gin.BATCH_SIZE=16"])


@pytest.mark.slow
def test_two_slices_sum_the_gradient_across_the_dcn_once_a_step(tmp_path):
    """On 2 x v5e-16 every cross-slice transfer runs once a step, none inside a layer loop,
    and together they carry at least the gradient shard in bf16 (#36: XLA left alone
    crossed the DCN with each layer's gradient of each objective)."""
    out = tmp_path / "two_slices.json"
    assert cli.main(["compile", *TINY, "--topology=v5e-16", "--num_slices=2",
                     "--gin.BATCH_SIZE=64", f"--output={out}"]) == 0
    report = json.loads(out.read_text())
    assert report["counter"] == 2 and report["mesh"]["data"] == 2
    dcn = report["networks"]["dcn"]
    assert 0 < dcn["count"] == dcn["executions"] <= 23
    assert dcn["bytes"] >= report["memory_bytes"]["parameters"] / 2
    assert report["roofline_estimate"]["dcn_seconds"] > 0
