"""The third round of hostile use (issue #39), one test per case: every damaged file named and
survived, every path kept inside its folder, every warning true. Each test damages its own
copy of one tiny trained run, and has a control that shows what it guards against."""

import json
import logging
import os
import shlex
import shutil
import sys
import time
import types

import gin
import numpy as np
import pytest

from ernie_m_jax import checkpoints, cli, files, metrics, run_dir, run_summary, saved_run
from tests.train_runs import run, tiny_bindings


@pytest.fixture(autouse=True)
def _no_gin_left_behind():
    """The commands below parse gin files into the process's config: none outlives its test."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="module")
def trained(six_step_run):
    """A tiny run with checkpoints at steps 3 and 6 (never damaged itself: tests copy it)."""
    return six_step_run


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("round3_hf") / "hf"
    assert cli.main(["export-hf", f"--model_dir={trained}", f"--out={out}",
                     "--fold_language=mean"]) == 0
    return out


def _copy(trained, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(trained, target)
    return target


# 1. A damaged metrics.jsonl: the good lines kept, the damaged ones set aside, one warning.
@pytest.mark.parametrize("damage", ["cut mid-line", "invalid UTF-8", "not an object"])
def test_a_damaged_metrics_file_is_set_aside_and_the_good_lines_kept(damage, tmp_path, caplog):
    path = tmp_path / metrics.METRICS_FILE
    good = [json.dumps({"step": s, "train/loss": 9.0 - s}) for s in (1, 2, 3)]
    bad = {"cut mid-line": b'{"step": 4, "train/lo', "invalid UTF-8": b'{"step": \xff4}',
           "not an object": b"null"}[damage]
    path.write_bytes("\n".join(good).encode() + b"\n" + bad)
    with pytest.raises(ValueError, match=f"{path}: line 4 is damaged"):  # the control
        metrics.read_metrics(tmp_path)
    with caplog.at_level(logging.WARNING):
        metrics.MetricsWriter(tmp_path, start_step=3).close()
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0] and "line 4" in warnings[0]
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3]
    assert (tmp_path / (metrics.METRICS_FILE + ".damaged")).read_bytes() == bad + b"\n"


@pytest.mark.slow
def test_resume_after_a_crash_left_metrics_half_written(trained, demo_data_dir, tmp_path,
                                                        caplog):
    model_dir = _copy(trained, tmp_path)
    path = model_dir / metrics.METRICS_FILE
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:2] + [b"\xff\xfe garbage"] + lines[2:])[:-40])
    with caplog.at_level(logging.WARNING):
        summary = run(model_dir, tiny_bindings(demo_data_dir, 8), stop_after=7)
    steps = [r["step"] for r in metrics.read_metrics(model_dir) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # resumed from 6, the cut line's step logged again
    set_aside = (model_dir / (metrics.METRICS_FILE + ".damaged")).read_bytes()
    assert b"\xff\xfe garbage" in set_aside and set_aside.count(b"\n") == 2
    # 14. No orbax "Metadata file does not exist" on a resume.
    assert "Metadata file does not exist" not in caplog.text
    # 3. Where it stopped, not where it was headed.
    assert summary["session/last_step"] == 7 and summary["session/steps"] == 1
    text = run_summary.format_summary(str(model_dir), _experiment(8), summary, [], 1)
    assert text.startswith("trained 1 steps (to step 7 of 8) in")


@pytest.mark.slow
def test_the_orbax_metadata_warning_control(trained, caplog):
    """What the resume above no longer logs: orbax's Checkpointer looks for step metadata
    inside the item folder, where the CheckpointManager never writes it."""
    import orbax.checkpoint as ocp

    with caplog.at_level(logging.WARNING):
        checkpoints.saved_shapes(trained / "checkpoints" / "6" / checkpoints.STATE)
        assert "Metadata file does not exist" not in caplog.text
        with ocp.PyTreeCheckpointer() as checkpointer:
            checkpointer.metadata(trained / "checkpoints" / "6" / checkpoints.STATE)
    assert "Metadata file does not exist" in caplog.text


def _experiment(num_steps):
    """What the summary reads of an Experiment: the train and model configs."""
    from ernie_m_jax.configs import model_config
    from ernie_m_jax.train.config import TrainConfig

    return types.SimpleNamespace(train=TrainConfig(num_steps=num_steps),
                                 model=model_config("tiny"))


# 2. Fine-tuning never writes into the run it starts from.
@pytest.mark.slow
@pytest.mark.parametrize("where", ["is", "inside"])
def test_finetune_into_its_own_start_run_is_refused(where, trained, tmp_path, capsys):
    base = _copy(trained, tmp_path)
    before = sorted(str(p.relative_to(base)) for p in base.rglob("*"))
    out = base if where == "is" else base / "packages"
    assert cli.main(["finetune", "--gin_file=gin/finetune/packages.gin", f"--init_from={base}",
                     f"--model_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert f"--model_dir {out} {where if where == 'is' else 'lies inside'} --init_from" in err
    assert "checkpoint" not in err.replace("--init_from", "")  # no false damage warnings
    assert sorted(str(p.relative_to(base)) for p in base.rglob("*")) == before


@pytest.mark.slow
def test_finetune_into_another_pretraining_run_is_refused(trained, tmp_path, capsys):
    other = _copy(trained, tmp_path, "other")
    assert cli.main(["finetune", "--gin_file=gin/finetune/packages.gin",
                     f"--init_from={trained}", f"--model_dir={other}"]) == 2
    assert f"--model_dir {other} is a pretraining run" in capsys.readouterr().err
    assert not (other / "best").exists()


# 3. A preempted run's summary skips the evaluation and says how to run it.
def test_a_preempted_summary_scores_nothing_and_says_how(tmp_path):
    never_written = str(tmp_path / "a run" / "that is not there")  # loading it would fail
    summary = {"preempted_at_step": 33, "session/steps": 13, "session/last_step": 33,
               "session/seconds": 60.0, "session/tokens": 1000}
    text = cli._summary(never_written, _experiment(45), summary, 61.0)
    assert text.startswith("trained 13 steps (to step 33 of 45, stopped by a signal)")
    command = next(line for line in text.splitlines() if "eval-retrieval" in line).strip()
    assert "retrieval not scored" in text and "rerun the same command" in text
    assert shlex.split(command)[1:3] == ["eval-retrieval", f"--model_dir={never_written}"]


# 4. Every checkpoint damaged: one short, true line for each, nothing renamed.
@pytest.mark.slow
def test_every_checkpoint_damaged_gives_one_true_line_each(trained, demo_data_dir, tmp_path,
                                                          caplog):
    model_dir = _copy(trained, tmp_path)
    for path in (model_dir / "checkpoints").glob("*/state/ocdbt.process_*/d/*"):
        path.write_bytes(np.random.RandomState(0).bytes(20))
    with pytest.raises(ValueError, match="no checkpoint .* could be restored .*left in place"):
        run(model_dir, tiny_bindings(demo_data_dir, 8))
    warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert sorted(w.split(" is damaged")[0][-2:] for w in warnings) == ["/3", "/6"]
    assert all(len(w) < 400 and "set aside" not in w for w in warnings), warnings
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["3", "6"]


def test_a_long_root_cause_is_cut_to_one_short_line():
    try:
        try:
            raise ValueError("NOT_FOUND: " + json.dumps({"driver": "zarr" * 800}) + "\nmore")
        except ValueError as inner:
            raise RuntimeError("orbax wrapper") from inner
    except RuntimeError as err:
        cause = checkpoints._root_cause(err)
    assert cause.startswith("ValueError: NOT_FOUND") and len(cause) == checkpoints.MAX_CAUSE_CHARS


# 5. A PyTorch pickle: one line without torch; with torch, tensors only, never code.
@pytest.mark.slow
def test_a_pytorch_bin_without_torch_is_one_line(exported, tmp_path, monkeypatch, capsys):
    hf = tmp_path / "hf"
    shutil.copytree(exported, hf)
    (hf / "model.safetensors").rename(hf / "pytorch_model.bin")  # never opened
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    assert cli.main(["import-hf", f"--hf_dir={hf}", f"--model_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "pytorch_model.bin is a PyTorch pickle and torch is not installed" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


class _RunsCode:
    """Unpickling it calls `open(path, 'w')`: a pickle that runs code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.slow
