"""The paper-in-miniature driver end to end on its tiny configuration (the CI smoke run)."""

import json
from pathlib import Path

import numpy as np
import pytest

from ernie_m_jax import files
from experiments import paper_in_miniature as paper
from experiments.paper_in_miniature import __main__ as driver


@pytest.fixture(scope="module")
def sitting(demo_data_dir, tmp_path_factory):
    """Every arm (and random init) of the tiny configuration, seed 0, run once."""
    out = tmp_path_factory.mktemp("paper")
    setting = paper.Setting("tiny", out, bindings=(
        f"register_experiment_data.data_dir = {demo_data_dir!r}",))
    arms = [paper.RANDOM_INIT, *paper.ARMS]
    summary = paper.run_experiment(setting, arms, seeds=[0])
    results = {a: json.loads((out / "results" / f"{a}_seed0.json").read_text()) for a in arms}
    return setting, summary, results


def _corpus(demo_data_dir):
    from ernie_m_jax.data import corpus

    return corpus, Path(demo_data_dir) / "demo_corpus"


@pytest.mark.slow
def test_retrieval_is_scored_on_every_test_pair_at_every_layer(sitting, demo_data_dir):
    _, summary, results = sitting
    corpus, corpus_dir = _corpus(demo_data_dir)
    english = corpus.read_split(corpus_dir, "test", "en")
    expected_pairs = {f"en-{lang}": len(set(english) & set(corpus.read_split(
        corpus_dir, "test", lang))) for lang in ("de", "it")}
    assert summary["headline_layer"] == 2  # of the tiny model's 2 layers
    for arm, result in results.items():
        assert result["languages"] == {"parallel": ["de"], "monolingual_only": ["it"]}
        assert result["pairs"]["messages"] == expected_pairs
        for variant in ("raw", "centered"):
            layers = result["retrieval"]["messages"][variant]
            assert sorted(layers) == ["0", "1", "2"]
            for per_pair in layers.values():
                for name, count in expected_pairs.items():
                    for direction in ("source_to_target", "target_to_source"):
                        hits = per_pair[name][direction] * count  # a whole number of hits
                        assert hits == pytest.approx(round(hits), abs=1e-6), (arm, name)
    # Bag of subwords does not depend on the model: the same for every arm.
    assert len({json.dumps(r["bag_of_subwords"], sort_keys=True) for r in results.values()}) == 1


@pytest.mark.slow
def test_transfer_is_fitted_on_english_and_scored_on_single_package_messages(sitting,
                                                                             demo_data_dir):
    _, _, results = sitting
    corpus, corpus_dir = _corpus(demo_data_dir)
    single = {k for k, p in corpus.read_packages(corpus_dir).items() if len(p) == 1}
    english_train = corpus.read_split(corpus_dir, "train", "en")
    for result in results.values():
        transfer = result["transfer"]
        assert transfer["classes"] == ["Django", "Sphinx", "wagtail"]
        assert transfer["train_examples"] == len(single & set(english_train))
        for variant in ("raw", "centered"):
            assert sorted(transfer["model"][variant]) == ["0", "1", "2"]
            for per_language in transfer["model"][variant].values():
                for lang, scores in per_language.items():
                    test = corpus.read_split(corpus_dir, "test", lang)
                    assert scores["examples"] == len(single & set(test)), lang
    # Bag of subwords, fitted on English, knows English: it beats chance (1/3) there.
    assert results["mmlm"]["transfer"]["bag_of_subwords"]["en"]["balanced_accuracy"] > 0.5
    assert len({json.dumps(r["transfer"]["bag_of_subwords"], sort_keys=True)
                for r in results.values()}) == 1


