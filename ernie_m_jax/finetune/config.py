"""What a fine-tuning run is made of: the task it learns (`ClassificationData`, made by a task
setup function from `tasks/`) and how (`FinetuneConfig`, bound by gin)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Tuple

import gin


@dataclasses.dataclass(frozen=True)
class ClassificationData:
    """Registered seqio tasks of one classification dataset, per language.

    Every task emits `text` ids (and `text_pair` ids for pair tasks) and an int `label` in
    `[0, len(labels))`. The language of a task is its key here: the model's language id is
    looked up in the pretrained run's own table, never in this process's registration order.
    """

    name: str
    labels: Tuple[str, ...]
    pair: bool
    train_tasks: Mapping[str, str]  # language -> task whose `train` split is trained on
    eval_tasks: Mapping[str, str]  # language -> task with `validation` and `test` splits
    # Languages whose average validation accuracy picks the best checkpoint.
    validation_languages: Tuple[str, ...]

    def __post_init__(self):
        if len(self.labels) < 2:
            raise ValueError(f"{self.name}: a classification task needs at least two labels, "
                             f"got {self.labels}")
        if not self.train_tasks or not self.eval_tasks:
            raise ValueError(f"{self.name}: no train or evaluation tasks")
        unknown = sorted(set(self.validation_languages) - set(self.eval_tasks))
        if unknown or not self.validation_languages:
            raise ValueError(f"{self.name}: validation languages {unknown or '()'} have no "
                             f"evaluation task; the tasks cover {sorted(self.eval_tasks)}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Sentence(-pair) classification on the pooled first token (pooler, dropout, linear, as
    `ErnieMForSequenceClassification`), AdamW with layer-wise learning-rate decay.

    The defaults are the released ERNIE-M recipe's (layer decay 0.8, warmup 10%)."""

    # (vocabulary_path, tokens) -> ClassificationData: registers the tasks with the
    # pretrained run's own vocabulary, e.g. `@tasks.classification.register_packages`.
    task_setup: Optional[Callable] = None
    # The pretraining run (or `import-hf` directory) whose latest params start the encoder.
    init_from: Optional[str] = None
    num_epochs: float = 3.0
    # Overrides num_epochs when set.
    num_steps: Optional[int] = None
    batch_size: int = 32
    max_length: int = 128
    learning_rate: float = 5e-5
    layerwise_decay: float = 0.8
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    clip_norm: Optional[float] = 1.0
    # Dropout of the encoder while fine-tuning (None: the pretrained config's) and before the
    # classifier (None: the encoder's hidden dropout, as Hugging Face does).
    dropout_rate: Optional[float] = None
    classifier_dropout: Optional[float] = None
    seed: int = 0
    # Evaluate on the validation languages every this many steps (0: once per epoch), keep
    # the best params, and stop after `patience` evaluations without improvement (0: never).
    eval_every: int = 0
    patience: int = 0
    eval_batch_size: int = 64
    # Use at most this many training examples (None: all), e.g. for a quick check.
    max_train_examples: Optional[int] = None
    log_every: int = 20
    keep_checkpoints: int = 1
    progress_bar: bool = True

    def __post_init__(self):
        for name in ("batch_size", "max_length", "eval_batch_size", "log_every",
                     "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ValueError(f"FinetuneConfig.{name} must be positive, "
                                 f"got {getattr(self, name)}")
        if self.num_epochs <= 0 and self.num_steps is None:
            raise ValueError(f"FinetuneConfig.num_epochs must be positive, got {self.num_epochs}")
        if self.num_steps is not None and self.num_steps <= 0:
            raise ValueError(f"FinetuneConfig.num_steps must be positive, got {self.num_steps}")
        if self.learning_rate <= 0:
            raise ValueError(f"FinetuneConfig.learning_rate must be positive, "
                             f"got {self.learning_rate}")
        if not 0 < self.layerwise_decay <= 1:
            raise ValueError(f"FinetuneConfig.layerwise_decay must be in (0, 1], "
                             f"got {self.layerwise_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"FinetuneConfig.warmup_ratio must be in [0, 1), "
                             f"got {self.warmup_ratio}")
        for name in ("dropout_rate", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"FinetuneConfig.{name} must be in [0, 1), got {value}")
        if self.eval_every < 0 or self.patience < 0:
            raise ValueError("FinetuneConfig.eval_every and patience must be >= 0")
        if self.max_train_examples is not None and self.max_train_examples <= 0:
            raise ValueError(f"FinetuneConfig.max_train_examples must be positive, "
                             f"got {self.max_train_examples}")
