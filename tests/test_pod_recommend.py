"""The recommended configurations: the search that picks them (on fake compiles with known
answers), the committed choices against the compiles they came from, the README's table,
and `ernie-m-jax compile`'s advice that names them."""

import json

import pytest

from benchmarks import pod_plan, pod_recommend
from ernie_m_jax import files
from ernie_m_jax.aot import recommended

BASE_V5E = {"size": "base", "stage": "stage2", "accelerator": "v5e-256", "slices": 1}


def _fake(share, fits=True):
    """A compile's JSON with a collective share (ICI seconds over compute seconds)."""
    return {"counter": 2, "fits": fits, "hbm_bytes": 16 * 2 ** 30,
            "memory_bytes": {"total": (4 if fits else 20) * 2 ** 30},
            "networks": {"ici": {"bytes": 2 ** 30}, "dcn": {"bytes": 0, "executions": 0}},
            "roofline_estimate": {"ici_seconds": share, "dcn_seconds": 0.0,
                                  "compute_seconds": 1.0, "mfu_overlapped": 1.0,
                                  "mfu_serial": 1 / (1 + share)},
            "gather_weights_once": "all"}


def _search(monkeypatch, default, compiles):
    """Run `choose` for base stage 2 on v5e-256 with the pod plan's default compile and a
    table of fake compiles {(remat, rows, accum): json}; returns (choice, asked)."""
    asked = []

    def compiled(target, mesh, remat, rows, accum, timeout_s, budget):
        asked.append((mesh, remat, rows, accum))
        return compiles.get((remat, rows, accum))

    monkeypatch.setattr(pod_plan, "load_one", lambda row: default)
    monkeypatch.setattr(pod_recommend, "compiled", compiled)
    return pod_recommend.choose(BASE_V5E, 60, pod_recommend.Budget(0)), asked


def test_a_default_that_hides_its_collectives_is_recommended_as_it_is(monkeypatch):
    choice, asked = _search(monkeypatch, _fake(0.10), {})
    assert asked == []
    assert (choice["mesh"], choice["rows"], choice["remat"]) == ("fsdp", 512, "dots")
    assert choice["reaches_target"]


def test_the_search_follows_each_compiles_estimate_to_the_target(monkeypatch):
    """63% at 512 rows -> 512 * 0.63 / 0.25 = 1290.24, rounded up to 256 shards: 1536 rows,
    where the (fake) compile says 21%: chosen."""
    compiles = {("dots", 512, 1): _fake(0.63), ("dots", 1536, 1): _fake(0.21)}
    choice, asked = _search(monkeypatch, _fake(2.68), compiles)
    assert [a[2] for a in asked] == [512, 1536]
    assert all(a[0] == "fsdp_gathered" for a in asked)
    assert (choice["rows"], choice["reaches_target"], choice["collective_share"]) == \
        (1536, True, 0.21)


def test_a_step_that_does_not_fit_tries_full_remat_then_accumulation(monkeypatch):
    compiles = {("dots", 512, 1): _fake(0.63), ("dots", 1536, 1): _fake(0.2, fits=False),
                ("full", 1536, 1): _fake(0.2, fits=False), ("full", 1536, 2): _fake(0.24)}
    choice, asked = _search(monkeypatch, _fake(2.68), compiles)
    assert [(a[1], a[2], a[3]) for a in asked] == [("dots", 512, 1), ("dots", 1536, 1),
                                                   ("full", 1536, 1), ("full", 1536, 2)]
    assert (choice["remat"], choice["grad_accum_steps"], choice["rows"]) == ("full", 2, 1536)
    assert "--gin.TrainConfig.grad_accum_steps=2" in recommended.flags(choice)


def test_where_no_batch_in_reason_gets_there_the_batch_it_needs_is_named(monkeypatch):
    """6.25x at 512 rows needs 12,800 rows: the search stops at MAX_ROWS and names it."""
    compiles = {("dots", 512, 1): _fake(6.25), ("dots", 8192, 1): _fake(0.39)}
    choice, asked = _search(monkeypatch, _fake(6.25), compiles)
    assert [a[2] for a in asked] == [512, 8192]
    assert not choice["reaches_target"]
    assert choice["rows_needed"] == 12800
    assert "about 12800 would" in recommended.describe(choice)