@pytest.mark.slow
def test_arms_train_their_own_objectives_and_the_summary_is_their_mean(sitting):
    setting, summary, results = sitting
    # Stage 2 of ERNIE-M ran BTMLM; the single-stage arms ran only their own objectives.
    assert "train/btmlm/loss" in results["ernie_m"]["final_losses"]
    assert results["ernie_m"]["stage1_steps"] == 2 and results["ernie_m"]["steps"] == 4
    assert (setting.out / "runs" / "ernie_m_seed0" / "stage1" / "checkpoints").is_dir()
    assert "stage1_steps" not in results["mmlm"]
    assert set(results["mmlm"]["final_losses"]) == {"train/loss", "train/mmlm/loss"}
    assert set(results["mmlm_tlm"]["final_losses"]) == {"train/loss", "train/mmlm/loss",
                                                        "train/tlm/loss"}
    assert set(results["mmlm"]["mlm_accuracy"]) == {"en", "de", "it"}
    assert results[paper.RANDOM_INIT]["mlm_accuracy"] == {}
    # One seed: the summary's mean is the run's own figure (both directions averaged).
    pair = results["mmlm"]["retrieval"]["messages"]["raw"]["2"]["en-de"]
    stats = summary["arms"]["mmlm"]["retrieval/messages/raw/layer2/parallel"]
    assert stats == {"mean": pytest.approx((pair["source_to_target"]
                                            + pair["target_to_source"]) / 2),
                     "std": 0.0, "n": 1}
    table = paper.format_summary(summary)
    assert all(f"| {a} |" in table for a in results) and "| bag_of_subwords |" in table
    centred = summary["arms"]["mmlm"]["retrieval/messages/centered/layer2/parallel"]
    assert f"| mmlm | {centred['mean']:.3f} ± 0.000 (1) |" in table


@pytest.mark.slow
def test_a_rerun_skips_finished_results_and_a_probe_reuses_stage1(sitting):
    setting, _, results = sitting
    arms = list(results)
    before = {p: p.stat().st_mtime_ns for p in (setting.out / "results").iterdir()}
    paper.run_experiment(setting, arms, seeds=[0])  # everything is done: nothing reruns
    assert {p: p.stat().st_mtime_ns for p in (setting.out / "results").iterdir()} == before
    with pytest.raises(ValueError, match="unknown arms"):
        paper.run_experiment(setting, ["tlm_only"], seeds=[0])

    # A stage-2 knob probe: greedy generation, stage 2 started from the run above's stage 1.
    stage1 = setting.out / "runs" / "ernie_m_seed0" / "stage1"
    probe = paper.Setting("tiny", setting.out / "probe", bindings=(
        *setting.bindings, "BTMLMConfig.temperature = 0.0"),
        stage1_from=str(setting.out / "runs" / "ernie_m_seed{seed}" / "stage1"))
    paper.run_experiment(probe, ["ernie_m"], seeds=[0])
    probed = json.loads((setting.out / "probe" / "results" / "ernie_m_seed0.json").read_text())
    assert probed["stage1_from"] == str(stage1)
    assert probed["bindings"][-1] == "BTMLMConfig.temperature = 0.0"
    assert not (setting.out / "probe" / "runs" / "ernie_m_seed0" / "stage1").exists()
    # Greedy pseudo tokens, not sampled ones: stage 2 trained on other inputs.
    assert probed["final_losses"]["train/btmlm/loss"] != \
        results["ernie_m"]["final_losses"]["train/btmlm/loss"]


