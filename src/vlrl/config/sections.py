"""The sections of ``params.yaml`` as frozen dataclasses, each validating its own values.

Field names are the keys in params.yaml. ``validate(key)`` checks one section alone and raises
:class:`~vlrl.errors.ConfigError` naming ``key.field``, the value and what is allowed; the rules
that need several sections at once are in :mod:`vlrl.config.rules`. Both run when params.yaml is
loaded (:func:`vlrl.config.load_params`), before any data or model is touched.

Dataclasses rather than pydantic: the package's pure modules stay free of third-party imports
beyond PyYAML, and :mod:`vlrl.config.loading` builds them generically from type hints. The package
imports no other vlrl module but :mod:`vlrl.errors` and :mod:`vlrl.prompts` (template placeholders),
so that every stage's DVC deps stay small.

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from vlrl.config.checks import one_of, require
from vlrl.config.launch_params import LaunchParams
from vlrl.errors import ConfigError
from vlrl.prompts import template_problem

PROFILES = ("tiny", "full")

#: Learning-rate schedules that run without extra ``lr_scheduler_kwargs`` (transformers' SchedulerType;
#: the others need a minimum LR, an evaluation loop or phase lengths that params.yaml does not carry).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")
#: Optimizers (transformers' OptimizerNames) that need nothing but the model's parameters.
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop",
              "adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit",
              "lion_32bit")
#: Those of :data:`OPTIMIZERS` implemented by bitsandbytes (CUDA only).
BITSANDBYTES_OPTIMIZERS = ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit",
                           "lion_8bit", "lion_32bit")


@dataclass(frozen=True)
class PromptParams:
    template: str

    def validate(self, key: str) -> None:
        problem = template_problem(self.template)
        require(problem is None, f"{key}.template", self.template, problem or "")


@dataclass(frozen=True)
class RewardParams:
    """Reward = format_weight * format + correctness_weight * correctness (TRL ``reward_weights``)."""

    format_weight: float
    correctness_weight: float
    #: Tolerance of the numeric criterion (the 1.5 reward), see :func:`vlrl.answers.is_numeric_match`.
    numeric_rel_tol: float

    def validate(self, key: str) -> None:
        for name in ("format_weight", "correctness_weight", "numeric_rel_tol"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, f"{key}.{name}", value, "must be a finite number >= 0")
        require(self.format_weight > 0 or self.correctness_weight > 0, f"{key}.correctness_weight",
                self.correctness_weight, "at least one reward weight must be > 0; with all weights 0 every "
                "advantage is 0 and training learns nothing")


#: ``gspo.preset``: ``reference`` uses the gspo fields as written (the case study's notebook: on-policy,
#: dr_grpo); ``paper`` runs GSPO as the GSPO paper (Zheng et al., "Group Sequence Policy Optimization",
#: 2025) and TRL's ``examples/scripts/gspo_vlm.py`` do, off-policy (:data:`PAPER_GSPO`).
GSPO_PRESETS = ("reference", "paper")
#: The settings ``gspo.preset: paper`` puts in place of the gspo fields, from TRL's gspo_vlm.py:
#: ``--importance_sampling_level sequence --epsilon 3e-4 --epsilon_high 4e-4 --beta 0.0 --loss_type grpo``.
#: gspo_vlm.py leaves ``scale_rewards`` at TRL's default, ``group``.
PAPER_GSPO = {"importance_sampling_level": "sequence", "loss_type": "grpo", "beta": 0.0, "epsilon": 3e-4,
              "epsilon_high": 4e-4, "num_iterations": 1, "scale_rewards": "group"}
#: gspo_vlm.py generates once per ``--steps_per_generation 8`` micro-steps with
#: ``--gradient_accumulation_steps 2``: each generation feeds 4 optimizer steps. The paper preset keeps
#: that ratio for the profile's own gradient accumulation.
PAPER_STEPS_PER_GENERATION_FACTOR = 4


@dataclass(frozen=True)
class GSPOParams:
    importance_sampling_level: Literal["token", "sequence"]
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"]
    mask_truncated_completions: bool
    beta: float
    epsilon: float
    epsilon_high: float | None
    num_iterations: int
    steps_per_generation: int | None
    #: TRL's advantage scaling: ``group`` divides by the group's reward std (TRL's default), ``none`` does
    #: not. Explicit because Unsloth's GRPOConfig silently turns ``group`` into ``none`` for
    #: ``loss_type: dr_grpo`` (unsloth/models/rl.py: "The Dr GRPO paper recommends setting scale_rewards to
    #: False! Will override"), so the reference notebook ran with ``none`` while plain TRL would use
    #: ``group``: with the value explicit both backends train alike (tests/test_gpu_contract.py).
    scale_rewards: Literal["group", "batch", "none"] = "none"
    #: One switch for GSPO as in the paper (:data:`GSPO_PRESETS`); ``reference`` (the default) changes nothing.
    preset: Literal["reference", "paper"] = "reference"

    def validate(self, key: str) -> None:
        hints = typing.get_type_hints(GSPOParams)
        for name in ("importance_sampling_level", "loss_type", "scale_rewards", "preset"):  # code-built too
            allowed = typing.get_args(hints[name])
            require(getattr(self, name) in allowed, f"{key}.{name}", getattr(self, name), one_of(allowed))
        require(math.isfinite(self.beta) and self.beta >= 0, f"{key}.beta", self.beta, "must be >= 0")
        require(0 < self.epsilon < 1, f"{key}.epsilon", self.epsilon, "must be in (0, 1)")
        require(self.epsilon_high is None or self.epsilon <= self.epsilon_high < 1, f"{key}.epsilon_high",
                self.epsilon_high, "must be null or in [epsilon, 1)")
        require(self.num_iterations >= 1, f"{key}.num_iterations", self.num_iterations, "must be >= 1")
        require(self.steps_per_generation is None or self.steps_per_generation >= 1,
                f"{key}.steps_per_generation", self.steps_per_generation, "must be null or >= 1")

    def effective(self, gradient_accumulation_steps: int) -> GSPOParams:
        """The settings a run trains with: the fields as written (``reference``), or the paper's.

        >>> g = GSPOParams("sequence", "dr_grpo", False, 0.0, 0.2, None, 1, None, preset="paper")
        >>> e = g.effective(gradient_accumulation_steps=2)
        >>> e.loss_type, e.epsilon, e.epsilon_high, e.steps_per_generation
        ('grpo', 0.0003, 0.0004, 8)
        >>> GSPOParams("sequence", "dr_grpo", False, 0.0, 0.2, None, 1, None).effective(2).loss_type
        'dr_grpo'
        """
        if self.preset == "reference":
            return self
        return dataclasses.replace(self, **PAPER_GSPO, steps_per_generation=PAPER_STEPS_PER_GENERATION_FACTOR
                                   * gradient_accumulation_steps)

    def trl_fields(self, gradient_accumulation_steps: int) -> dict[str, Any]:
        """The effective settings under TRL's ``GRPOConfig`` names (every field but ``preset``)."""
        fields = dataclasses.asdict(self.effective(gradient_accumulation_steps))
        del fields["preset"]
        return fields


