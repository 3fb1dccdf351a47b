"""The files that make a run directory describe itself: what `train` writes beside the
checkpoints so that export, embedding and evaluation need nothing else (no training data,
no task registration, no global gin state of the caller)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional

from etils import epath

from ernie_m_jax import files
from ernie_m_jax.checkpoints import absolute as path

CONFIG_FILE = "config.gin"  # the full gin config it ran with (T5X's convention)
CONFIG_HISTORY = "configs"  # one config per start: configs/start_step_<N>.gin
VOCAB_FILE = "ernie_m_jax_vocab.model"  # the SentencePiece model its tasks tokenize with
LANGUAGES_FILE = "languages.json"  # language code -> the id fed to the language embedding
LOCK_FILE = "train.lock"  # host and pid of the job training in it now
# The closing summary's en<->X retrieval figures (the model card of an export shows them).
RETRIEVAL_FILE = "retrieval_test_step_{step}.json"


def write_config(model_dir: os.PathLike, text: str, start_step: int) -> None:
    """The config of the newest start as `config.gin`, and of every start under `configs/`
    (T5X keeps one per start): a resumed run with other settings loses no earlier config."""
    if not text.strip():
        return
    header = (f"# Written by ernie-m-jax train: the gin config of the start at step "
              f"{start_step}.\n")
    root = path(model_dir)  # an epath: gs:// stays a URL
    files.write_text_atomic(root / CONFIG_HISTORY / f"start_step_{start_step}.gin", header + text)
    files.write_text_atomic(root / CONFIG_FILE, header + text)


def keep_vocabulary(model_dir: os.PathLike, vocabulary: Optional[os.PathLike]) -> None:
    """Copy the vocabulary into the run (unchanged if it is already the same bytes)."""
    if vocabulary is None:
        return
    target = path(model_dir) / VOCAB_FILE
    source = epath.Path(os.fspath(vocabulary))
    if target.exists() and target.read_bytes() == source.read_bytes():
        return
    tmp = target.parent / (VOCAB_FILE + ".tmp")
    with source.open("rb") as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    tmp.replace(target)


def write_languages(model_dir: os.PathLike, ids: Mapping[str, int]) -> None:
    files.write_json_atomic(path(model_dir) / LANGUAGES_FILE,
                            dict(sorted(ids.items())))


def vocabulary(model_dir: os.PathLike) -> Optional[epath.Path]:
    kept = path(model_dir) / VOCAB_FILE
    return kept if kept.exists() else None


def languages(model_dir: os.PathLike) -> Optional[Dict[str, int]]:
    kept = path(model_dir) / LANGUAGES_FILE
    if not kept.exists():
        return None
    ids = files.read_json(kept, "delete it to have the run's data setup register its "
                                "languages again, or rewrite it as {\"code\": id, ...}")
    if not all(isinstance(i, int) for i in ids.values()):
        raise files.DamagedFileError(f"{kept} is damaged (its values must be integer ids)")
    return ids


def holding_run(directory: epath.Path, depth: int = 3) -> Optional[epath.Path]:
    """A training run (a folder with `checkpoints/`) that `directory` is, lies inside, or
    holds up to `depth` levels down; None if there is none."""
    for folder in (directory, *directory.parents):
        if (folder / "checkpoints").is_dir():
            return folder
    level = [directory] if directory.is_dir() else []
    for _ in range(depth):
        level = [child for folder in level for child in folder.iterdir() if child.is_dir()]
        for child in level:
            if (child / "checkpoints").is_dir():
                return child
    return None


def checked_output_dir(out: os.PathLike, overwrite: bool, marker: str) -> epath.Path:
    """The folder a command may write, or a refusal that loses nothing.

    Never one that is, holds or lies inside a training run, whatever the flags; a non-empty
    one only with `overwrite`, and only when it holds `marker`, the file the command writes
    into every folder it makes: `overwrite` replaces an earlier output, never other files."""
    out = path(out)
    run = holding_run(out)
    if run is not None:
        where = "is" if run == out else ("lies inside" if run in out.parents else "holds")
        raise FileExistsError(f"{out} {where} the training run {run}: writing there would "
                              "replace its checkpoints; choose a folder outside any run")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose another directory "
                                  "or pass --overwrite (which replaces an earlier output there)")
        if not (out / marker).is_file():
            raise FileExistsError(f"{out} is not empty and holds no {marker}, so it is not an "
                                  "earlier output of this command: --overwrite replaces only "
                                  "those; choose another directory or empty it yourself")
    return out


class RunInUseError(FileExistsError):
    """Another live job trains in this run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(lock: Path) -> Optional[dict]:
    """The lock's record, or None when it is unreadable (a crash between creating and writing
    it, a full disk, a hand edit)."""
    data = lock.read_bytes()  # FileNotFoundError: released meanwhile
    try:
        holder = json.loads(data.decode("utf-8"))
    except ValueError:
        return None
    readable = (isinstance(holder, dict) and isinstance(holder.get("host"), str)
                and isinstance(holder.get("pid"), int))
    return holder if readable else None


def _since(holder: dict) -> str:
    since = holder.get("since")
    return f" (since {time.ctime(since)})" if isinstance(since, (int, float)) else ""


def _newest_checkpoint_time(model_dir: Path) -> Optional[float]:
    steps = [p for p in (model_dir / "checkpoints").glob("*") if p.name.isdigit() and p.is_dir()]
    return max((p.stat().st_mtime for p in steps), default=None)


def _take_over_unreadable_lock(lock: Path) -> None:
    """An unreadable lock names no process: it is taken over, like a stale one, only when it
    is older than the run's newest checkpoint (so no job wrote it after its last save);
    otherwise refused, naming the file."""
    written = lock.stat().st_mtime
    newest = _newest_checkpoint_time(lock.parent)
    if newest is None or written >= newest:
        raise RunInUseError(
            f"{lock} is unreadable (not a lock record) and no checkpoint of the run is newer "
            "than it, so a job may have just started there; if no job trains in "
            f"{lock.parent}, delete {lock} and rerun")
    logging.warning("taking over the unreadable lock %s (older than the run's newest "
                    "checkpoint)", lock)
    lock.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(model_dir: os.PathLike) -> Iterator[None]:
    """Hold `train.lock` (host and pid) while a job trains in `model_dir`: a second job is
    refused, since two would corrupt each other's checkpoint commits. A lock whose process is
    gone (same host) is stale and taken over. Only process 0 of a job calls this; object
    stores (gs://) have no atomic create, so there no lock is taken."""
    if "://" in os.fspath(model_dir):
        yield
        return
    lock = Path(os.fspath(path(model_dir))) / LOCK_FILE
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = _read_lock(lock)
                if holder is None:  # empty, garbage or not a record: no process to ask
                    _take_over_unreadable_lock(lock)
                    continue
            except FileNotFoundError:
                continue  # released meanwhile: create it again
            if holder["host"] == mine["host"] and not _alive(holder["pid"]):
                logging.warning("taking over the stale lock of process %d (gone) in %s",
                                holder["pid"], model_dir)
                lock.unlink(missing_ok=True)
                continue
            raise RunInUseError(
                f"{model_dir} is in use by process {holder['pid']} on host "
                f"{holder['host']}{_since(holder)}: two "
                f"jobs in one run corrupt its checkpoints; if that job is gone, delete {lock}")
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)