def test_a_pickle_that_runs_code_is_refused(exported, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    hf = tmp_path / "hf"
    shutil.copytree(exported, hf)
    (hf / "model.safetensors").unlink()
    ran = tmp_path / "the_pickle_ran"
    torch.save({"weights": _RunsCode(ran)}, hf / "pytorch_model.bin")
    assert cli.main(["import-hf", f"--hf_dir={hf}", f"--model_dir={tmp_path / 'out'}"]) == 2
    assert "cannot be read as plain tensors" in capsys.readouterr().err
    assert not ran.exists() and not (tmp_path / "out").exists()
    torch.load(hf / "pytorch_model.bin", weights_only=False)  # the control: it does run code
    assert ran.exists()


# 6. Every path a Hugging Face folder names stays inside it.
@pytest.mark.slow
def test_shard_paths_cannot_escape_the_folder(exported, tmp_path, capsys):
    hf = tmp_path / "hf"
    shutil.copytree(exported, hf)
    (hf / "model.safetensors").rename(tmp_path / "outside.safetensors")
    index = hf / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "../outside.safetensors"}}))
    assert cli.main(["import-hf", f"--hf_dir={hf}", f"--model_dir={tmp_path / 'out'}"]) == 2
    assert "'../outside.safetensors' lies outside the folder" in capsys.readouterr().err
    for escape in ("/etc/passwd", "shards/../../outside.safetensors"):
        index.write_text(json.dumps({"weight_map": {"a": escape}}))
        assert cli.main(["import-hf", f"--hf_dir={hf}", f"--model_dir={tmp_path / 'out'}"]) == 2
        assert "lies outside the folder" in capsys.readouterr().err
    # The control: the same shard inside the folder imports (to a path with a space, whose
    # next command must paste as one argument: case 11).
    (tmp_path / "outside.safetensors").rename(hf / "shard-1.safetensors")
    index.write_text(json.dumps({"weight_map": {"a": "./shard-1.safetensors"}}))
    out = tmp_path / "imported run"
    assert cli.main(["import-hf", f"--hf_dir={hf}", f"--model_dir={out}"]) == 0
    command = capsys.readouterr().out.splitlines()[-1]
    assert f"--gin_file={out / 'config.gin'}" in shlex.split(command)


