"""Orbax checkpoints of the train state plus each host's input-pipeline position.

A checkpoint step directory holds `state` (params, optimizer state, step, rng; written by
`StandardSave`, sharded arrays from every host) and `data` (one `tf.train.Checkpoint` of the
tf.data iterator per process). Saves are asynchronous and atomic (orbax finalises a step only
when every item is written); restores go onto whatever mesh the abstract state names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import sys
import time
import types
from typing import Any, Iterator, List, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

STATE, DATA = "state", "data"


def absolute(directory: os.PathLike) -> epath.Path:
    """Local paths made absolute (orbax wants that); gs:// and other URLs kept as they are."""
    text = os.fspath(directory)
    return epath.Path(text if "://" in text else os.path.abspath(text))


class DataIteratorHandler(ocp.CheckpointHandler):
    """Saves/restores a `pipeline.CheckpointableIterator`, one file set per process."""

    @staticmethod
    def _prefix(directory: epath.Path) -> str:
        return os.fspath(directory / f"process_{jax.process_index()}" / "iterator")

    def save(self, directory: epath.Path, args: "DataIteratorSave"):
        args.iterator.save(self._prefix(directory))

    def restore(self, directory: epath.Path, args: "DataIteratorRestore"):
        prefix = self._prefix(directory)
        if not epath.Path(prefix + ".index").exists():
            raise FileNotFoundError(
                f"no input-pipeline state for process {jax.process_index()} in {directory}; "
                f"was the checkpoint written with a different number of processes?")
        args.iterator.restore(prefix)
        return args.iterator


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
    iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
    iterator: Any


def manager(directory: os.PathLike, keep: Optional[int], async_save: bool = True,
            with_data: bool = True) -> ocp.CheckpointManager:
    """The caller decides when to save (every N steps and at the end). `keep=None` keeps
    every step; `with_data=False` for runs whose input position is a function of the step."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(absolute(directory), options=options,
                                 item_names=(STATE, DATA) if with_data else (STATE,))


def save(mngr: ocp.CheckpointManager, step: int, state, iterator) -> bool:
    return mngr.save(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardSave(state), DATA: DataIteratorSave(iterator)}), force=True)


def save_state(mngr: ocp.CheckpointManager, step: int, state) -> bool:
    """A checkpoint of the state alone (a manager made `with_data=False`)."""
    return mngr.save(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state)}),
                     force=True)


def abstract_like(state, shardings):
    """ShapeDtypeStructs carrying the shardings to restore onto (any mesh)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)


class DamagedCheckpointError(ValueError):
    """A checkpoint that cannot be read back whole (truncated, overwritten, missing files);
    `cause` is the innermost error, in one short line."""

    def __init__(self, message: str, cause: str):
        super().__init__(message)
        self.cause = cause


class ShapeMismatchError(ValueError):
    """The checkpoint is intact but holds another model (e.g. another ModelConfig)."""


def saved_shapes(path: epath.Path):
    """{"['params']['...']": shape} of a saved state item, read from its metadata only.
    The item's handler reads it directly: a Checkpointer would also look for step metadata
    inside the item, where a CheckpointManager never writes it, and warn on every start."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        tree = handler.metadata(epath.Path(path))
    finally:
        handler.close()
    tree = getattr(tree, "tree", tree)
    return {jax.tree_util.keystr(k): tuple(getattr(v, "shape", ()) or ())
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def check_shapes(path: epath.Path, abstract_state) -> None:
    """One clear error, naming the arrays, when a checkpoint does not fit this model."""
    try:
        saved = saved_shapes(path)
    except Exception as err:  # unreadable metadata: the restore itself will report it
        logging.debug("no shape metadata in %s: %s", path, err)
        return
    wanted = {jax.tree_util.keystr(k): tuple(v.shape)
              for k, v in jax.tree_util.tree_leaves_with_path(abstract_state)}
    # Only arrays present in both are compared: missing ones mean damage (or a changed
    # tree), which the restore reports.
    differ = {k: (saved[k], v) for k, v in wanted.items() if k in saved and saved[k] != v}
    if differ:
        shown = "; ".join(f"{k}: saved {a} vs model {b}" for k, (a, b) in list(differ.items())[:4])
        raise ShapeMismatchError(
            f"checkpoint {path} holds a different model than configured ({shown}; "
            f"{len(differ)} arrays differ); check ModelConfig against the run that wrote it")


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, iterator=None):
    """The state at `step` (placed as `abstract_state` says); rewinds `iterator` if given."""
    check_shapes(epath.Path(mngr.directory) / str(step) / STATE, abstract_state)
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if iterator is not None:
        items[DATA] = DataIteratorRestore(iterator)
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except ShapeMismatchError:
        raise
    except Exception as err:  # noqa: BLE001 - tensorstore raises a bare Exception on bad bytes
        cause = _root_cause(err)
        raise DamagedCheckpointError(f"cannot restore checkpoint step {step} from "
                                     f"{mngr.directory}: {cause}", cause) from err
    return restored[STATE]


def _closed_loop(error: Optional[BaseException]) -> bool:
    return isinstance(error, RuntimeError) and "Event loop is closed" in str(error)


class _DropOrphanedReads(logging.Filter):
    """asyncio's "<Task|Future|_GatheringFuture> exception was never retrieved" for an orphaned
    read of the damaged checkpoint: its error names the checkpoint (tensorstore's read futures
    carry no Python traceback), or it is the closed event loop the failed restore left."""

    def __init__(self, damaged_path: str):
        super().__init__()
        self.damaged_path = damaged_path
        self.last_dropped = time.monotonic()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "exception was never retrieved" not in message.split("\n")[0]:
            return True
        error = record.exc_info[1] if record.exc_info else None
        if self.damaged_path in message or self.damaged_path in str(error) or \
                _closed_loop(error):
            self.last_dropped = time.monotonic()
            return False
        return True


@contextlib.contextmanager
def orphaned_reads_collected(damaged_path: str, quiet_seconds: float = 1.0,
                             max_seconds: float = 10.0) -> Iterator[None]:
    """A failed restore leaves orbax's other concurrent array reads running after its event
    loop closed: as they finish, each prints a traceback ("Event loop is closed", "Task
    exception was never retrieved", an unraisable coroutine), dozens for one damaged file.
    On leaving, this waits until they have stopped arriving for `quiet_seconds` (at most
    `max_seconds`) and collects them quietly: the warning already names the damage. Only
    then are asyncio's log, `sys.excepthook` and `sys.unraisablehook` put back as they were;
    any other error, in the meantime, is reported as usual. The body marks a failed read
    with `.failed = True` on what this yields; no wait follows a read that succeeded."""
    drop = _DropOrphanedReads(damaged_path)
    asyncio_log = logging.getLogger("asyncio")
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def quiet_excepthook(kind, value, traceback):
        if not _closed_loop(value):
            excepthook(kind, value, traceback)
        else:
            drop.last_dropped = time.monotonic()

    def quiet_unraisablehook(unraisable):  # an orphaned read's coroutine, collected
        if _closed_loop(unraisable.exc_value) or "coroutine" in repr(unraisable.object):
            drop.last_dropped = time.monotonic()
        else:
            unraisablehook(unraisable)

    asyncio_log.addFilter(drop)
    sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook
    outcome = types.SimpleNamespace(failed=False)
    try:
        yield outcome
        began = time.monotonic()
        while outcome.failed and time.monotonic() - began < max_seconds:
            gc.collect()
            if time.monotonic() - max(drop.last_dropped, began) >= quiet_seconds:
                break
            time.sleep(0.05)
    finally:
        sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
        asyncio_log.removeFilter(drop)


MAX_CAUSE_CHARS = 240  # tensorstore's errors can carry kilobytes of JSON spec on one line


def _root_cause(err: BaseException) -> str:
    """The innermost error's first line, cut short (orbax wraps a read error in several
    layers)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    lines = str(err).strip().splitlines()
    line = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return line if len(line) <= MAX_CAUSE_CHARS else line[:MAX_CAUSE_CHARS - 3] + "..."