@pytest.mark.slow
def test_continued_arms_start_from_the_finished_camlm_run_and_retrain_a_lost_one(sitting):
    import flax.linen as nn
    import jax

    from ernie_m_jax import checkpoints, saved_run
    from ernie_m_jax.model import init_params

    setting, _, _ = sitting
    start = setting.out / "runs" / "mmlm_tlm_camlm_seed0"
    before = {p: p.stat().st_mtime_ns for p in (start / "checkpoints").rglob("*")}
    arms = ["ernie_m_full_stage1", "camlm_continued"]
    paper.run_experiment(setting, arms, seeds=[0])
    # The finished run was continued, not retrained.
    assert {p: p.stat().st_mtime_ns for p in (start / "checkpoints").rglob("*")} == before
    results = {a: json.loads((setting.out / "results" / f"{a}_seed0.json").read_text())
               for a in arms}
    for arm, result in results.items():
        assert result["continued_from"] == str(start)
        assert (result["start_steps"], result["continued_steps"], result["steps"]) == (4, 2, 6)
        assert result["continuation_seed"] == 1000
        assert checkpoints.latest_step(setting.out / "runs" / f"{arm}_seed0" / "checkpoints") == 2
        assert result["bindings"] == list(setting.bindings)  # the sitting's; the arm adds none
        # Scored on the validation split too (to choose among variants by), not a copy of test.
        assert (result["split"], result["validation"]["split"]) == ("test", "validation")
        metrics = paper.run_metrics(result)
        headline = "retrieval/messages/centered/layer2/parallel"
        assert 0 <= metrics[f"validation/{headline}"] <= 1
        assert result["validation"]["pairs"] != result["pairs"] or \
            metrics[f"validation/{headline}"] != metrics[headline]
    assert "train/btmlm/loss" in results["ernie_m_full_stage1"]["final_losses"]
    assert set(results["camlm_continued"]["final_losses"]) == {
        "train/loss", "train/mmlm/loss", "train/tlm/loss", "train/camlm/loss"}
    # Two steps from the finished run stay near it; a fresh init (positive control) does not.
    start_run = saved_run.load(str(start))
    continued = saved_run.load(str(setting.out / "runs" / "camlm_continued_seed0")).params

    def distance(a, b):
        return sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    fresh = nn.unbox(init_params(start_run.model, jax.random.key(1000)))
    assert distance(continued, start_run.params) < \
        0.1 * distance(fresh["params"], start_run.params)
    # A result written before validation scores were kept gets them on the next sitting,
    # nothing else in it changing.
    path = setting.out / "results" / "camlm_continued_seed0.json"
    stripped = {k: v for k, v in results["camlm_continued"].items() if k != "validation"}
    path.write_text(json.dumps(stripped))
    paper.run_experiment(setting, ["camlm_continued"], seeds=[0])
    assert json.loads(path.read_text()) == results["camlm_continued"]
    tables = paper.format_summary(paper.summarise(setting.out))
    assert "ernie_m_full_stage1" in tables
    # The validation table lists the continued arms only (the others were not scored on it).
    validation = tables.split("validation: retrieval", 1)[1]
    assert "| camlm_continued |" in validation and "| mmlm |" not in validation

    # Seed 1 has no finished camlm run: it is trained first, then continued.
    paper.run_experiment(setting, ["camlm_continued"], seeds=[1])
    assert checkpoints.latest_step(
        setting.out / "runs" / "mmlm_tlm_camlm_seed1" / "checkpoints") == 4
    assert json.loads((setting.out / "results" / "camlm_continued_seed1.json").read_text())[
        "continuation_seed"] == 1001


def test_stage_split_comes_from_the_config_and_must_leave_both_stages_steps(tmp_path):
    setting = paper.Setting("tiny", tmp_path)
    assert paper.total_steps(setting) == 4 and paper.stage1_steps(setting) == 2
    longer = paper.Setting("tiny", tmp_path, steps=10, bindings=("STAGE1_FRACTION = 0.7",))
    assert paper.stage1_steps(longer) == 7
    for fraction in ("0.0", "1.0"):
        with pytest.raises(ValueError, match="leaves no steps for one of ERNIE-M's"):
            paper.stage1_steps(paper.Setting("tiny", tmp_path,
                                             bindings=(f"STAGE1_FRACTION = {fraction}",)))


@pytest.mark.parametrize("arm", sorted(paper.CONTINUED_ARMS))
def test_each_continued_arm_parses_and_sets_what_it_names(arm, tmp_path):
    import gin

    from experiments.paper_in_miniature import runner

    continuation = paper.CONTINUED_ARMS[arm]
    runner._parse(paper.Setting("cpu", tmp_path), [continuation.arm_file],
                  continuation.bindings)
    try:
        for binding in continuation.bindings:
            name, value = (part.strip() for part in binding.split("=", 1))
            assert gin.query_parameter(name) == eval(value)  # noqa: S307 (our own literals)
    finally:
        gin.clear_config()


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


