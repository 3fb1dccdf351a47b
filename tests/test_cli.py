import pytest

from ernie_m_jax import cli, smoke


def test_smoke_sample_encodes_every_language():
    batches = smoke.build_batches()
    mono, pair = batches["mmlm"], batches["tlm"]
    assert mono["input_ids"].shape[0] == len(smoke.SAMPLE) * len(smoke.LANGUAGES)
    assert pair["input_ids"].shape[0] == len(smoke.SAMPLE) * (len(smoke.LANGUAGES) - 1)
    assert (mono["input_ids"][:, 0] == smoke.TOKENS.cls_id).all()
    assert set(pair["segment_ids"].ravel().tolist()) == {0, 1, 2}
    assert mono["input_ids"].max() < smoke.VOCAB_SIZE
    with pytest.raises(ValueError, match="empty sentence"):
        smoke.encode("   ", 10)


@pytest.mark.slow
def test_smoke_command_trains_every_objective(capsys):
    assert cli.main(["smoke", "--steps", "60"]) == 0
    out = capsys.readouterr().out
    assert "OK: every objective's loss dropped" in out
    for name in ("mmlm", "tlm", "camlm", "btmlm"):
        assert f"  {name}" in out


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["smoke", "--steps", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])


def test_experiment_runs_without_a_steps_override(capsys, tmp_path):
    # No --steps means the config's NUM_STEPS; the driver is reached and names the bad arm.
    assert cli.main(["experiment", "paper-in-miniature", "--config", "tiny",
                     "--arms", "tlm_only", "--out", str(tmp_path)]) == 2
    assert "unknown arms ['tlm_only']" in capsys.readouterr().err


def test_experiment_stage1_from_is_only_for_the_ernie_m_arm(capsys, tmp_path):
    assert cli.main(["experiment", "paper-in-miniature", "--config", "tiny", "--arms", "mmlm",
                     "--stage1_from", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "use it with --arms=ernie_m" in capsys.readouterr().err


def test_a_probe_with_update_readme_writes_the_probe_table_only(tmp_path, monkeypatch):
    from experiments import paper_in_miniature as paper

    results = paper.README.parent / "results" / "paper_in_miniature"
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:cpu -->\nmain table\n<!-- /results:cpu -->\n"
                      "<!-- results:cpu-probes -->\nold\n<!-- /results:cpu-probes -->\n")
    monkeypatch.setattr(paper, "README", readme)
    ran = []
    monkeypatch.setattr(paper, "run_experiment",  # the training itself is tested elsewhere
                        lambda setting, arms, seeds: ran.append(setting) or {"arms": {}})
    assert cli.main(["experiment", "paper-in-miniature", "--config", "cpu", "--arms", "ernie_m",
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