def restore_newest_intact(mngr: ocp.CheckpointManager, abstract_state, iterator=None):
    """Restore the newest checkpoint that reads back whole; damaged ones are skipped with a
    warning naming them. (Unfinished writes are never listed: orbax renames a step into place
    only when every item is complete.)"""
    failures = {}  # step -> why it could not be read
    for step in sorted(mngr.all_steps(), reverse=True):
        with orphaned_reads_collected(f"{mngr.directory}/{step}/") as read:
            try:
                state = restore(mngr, step, abstract_state, iterator)
            except ShapeMismatchError:
                raise  # a configuration mistake, not damage: touch nothing
            except (DamagedCheckpointError, FileNotFoundError) as err:
                failures[step] = getattr(err, "cause", None) or _root_cause(err)
                read.failed = True
        if not read.failed:
            _set_aside(mngr, list(failures))
            for failed, cause in failures.items():  # said once renamed, so it is true
                logging.warning("checkpoint %s/%d is damaged (set aside as %d.damaged; resumed "
                                "from step %d): %s", mngr.directory, failed, failed, step, cause)
            return state
    for failed, cause in failures.items():  # nothing renamed: every step is left as it was
        logging.warning("checkpoint %s/%d is damaged: %s", mngr.directory, failed, cause)
    raise ValueError(f"no checkpoint in {mngr.directory} could be restored (tried steps "
                     f"{list(failures)}, each named above; they are left in place)")


def _set_aside(mngr: ocp.CheckpointManager, steps) -> None:
    """Rename damaged steps to `<step>.damaged` (kept for inspection, no longer listed), so
    the resumed run can write those steps again."""
    if not steps:
        return
    if jax.process_index() == 0:
        for step in steps:
            path = epath.Path(mngr.directory) / str(step)
            path.rename(path.parent / f"{step}.damaged")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("ernie_m_jax: damaged checkpoints set aside")
    mngr.reload()


def saved_steps(directory: os.PathLike) -> List[int]:
    """The finalised steps under `directory`, oldest first ([] if there is none)."""
    if not absolute(directory).exists():
        return []
    with ocp.CheckpointManager(absolute(directory),
                               item_names=(STATE, DATA)) as mngr:
        return sorted(mngr.all_steps())


def latest_step(directory: os.PathLike) -> Optional[int]:
    """The newest finalised step under `directory`, or None."""
    steps = saved_steps(directory)
    return steps[-1] if steps else None


def restore_params(directory: os.PathLike, abstract_params, step: Optional[int] = None):
    """Only the params of another run's checkpoint (e.g. stage 1 -> stage 2)."""
    directory = absolute(directory)
    step = latest_step(directory) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint to initialise from in {directory}")
    path = directory / str(step) / STATE
    if not path.exists():
        raise FileNotFoundError(f"checkpoint step {step} in {directory} has no {STATE} item")
    target = {"params": abstract_params}
    check_shapes(path, target)  # from the metadata, before any array is read
    args = ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)
    with ocp.PyTreeCheckpointer() as checkpointer:
        try:
            return checkpointer.restore(path, args=args)["params"]
        except (ValueError, KeyError) as err:
            raise ValueError(f"{path}: its params do not match this model ({err})") from err