# 7. A config.json that does not fit its weights is refused before anything is built.
@pytest.mark.slow
def test_an_oversized_config_is_refused_from_the_headers(exported, tmp_path, monkeypatch,
                                                         capsys):
    from ernie_m_jax.export import hf_import

    hf = tmp_path / "hf"
    shutil.copytree(exported, hf)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "vocab_size": 3_000_000}))

    def never(*args, **kwargs):
        raise AssertionError("a model was built before the shapes were checked")

    monkeypatch.setattr(hf_import, "_init", never)
    monkeypatch.setattr(hf_import, "read_weights", never)
    assert cli.main(["import-hf", f"--hf_dir={hf}", f"--model_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "embeddings.word_embeddings.weight: (8000, 32), expected (3000000, 32)" in err
    monkeypatch.undo()  # the control: the right config imports
    (hf / "config.json").write_text(json.dumps(config))
    assert cli.main(["import-hf", f"--hf_dir={hf}", f"--model_dir={tmp_path / 'out'}"]) == 0


# 8. An unreadable train.lock: taken over when older than the newest checkpoint, else refused.
@pytest.mark.parametrize("content", ["null", "", "garbage", "[1, 2]", '{"host": 3}',
                                     '{"pid": "x", "host": "h"}'])
def test_an_unreadable_lock_is_taken_over_only_when_stale(content, tmp_path, caplog):
    step = tmp_path / "checkpoints" / "3"
    step.mkdir(parents=True)
    lock = tmp_path / run_dir.LOCK_FILE
    lock.write_text(content)
    with pytest.raises(run_dir.RunInUseError, match=f"{lock} is unreadable"):
        with run_dir.locked(tmp_path):  # newer than the checkpoint: a job may have just begun
            pass
    assert lock.read_text() == content
    past = time.time() - 60
    os.utime(lock, (past, past))
    with run_dir.locked(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"taking over the unreadable lock {lock}" in caplog.text and not lock.exists()


def test_an_unreadable_lock_without_checkpoints_is_refused(tmp_path):
    (tmp_path / run_dir.LOCK_FILE).write_text("null")
    with pytest.raises(run_dir.RunInUseError, match="delete .*train.lock and rerun"):
        with run_dir.locked(tmp_path):
            pass


# 9. Damaged metadata: every error names the file and what to do.
@pytest.mark.parametrize("damage", ["truncated config.gin", "random config.gin",
                                    "truncated languages.json", "languages.json not ids"])
@pytest.mark.slow
def test_damaged_run_metadata_is_named(damage, trained, tmp_path, capsys):
    model_dir = _copy(trained, tmp_path)
    name = run_dir.CONFIG_FILE if "config" in damage else run_dir.LANGUAGES_FILE
    path = model_dir / name
    text = path.read_bytes()
    if damage == "truncated config.gin":  # cut inside a tuple, as a full disk leaves it
        damaged = text[:text.index(b"MeshConfig.shape") + 24]
    elif damage == "random config.gin":
        damaged = np.random.RandomState(1).bytes(300)
    else:
        damaged = text[:10] if damage == "truncated languages.json" else b'{"de": "zero"}'
    path.write_bytes(damaged)
    assert cli.main(["export-hf", f"--model_dir={model_dir}", f"--out={tmp_path / 'hf'}",
                     "--fold_language=mean"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err
    assert ("configs/: copy the newest" in err) if name == run_dir.CONFIG_FILE else (
        "damaged" in err)


def test_damaged_finetune_records_are_named(tmp_path):
    from ernie_m_jax.finetune import run as finetune_run

    for name, reader in ((finetune_run.INFO_FILE, finetune_run.read_info),
                         (finetune_run.SELECTION_FILE,
                          lambda d: finetune_run.read_selection(d, 10))):
        (tmp_path / name).write_bytes(b'{"cut')
        with pytest.raises(files.DamagedFileError, match=f"{tmp_path / name} is damaged"):
            reader(tmp_path)


# 10. A bad --gin flag is named.
@pytest.mark.parametrize("flag", ["--gin.NUM_STEPS=(1,", "--gin.NUM_STEPS=1 2"])
def test_a_bad_gin_flag_is_named(flag, tmp_path, capsys):
    assert cli.main(["train", "--gin_file=runs/demo_cpu.gin", f"--model_dir={tmp_path}",
                     flag]) == 2
    err = capsys.readouterr().err
    assert f"the flag {flag} cannot be parsed" in err and not any(tmp_path.iterdir())


# 11. Paths with spaces: every printed command pastes back as one argument.
def test_next_commands_quote_paths_with_spaces(tmp_path):
    model_dir = str(tmp_path / "my runs" / "demo run")
    text = run_summary.format_summary(model_dir, _experiment(5), {"session/steps": 5}, [], 1)
    commands = [line.strip() for line in text.split("next:")[1].splitlines() if line.strip()]
    finetuned = [line.strip() for line in cli.finetune_next_steps(model_dir).splitlines()[1:]]
    for command in commands + finetuned:
        args = shlex.split(command)
        assert any(model_dir in a for a in args), command
        assert not any(a in ("runs/demo", "run/checkpoints") for a in args), command
    assert len(shlex.split(f"--model_dir={model_dir}")) == 3  # the control: unquoted, it splits


# 12. export-hf --overwrite replaces only an earlier export.
@pytest.mark.slow
def test_overwrite_replaces_only_an_earlier_export(trained, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    flags = [f"--model_dir={trained}", f"--out={out}", "--fold_language=mean", "--overwrite"]
    assert cli.main(["export-hf", *flags]) == 2
    assert "holds no ernie_m_jax_export.json" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "years of work"
    (out / "thesis.tex").unlink()
    assert cli.main(["export-hf", *flags]) == 0  # empty: written
    assert cli.main(["export-hf", *flags]) == 0  # an earlier export: replaced
    assert (out / "ernie_m_jax_export.json").is_file()


@pytest.mark.slow
def test_import_overwrite_replaces_only_an_earlier_import(exported, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert cli.main(["import-hf", f"--hf_dir={exported}", f"--model_dir={out}",
                     "--overwrite"]) == 2
    assert "holds no ernie_m_jax_import.json" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_saved_run_loads_after_the_damage_is_mended(trained, tmp_path):
    """The remedy the config.gin error names works: the newest configs/ copy restores it."""
    model_dir = _copy(trained, tmp_path)
    (model_dir / run_dir.CONFIG_FILE).write_bytes(b"ModelConfig.hidden_size = (")
    with pytest.raises(files.DamagedFileError):
        saved_run.load(str(model_dir), setup_data=False)
    newest = sorted((model_dir / run_dir.CONFIG_HISTORY).glob("*.gin"))[-1]
    shutil.copyfile(newest, model_dir / run_dir.CONFIG_FILE)
    assert saved_run.load(str(model_dir), setup_data=False).step == 6



def test_the_summary_rate_leaves_out_the_first_call_whatever_it_held(tmp_path):
    # 10 steps of 100 tokens; the first call took 5 s, the whole session 9 s.
    summary = {"session/steps": 10, "session/tokens": 1000.0, "session/seconds": 9.0,
               "session/first_step_seconds": 5.0}
    one = run_summary.format_summary(str(tmp_path), _experiment(10), summary, [], 1)
    assert "(5s of it the first step, with compilation); 225 tokens/s after the first step" \
        in one, one  # 9 steps' 900 tokens in 4 s
    # A first call of 5 steps (TrainConfig.steps_per_call): 500 tokens in the other 4 s.
    five = run_summary.format_summary(str(tmp_path), _experiment(10), {
        **summary, "session/first_call_steps": 5}, [], 1)
    assert "(5s of it the first call (5 steps), with compilation); 125 tokens/s after the " \
        "first call (5 steps)" in five, five
    # A session that was one call: the whole session's rate.
    whole = run_summary.format_summary(str(tmp_path), _experiment(10), {
        **summary, "session/first_call_steps": 10}, [], 1)
    assert "111 tokens/s" in whole and "after" not in whole.splitlines()[0], whole