@dataclass(frozen=True)
class ReportParams:
    flip_examples: int = 5
    excerpt_chars: int = 160

    def validate(self, key: str) -> None:
        require(self.flip_examples >= 0, f"{key}.flip_examples", self.flip_examples, "must be >= 0")
        require(self.excerpt_chars >= 20, f"{key}.excerpt_chars", self.excerpt_chars, "must be >= 20")


@dataclass(frozen=True)
class HubSource:
    path: str
    split: str
    revision: str


@dataclass(frozen=True)
class LocalSource:
    """A local copy with the hub's columns (save_to_disk folder, parquet file or folder of them)."""

    path: str | None = None
    #: Split taken from a DatasetDict folder, or from a hub snapshot's ``<split>-*.parquet`` files.
    split: str = "testmini"


@dataclass(frozen=True)
class OfflineSource:
    n_items: int = 480
    canvas_px: int = 96

    def validate(self, key: str) -> None:
        require(self.n_items >= 10, f"{key}.n_items", self.n_items, "must be >= 10")
        require(self.canvas_px >= 32, f"{key}.canvas_px", self.canvas_px, "must be >= 32")


@dataclass(frozen=True)
class DataParams:
    source: Literal["offline", "hub", "local"]
    image_size: int
    eval_fraction: float
    min_image_side: int = 8
    offline: OfflineSource | None = None
    hub: HubSource | None = None
    local: LocalSource | None = None

    def validate(self, key: str) -> None:
        require(self.image_size >= 28, f"{key}.image_size", self.image_size,
                "must be >= 28 (Qwen3-VL's smallest input side)")
        require(0 < self.eval_fraction < 1, f"{key}.eval_fraction", self.eval_fraction,
                "must be strictly between 0 and 1")
        require(self.min_image_side >= 1, f"{key}.min_image_side", self.min_image_side, "must be >= 1")
        section = {"offline": self.offline, "hub": self.hub, "local": self.local}[self.source]
        require(section is not None, f"{key}.{self.source}", None,
                f"source is {self.source!r}, so the section {key}.{self.source} is required")
        if self.source == "local":
            require(bool(self.local and self.local.path), f"{key}.local.path", None,
                    "source is 'local': give the path of a save_to_disk folder or parquet files")


