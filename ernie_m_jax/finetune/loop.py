"""Fine-tuning and evaluating a classifier: start from a pretrained run, train with periodic
validation, keep the best params, stop early if asked, score every language at the end.

Resumable as `train` is: the latest state is an orbax checkpoint, the input order is a
function of the step (`data.batch_at`), and model selection's record (`selection.json`) is
cut back to the restored step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from typing import Callable, Dict, Mapping, Optional, Tuple

import gin
import jax
import numpy as np

from ernie_m_jax import checkpoints, partitioning, preemption, run_dir, saved_run
from ernie_m_jax import metrics as metrics_lib
from ernie_m_jax.configs import ModelConfig
from ernie_m_jax.finetune import data as data_lib
from ernie_m_jax.finetune import evaluate as evaluate_lib
from ernie_m_jax.finetune import run as run_lib
from ernie_m_jax.finetune.config import ClassificationData, FinetuneConfig
from ernie_m_jax.finetune.model import ENCODER
from ernie_m_jax.finetune.step import FinetuneStep, build_finetune_step
from ernie_m_jax.train import core, session


def _start_point(cfg: FinetuneConfig, model_dir: str
                 ) -> Tuple[run_lib.FinetuneInfo, Optional[dict]]:
    """(the run's record, the pretrained encoder params to start from, None when resuming)."""
    recorded = run_lib.read_info(model_dir)
    if recorded is not None:
        if cfg.init_from and os.path.abspath(cfg.init_from) != recorded.init_from:
            other = saved_run.load(cfg.init_from, setup_data=False).model
            if _shape(other) != _shape(recorded.model):
                raise ValueError(
                    f"{model_dir} was fine-tuned from {recorded.init_from} "
                    f"({_describe(recorded.model)}), and --init_from {cfg.init_from} is "
                    f"another model shape ({_describe(other)}); use a new --model_dir")
            logging.warning("resuming %s, which started from %s; --init_from %s is not used",
                            model_dir, recorded.init_from, cfg.init_from)
        return recorded, None
    if not cfg.init_from:
        raise ValueError("FinetuneConfig.init_from is not set: pass --init_from=<a pretraining "
                         "run or an import-hf directory>")
    if run_lib.read_info(cfg.init_from) is not None:
        raise ValueError(f"--init_from {cfg.init_from} is a fine-tuned classifier, not a "
                         "pretraining run; start from the run it was fine-tuned from")
    if not (run_dir.path(cfg.init_from) / "checkpoints").is_dir():
        raise FileNotFoundError(f"--init_from {cfg.init_from} is not a pretraining run or an "
                                "import-hf directory (no checkpoints/ in it)")
    base = saved_run.load(cfg.init_from, setup_data=False)
    if base.vocabulary_path is None:
        raise ValueError(f"{cfg.init_from} keeps no vocabulary ({run_dir.VOCAB_FILE}); the "
                         "task must be tokenized with the pretrained model's own")
    info = run_lib.FinetuneInfo(
        init_from=os.path.abspath(cfg.init_from), init_step=base.step, model=base.model,
        tokens=base.tokens, task="", labels=(), pair=False, languages=dict(base.languages))
    encoder = {k: v for k, v in base.params.items() if k != "mlm_head"}
    return info, encoder


def _shape(config: ModelConfig) -> tuple:
    return (config.vocab_size, config.hidden_size, config.num_layers, config.num_heads,
            config.mlp_dim, config.max_position_embeddings, config.num_languages)


def _describe(config: ModelConfig) -> str:
    return (f"{config.num_layers} x {config.hidden_size}, vocabulary {config.vocab_size}, "
            f"{config.num_languages} language embeddings")


def language_id(info: run_lib.FinetuneInfo, language: str) -> int:
    """The id the pretrained model knows `language` by; refused if it has no embedding."""
    if not info.model.num_languages:
        return 0
    known = info.languages.get(language)
    if known is None or known >= info.model.num_languages:
        raise ValueError(
            f"the pretrained model has language embeddings and none for {language!r} (it "
            f"knows {sorted(c for c, i in info.languages.items() if i < info.model.num_languages)}"
            "); fine-tune and evaluate only on those languages")
    return known


def load_sets(info: run_lib.FinetuneInfo, tasks: Mapping[str, str], split: str,
              max_length: int, num_labels: int) -> Dict[str, data_lib.Examples]:
    ids = {lang: language_id(info, lang) for lang in tasks}  # refuse before reading data
    return {lang: data_lib.load_split(task, split, ids[lang], max_length, info.tokens,
                                      info.pair, num_labels)
            for lang, task in sorted(tasks.items())}


def _task(cfg: FinetuneConfig, info: run_lib.FinetuneInfo, model_dir: str,
          resuming: bool) -> ClassificationData:
    if cfg.task_setup is None:
        raise ValueError("FinetuneConfig.task_setup is not set: bind it in the gin file, e.g. "
                         "FinetuneConfig.task_setup = @register_packages")
    vocabulary = (run_dir.vocabulary(model_dir) if resuming else
                  run_dir.vocabulary(info.init_from))
    data = cfg.task_setup(vocabulary_path=os.fspath(vocabulary), tokens=info.tokens)
    if resuming and (data.name, data.labels) != (info.task, info.labels):
        raise ValueError(f"{model_dir} fine-tunes {info.task} with labels {info.labels}; this "
                         f"config sets up {data.name} with {data.labels}: use a new --model_dir")
    return data


def _place(shardings: Mapping[str, jax.sharding.NamedSharding]):
    """Host batch -> global arrays: each process feeds its own rows of the global batch."""
    count, index = jax.process_count(), jax.process_index()

    def place(batch: Dict[str, np.ndarray]):
        rows = len(batch["labels"]) // count
        return {k: jax.make_array_from_process_local_data(
            shardings[k], v[index * rows:(index + 1) * rows]) for k, v in batch.items()}
    return place


def finetune(model_dir: str, cfg: Optional[FinetuneConfig] = None,
             stop_after: Optional[int] = None,
             mesh_config: Optional[partitioning.MeshConfig] = None) -> dict:
    """Fine-tune (or resume) in `model_dir`; returns the test results of the best step and
    the session's figures. `stop_after` ends the job at that step with a checkpoint, as a
    preemption would; the same call again carries on. What is not given is read from gin
    here, once, before anything else."""
    cfg = cfg or FinetuneConfig()
    mesh_config = mesh_config or partitioning.MeshConfig()
    _check_writable(model_dir, cfg.init_from)  # before anything is created or locked
    with preemption.SignalWatcher() as stop_signal:
        checkpoints.absolute(model_dir).mkdir(parents=True, exist_ok=True)
        with run_dir.locked(model_dir) if jax.process_index() == 0 else contextlib.nullcontext():
            return _run(model_dir, cfg, mesh_config, stop_signal, stop_after)


def _check_writable(model_dir: str, init_from: Optional[str]) -> None:
    """Refuse a --model_dir that would write into the run it starts from (or hold it, or lie
    inside it), or into any pretraining run: its checkpoints are not a classifier's."""
    out = checkpoints.absolute(model_dir)
    if init_from:
        base = checkpoints.absolute(init_from)
        if out == base or base in out.parents or out in base.parents:
            relation = ("is" if out == base else
                        "lies inside" if base in out.parents else "holds")
            raise ValueError(f"--model_dir {model_dir} {relation} --init_from {init_from}: "
                             "fine-tuning never writes into the run it starts from; choose a "
                             "new directory outside it")
    if (out / run_lib.CHECKPOINTS).is_dir() and run_lib.read_info(model_dir) is None:
        raise ValueError(f"--model_dir {model_dir} is a pretraining run (checkpoints/ and no "
                         f"{run_lib.INFO_FILE}); fine-tune into a new directory")


def _run(model_dir: str, cfg: FinetuneConfig, mesh_config: partitioning.MeshConfig,
         stop_signal, stop_after: Optional[int]) -> dict:
    info, encoder = _start_point(cfg, model_dir)
    resuming = encoder is None
    data = _task(cfg, info, model_dir, resuming)
    info = dataclasses.replace(info, task=data.name, labels=data.labels, pair=data.pair)
    model_config = info.model
    if cfg.dropout_rate is not None:
        model_config = dataclasses.replace(model_config, dropout_rate=cfg.dropout_rate,
                                           attention_dropout_rate=cfg.dropout_rate)
    num_labels = len(data.labels)
    train_sets = load_sets(info, data.train_tasks, "train", cfg.max_length, num_labels)
    train = data_lib.subsample(data_lib.Examples.concatenate(list(train_sets.values())),
                               cfg.max_train_examples, cfg.seed)
    validation = load_sets(info, {lang: data.eval_tasks[lang]
                                  for lang in data.validation_languages}, "validation",
                           cfg.max_length, num_labels)
    per_epoch = data_lib.steps_per_epoch(len(train), cfg.batch_size)
    num_steps = cfg.num_steps or max(1, math.ceil(cfg.num_epochs * per_epoch))
    eval_every = cfg.eval_every or per_epoch

    mesh, rules = partitioning.make_mesh(mesh_config), mesh_config.rules
    partitioning.check_batch_divides(cfg.batch_size, mesh, rules)
    partitioning.check_batch_divides(cfg.eval_batch_size, mesh, rules)
    step_fns = build_finetune_step(model_config, num_labels, cfg, num_steps, mesh, rules)
    place = _place(step_fns.batch_shardings)
    root = run_lib.path(model_dir)
    with contextlib.ExitStack() as cleanup:
        latest = cleanup.enter_context(checkpoints.manager(
            root / run_lib.CHECKPOINTS, cfg.keep_checkpoints, async_save=False,
            with_data=False))
        best = cleanup.enter_context(checkpoints.manager(
            root / run_lib.BEST, None, async_save=False, with_data=False))
        if latest.all_steps():
            state = checkpoints.restore_newest_intact(latest, step_fns.abstract_state)
            logging.info("resumed from step %d in %s", int(state["step"]), model_dir)
        else:
            state = step_fns.init()
            state["params"][ENCODER] = jax.device_put(
                encoder, step_fns.state_shardings["params"][ENCODER])
        start = int(state["step"])
        evaluations = run_lib.read_selection(model_dir, start)
        _keep_only_best(best, evaluations)
        if jax.process_index() == 0:
            run_dir.write_config(model_dir, gin.config_str(), start)
            if not resuming:
                run_dir.keep_vocabulary(model_dir, run_dir.vocabulary(info.init_from))
                run_dir.write_languages(model_dir, info.languages)
            run_lib.write_info(model_dir, info)
        # Pretraining's interval means: over the finite steps, with throughput (rows x
        # length a step, padding included; no MFU).
        run = cleanup.enter_context(session.opened(
            model_dir, start, num_steps, "finetune", cfg.progress_bar, stop_signal,
            cfg.log_every, metrics_lib.IntervalMetrics(cfg.batch_size * cfg.max_length, 0.0,
                                                       None, start)))
        writer = run.writer
        with partitioning.activate(mesh, rules):
            summary = _loop(run, cfg, step_fns, state, _Data(train, validation, place),
                            num_steps, eval_every, evaluations, latest, best, stop_after)
            summary.update(num_steps=num_steps, steps_per_epoch=per_epoch,
                           train_examples=len(train))
            if "preempted_at_step" in summary:
                return summary
            chosen = run_lib.best_of(run_lib.read_selection(model_dir, num_steps))
            params = checkpoints.restore_params(root / run_lib.BEST,
                                                step_fns.abstract_state["params"],
                                                chosen["step"])
            tests = load_sets(info, data.eval_tasks, "test", cfg.max_length, num_labels)
            scores = evaluate_lib.per_language(step_fns.predict, params, tests,
                                               cfg.eval_batch_size, place)
        result = evaluate_lib.summarize(scores, tests, "test", chosen["step"], data.labels)
        if jax.process_index() == 0:
            evaluate_lib.write_json(root / f"eval_test_step_{chosen['step']}.json", result,
                                    {"model_dir": str(model_dir), "checkpoint": "best"})
        writer.write(chosen["step"], {f"test/{k}/accuracy": v["accuracy"]
                                      for k, v in scores.items()})
        return {**summary, "test": result, "best_validation_accuracy": chosen["accuracy"]}


def _keep_only_best(best, evaluations) -> None:
    """Best-params checkpoints other than the recorded best (a save the run did not get to
    record before it stopped) are deleted."""
    chosen = run_lib.best_of(evaluations)
    for step in best.all_steps():
        if chosen is None or step != chosen["step"]:
            best.delete(step)


@dataclasses.dataclass(frozen=True)
class _Data:
    """The examples a fine-tuning session reads, and how a host's batch is placed."""

    train: data_lib.Examples
    validation: Dict[str, data_lib.Examples]
    place: Callable


class _Finetuning:
    """Fine-tuning's part of the shared loop (`core.run_steps`): batches chosen by the step
    (`data.batch_at`); evaluation on validation that keeps the best params, records the
    selection and stops early after `patience` evaluations without improvement."""

    def __init__(self, run: session.Session, cfg: FinetuneConfig, step_fns: FinetuneStep,
                 data: _Data, num_steps: int, evaluations, latest, best):
        self.run, self.cfg, self.step_fns, self.data = run, cfg, step_fns, data
        self.num_steps, self.evaluations, self.latest, self.best = (num_steps, evaluations,
                                                                    latest, best)

    def step(self, state, done: int, count: int = 1):
        if count != 1:  # its cadence runs one step a call (`core.Cadence.steps_per_call`)
            raise ValueError(f"fine-tuning runs one step a call, was asked for {count}")
        batch = self.data.place(data_lib.batch_at(self.data.train, done - 1,
                                                  self.cfg.batch_size, self.cfg.seed))
        return self.step_fns.train(state, batch)

    def log_extra(self, state, done: int) -> Dict[str, float]:
        return {}

    def logged(self, scalars: Mapping[str, float]) -> str:
        if "train/loss" not in scalars:  # every step of the interval was skipped
            return ""
        return f"loss={scalars['train/loss']:.3f} acc={scalars['train/accuracy']:.3f}"

    def evaluate(self, state, done: int, stopping: bool) -> bool:
        """Validation accuracy; the params saved as the best first, then the record. A
        stopping job evaluates too: model selection must not miss a step it saves."""
        scores = evaluate_lib.per_language(self.step_fns.predict, state["params"],
                                           self.data.validation, self.cfg.eval_batch_size,
                                           self.data.place)
        accuracy = {lang: s["accuracy"] for lang, s in scores.items()}
        record = {"step": done, "accuracy": float(np.mean(list(accuracy.values()))),
                  "per_language": accuracy}
        self.run.writer.write(done, {"validation/accuracy": record["accuracy"],
                                     **{f"validation/{k}/accuracy": v
                                        for k, v in accuracy.items()}})
        evaluations = self.evaluations
        if not evaluations or record["accuracy"] > run_lib.best_of(evaluations)["accuracy"]:
            checkpoints.save_state(self.best, done, {"params": state["params"]})
        evaluations.append(record)
        chosen = run_lib.best_of(evaluations)
        since_best = sum(e["step"] > chosen["step"] for e in evaluations)
        stop = bool(self.cfg.patience and since_best >= self.cfg.patience
                    and done < self.num_steps)
        if jax.process_index() == 0:
            run_lib.write_selection(self.run.model_dir, evaluations, done if stop else None)
        _keep_only_best(self.best, evaluations)
        self.run.bar.write(f"step {done}: validation accuracy {record['accuracy']:.3f} "
                           f"(best {chosen['accuracy']:.3f} at step {chosen['step']})")
        if stop:
            self.run.bar.write(f"stopping early: no improvement in {self.cfg.patience} "
                               "evaluations")
        return stop

    def save(self, state, done: int) -> None:
        checkpoints.save_state(self.latest, done, state)


def _loop(run: session.Session, cfg: FinetuneConfig, step_fns: FinetuneStep, state,
          data: _Data, num_steps: int, eval_every: int, evaluations, latest, best,
          stop_after: Optional[int]) -> dict:
    """The shared loop with fine-tuning's part: a checkpoint at every evaluation."""
    began = time.perf_counter()
    trainer = _Finetuning(run, cfg, step_fns, data, num_steps, evaluations, latest, best)
    cadence = core.Cadence(num_steps, cfg.log_every, eval_every, checkpoint_every=eval_every)
    end = core.run_steps(run, trainer, state, cadence, stop_after)
    if end.stopped in ("preempted", "stop_after"):
        return {"preempted_at_step": end.step}
    return {"session/steps": end.steps_run, "session/seconds": time.perf_counter() - began,
            "stopped_early_at": end.step if end.stopped == "early" else None}


def evaluate(model_dir: str, split: str = "test", which: str = run_lib.BEST,
             batch_size: int = 64,
             mesh_config: Optional[partitioning.MeshConfig] = None) -> dict:
    """Accuracy per language of a fine-tuned run on `split` of every evaluation task (on
    the mesh gin binds, unless given)."""
    mesh_config = mesh_config or partitioning.MeshConfig()
    info, step, params = run_lib.load_params(model_dir, which)
    recorded = run_lib.recorded_config(model_dir)
    data = _task(recorded, info, model_dir, resuming=True)
    sets = load_sets(info, data.eval_tasks, split, recorded.max_length, len(info.labels))
    mesh, rules = partitioning.make_mesh(mesh_config), mesh_config.rules
    partitioning.check_batch_divides(batch_size, mesh, rules)
    cfg = dataclasses.replace(recorded, eval_batch_size=batch_size)
    step_fns = build_finetune_step(info.model, len(info.labels), cfg, 1, mesh, rules)
    params = jax.device_put(params, step_fns.state_shardings["params"])
    with partitioning.activate(mesh, rules):
        scores = evaluate_lib.per_language(step_fns.predict, params, sets, batch_size,
                                           _place(step_fns.batch_shardings))
    return evaluate_lib.summarize(scores, sets, split, step, info.labels)

