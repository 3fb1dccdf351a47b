"""The collective counter (`aot/hlo.py`) against answers counted by hand: small HLO texts in
each form XLA's TPU backend writes, then real compiles whose traffic is known in advance."""

import textwrap

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ernie_m_jax import gin_config, partitioning, train
from ernie_m_jax.aot import hardware, hlo

LOOP = textwrap.dedent("""\
    %cond (p: (s32[], f32[8])) -> pred[] {
      %p = (s32[], f32[8]{0}) parameter(0)
      %i = s32[] get-tuple-element(%p), index=0
      %n = s32[]{:T(128)} constant(12)
      ROOT %lt = pred[] compare(%i, %n), direction=LT
    }
    """)


def _module(body: str, entry: str, partitions: int = 16) -> str:
    return (f"HloModule jit_train_step, num_partitions={partitions}\n\n" + LOOP + "\n"
            + textwrap.dedent(body) + "\n" + textwrap.dedent(entry))


def _one(collectives, kind):
    found = [c for c in collectives if c.kind == kind]
    assert len(found) == 1, found
    return found[0]


PLAIN = _module("""\
    %body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
      %p = (s32[], f32[8]{0}) parameter(0)
      %x = f32[8]{0} get-tuple-element(%p), index=1
      %ag = bf16[4,1024]{1,0} all-gather(%x), replica_groups=[4,4]<=[16], dimensions={0}, \
metadata={op_name="jit(train_step)/layers/linear1/dot_general"}
      ROOT %t = (s32[], f32[8]{0}) tuple(%i, %x)
    }
    """, """\
    ENTRY %main (a: f32[8]) -> f32[8] {
      %a = f32[8]{0} parameter(0)
      %w = (s32[], f32[8]{0}) while(%t0), condition=%cond, body=%body
      %ar = f32[256]{0} all-reduce(%a), replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
      %cp = (f32[64]{0}, f32[64]{0}, u32[], u32[]) collective-permute-start(%a), \
source_target_pairs={{0,1}}
      ROOT %r = f32[8]{0} copy(%a)
    }
    """)


def test_collectives_are_counted_per_step_with_loop_trips():
    found = hlo.parse(PLAIN)
    table = hlo.summarize(found)
    # The all-gather sits in a 12-trip loop: one instruction, 12 executions, each sending
    # 3/4 of its 4 x 1024 bf16 result.
    assert table["all-gather"] == {"count": 1, "instructions": 1, "executions": 12,
                                   "bytes": 12 * 0.75 * 8192}
    assert table["all-reduce"] == {"count": 1, "instructions": 1, "executions": 1,
                                   "bytes": 2 * 7 / 8 * 1024}
    assert table["collective-permute"]["bytes"] == 256  # the result half of the start tuple
    assert table["reduce-scatter"]["count"] == 0
    (source, count, _), = hlo.by_source(found, "all-gather")
    assert (source, count) == ("layers/linear1/dot_general", 1)
    assert hlo.by_network(found)["ici"]["bytes"] == sum(r["bytes"] for r in table.values())
    assert hlo.by_network(found)["dcn"]["count"] == 0


