"""Preemption, damaged checkpoints and non-finite steps never lose work or pass silently."""

import asyncio
import gc
import logging
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ernie_m_jax import checkpoints
from ernie_m_jax.configs import SpecialTokens
from ernie_m_jax.metrics import read_metrics
from tests.train_runs import ROOT, as_flags, run, tiny_bindings


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_the_rerun_resumes(demo_data_dir, tmp_path):
    model_dir = tmp_path / "run"
    bindings = tiny_bindings(demo_data_dir, 500, **{"TrainConfig.checkpoint_every": 100})
    command = [sys.executable, "-m", "ernie_m_jax.train", "--gin_file=runs/demo_cpu.gin",
               f"--model_dir={model_dir}", *as_flags(bindings)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        path = model_dir / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    assert "stopping at step" in output and "SIGTERM" in output
    step = checkpoints.latest_step(model_dir / "checkpoints")
    assert 5 <= step < 100  # not a scheduled checkpoint: written because of the signal
    assert read_metrics(model_dir)[-1]["step"] <= step
    # Rerunning continues from there.
    summary = run(model_dir, tiny_bindings(demo_data_dir, step + 2))
    steps = [r["step"] for r in read_metrics(model_dir) if "train/loss" in r]
    assert steps[-2:] == [step + 1, step + 2]
    assert "train/loss" in summary


@pytest.mark.slow
def test_a_damaged_or_unfinished_checkpoint_is_skipped(demo_data_dir, copied_run, caplog):
    model_dir = copied_run  # checkpoints at 3 and 6
    ckpt = model_dir / "checkpoints"
    # A write killed half-way leaves an orbax temporary directory: never listed.
    (ckpt / "9.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
    # A finished step whose files were damaged afterwards.
    damaged = [p for p in (ckpt / "6" / "state").rglob("*") if p.is_file()]
    for path in damaged:
        path.write_bytes(b"\x00garbage")
    run(model_dir, tiny_bindings(demo_data_dir, 7))
    assert "checkpoint" in caplog.text and "/6 is damaged" in caplog.text
    steps = [r["step"] for r in read_metrics(model_dir) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # resumed from 3, each step logged once
    assert checkpoints.latest_step(ckpt) == 7
    assert (ckpt / "6.damaged").is_dir()  # set aside, not deleted
    # Resuming with another model size is a configuration error: named, and nothing renamed.
    with pytest.raises(checkpoints.ShapeMismatchError, match=r"hidden|saved \(.*\) vs model"):
        run(model_dir, tiny_bindings(demo_data_dir, 8, **{"ModelConfig.hidden_size": 64}))
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        ["3", "6", "6.damaged", "7", "9.orbax-checkpoint-tmp-1234"])


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_a_checkpoint_with_damaged_array_data_is_set_aside(damage, demo_data_dir, copied_run,
                                                          caplog):
    model_dir = copied_run  # checkpoints at 3 and 6
    ckpt = model_dir / "checkpoints"
    data = [p for p in (ckpt / "6" / "state").glob("ocdbt.process_*/d/*") if p.is_file()]
    assert data
    for path in data:  # the array bytes only: manifests and metadata stay intact
        size = path.stat().st_size
        path.write_bytes(path.read_bytes()[:size // 2] if damage == "truncate"
                         else np.random.RandomState(0).bytes(size))
    run(model_dir, tiny_bindings(demo_data_dir, 7))
    warnings = [r for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warnings) == 1 and "/6 is damaged" in warnings[0].getMessage()
    assert "Traceback" not in caplog.text and "Event loop is closed" not in caplog.text
    steps = [r["step"] for r in read_metrics(model_dir) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # resumed from 3, each step logged once
    assert (ckpt / "6.damaged").is_dir() and checkpoints.latest_step(ckpt) == 7


def _orphan_a_failed_read(kind: str, filename: str, error: str = "bad bytes") -> None:
    """A read that fails in `filename`, awaited by no one once its loop is gone, as orbax's
    other reads are after one fails; collecting it makes asyncio log the exception. `future`
    fails as tensorstore's reads do: set from outside, with no Python traceback."""
    namespace = {}
    exec(compile(f"async def read():\n    raise ValueError({error!r})\n", filename, "exec"),
         namespace)
    loop = asyncio.new_event_loop()

    async def start():
        if kind == "future":
            future = loop.create_future()
            future.set_exception(ValueError(error))
            return future
        read = namespace["read"]()
        future = asyncio.gather(read) if kind == "gather" else asyncio.ensure_future(read)
        await asyncio.sleep(0.01)
        return future

    future = loop.run_until_complete(start())
    loop.close()
    del future
    gc.collect()


@pytest.mark.parametrize("kind", ["gather", "task", "future"])
@pytest.mark.slow
def test_only_orphaned_reads_of_a_damaged_checkpoint_stay_out_of_the_log(kind, caplog, tmp_path):
    # CI caught `_GatheringFuture` and `Future exception was never retrieved` tracebacks from a
    # damaged checkpoint leaking into later tests: the filter knew only the Task form.
    damaged = f"{tmp_path}/checkpoints/6/"
    error = f'FAILED_PRECONDITION: Error reading "x" at local file "{damaged}state/"'
    asyncio_log = logging.getLogger("asyncio")
    before = (sys.excepthook, sys.unraisablehook, list(asyncio_log.filters))
    gc.collect()  # what earlier tests left behind is logged before the capture starts
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with checkpoints.orphaned_reads_collected(damaged, quiet_seconds=0.05) as read:
            read.failed = True
            _orphan_a_failed_read(kind, "/venv/lib/orbax/checkpoint/serialization.py", error)
            assert "never retrieved" not in caplog.text
            assert sys.excepthook is not before[0]
            # Another path's failure, in the meantime, is still reported.
            _orphan_a_failed_read(kind, "/home/user/my_input_pipeline.py", "other path")
            assert "exception was never retrieved" in caplog.text and "other path" in \
                caplog.text
        # The process is left as it was found, and the damaged path is reported again.
        assert (sys.excepthook, sys.unraisablehook, asyncio_log.filters) == before
        caplog.clear()
        _orphan_a_failed_read(kind, "/venv/lib/orbax/checkpoint/serialization.py", error)
        assert "exception was never retrieved" in caplog.text and damaged in caplog.text


def test_a_failed_restore_leaves_the_process_hooks_as_they_were(tmp_path, caplog):
    """Damaged-checkpoint handling changes nothing process-wide: after restoring past a
    damaged step, `sys.excepthook`, `sys.unraisablehook` and asyncio's log filters are the
    ones from before, and nothing was waited for where no read failed."""
    import jax.numpy as jnp

    state = {"w": jnp.arange(4.0)}
    with checkpoints.manager(tmp_path / "ckpt", None, async_save=False,
                             with_data=False) as mngr:
        for step in (1, 2):
            checkpoints.save_state(mngr, step, {"w": state["w"] * step})
    for path in (tmp_path / "ckpt" / "2" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(np.random.RandomState(0).bytes(path.stat().st_size))
    asyncio_log = logging.getLogger("asyncio")
    before = (sys.excepthook, sys.unraisablehook, list(asyncio_log.filters))
    abstract = checkpoints.abstract_like(state, {"w": state["w"].sharding})
    with checkpoints.manager(tmp_path / "ckpt", None, async_save=False,
                             with_data=False) as mngr:
        restored = checkpoints.restore_newest_intact(mngr, abstract)
    np.testing.assert_array_equal(restored["w"], np.arange(4.0))  # step 1, intact
    assert "/2 is damaged" in caplog.text  # the control: a read did fail
    assert (sys.excepthook, sys.unraisablehook, asyncio_log.filters) == before


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_and_counted_or_stop_the_run(demo_data_dir, tmp_path):
    bindings = tiny_bindings(demo_data_dir, 4, **{"TrainConfig.inject_nonfinite_steps": (2,)})
    summary = run(tmp_path / "skip", bindings)
    records = [r for r in read_metrics(tmp_path / "skip") if "train/nonfinite_steps" in r]
    assert [r["train/nonfinite_steps"] for r in records] == [0, 1, 1, 1]
    assert [r["train/skipped_steps_in_interval"] for r in records] == [0, 1, 0, 0]
    assert "train/loss" not in records[1] and np.isfinite(records[2]["train/loss"])
    assert summary["train/nonfinite_steps"] == 1

    stop = tiny_bindings(demo_data_dir, 6, **{
        "TrainConfig.inject_nonfinite_steps": (4, 5), "TrainConfig.nonfinite_policy": "'stop'",
        "TrainConfig.max_consecutive_nonfinite": 2})
    with pytest.raises(FloatingPointError, match=r"2 consecutive steps up to step 5.*"
                                                 r"last checkpoint \(step 3\) is intact"):
        run(tmp_path / "stop", stop)
    assert checkpoints.latest_step(tmp_path / "stop" / "checkpoints") == 3


def _hostile_lines(seed):
    """A seeded mix of what real corpora contain besides text."""
    rs = np.random.RandomState(seed)
    lines = []
    for _ in range(60):
        kind = rs.randint(7)
        if kind == 0:
            lines.append(bytes(rs.randint(0, 256, rs.randint(1, 80)).astype(np.uint8)))
        elif kind == 1:
            lines.append("Null\x00bytes\x00inside a sentence.".encode())
        elif kind == 2:
            lines.append(("x" * 1_000_000).encode())  # a megabyte line
        elif kind == 3:
            lines.append("Größe in Latin-1".encode("latin-1"))  # mixed encodings
        elif kind == 4:
            lines.append(b"   \t ")
        elif kind == 5:
            lines.append("Ein ganz normaler Satz über Übersetzung.".encode())
        else:
            lines.append("Emoji 🙂 and CJK 中文 and RTL עברית".encode())
    return lines


@pytest.mark.slow
def test_fuzzed_corpus_files_never_crash_the_pipeline(demo_data_dir, tmp_path):
    import seqio

    from ernie_m_jax.data import pipeline, sources
    from tasks import demo, registry

    vocabulary = seqio.SentencePieceVocabulary(
        str(demo.register_demo(data_dir=demo_data_dir, languages=("de",)).vocabulary_path))
    for seed in range(8):
        lines = _hostile_lines(seed)
        path = tmp_path / f"fuzz{seed}.txt"
        path.write_bytes(b"\n".join(lines) + b"\n")
        kept, skips = sources.clean_lines(sources.read_lines(path))
        assert len(kept) + sum(skips.values()) == len(sources.read_lines(path))
        assert all(text and "\x00" not in text and len(text) <= sources.DEFAULT_MAX_CHARS
                   for text in kept)
        if not kept:
            continue
        registry.add_monolingual("zz", {"train": path}, vocabulary)
        rows = [row for batch in pipeline.evaluation_batches("ernie_m.mono.zz", 24, 8, "train",
                                                             tokens=SpecialTokens())
                for row, seg in zip(batch["input_ids"], batch["segment_ids"]) if seg.any()]
        assert len(rows) == len(kept)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=f"no usable text from {empty}"):
        registry.add_monolingual("zz", {"train": empty}, vocabulary)
    seqio.TaskRegistry.remove("ernie_m.mono.zz")


def test_bad_files_and_paths_get_one_clear_error(demo_data_dir, tmp_path):
    import gin

    from ernie_m_jax import gin_config

    bad = tmp_path / "bad.gin"
    bad.write_text("include 'runs/demo_cpu.gin'\nTrainConfig.num_steps = = 3\n")
    gin.clear_config()
    try:
        with pytest.raises(Exception, match="bad.gin"):
            gin_config.parse([str(bad)])
    finally:
        gin.clear_config()
    with pytest.raises(FileNotFoundError, match="no checkpoint to initialise from"):
        run(tmp_path / "stage2", tiny_bindings(
            demo_data_dir, 1, **{"TrainConfig.init_from": repr(str(tmp_path / "nowhere"))}))


@pytest.mark.slow
def test_short_soak_ends_where_an_uninterrupted_run_ends(demo_data_dir, tmp_path):
    from tests.soak import soak

    result = soak(demo_data_dir, tmp_path, steps=12, seconds=120, seed=3, max_interruptions=3)
    assert result["steps"] == [12, 12]
    assert any(name in ("SIGKILL", "SIGTERM") for name, _ in result["events"]), result
    for name, code in result["events"]:
        # SIGTERM before the trainer has started (imports) ends the process the default way.
        assert (name, code) in (("SIGTERM", 0), ("SIGTERM", -15), ("SIGKILL", -9),
                                ("finished", 0)), result
    assert result["max_abs_param_diff"] <= 1e-6, result


def test_a_second_job_in_the_same_run_is_refused_and_a_stale_lock_taken_over(tmp_path, caplog):
    import json
    import os
    import socket

    from ernie_m_jax import cli, run_dir

    lock = tmp_path / run_dir.LOCK_FILE
    with run_dir.locked(tmp_path):
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(run_dir.RunInUseError, match=f"in use by process {os.getpid()}"):
            with run_dir.locked(tmp_path):
                pass
        # The train command says so in one line and leaves the run alone.
        assert cli.main(["train", "--gin_file=runs/demo_cpu.gin", f"--model_dir={tmp_path}",
                         "--gin.TrainConfig.data_setup=None"]) == 2
        assert lock.exists() and not (tmp_path / "checkpoints").exists()
    assert not lock.exists()  # released

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(finished.stdout)}))
    with run_dir.locked(tmp_path):  # that process is gone: the lock was stale
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text
    lock.write_text(json.dumps({"host": "another-host", "pid": 1}))
    with pytest.raises(run_dir.RunInUseError, match="on host another-host"):
        with run_dir.locked(tmp_path):
            pass
    assert json.loads(lock.read_text())["host"] == "another-host"  # not ours to remove