def test_missing_compiles_leave_no_choice(monkeypatch):
    choice, _ = _search(monkeypatch, _fake(2.68), {})
    assert choice is None


ENTRIES = recommended.load()


@pytest.mark.parametrize("entry", ENTRIES,
                         ids=[f"{e['size']}_{e['stage']}_{e['slices']}x{e['accelerator']}"
                              for e in ENTRIES])
def test_each_recommendation_is_what_its_compile_measured(entry):
    result = json.loads((pod_plan.ROOT / "benchmarks" / "results" /
                         f"{entry['compile']}.json").read_text())
    assert result["fits"] and result["counter"] >= 2
    assert result["batch_shapes"]["mmlm"][0] == entry["rows"]
    assert result["model"]["remat"] == entry["remat"]
    assert result["grad_accum_steps"] == entry["grad_accum_steps"]
    assert result["num_slices"] == entry["slices"]
    assert entry["collective_share"] == pytest.approx(pod_recommend.share(result), abs=1e-4)
    assert entry["reaches_target"] == (pod_recommend.share(result) <= 0.25)
    assert ("btmlm" in result["objectives"]) == (entry["stage"] == "stage2")
    assert (pod_plan.ROOT / "gin" / "mesh" / f"{entry['mesh']}.gin").exists()


def test_the_readme_table_is_the_committed_choice():
    block = files.read_marked_block(pod_plan.README, pod_recommend.MARKER)
    entries = list(ENTRIES)
    missing = len(pod_recommend.targets()) - len(entries)
    assert block.startswith(pod_recommend.block(entries))
    assert (f"{len(entries)} of" in block) == bool(missing)


def test_the_compile_names_the_recommendation_for_its_model_stage_and_slice():
    from ernie_m_jax.configs import model_config

    assert recommended.model_size(model_config("base")) == "base"
    assert recommended.model_size(model_config("base", num_layers=3)) is None
    assert recommended.stage(("mmlm", "tlm", "camlm", "btmlm")) == "stage2"
    entry = {**BASE_V5E, "mesh": "fsdp_gathered", "rows": 1536, "remat": "dots",
             "grad_accum_steps": 1, "collective_share": 0.21, "reaches_target": True,
             "rows_needed": 1536, "hbm_gib": 4.1, "hbm_capacity_gib": 14.9}
    assert recommended.find("base", "stage2", "v5e-256", 1, [entry]) is entry
    assert recommended.find("base", "stage2", "v5e-256", 2, [entry]) is None
    assert recommended.describe(entry) == (
        "--gin_file=gin/mesh/fsdp_gathered.gin --gin.BATCH_SIZE=1536 "
        "--gin.ModelConfig.remat_policy='dots' (compiled: collectives 21% of compute, "
        "4.1 of 14.9 GiB per chip)")


def test_a_compile_that_misses_is_told_the_committed_recommendation():
    """The line `ernie-m-jax compile` adds to its advice, for base stage 2 on v5e-256 (a
    report stand-in: the advice reads only the model, the objectives and the slice)."""
    from types import SimpleNamespace

    from ernie_m_jax.aot import compile_step, hardware
    from ernie_m_jax.configs import model_config

    entry = recommended.find("base", "stage2", "v5e-256", 1)
    assert entry is not None and entry["reaches_target"]
    report = SimpleNamespace(
        experiment=SimpleNamespace(model=model_config("base"),
                                   train=SimpleNamespace(enabled=("mmlm", "tlm", "camlm",
                                                                  "btmlm"))),
        accelerator=hardware.parse("v5e-256"))
    assert compile_step._recommendation(report) == [
        f"the pod plan recommends for base stage2 on v5e-256: {recommended.describe(entry)}"]
    tiny = SimpleNamespace(experiment=SimpleNamespace(
        model=model_config("tiny"), train=report.experiment.train),
        accelerator=report.accelerator)
    assert compile_step._recommendation(tiny) == []
