"""The paper-in-miniature driver end to end on its tiny configuration (the CI smoke run)."""

import json

import numpy as np
import pytest

from experiments import paper_in_miniature as paper
from experiments.paper_in_miniature import __main__ as driver


@pytest.mark.slow
def test_every_arm_trains_evaluates_and_reruns_skip(demo_data_dir, tmp_path):
    setting = paper.Setting("tiny", tmp_path, bindings=(
        f"register_experiment_data.data_dir = {demo_data_dir!r}",))
    arms = [paper.RANDOM_INIT, *paper.ARMS]
    summary = paper.run_experiment(setting, arms, seeds=[0])
    results = {a: json.loads((tmp_path / "results" / f"{a}_seed0.json").read_text())
               for a in arms}
    assert set(summary["arms"]) == set(arms)
    assert summary["headline_layer"] == 2  # of the tiny model's 2 layers
    for arm, result in results.items():
        assert result["languages"] == {"parallel": ["de"], "monolingual_only": ["it"]}
        layers = result["retrieval"]["messages"]["centered"]
        assert sorted(layers) == ["0", "1", "2"]
        for per_pair in layers.values():
            for name in ("en-de", "en-it"):
                assert 0.0 <= per_pair[name]["source_to_target"] <= 1.0
        assert result["pairs"]["messages"]["en-de"] > 0
        # Zero-shot package classification, fitted on English, at every layer.
        transfer = result["transfer"]
        assert transfer["classes"] == ["Django", "Sphinx", "wagtail"]
        assert transfer["train_examples"] > 1000
        for variant in ("raw", "centered"):
            assert sorted(transfer["model"][variant]) == ["0", "1", "2"]
            for per_language in transfer["model"][variant].values():
                assert set(per_language) == {"en", "de", "it"}
                for scores in per_language.values():
                    assert 0.0 <= scores["balanced_accuracy"] <= 1.0
                    assert scores["examples"] > 0
    # Stage 2 of ERNIE-M ran BTMLM; the single-stage arms ran only their own objectives.
    assert "train/btmlm/loss" in results["ernie_m"]["final_losses"]
    assert results["ernie_m"]["stage1_steps"] == 2 and results["ernie_m"]["steps"] == 4
    assert results["mmlm"]["seconds"]["train"] >= 0 and "stage1_steps" not in results["mmlm"]
    assert set(results["mmlm"]["final_losses"]) == {"train/loss", "train/mmlm/loss"}
    assert set(results["mmlm"]["mlm_accuracy"]) == {"en", "de", "it"}
    stage1 = tmp_path / "runs" / "ernie_m_seed0" / "stage1"
    assert (stage1 / "checkpoints").is_dir()
    # Bag-of-subwords does not depend on the model: the same for every arm.
    bags = {json.dumps(r["bag_of_subwords"], sort_keys=True) for r in results.values()}
    assert len(bags) == 1
    assert len({json.dumps(r["transfer"]["bag_of_subwords"], sort_keys=True)
                for r in results.values()}) == 1
    # Bag of subwords, fitted on English, knows English: it beats chance there.
    assert results["mmlm"]["transfer"]["bag_of_subwords"]["en"]["balanced_accuracy"] > 0.5
    stats = summary["arms"]["mmlm"]["retrieval/messages/raw/layer2/parallel"]
    assert stats["n"] == 1 and stats["std"] == 0.0 and np.isfinite(stats["mean"])
    table = paper.format_summary(summary)
    assert all(f"| {a} |" in table for a in arms) and "| bag_of_subwords |" in table
    assert "transfer L2 centred, without parallel" in table
    assert summary["arms"]["ernie_m"]["transfer/centered/layer2/en"]["n"] == 1

    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").iterdir()}
    paper.run_experiment(setting, arms, seeds=[0])  # everything is done: nothing reruns
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "results").iterdir()} == before
    with pytest.raises(ValueError, match="unknown arms"):
        paper.run_experiment(setting, ["tlm_only"], seeds=[0])

    # A stage-2 knob probe: greedy generation, stage 2 started from the run above's stage 1.
    probe = paper.Setting("tiny", tmp_path / "probe", bindings=(
        *setting.bindings, "BTMLMConfig.temperature = 0.0"),
        stage1_from=str(tmp_path / "runs" / "ernie_m_seed{seed}" / "stage1"))
    paper.run_experiment(probe, ["ernie_m"], seeds=[0])
    probed = json.loads((tmp_path / "probe" / "results" / "ernie_m_seed0.json").read_text())
    assert probed["stage1_from"] == str(stage1)
    assert probed["bindings"][-1] == "BTMLMConfig.temperature = 0.0"
    assert not (tmp_path / "probe" / "runs" / "ernie_m_seed0" / "stage1").exists()
    assert "train/btmlm/loss" in probed["final_losses"]
    # Greedy pseudo tokens, not sampled ones: stage 2 trained on other inputs.
    assert probed["final_losses"]["train/btmlm/loss"] != \
        results["ernie_m"]["final_losses"]["train/btmlm/loss"]


def test_stage_split_comes_from_the_config_and_must_leave_both_stages_steps(tmp_path):
    setting = paper.Setting("tiny", tmp_path)
    assert paper.total_steps(setting) == 4 and paper.stage1_steps(setting) == 2
    longer = paper.Setting("tiny", tmp_path, steps=10, bindings=("STAGE1_FRACTION = 0.7",))
    assert paper.stage1_steps(longer) == 7
    for fraction in ("0.0", "1.0"):
        with pytest.raises(ValueError, match="leaves no steps for one of ERNIE-M's"):
            paper.stage1_steps(paper.Setting("tiny", tmp_path,
                                             bindings=(f"STAGE1_FRACTION = {fraction}",)))