@dataclass(frozen=True)
class TinyModelBuild:
    """Architecture and warm start of the tiny offline Qwen3-VL (tiny profile only)."""

    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate_size: int = 128
    vision_hidden_size: int = 32
    vision_layers: int = 1
    vision_heads: int = 2
    patch_size: int = 8
    spatial_merge_size: int = 2
    vocab_size: int = 600
    #: Standard deviation of the random initial weights (transformers' ``initializer_range``, 0.02 in
    #: Qwen3-VL). At these widths 0.02 leaves the image signal so weak that the warm start first learns
    #: the answers' marginal and reads the picture only after a long plateau.
    initializer_range: float = 0.02
    warm_start_steps: int = 120
    warm_start_learning_rate: float = 3e-3
    warm_start_batch_size: int = 16
    #: Share of train items whose question kind is "well-formatted-leaning" in the warm start.
    well_formatted_fraction: float = 0.5
    #: Within each question kind, the share of targets in the kind's minority style, so that sampled
    #: completions (temperature 1) vary in format and GSPO has reward variance to learn from.
    minority_style_fraction: float = 0.2
    #: Share of warm-start targets whose answer is the kind's most common one instead of the item's own:
    #: the model learns to read the picture but hedges towards that guess, which leaves GSPO's
    #: correctness reward something to remove (vlrl.tiny_model). 0 = every target is right.
    guess_fraction: float = 0.0
    #: Largest image (pixels) the image processor keeps; bigger images are downscaled (Qwen smart_resize).
    image_max_pixels: int = 4096

    def validate(self, key: str) -> None:
        for name in ("text_hidden_size", "text_layers", "text_heads", "text_kv_heads", "text_intermediate_size",
                     "vision_hidden_size", "vision_layers", "vision_heads", "patch_size", "spatial_merge_size"):
            require(getattr(self, name) >= 1, f"{key}.{name}", getattr(self, name), "must be an integer >= 1")
        require(self.text_hidden_size % self.text_heads == 0, f"{key}.text_hidden_size", self.text_hidden_size,
                f"must be divisible by text_heads ({self.text_heads})")
        require((self.text_hidden_size // self.text_heads) % 2 == 0, f"{key}.text_heads", self.text_heads,
                "text_hidden_size / text_heads must be even (rotary embeddings rotate pairs of dimensions)")
        require(self.text_heads % self.text_kv_heads == 0, f"{key}.text_kv_heads", self.text_kv_heads,
                f"must divide text_heads ({self.text_heads})")
        require(self.vision_hidden_size % self.vision_heads == 0, f"{key}.vision_hidden_size",
                self.vision_hidden_size, f"must be divisible by vision_heads ({self.vision_heads})")
        require(0 <= self.well_formatted_fraction <= 1, f"{key}.well_formatted_fraction",
                self.well_formatted_fraction, "must be in [0, 1]")
        require(math.isfinite(self.initializer_range) and 0 < self.initializer_range <= 1,
                f"{key}.initializer_range", self.initializer_range, "must be in (0, 1]")
        require(self.warm_start_steps >= 0, f"{key}.warm_start_steps", self.warm_start_steps, "must be >= 0")
        require(0 <= self.minority_style_fraction < 0.5, f"{key}.minority_style_fraction",
                self.minority_style_fraction, "must be in [0, 0.5) (the minority of each kind)")
        require(0 <= self.guess_fraction < 1, f"{key}.guess_fraction", self.guess_fraction,
                "must be in [0, 1) (at 1 no target shows the right answer)")
        require(self.warm_start_batch_size >= 1, f"{key}.warm_start_batch_size", self.warm_start_batch_size,
                "must be >= 1")
        require(math.isfinite(self.warm_start_learning_rate) and self.warm_start_learning_rate > 0,
                f"{key}.warm_start_learning_rate", self.warm_start_learning_rate, "must be > 0")
        factor = self.patch_size * self.spatial_merge_size
        require(self.image_max_pixels >= factor * factor, f"{key}.image_max_pixels", self.image_max_pixels,
                f"must be >= (patch_size x spatial_merge_size)^2 = {factor * factor}")
        require(self.vocab_size >= 300, f"{key}.vocab_size", self.vocab_size,
                "must be >= 300 (256 byte tokens + Qwen's special tokens + the tags + merges)")


@dataclass(frozen=True)
class ModelParams:
    backend: Literal["transformers", "unsloth"]
    id: str
    revision: str | None
    load_in_4bit: bool
    max_seq_length: int
    device: Literal["cpu", "cuda", "auto"] = "auto"
    build: TinyModelBuild | None = None

    def validate(self, key: str) -> None:
        require(not (self.backend == "unsloth" and self.device == "cpu"), f"{key}.backend", self.backend,
                "the unsloth backend needs CUDA; use backend: transformers on CPU")
        require(not (self.load_in_4bit and self.backend != "unsloth"), f"{key}.load_in_4bit",
                self.load_in_4bit, "4-bit loading is only wired for backend: unsloth")
        require(self.max_seq_length >= 64, f"{key}.max_seq_length", self.max_seq_length, "must be >= 64")

    @property
    def is_built_offline(self) -> bool:
        return self.build is not None


@dataclass(frozen=True)
class LoraParams:
    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]

    def validate(self, key: str) -> None:
        require(self.r >= 1, f"{key}.r", self.r, "must be >= 1")
        require(self.alpha >= 1, f"{key}.alpha", self.alpha, "must be >= 1")
        require(0 <= self.dropout < 1, f"{key}.dropout", self.dropout, "must be in [0, 1)")
        require(len(self.target_modules) > 0, f"{key}.target_modules", self.target_modules,
                "must name at least one module")
        require(len(set(self.target_modules)) == len(self.target_modules), f"{key}.target_modules",
                self.target_modules, "must not repeat a module")