@pytest.mark.parametrize("sitting,block", [("cpu", "cpu"),
                                           ("cpu_without_sphinx", "cpu-without-sphinx")])
def test_committed_cpu_tables_and_summary_match_the_committed_results(sitting, block, tmp_path):
    """The README's claim must be the JSON's: its tables and summary.json are regenerated
    from results/*.json, never edited by hand."""
    import shutil

    committed = paper.README.parent / "results" / "paper_in_miniature" / sitting
    shutil.copytree(committed / "results", tmp_path / "results")
    summary = paper.summarise(tmp_path)
    assert summary == json.loads((committed / "summary.json").read_text())
    table = files.read_marked_block(paper.README, block)
    assert table == paper.format_summary(summary)


def test_committed_finetuning_table_matches_the_committed_finetuning_results():
    from experiments.paper_in_miniature.finetuning import format_finetuning

    committed = paper.README.parent / "results" / "paper_in_miniature" / "cpu"
    block = files.read_marked_block(paper.README, "cpu-finetune")
    assert block == format_finetuning(paper.Setting("cpu", committed))
    by_arm = {}
    for path in sorted((committed / "results" / "finetune").glob("*_seed*_ft*.json")):
        result = json.loads(path.read_text())
        by_arm.setdefault(result["arm"], []).append(result)
    assert by_arm, "no committed fine-tuning result"
    for arm, results in by_arm.items():  # one cell, recomputed from per-language scores
        with_parallel = [np.mean([r["test"]["balanced_accuracy"][lang]
                                  for lang in r["languages"]["parallel"]]) for r in results]
        seeds = (len({r["seed"] for r in results}), len({r["finetune_seed"] for r in results}))
        row = block.split(f"| {arm} | {seeds[0]} × {seeds[1]} | ", 1)[1].split("\n", 1)[0]
        spread = f" ± {np.std(with_parallel, ddof=1):.3f}" if len(results) > 1 else ""
        assert f" {np.mean(with_parallel):.3f}{spread} |" in row


def _retrieval_cell(result: dict, variant: str, layer: int) -> str:
    """'with / without' headline retrieval, computed here from a result's raw accuracies."""
    per_pair = result["retrieval"]["messages"][variant][str(layer)]

    def mean(group):
        return np.mean([(per_pair[f"en-{lang}"]["source_to_target"]
                         + per_pair[f"en-{lang}"]["target_to_source"]) / 2
                        for lang in result["languages"][group]])

    return f"{mean('parallel'):.3f} / {mean('monolingual_only'):.3f}"