def test_a_probe_needs_a_finished_stage1_of_the_configured_length(tmp_path):
    (tmp_path / "empty_seed0").mkdir()
    probe = paper.Setting("tiny", tmp_path / "probe",
                          stage1_from=str(tmp_path / "empty_seed{seed}"))
    with pytest.raises(ValueError, match=r"empty_seed0 must hold a finished stage 1 of 2 "
                                         r"steps .* checkpoint is missing"):
        paper.run_arm(probe, "ernie_m", seed=0)
    assert not (tmp_path / "probe" / "runs").exists()  # nothing trained


def test_a_run_stopped_by_a_signal_writes_no_result(tmp_path, monkeypatch):
    from ernie_m_jax import train

    def preempted(model_dir, exp):
        return {"preempted_at_step": 3, "train/loss": 5.0}

    monkeypatch.setattr(train, "train", preempted)
    with pytest.raises(paper.RunStopped, match=r"stopped at step 3 of 4 on a signal"):
        paper.run_experiment(paper.Setting("tiny", tmp_path), ["mmlm"], seeds=[0])
    assert not (tmp_path / "results" / "mmlm_seed0.json").exists()


def test_committed_cpu_tables_and_summary_match_the_committed_results(tmp_path):
    """The README's claim must be the JSON's: its tables and summary.json are regenerated
    from results/*.json, never edited by hand."""
    import shutil

    committed = paper.README.parent / "results" / "paper_in_miniature" / "cpu"
    shutil.copytree(committed / "results", tmp_path / "results")
    summary = paper.summarise(tmp_path)
    assert summary == json.loads((committed / "summary.json").read_text())
    readme = paper.README.read_text(encoding="utf-8")
    block = readme.split("<!-- results:cpu -->\n", 1)[1].split("\n<!-- /results:cpu -->", 1)[0]
    assert block == paper.format_summary(summary)


def test_committed_probe_table_matches_the_committed_probe_results(tmp_path):
    results = paper.README.parent / "results" / "paper_in_miniature"
    table = paper.format_probes(results / "cpu", results / "probes")
    readme = paper.README.read_text(encoding="utf-8")
    block = readme.split("<!-- results:cpu-probes -->\n", 1)[1].split(
        "\n<!-- /results:cpu-probes -->", 1)[0]
    assert block == table
    # Each probe is set beside the arm's own result of its seed, labelled by its knobs.
    assert "| `ernie_m` arm as configured | 2 |" in table
    assert "greedy: `BTMLMConfig.temperature = 0.0` | 2 |" in table

    # A probe whose seed the arm never ran has nothing to be compared with.
    probe = tmp_path / "probes" / "lonely" / "results"
    probe.mkdir(parents=True)
    seed2 = json.loads((results / "probes" / "greedy" / "results" / "ernie_m_seed2.json")
                       .read_text())
    (probe / "ernie_m_seed7.json").write_text(json.dumps({**seed2, "seed": 7}))
    with pytest.raises(ValueError, match="no ernie_m result of seed 7"):
        paper.format_probes(results / "cpu", tmp_path / "probes")
    assert paper.format_probes(results / "cpu", tmp_path / "empty") == "(no probes yet)"


def test_experiment_runs_without_a_steps_override(capsys, tmp_path):
    # No --steps means the config's NUM_STEPS; the driver is reached and names the bad arm.
    assert driver.main(["--config", "tiny",
                     "--arms", "tlm_only", "--out", str(tmp_path)]) == 2
    assert "unknown arms ['tlm_only']" in capsys.readouterr().err


def test_experiment_stage1_from_is_only_for_the_ernie_m_arm(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        driver.main(["--config", "tiny", "--arms", "mmlm",
                     "--stage1_from", str(tmp_path), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "use it with --arms=ernie_m" in capsys.readouterr().err


def test_a_probe_with_update_readme_writes_the_probe_table_only(tmp_path, monkeypatch):
    results = paper.README.parent / "results" / "paper_in_miniature"
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:cpu -->\nmain table\n<!-- /results:cpu -->\n"
                      "<!-- results:cpu-probes -->\nold\n<!-- /results:cpu-probes -->\n")
    monkeypatch.setattr(driver, "README", readme)
    ran = []
    monkeypatch.setattr(driver, "run_experiment",  # the training itself is tested elsewhere
                        lambda setting, arms, seeds: ran.append(setting) or {"arms": {}})
    assert driver.main(["--config", "cpu", "--arms", "ernie_m",
                     "--seeds", "2", "--stage1_from",
                     str(results / "cpu" / "runs" / "ernie_m_seed{seed}" / "stage1"),
                     "--out", str(results / "probes" / "greedy"), "--update_readme",
                     "--gin.BTMLMConfig.temperature=0.0"]) == 0
    assert ran[0].stage1_from.endswith("ernie_m_seed{seed}/stage1")
    assert ran[0].bindings == ("BTMLMConfig.temperature = 0.0",)
    table = paper.format_probes(results / "cpu", results / "probes")
    assert readme.read_text() == ("<!-- results:cpu -->\nmain table\n<!-- /results:cpu -->\n"
                                  f"<!-- results:cpu-probes -->\n{table}\n"
                                  "<!-- /results:cpu-probes -->\n")