@dataclass(frozen=True)
class GenerationParams:
    batch_size: int
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    #: torch threads while generating on CPU (null = torch's default). Does not change greedy outputs.
    cpu_threads: int | None = None

    def validate(self, key: str) -> None:
        require(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "must be an integer >= 1")
        require(self.cpu_threads is None or self.cpu_threads >= 1, f"{key}.cpu_threads", self.cpu_threads,
                "must be null (torch's default) or an integer >= 1")
        require(self.max_new_tokens >= 1, f"{key}.max_new_tokens", self.max_new_tokens,
                "must be an integer >= 1")
        require(math.isfinite(self.temperature) and self.temperature >= 0, f"{key}.temperature",
                self.temperature, "must be >= 0 (0 = greedy)")
        require(0 < self.top_p <= 1, f"{key}.top_p", self.top_p, "must be in (0, 1]")
        require(not (self.greedy and self.top_p < 1.0), f"{key}.top_p", self.top_p,
                "has no effect with temperature = 0 (greedy); set top_p: 1.0 or a temperature > 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class TrainParams:
    learning_rate: float
    adam_beta1: float
    adam_beta2: float
    weight_decay: float
    warmup_ratio: float
    lr_scheduler_type: str
    optim: str
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    num_generations: int
    max_completion_length: int
    max_prompt_length: int
    num_train_epochs: float
    max_steps: int
    max_grad_norm: float
    temperature: float = 1.0
    save_steps: int = 10
    logging_steps: int = 1
    #: torch CPU threads while training on CPU (null = torch's default). Fixing it also fixes the float
    #: reduction order, so CPU results do not depend on the machine's core count.
    cpu_threads: int | None = None

    def validate(self, key: str) -> None:
        require(math.isfinite(self.learning_rate) and self.learning_rate > 0, f"{key}.learning_rate",
                self.learning_rate, "must be > 0")
        for name in ("adam_beta1", "adam_beta2"):
            require(0 <= getattr(self, name) < 1, f"{key}.{name}", getattr(self, name), "must be in [0, 1)")
        require(math.isfinite(self.weight_decay) and self.weight_decay >= 0, f"{key}.weight_decay",
                self.weight_decay, "must be >= 0")
        require(self.lr_scheduler_type in LR_SCHEDULERS, f"{key}.lr_scheduler_type", self.lr_scheduler_type,
                one_of(LR_SCHEDULERS))
        require(self.optim in OPTIMIZERS, f"{key}.optim", self.optim, one_of(OPTIMIZERS))
        require(self.num_generations >= 2, f"{key}.num_generations", self.num_generations,
                "must be an integer >= 2 (GRPO/GSPO compare completions within a group)")
        require(self.per_device_train_batch_size >= 1, f"{key}.per_device_train_batch_size",
                self.per_device_train_batch_size, "must be >= 1")
        require(self.gradient_accumulation_steps >= 1, f"{key}.gradient_accumulation_steps",
                self.gradient_accumulation_steps, "must be >= 1")
        require(0 <= self.warmup_ratio < 1, f"{key}.warmup_ratio", self.warmup_ratio, "must be in [0, 1)")
        require(self.max_completion_length >= 1, f"{key}.max_completion_length",
                self.max_completion_length, "must be >= 1")
        require(self.max_prompt_length >= 1, f"{key}.max_prompt_length", self.max_prompt_length,
                "must be >= 1")
        require(self.max_steps == -1 or self.max_steps >= 1, f"{key}.max_steps", self.max_steps,
                "must be -1 (use num_train_epochs) or >= 1")
        require(math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0, f"{key}.num_train_epochs",
                self.num_train_epochs, "must be > 0")
        require(math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0, f"{key}.max_grad_norm",
                self.max_grad_norm, "must be > 0")
        require(math.isfinite(self.temperature) and self.temperature > 0, f"{key}.temperature",
                self.temperature, "must be > 0 (RL needs sampled completions)")
        require(self.save_steps >= 1, f"{key}.save_steps", self.save_steps, "must be >= 1")
        require(self.max_steps == -1 or self.save_steps <= self.max_steps, f"{key}.save_steps", self.save_steps,
                f"must be <= max_steps ({self.max_steps}), otherwise no checkpoint is written and an "
                "interrupted run cannot resume")
        require(self.logging_steps >= 1, f"{key}.logging_steps", self.logging_steps, "must be >= 1")
        require(self.cpu_threads is None or self.cpu_threads >= 1, f"{key}.cpu_threads", self.cpu_threads,
                "must be null (torch's default) or >= 1")


@dataclass(frozen=True)
class ProfileParams:
    data: DataParams
    model: ModelParams
    lora: LoraParams
    generation: GenerationParams
    train: TrainParams
    launch: LaunchParams = field(default_factory=LaunchParams)


@dataclass(frozen=True)
class Params:
    """All of params.yaml, validated."""

    seed: int
    prompt: PromptParams
    rewards: RewardParams
    gspo: GSPOParams
    report: ReportParams
    profiles: dict[str, ProfileParams] = field(default_factory=dict)

    def profile(self, name: str) -> ProfileParams:
        if name not in self.profiles:
            raise ConfigError(f"params.yaml: profiles.{name}: no such profile; "
                              f"allowed: {', '.join(sorted(self.profiles)) or '(none defined)'}")
        return self.profiles[name]