# One all-gather of the bf16 [256, 3, 1024] table split by XLA into a start (ENTRY) and
# continuation pieces inside the 12-trip layer loop, all on channel 7.
# Beside it, two all-reduce-scatters whose inner all-reduces both say channel_id=1 but are
# two collectives (no async collective fusion config).
ASYNC = '"async_collective_fusion_config":{"flag_start":"2","flag_end":"8"}'
SPLIT = _module(f"""\
    %start_piece (x: bf16[1,3,1024]) -> bf16[256,3,1024] {{
      %x = bf16[1,3,1024]{{2,1,0}} parameter(0)
      ROOT %ag.0 = bf16[256,3,1024]{{2,1,0}} all-gather(%x), channel_id=7, \
replica_groups=[1,256]<=[256], dimensions={{0}}, backend_config={{{ASYNC}}}
    }}

    %async_collective_fusion.1 (x: bf16[1,3,1024]) -> bf16[256,3,1024] {{
      %x = bf16[1,3,1024]{{2,1,0}} parameter(0)
      ROOT %ag.1 = bf16[256,3,1024]{{2,1,0}} all-gather(%x), channel_id=7, \
replica_groups=[1,256]<=[256], dimensions={{0}}, backend_config={{{ASYNC}}}
    }}

    %async_collective_fusion.2 (x: bf16[1,3,1024]) -> bf16[256,3,1024] {{
      %x = bf16[1,3,1024]{{2,1,0}} parameter(0)
      ROOT %ag.2 = bf16[256,3,1024]{{2,1,0}} all-gather(%x), channel_id=7, \
replica_groups=[1,256]<=[256], dimensions={{0}}, backend_config={{{ASYNC}}}
    }}

    %body (p: (s32[], f32[8])) -> (s32[], f32[8]) {{
      %p = (s32[], f32[8]{{0}}) parameter(0)
      %f1 = bf16[256,3,1024]{{2,1,0}} fusion(%x), kind=kCustom, calls=%async_collective_fusion.1
      %f2 = bf16[256,3,1024]{{2,1,0}} fusion(%x), kind=kCustom, calls=%async_collective_fusion.2
      %f3 = bf16[256,3,1024]{{2,1,0}} fusion(%x), kind=kCustom, calls=%async_collective_fusion.2
      ROOT %t = (s32[], f32[8]{{0}}) tuple(%i, %x)
    }}

    %all-reduce-scatter.3 (a: bf16[768,3072]) -> bf16[3,3072] {{
      %a = bf16[768,3072]{{1,0}} parameter(0)
      %ar.3 = bf16[768,3072]{{1,0}} all-reduce(%a), channel_id=1, \
replica_groups=[1,256]<=[256], to_apply=%add
      ROOT %s = bf16[3,3072]{{1,0}} dynamic-slice(%ar.3, %o, %z), dynamic_slice_sizes={{3,3072}}
    }}

    %all-reduce-scatter.4 (a: bf16[3072,768]) -> bf16[3072,3] {{
      %a = bf16[3072,768]{{1,0}} parameter(0)
      %ar.4 = bf16[3072,768]{{1,0}} all-reduce(%a), channel_id=1, \
replica_groups=[1,256]<=[256], to_apply=%add
      ROOT %s = bf16[3072,3]{{1,0}} dynamic-slice(%ar.4, %z, %o), dynamic_slice_sizes={{3072,3}}
    }}
    """, """\
    ENTRY %main (a: bf16[1,3,1024]) -> f32[8] {
      %a = bf16[1,3,1024]{2,1,0} parameter(0)
      %s = bf16[256,3,1024]{2,1,0} fusion(%a), kind=kCustom, calls=%start_piece
      %w = (s32[], f32[8]{0}) while(%t0), condition=%cond, body=%body
      %r3 = bf16[3,3072]{1,0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter.3
      %r4 = bf16[3072,3]{1,0} fusion(%h), kind=kCustom, calls=%all-reduce-scatter.4
      ROOT %r = f32[8]{0} copy(%a)
    }
    """, partitions=256)


def test_an_async_collective_split_into_pieces_counts_once():
    found = hlo.parse(SPLIT)
    gather = _one(found, "all-gather")
    table_bytes = 256 * 3 * 1024 * 2
    # Three pieces (one called from ENTRY, two inside the loop, one of those called twice):
    # one collective, run once a step, not 1 + 12 + 2 x 12 times.
    assert (gather.pieces, gather.executions) == (3, 1)
    assert gather.bytes_per_step == pytest.approx(255 / 256 * table_bytes)
    assert hlo.summarize(found)["all-gather"]["instructions"] == 3


