"""Orbax checkpoints of the train state plus each host's input-pipeline position.

A checkpoint step directory holds `state` (params, optimizer state, step, rng; written by
`StandardSave`, sharded arrays from every host) and `data` (one `tf.train.Checkpoint` of the
tf.data iterator per process). Saves are asynchronous and atomic (orbax finalises a step only
when every item is written); restores go onto whatever mesh the abstract state names.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sys
import time
from typing import Any, List, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

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


class _DropOrphanedTaskErrors(logging.Filter):
    """asyncio's "<Task|Future|_GatheringFuture> exception was never retrieved" for an orphaned
    read of a checkpoint already reported damaged: one that passed through orbax (its
    traceback says so) or whose error names that checkpoint (tensorstore's read futures carry
    no Python traceback). Any other orphaned error is still logged."""

    def __init__(self):
        super().__init__()
        self.damaged_paths = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "exception was never retrieved" not in message.split("\n")[0]:
            return True
        if any(path in message for path in self.damaged_paths):
            return False
        traceback = record.exc_info[2] if record.exc_info else None
        while traceback is not None:
            if "orbax" in traceback.tb_frame.f_code.co_filename:
                return False
            traceback = traceback.tb_next
        return True


_ORPHAN_FILTER = _DropOrphanedTaskErrors()


def _collect_orphaned_reads(damaged_path: str, settle_seconds: float = 1.0) -> None:
    """A failed restore leaves orbax's other concurrent array reads running after its event
    loop closed: as they finish, each prints a traceback ("Event loop is closed", "Task
    exception was never retrieved", an unraisable coroutine), dozens for one damaged file.
    Let them finish and collect them here, quietly: the warning already names the damage.
    A read that outlives the wait (a busy machine) still finds asyncio's log filtered: the
    filter stays, and drops only orphaned reads of `damaged_path` or through orbax."""
    def quiet_excepthook(kind, value, traceback):
        if not (isinstance(value, RuntimeError) and "Event loop is closed" in str(value)):
            excepthook(kind, value, traceback)

    _ORPHAN_FILTER.damaged_paths.add(damaged_path)
    logging.getLogger("asyncio").addFilter(_ORPHAN_FILTER)  # a no-op once it is there
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook
    sys.excepthook, sys.unraisablehook = quiet_excepthook, lambda unraisable: None
    try:
        time.sleep(settle_seconds)
        gc.collect()
    finally:
        sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


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
        try:
            state = restore(mngr, step, abstract_state, iterator)
        except ShapeMismatchError:
            raise  # a configuration mistake, not damage: touch nothing
        except (DamagedCheckpointError, FileNotFoundError) as err:
            failures[step] = getattr(err, "cause", None) or _root_cause(err)
        else:
            _set_aside(mngr, list(failures))
            for failed, cause in failures.items():  # said once renamed, so it is true
                logging.warning("checkpoint %s/%d is damaged (set aside as %d.damaged; resumed "
                                "from step %d): %s", mngr.directory, failed, failed, step, cause)
            return state
        _collect_orphaned_reads(f"{mngr.directory}/{step}/")  # no longer referenced here
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
        from jax.experimental import multihost_utils

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
