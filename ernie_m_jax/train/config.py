"""What a training run is made of: `TrainConfig` and the `Experiment` that bundles every
config, resolved from gin once at the edge and passed down as plain frozen data."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Tuple

import gin

from ernie_m_jax import partitioning, profiling
from ernie_m_jax.configs import BTMLMConfig, MaskingConfig, ModelConfig, SpecialTokens
from ernie_m_jax.data import pipeline
from ernie_m_jax.model import GATHER_CHOICES
from ernie_m_jax.objectives import OBJECTIVES
from ernie_m_jax.optimizer import OptimizerConfig


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    num_steps: int = 1000
    # Objectives with a non-zero weight run every step (stage 1: mmlm/tlm/camlm; stage 2 adds
    # btmlm). Their batch sizes are DataConfig.batch_sizes.
    objective_weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"mmlm": 1.0, "tlm": 1.0, "camlm": 1.0})
    # ERNIE-M's stages inside one run: {objective: steps trained before it joins}, e.g.
    # {'btmlm': 600} trains MMLM+TLM+CAMLM for 600 steps, then all four. Each stage compiles
    # its own step; params, optimizer state and the learning-rate schedule run on across the
    # boundary (unlike stage 2 as a new run with `init_from`, which restarts the optimizer).
    objective_start_steps: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # Microbatches per step: their summed losses are divided by the whole batch's number of
    # predictions, so the update is the whole batch's.
    grad_accum_steps: int = 1
    # Weights gathered whole (over FSDP's shards) once a step, in the compute dtype, for
    # every objective and layer, their gradients reduce-scattered once:
    # "word_embeddings" (the tied table) or "all" (ZeRO-2 rather than ZeRO-3: far fewer
    # collectives on big slices for a compute-dtype copy of the model per chip; README,
    # "Compile for a pod").
    gather_weights_once: str = "word_embeddings"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    # 0: evaluate only at the end.
    eval_every: int = 0
    eval_split: str = "validation"
    # Languages whose `<collection>.mono.<lang>` task is scored; () = every monolingual task
    # of DataConfig.mono_mixture.
    eval_languages: Tuple[str, ...] = ()
    eval_examples_per_language: int = 64
    eval_batch_size: int = 32
    # Another run's checkpoint directory to take the params from (stage 2 from stage 1).
    init_from: Optional[str] = None
    # Called once before the data is read, e.g. `@register_demo` (builds and registers tasks).
    data_setup: Optional[Callable] = None
    progress_bar: bool = True
    # A step whose loss or gradient norm is not finite leaves params and optimizer state
    # untouched and is counted. "skip" goes on; "stop" raises after that many in a row.
    nonfinite_policy: str = "skip"
    max_consecutive_nonfinite: int = 10
    # Fault injection for testing the policy: steps whose loss is made NaN.
    inject_nonfinite_steps: Tuple[int, ...] = ()
    # (first, last): a jax.profiler trace of those steps (counted from 1) in the run's folder,
    # for TensorBoard's profile plugin; () = none. Skip the first step: it compiles.
    profile_steps: Tuple[int, ...] = ()
    # Train steps run by one call of the compiled step (a `lax.scan` over that many batches;
    # Keras' `steps_per_execution`). On CPU each call maps the step's temporary buffer afresh
    # (hundreds of MiB, faulted in page by page), so several steps a call pay for it once;
    # with glibc's huge pages (every command's default) that saved no measurable time
    # (benchmarks/README.md, #41). Logs, evaluations, checkpoints, stage boundaries and the
    # profile window fall between calls: their periods must be multiples of it. A call that
    # must stop short (`stop_after`, the last step, a resume) compiles its own length once.
    steps_per_call: int = 1

    def __post_init__(self):
        unknown = set(self.objective_weights) - set(OBJECTIVES)
        if unknown:
            raise ValueError(f"TrainConfig.objective_weights: unknown objectives "
                             f"{sorted(unknown)}; choose from {OBJECTIVES}")
        if self.gather_weights_once not in GATHER_CHOICES:
            raise ValueError(f"TrainConfig.gather_weights_once must be one of {GATHER_CHOICES}, "
                             f"got {self.gather_weights_once!r}")
        if self.nonfinite_policy not in ("skip", "stop"):
            raise ValueError(f"TrainConfig.nonfinite_policy must be 'skip' or 'stop', "
                             f"got {self.nonfinite_policy!r}")
        if not any(self.objective_weights.values()):
            raise ValueError("TrainConfig.objective_weights enables no objective")
        for name in ("num_steps", "grad_accum_steps", "log_every", "checkpoint_every",
                     "keep_checkpoints", "eval_batch_size", "steps_per_call"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        not_enabled = sorted(set(self.objective_start_steps) - set(self.enabled))
        if not_enabled:
            raise ValueError(f"TrainConfig.objective_start_steps names {not_enabled}, which "
                             f"objective_weights does not enable ({list(self.enabled)}); drop "
                             f"them from it (--gin.TrainConfig.objective_start_steps={{}} for "
                             f"no stages)")
        late = {o: s for o, s in self.objective_start_steps.items()
                if not 0 <= s < self.num_steps}
        if late:
            raise ValueError(f"TrainConfig.objective_start_steps {late}: an objective must "
                             f"join at a step in [0, num_steps={self.num_steps}); lower its "
                             f"start along with num_steps")
        profiling.check_window(tuple(self.profile_steps), self.num_steps)
        self._check_calls_end_at_events()
        if not self.active(0):
            raise ValueError(f"TrainConfig.objective_start_steps "
                             f"{dict(self.objective_start_steps)} leaves the first step "
                             f"with no objective")

    def _check_calls_end_at_events(self) -> None:
        """Every periodic event falls between two calls of `steps_per_call` steps."""
        k = self.steps_per_call
        if k == 1:
            return
        events = {"log_every": self.log_every, "checkpoint_every": self.checkpoint_every,
                  "eval_every": self.eval_every}
        events.update({f"objective_start_steps[{o!r}]": s
                       for o, s in self.objective_start_steps.items()})
        if self.profile_steps:
            events["profile_steps' first step - 1"] = self.profile_steps[0] - 1
            events["profile_steps' last step"] = self.profile_steps[1]
        off = {name: step for name, step in events.items() if step % k}
        if off:
            one = len(off) == 1
            named = ", ".join(f"{n}={s}" for n, s in off.items())
            raise ValueError(
                f"TrainConfig.steps_per_call={k}: {named} "
                f"{'is not a multiple' if one else 'are not multiples'} of it, so a call "
                f"would have to stop inside its steps; make "
                f"{'it a multiple' if one else 'them multiples'} of {k} or choose a "
                f"steps_per_call that divides {'it' if one else 'them'}")

    @property
    def enabled(self) -> Tuple[str, ...]:
        return tuple(o for o in OBJECTIVES if self.objective_weights.get(o, 0))

    @property
    def weights(self) -> Mapping[str, float]:
        """The enabled objectives' weights."""
        return {o: self.objective_weights[o] for o in self.enabled}

    def active(self, steps_done: int) -> Tuple[str, ...]:
        """The objectives of the step that follows `steps_done` finished steps."""
        return tuple(o for o in self.enabled
                     if self.objective_start_steps.get(o, 0) <= steps_done)

    def stage_boundaries(self) -> Tuple[int, ...]:
        """Steps after which another objective joins (where a stage ends), in order."""
        return tuple(sorted({s for s in self.objective_start_steps.values() if s > 0}))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run is made of, resolved from gin once."""

    train: TrainConfig
    model: ModelConfig
    data: pipeline.DataConfig
    mesh: partitioning.MeshConfig
    optimizer: OptimizerConfig
    masking: MaskingConfig
    btmlm: BTMLMConfig
    tokens: SpecialTokens

    @classmethod
    def from_gin(cls) -> "Experiment":
        return cls(TrainConfig(), ModelConfig(), pipeline.DataConfig(), partitioning.MeshConfig(),
                   OptimizerConfig(), MaskingConfig(), BTMLMConfig(), SpecialTokens())

    def stage(self, steps_done: int) -> "Experiment":
        """The run as it trains after `steps_done` steps: only the objectives that have
        joined (itself when every objective has)."""
        active = self.train.active(steps_done)
        if active == self.train.enabled:
            return self
        train = dataclasses.replace(
            self.train, objective_start_steps={},
            objective_weights={o: self.train.objective_weights[o] for o in active})
        return dataclasses.replace(self, train=train)

    def batch_shapes(self) -> Mapping[str, Tuple[int, int]]:
        """objective -> (global rows, length) of its batch."""
        sizes = self.data.enabled(self.train.enabled)
        return {o: (sizes[o], self.data.mono_length if o in pipeline.MONO_OBJECTIVES
                    else self.data.pair_length) for o in self.train.enabled}