def test_fused_all_reduce_scatters_cost_a_reduce_scatter_each():
    found = hlo.parse(SPLIT)
    fused = [c for c in found if c.kind == "all-reduce-scatter"]
    # Two collectives despite the shared channel_id=1, each sending 255/256 of its full
    # 768 x 3072 bf16 buffer (as a reduce-scatter), not twice that (as an all-reduce).
    assert len(fused) == 2 and not [c for c in found if c.kind == "all-reduce"]
    full = 768 * 3072 * 2
    assert [c.bytes_sent for c in fused] == pytest.approx([255 / 256 * full] * 2)


SEND_RECV = _module("""\
    %body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
      %p = (s32[], f32[8]{0}) parameter(0)
      %after = token[] after-all()
      %send.1 = (bf16[64,128]{1,0}, u32[], token[]) send(%g, %after), channel_id=3, \
is_host_transfer=true, frontend_attributes={_xla_megascale_transfer_type="ALL_REDUCE"}
      %recv.1 = (bf16[64,128]{1,0}, u32[], token[]) recv(%after), channel_id=2, \
is_host_transfer=true
      %send-done.1 = token[] send-done(%send.1), channel_id=3, is_host_transfer=true
      %recv-done.1 = (bf16[64,128]{1,0}, token[]) recv-done(%recv.1), channel_id=2
      ROOT %t = (s32[], f32[8]{0}) tuple(%i, %x)
    }
    """, """\
    ENTRY %main (a: f32[8]) -> f32[8] {
      %a = f32[8]{0} parameter(0)
      %w = (s32[], f32[8]{0}) while(%t0), condition=%cond, body=%body
      %after = token[] after-all()
      %send = (f32[256]{0}, u32[], token[]) send(%a, %after), channel_id=5, \
is_host_transfer=true
      %recv = (f32[256]{0}, u32[], token[]) recv(%after), channel_id=4, is_host_transfer=true
      %ar = f32[256]{0} all-reduce(%a), replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
      ROOT %r = f32[8]{0} copy(%a)
    }
    """)


def test_cross_slice_sends_are_dcn_traffic_and_recvs_are_not_counted_again():
    found = hlo.parse(SEND_RECV)
    networks = hlo.by_network(found)
    # Per step: the loop's send of 64 x 128 bf16 twelve times, the entry's 256 f32 once.
    assert networks["dcn"] == {"count": 2, "executions": 13,
                               "bytes": 12 * 64 * 128 * 2 + 1024,
                               "link_bytes": 12 * 64 * 128 * 2 + 1024}
    assert networks["ici"]["bytes"] == 2 * 7 / 8 * 1024  # the all-reduce alone
    assert hlo.summarize(found)["send"]["instructions"] == 2


def test_replica_groups_in_every_form_give_the_same_groups():
    expected = [[0, 2, 4, 6], [1, 3, 5, 7]]
    forms = [
        "replica_groups={{0,2,4,6},{1,3,5,7}}",
        "replica_groups=[2,4]<=[4,2]T(1,0)",
        # a mesh of a=2 x b=4 over devices iota [4,2] transposed, grouped along b
        "replica_groups=mesh['a'=2,'b'=4], device_ids=([4,2]T(1,0)) {'b'}, dimensions={0}",
        "replica_groups=mesh['a'=2,'b'=4], device_ids=(0,2,4,6,1,3,5,7) {'b'}",
        # b=4 x a=2 over plain device order, grouped along the first axis
        "replica_groups=mesh['b'=4,'a'=2] {'b'}, use_global_device_ids=true",
    ]
    for form in forms:
        assert hlo._groups(f"%x = f32[8] all-reduce(%a), {form}", 8).tolist() == expected, form
    both = "replica_groups=mesh['a'=2,'b'=4] {'a','b'}, use_global_device_ids=true"
    assert hlo._groups(both, 8).tolist() == [list(range(8))]
    assert hlo._groups("replica_groups={}, to_apply=%add", 8).tolist() == [list(range(8))]
    assert hlo._groups("replica_groups=[4,2]<=[8]", 8).tolist() == [[0, 1], [2, 3], [4, 5],
                                                                     [6, 7]]