def test_committed_probe_table_matches_the_committed_probe_results(tmp_path):
    results = paper.README.parent / "results" / "paper_in_miniature"
    table = paper.format_probes(results / "cpu", results / "probes")
    block = files.read_marked_block(paper.README, "cpu-probes")
    assert block == table
    # Each probe is set beside the arm's own result of its seed, labelled by its knobs, with
    # the figures of its own JSON.
    greedy = json.loads((results / "probes" / "greedy" / "results" / "ernie_m_seed2.json")
                        .read_text())
    own = json.loads((results / "cpu" / "results" / "ernie_m_seed2.json").read_text())
    layer = paper.headline_layer(len(greedy["retrieval"]["messages"]["raw"]) - 1)
    assert f"| `ernie_m` arm as configured | 2 | {_retrieval_cell(own, 'centered', layer)} | " \
           f"{_retrieval_cell(own, 'raw', layer)} |" in table
    assert f"greedy: `BTMLMConfig.temperature = 0.0` | 2 | " \
           f"{_retrieval_cell(greedy, 'centered', layer)} |" in table

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
    assert driver.main(["--config", "tiny", "--arms", "tlm_only", "--out", str(tmp_path)]) == 2
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
    assert driver.main(["--config", "cpu", "--arms", "ernie_m", "--seeds", "2", "--stage1_from",
                     str(results / "cpu" / "runs" / "ernie_m_seed{seed}" / "stage1"),
                     "--out", str(results / "probes" / "greedy"), "--update_readme",
                     "--gin.BTMLMConfig.temperature=0.0"]) == 0
    assert ran[0].stage1_from.endswith("ernie_m_seed{seed}/stage1")
    assert ran[0].bindings == ("BTMLMConfig.temperature = 0.0",)
    written = readme.read_text()
    assert written.startswith("<!-- results:cpu -->\nmain table\n<!-- /results:cpu -->\n"
                              "<!-- results:cpu-probes -->\n| stage 2 | seed |")
    assert "\nold\n" not in written and written.endswith("\n<!-- /results:cpu-probes -->\n")
    greedy = json.loads((results / "probes" / "greedy" / "results" / "ernie_m_seed2.json")
                        .read_text())
    layer = paper.headline_layer(len(greedy["retrieval"]["messages"]["raw"]) - 1)
    assert f"greedy: `BTMLMConfig.temperature = 0.0` | 2 | " \
           f"{_retrieval_cell(greedy, 'centered', layer)} |" in written


@pytest.mark.slow
def test_finetuning_extension_fine_tunes_arms_and_retrains_a_lost_run(sitting, capsys):
    import shutil

    setting, _, results = sitting
    # The mmlm arm's run is gone (as on a fresh machine): it is trained again, then tuned.
    shutil.rmtree(setting.out / "runs" / "mmlm_seed0")
    gin_flags = [f"--gin.{b.replace(' = ', '=', 1)}" for b in setting.bindings]
    argv = ["--config", "tiny", "--arms", "mmlm,mmlm_tlm_camlm", "--seeds", "0", "--out",
            str(setting.out), "--finetune", "--finetune_seeds", "0", *gin_flags]
    assert driver.main(argv) == 0
    table = capsys.readouterr().out
    assert "| mmlm | 1 × 1 |" in table and "| mmlm_tlm_camlm | 1 × 1 |" in table
    tuned = setting.out / "results" / "finetune"
    for arm in ("mmlm", "mmlm_tlm_camlm"):
        result = json.loads((tuned / f"{arm}_seed0_ft0.json").read_text())
        assert set(result["test"]["accuracy"]) == {"en", "de", "it"}
        assert result["groups"]["parallel"]["accuracy"] == result["test"]["accuracy"]["de"]
        assert result["num_steps"] == 4 and result["finetune_seed"] == 0
    # A rerun finds every result and trains nothing; a second fine-tuning seed of the same
    # pretraining run adds only its own run, and the row averages both.
    mtime = (tuned / "mmlm_seed0_ft0.json").stat().st_mtime
    pretrained = (setting.out / "runs" / "mmlm_seed0" / "metrics.jsonl").stat().st_mtime
    assert driver.main(argv) == 0
    assert driver.main(["--config", "tiny", "--arms", "mmlm", "--seeds", "0", "--out",
                        str(setting.out), "--finetune", "--finetune_seeds", "0,1",
                        *gin_flags]) == 0
    assert (tuned / "mmlm_seed0_ft0.json").stat().st_mtime == mtime
    assert (setting.out / "runs" / "mmlm_seed0" / "metrics.jsonl").stat().st_mtime == pretrained
    seeds = [json.loads((tuned / f"mmlm_seed0_ft{f}.json").read_text()) for f in (0, 1)]
    assert [s["finetune_seed"] for s in seeds] == [0, 1]
    losses = [[json.loads(line)["train/loss"] for line in (
        setting.out / "runs" / f"mmlm_seed0_ft{f}_packages" / "metrics.jsonl").open()
        if "train/loss" in line] for f in (0, 1)]
    assert losses[0] and losses[0] != losses[1]  # another head init and example order
    assert "| mmlm | 1 × 2 |" in capsys.readouterr().out


