"""Where training numbers go: TensorBoard events and a JSON-lines file in the model dir (on
the first process only), plus the model-FLOPs estimate behind tokens/s and MFU."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
from etils import epath

from ernie_m_jax.configs import BTMLMConfig, MaskingConfig, ModelConfig

METRICS_FILE = "metrics.jsonl"
DAMAGED_SUFFIX = ".damaged"  # where a resume moves lines it cannot read

# Dense bf16 peak FLOP/s per device, from the vendors' spec sheets. Unknown kinds (CPUs)
# report no MFU rather than a made-up one.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA A100": 312e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
    "NVIDIA B200": 2250e12,
}


def peak_flops(device: jax.Device) -> Optional[float]:
    kind = device.device_kind
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):
        if kind.startswith(name):
            return PEAK_FLOPS[name]
    return None


def forward_flops(config: ModelConfig, batch: int, length: int, predictions: int) -> float:
    """Matmul FLOPs of one forward pass: the layers (weights and attention scores) plus the
    MLM head at `predictions` positions per row (2 FLOPs per multiply-add)."""
    d, m = config.hidden_size, config.mlp_dim
    per_token_layer = 2 * (4 * d * d + 2 * d * m) + 2 * 2 * length * d
    head = 2 * (d * d + d * config.vocab_size)
    return batch * (config.num_layers * length * per_token_layer + predictions * head)


def step_flops(config: ModelConfig, shapes: Mapping[str, Sequence[int]],
               masking: MaskingConfig, btmlm: Optional[BTMLMConfig] = None) -> float:
    """Model FLOPs of one train step (backward = 2x forward); `shapes` = {objective: (B, L)}.
    CAMLM runs each pair twice; BTMLM adds a gradient-free generation pass over source +
    placeholders and trains on the same length."""
    total = 0.0
    for name, (batch, length) in shapes.items():
        if name == "camlm":
            batch *= 2
        if name == "btmlm":
            slots = (btmlm.max_placeholders if btmlm and btmlm.max_placeholders else length)
            total += forward_flops(config, batch, length + slots, slots)
            length += slots
        total += 3 * forward_flops(config, batch, length, masking.num_slots(length))
    return total


class MetricsWriter:
    """One call per logging step writes TensorBoard scalars and a JSON line.

    A run resumed at `start_step` (perhaps an older checkpoint than the last one logged)
    first drops what was logged past that step: lines of `metrics.jsonl`, and in TensorBoard
    through a `SessionLog.START` event, which makes TensorBoard purge later steps (its
    `purge_step`); so no step is shown twice.
    """

    def __init__(self, model_dir: os.PathLike, start_step: int = 0):
        import tensorflow as tf  # tf.summary writes TensorBoard's event files

        self._tf = tf
        primary = jax.process_index() == 0
        self._path = epath.Path(os.fspath(model_dir)) / METRICS_FILE
        # Object stores (gs://) cannot append: there the file is rewritten at each write.
        self._rewrite = "://" in os.fspath(model_dir)
        kept = self._kept_lines(start_step) if primary else []
        self._lines = kept if self._rewrite else []  # appended to, locally
        if primary:
            _write_session_start(tf, model_dir, start_step + 1)
        self._writer = tf.summary.create_file_writer(os.fspath(model_dir)) if primary else None

    def _kept_lines(self, start_step: int) -> list:
        """The lines logged up to `start_step`; the file is rewritten if any lay past it.

        Lines a crash or a full disk damaged (cut mid-record, undecodable) are moved to
        `metrics.jsonl.damaged`, named in one warning: the run resumes with the good ones."""
        if not self._path.exists():
            return []
        data = self._path.read_bytes()
        records, damaged = parse_metrics_lines(data)
        kept = [json.dumps(r, sort_keys=True) + "\n" for _, r in records
                if r.get("step", 0) <= start_step]
        if damaged:
            aside = self._path.parent / (METRICS_FILE + DAMAGED_SUFFIX)
            previous = aside.read_bytes() if aside.exists() else b""
            aside.write_bytes(previous + b"".join(line + b"\n" for _, line in damaged))
            logging.warning("%s: %d damaged line%s (line %s) moved to %s; the %d good lines "
                            "are kept", self._path, len(damaged), "s" * (len(damaged) > 1),
                            ", ".join(str(n) for n, _ in damaged[:5])
                            + (", ..." if len(damaged) > 5 else ""), aside, len(records))
        unterminated = bool(data) and not data.endswith(b"\n")  # the next line would join it
        if len(kept) < len(records) or damaged or unterminated:
            tmp = self._path.parent / (METRICS_FILE + ".tmp")
            tmp.write_text("".join(kept))
            tmp.replace(self._path)
        return kept

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        clean = {k: float(v) for k, v in scalars.items()
                 if v is not None and math.isfinite(float(v))}
        if self._writer is None:
            return
        with self._writer.as_default(step=step):
            for name, value in clean.items():
                self._tf.summary.scalar(name, value)
        line = json.dumps({"step": step, **clean}, sort_keys=True) + "\n"
        if self._rewrite:
            self._lines.append(line)
            self._path.write_text("".join(self._lines))
        else:
            with open(self._path, "a") as f:
                f.write(line)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()



def _write_session_start(tf, model_dir: os.PathLike, step: int) -> None:
    """An event file holding `SessionLog.START` at `step`: TensorBoard ignores the first
    START of a run and, at each later one, purges every event at or past its step. The name
    sorts after the run's earlier files and before the writer's own (same second, '!' < pid)."""
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.!start_{step}"
    event = tf.compat.v1.Event(wall_time=time.time(), step=step,
                               session_log=tf.compat.v1.SessionLog(
                                   status=tf.compat.v1.SessionLog.START))
    version = tf.compat.v1.Event(wall_time=time.time(), file_version="brain.Event:2")
    with tf.io.TFRecordWriter(os.path.join(os.fspath(model_dir), name)) as records:
        records.write(version.SerializeToString())
        records.write(event.SerializeToString())


def parse_metrics_lines(data: bytes) -> Tuple[List[Tuple[int, dict]], List[Tuple[int, bytes]]]:
    """([(line number, record)], [(line number, damaged bytes)]) of a metrics.jsonl: a line
    is damaged when it is not UTF-8, not JSON, or not a JSON object. Blank lines are neither."""
    records, damaged = [], []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
            record = None
        if isinstance(record, dict):
            records.append((number, record))
        else:
            damaged.append((number, line))
    return records, damaged


def read_metrics(model_dir: os.PathLike) -> list:
    """The records of a run's metrics.jsonl; damaged lines are an error naming the file
    (a resumed run sets them aside first)."""
    path = epath.Path(os.fspath(model_dir)) / METRICS_FILE
    records, damaged = parse_metrics_lines(path.read_bytes())
    if damaged:
        raise ValueError(f"{path}: line {damaged[0][0]} is damaged (not a JSON object in "
                         "UTF-8); resuming the run sets damaged lines aside")
    return [record for _, record in records]


def as_floats(tree: Mapping[str, object]) -> Dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in tree.items()}


class IntervalMetrics:
    """The train step's metrics between two logs: summed on device (no host sync per step),
    reported as means over the interval's finite steps (a skipped step reports zeros and
    `finite = 0`), with throughput and, where the peak is known, MFU."""

    def __init__(self, tokens_per_step: int, flops_per_step: float,
                 peak_flops_total: Optional[float], start_step: int):
        self._tokens, self._flops, self._peak = tokens_per_step, flops_per_step, peak_flops_total
        self._sums = None
        self._since_step, self._since_time = start_step, time.time()

    def add(self, step_metrics: Mapping[str, jax.Array]) -> None:
        self._sums = dict(step_metrics) if self._sums is None else jax.tree.map(
            lambda a, b: a + b, self._sums, dict(step_metrics))

    def report(self, step: int) -> Dict[str, float]:
        """Means and rates since the last report (or the start), then start a new interval.
        The clock is read after the sums reach the host, that is after the interval's last
        step has run: steps still queued by asynchronous dispatch would otherwise fall into no
        interval and inflate the rates."""
        sums = as_floats(self._sums or {"finite": 0.0})
        steps, elapsed = step - self._since_step, max(time.time() - self._since_time, 1e-9)
        finite = sums.pop("finite")
        means = {k: v / finite for k, v in sums.items()} if finite else {}
        means["skipped_steps_in_interval"] = steps - finite
        means["tokens_per_second"] = self._tokens * steps / elapsed
        means["steps_per_second"] = steps / elapsed
        if "text_tokens" in means:  # absent when every step was skipped
            means["text_tokens_per_second"] = means["text_tokens"] * steps / elapsed
            means["padding_fraction"] = 1 - means["text_tokens"] / self._tokens
        if self._peak:
            means["mfu"] = self._flops * steps / elapsed / self._peak
        self._sums, self._since_step, self._since_time = None, step, time.time()
        return means