def test_mesh_form_groups_are_counted_at_their_size():
    """Before counter 2 a mesh-form group parsed as one device and counted 0 bytes."""
    text = _module("", """\
        ENTRY %main (a: bf16[1024]) -> bf16[1024] {
          %a = bf16[1024]{0} parameter(0)
          %ar = bf16[1024]{0} all-reduce(%a), channel_id=9, \
replica_groups=mesh['axis_0'=16,'axis_1'=1,'axis_2'=16], device_ids=([16,16]T(1,0)) {'axis_0'}, \
use_global_device_ids=true, to_apply=%add
          ROOT %r = bf16[1024]{0} copy(%a)
        }
        """, partitions=256)
    reduce = _one(hlo.parse(text), "all-reduce")
    assert reduce.group_size == 16
    assert reduce.bytes_sent == pytest.approx(2 * 15 / 16 * 2048)


class _Chip:
    def __init__(self, coords, slice_index=0):
        self.coords, self.slice_index = coords, slice_index


def test_groups_know_the_torus_axes_they_span_and_the_links_that_gives():
    # 16 chips on a 4 x 4 torus, device i at (i % 4, i // 4), twice (two slices).
    layout = hlo.DeviceLayout.from_devices(
        [_Chip((i % 4, i // 4, 0), s) for s in (0, 1) for i in range(16)])
    assert layout.torus_dims == 2
    assert layout.describe([0, 1, 2, 3]) == ((0,), False)  # a row: along x only
    assert layout.describe([1, 5, 9, 13]) == ((1,), False)  # a column
    assert layout.describe(list(range(16))) == ((0, 1), False)
    assert layout.describe([3, 19]) == ((), True)  # the same chip of the other slice
    text = _module("", """\
        ENTRY %main (a: bf16[1024]) -> bf16[1024] {
          %a = bf16[1024]{0} parameter(0)
          %row = bf16[4096]{0} all-gather(%a), replica_groups=[4,4]<=[16], dimensions={0}
          %all = bf16[16384]{0} all-gather(%a), replica_groups=[1,16]<=[16], dimensions={0}
          %over = bf16[2048]{0} all-gather(%a), replica_groups={{0,16},{1,17}}, dimensions={0}
          ROOT %r = bf16[1024]{0} copy(%a)
        }
        """, partitions=32)
    row, whole, across = hlo.parse(text, layout)
    assert (row.torus_axes, row.link_share, row.network) == ((0,), 0.5, "ici")
    assert (whole.torus_axes, whole.link_share) == ((0, 1), 1.0)
    assert across.network == "dcn"
    networks = hlo.by_network([row, whole, across])
    assert networks["ici"]["link_bytes"] == pytest.approx(
        row.bytes_per_step / 0.5 + whole.bytes_per_step)
    assert hlo.by_axes([row, whole]) == {"0": row.bytes_per_step, "0,1": whole.bytes_per_step}


# --- real compiles whose traffic is known before compiling ---------------------------------

def _compile(devices, mesh_shape, axes, fn, args):
    mesh = Mesh(np.array(devices).reshape(mesh_shape), axes)
    lowered = jax.jit(fn(mesh)).lower(*args(mesh))
    return lowered.compile().as_text(), mesh


def test_a_compiled_layer_loop_of_weight_gathers_counts_what_it_gathers():
    """Twelve layers, each gathering its own [512, 512] bf16 weight from 16 v5e chips and
    using it once: 12 x 15/16 x 512 KiB sent per chip whatever XLA's scheduling (a start
    before the loop and pieces inside it, or one gather a trip)."""
    devices = hardware.topology_devices(hardware.parse("v5e-16"))

    def program(mesh):
        def step(weights, x):
            def layer(h, w):
                w = jax.lax.with_sharding_constraint(w, NamedSharding(mesh, P()))
                return jnp.tanh(h @ w), None
            return jax.lax.scan(layer, x, weights)[0].sum()
        return step

    def args(mesh):
        return (jax.ShapeDtypeStruct((12, 512, 512), jnp.bfloat16,
                                     sharding=NamedSharding(mesh, P(None, "fsdp"))),
                jax.ShapeDtypeStruct((16, 512), jnp.bfloat16,
                                     sharding=NamedSharding(mesh, P())))

    text, mesh = _compile(devices, (16,), ("fsdp",), program, args)
    found = hlo.parse(text, hlo.DeviceLayout.from_devices(list(mesh.devices.flat)))
    ici = hlo.by_network(found)["ici"]["bytes"]
    gathered = 12 * 15 / 16 * 512 * 512 * 2
    assert ici == pytest.approx(gathered, rel=0.02), hlo.summarize(found)


def test_a_compiled_cross_slice_sum_is_one_dcn_transfer_of_each_chips_shard():
    """Two v5e-16 slices each hold a [128, 256] f32 array split over their 16 chips; summing
    the two is one DCN exchange of each chip's 8 x 256 f32 shard (8 KiB), and no ICI."""
    devices = hardware.topology_devices(hardware.parse("v5e-16", num_slices=2))
    devices = sorted(devices, key=lambda d: (d.slice_index, d.id))

    def program(mesh):
        def step(x):
            return jax.lax.with_sharding_constraint(x.sum(0), NamedSharding(mesh, P("fsdp")))
        return step

    def args(mesh):
        return (jax.ShapeDtypeStruct((2, 128, 256), jnp.float32,
                                     sharding=NamedSharding(mesh, P("data", "fsdp"))),)

    text, mesh = _compile(devices, (2, 16), ("data", "fsdp"), program, args)
    found = hlo.parse(text, hlo.DeviceLayout.from_devices(list(mesh.devices.flat)))
    networks = hlo.by_network(found)
    assert networks["dcn"]["bytes"] == pytest.approx(8 * 256 * 4), hlo.summarize(found)
    assert networks["dcn"]["executions"] == 1
    assert networks["ici"]["bytes"] == 0


@pytest.mark.slow
def test_the_train_step_counts_the_same_with_and_without_async_collective_fusion():
    """The tiny train step, compiled twice for 16 v5e chips: as XLA does by default, where
    one all-gather is split into several instructions sharing its channel, and with async
    collective fusion off, where each collective is one instruction. The program's traffic
    is the same, so the counts must be (the first counter over-counted the split form)."""
    gin.clear_config()
    gin_config.parse(["gin/runs/pretrain_stage1.gin", "gin/models/tiny.gin"],
                     ["MONO_MIXTURE='none.mono'", "PARA_MIXTURE='none.para'",
                      "NUM_STEPS=10", "MONO_LENGTH=32", "PAIR_LENGTH=32", "BATCH_SIZE=64",
                      "SpecialTokens.mask_id=4", "TrainConfig.init_from=None",
                      "OBJECTIVE_WEIGHTS={'mmlm': 1.0}"])
    exp = train.Experiment.from_gin()
    gin.clear_config()
    devices = hardware.topology_devices(hardware.parse("v5e-16"))
    mesh = partitioning.make_mesh(exp.mesh, devices)
    built = train.build_train_step(exp, mesh)
    layout = hlo.DeviceLayout.from_devices(list(mesh.devices.flat))
    counted = []
    for options in ({}, {"xla_tpu_enable_async_collective_fusion": False}):
        with partitioning.activate(mesh, exp.mesh.rules):
            lowered = built.fn.lower(built.abstract_state, built.abstract_batches())
            counted.append(hlo.parse(lowered.compile(compiler_options=options).as_text(),
                                     layout))
    split, whole = (hlo.summarize(c)["all-gather"] for c in counted)
    assert split["instructions"] > split["count"], "no collective was split: no test"
    assert whole["instructions"] == whole["count"] == split["count"]
    assert split["bytes"] == pytest.approx(whole["bytes"]) and whole["bytes"] > 0
    assert hlo.by_network(counted[0]) == hlo.by_network(counted[1])