@pytest.mark.slow
def test_a_held_out_package_is_out_of_pretraining_and_scored_out_of_domain(demo_data_dir,
                                                                          tmp_path, capsys):
    """`--hold_out=Sphinx`: corpus and vocabulary without Sphinx's catalogs, and every arm
    scored on Sphinx's messages that pretraining never saw, in pools of POOL_SIZE."""
    from ernie_m_jax.data import corpus
    from experiments.paper_in_miniature.evaluation import POOL_SIZE

    out = tmp_path / "held_out"
    assert driver.main(["--config=tiny", "--seeds=0", "--arms=random_init,mmlm",
                        "--hold_out=Sphinx", f"--out={out}",
                        f"--gin.register_experiment_data.data_dir={demo_data_dir!r}"]) == 0
    assert "held-out packages: retrieval L2 centred" in capsys.readouterr().out
    kept, held = Path(demo_data_dir) / "demo_corpus_Django_wagtail", \
        Path(demo_data_dir) / "held_out_Sphinx"
    # Pretraining's corpus has no Sphinx message; the run trained its own vocabulary on it.
    assert {p for ps in corpus.read_packages(kept).values() for p in ps} == {"Django", "wagtail"}
    run_dir = out / "runs" / "mmlm_seed0"
    assert (run_dir / "ernie_m_jax_vocab.model").read_bytes() == (
        Path(demo_data_dir) / "demo_corpus_Django_wagtail_spm_8000.model").read_bytes()
    # Sphinx shares some messages with Django/Wagtail (positive control): those are left out.
    seen = {k for s in corpus.SPLITS for k in corpus.read_split(kept, s, "en")}
    sphinx = {lang: {k for s in corpus.SPLITS for k in corpus.read_split(held, s, lang)}
              for lang in ("en", "de", "it")}
    assert sphinx["de"] & seen
    results = {arm: json.loads((out / "results" / f"{arm}_seed0.json").read_text())
               for arm in ("random_init", "mmlm")}
    for arm, result in results.items():
        ood = result["out_of_domain"]
        assert ood["pairs"]["messages"] == {
            f"en-{lang}": len((sphinx[lang] & sphinx["en"]) - seen) // POOL_SIZE * POOL_SIZE
            for lang in ("de", "it")}, arm
        assert ood["languages"] == {"parallel": ["de"], "monolingual_only": ["it"]}
        assert ood["transfer"]["classes"] == ["Django", "wagtail", "Sphinx"]
        sphinx_train = (set(corpus.read_split(held, "train", "en")) - seen) & {
            k for k, p in corpus.read_packages(held).items() if p == ("Sphinx",)}
        in_domain = result["transfer"]["train_examples"]
        assert result["transfer"]["classes"] == ["Django", "wagtail"]
        assert ood["transfer"]["train_examples"] == in_domain + len(sphinx_train) > in_domain
        for variant in ("raw", "centered"):
            assert sorted(ood["retrieval"]["messages"][variant]) == ["0", "1", "2"]
    summary = json.loads((out / "summary.json").read_text())
    assert "out_of_domain/retrieval/messages/centered/layer2/parallel" in summary["arms"]["mmlm"]


def test_held_out_packages_must_be_some_of_the_demo_packages(tmp_path):
    from tasks.demo import demo_corpus

    for packages in (("Sphinx", "Plone"), ("Django", "Sphinx", "wagtail")):
        with pytest.raises(ValueError, match=r"must be some, not all, of the demo packages"):
            paper.register_experiment_data(str(tmp_path), held_out_packages=packages)
    with pytest.raises(ValueError, match=r"unknown demo packages \['Plone'\]"):
        demo_corpus(tmp_path, ("Plone",))
    assert not list(tmp_path.iterdir())  # nothing was built
