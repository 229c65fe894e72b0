"""The only reader of ``params.yaml``: typed, validated configuration.

Every stage asks for its own view with :func:`load_stage_params`, which returns only the sections
the stage declares in ``STAGE_PARAMS`` (and so in ``dvc.yaml``); reading an undeclared section
raises, so a stage cannot silently depend on a parameter that DVC does not track.

Errors name the key, the value seen and what is allowed, e.g.::

    params.yaml: profiles.tiny.train.num_generations = 1: must be an integer >= 2

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PROFILES = ("tiny", "full")
DEFAULT_PARAMS_PATH = Path("params.yaml")


class ConfigError(ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


# --------------------------------------------------------------------------------------------
# Sections. Field names are the keys in params.yaml; validation lives next to the data.
# --------------------------------------------------------------------------------------------


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"params.yaml: {key} = {value!r}: {allowed}")


@dataclass(frozen=True)
class PromptParams:
    template: str

    def validate(self, key: str) -> None:
        for placeholder in ("{question}", "{solution_start}", "{solution_end}"):
            _require(placeholder in self.template, f"{key}.template", self.template,
                     f"must contain the placeholder {placeholder}")


@dataclass(frozen=True)
class RewardParams:
    format_weight: float
    correctness_weight: float
    numeric_rel_tol: float = 1e-9

    def validate(self, key: str) -> None:
        for name in ("format_weight", "correctness_weight", "numeric_rel_tol"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, f"{key}.{name}", value,
                     "must be a finite number >= 0")

    @property
    def weights(self) -> dict[str, float]:
        """Reward name -> weight, in the order the reward functions are registered."""
        return {"format": self.format_weight, "correctness": self.correctness_weight}


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

    def validate(self, key: str) -> None:
        # The Literal types are checked when params.yaml is parsed; re-check here for objects built in code.
        hints = typing.get_type_hints(GSPOParams)
        for name in ("importance_sampling_level", "loss_type"):
            allowed = typing.get_args(hints[name])
            _require(getattr(self, name) in allowed, f"{key}.{name}", getattr(self, name),
                     f"allowed: {', '.join(map(repr, allowed))}")
        _require(self.beta >= 0, f"{key}.beta", self.beta, "must be >= 0")
        _require(0 < self.epsilon < 1, f"{key}.epsilon", self.epsilon, "must be in (0, 1)")
        _require(self.epsilon_high is None or self.epsilon_high >= self.epsilon, f"{key}.epsilon_high",
                 self.epsilon_high, "must be null or >= epsilon")
        _require(self.num_iterations >= 1, f"{key}.num_iterations", self.num_iterations, "must be >= 1")
        _require(self.steps_per_generation is None or self.steps_per_generation >= 1,
                 f"{key}.steps_per_generation", self.steps_per_generation, "must be null or >= 1")


@dataclass(frozen=True)
class ReportParams:
    flip_examples: int = 5
    excerpt_chars: int = 160

    def validate(self, key: str) -> None:
        _require(self.flip_examples >= 0, f"{key}.flip_examples", self.flip_examples, "must be >= 0")
        _require(self.excerpt_chars >= 20, f"{key}.excerpt_chars", self.excerpt_chars, "must be >= 20")


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
        _require(self.n_items >= 10, f"{key}.n_items", self.n_items, "must be >= 10")
        _require(self.canvas_px >= 32, f"{key}.canvas_px", self.canvas_px, "must be >= 32")


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
        _require(self.image_size >= 28, f"{key}.image_size", self.image_size,
                 "must be >= 28 (Qwen3-VL's smallest input side)")
        _require(0 < self.eval_fraction < 1, f"{key}.eval_fraction", self.eval_fraction,
                 "must be strictly between 0 and 1")
        _require(self.min_image_side >= 1, f"{key}.min_image_side", self.min_image_side, "must be >= 1")
        section = {"offline": self.offline, "hub": self.hub, "local": self.local}[self.source]
        _require(section is not None, f"{key}.{self.source}", None,
                 f"source is {self.source!r}, so the section {key}.{self.source} is required")
        if self.source == "local":
            _require(bool(self.local and self.local.path), f"{key}.local.path", None,
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
    warm_start_steps: int = 120
    warm_start_learning_rate: float = 3e-3
    warm_start_batch_size: int = 16
    #: Share of train items whose question kind is "well-formatted-leaning" in the warm start.
    well_formatted_fraction: float = 0.5
    #: Within each question kind, the share of targets in the kind's minority style, so that sampled
    #: completions (temperature 1) vary in format and GSPO has reward variance to learn from.
    minority_style_fraction: float = 0.2
    #: Largest image (pixels) the image processor keeps; bigger images are downscaled (Qwen smart_resize).
    image_max_pixels: int = 4096

    def validate(self, key: str) -> None:
        _require(self.text_hidden_size % self.text_heads == 0, f"{key}.text_hidden_size",
                 self.text_hidden_size, f"must be divisible by text_heads ({self.text_heads})")
        _require(self.text_heads % self.text_kv_heads == 0, f"{key}.text_kv_heads", self.text_kv_heads,
                 f"must divide text_heads ({self.text_heads})")
        _require(self.vision_hidden_size % self.vision_heads == 0, f"{key}.vision_hidden_size",
                 self.vision_hidden_size, f"must be divisible by vision_heads ({self.vision_heads})")
        _require(0 <= self.well_formatted_fraction <= 1, f"{key}.well_formatted_fraction",
                 self.well_formatted_fraction, "must be in [0, 1]")
        _require(self.warm_start_steps >= 0, f"{key}.warm_start_steps", self.warm_start_steps, "must be >= 0")
        _require(0 <= self.minority_style_fraction < 0.5, f"{key}.minority_style_fraction",
                 self.minority_style_fraction, "must be in [0, 0.5) (the minority of each kind)")
        _require(self.warm_start_batch_size >= 1, f"{key}.warm_start_batch_size", self.warm_start_batch_size,
                 "must be >= 1")
        _require(self.warm_start_learning_rate > 0, f"{key}.warm_start_learning_rate",
                 self.warm_start_learning_rate, "must be > 0")
        factor = self.patch_size * self.spatial_merge_size
        _require(self.image_max_pixels >= factor * factor, f"{key}.image_max_pixels", self.image_max_pixels,
                 f"must be >= (patch_size x spatial_merge_size)^2 = {factor * factor}")
        _require(self.vocab_size >= 300, f"{key}.vocab_size", self.vocab_size,
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
        _require(not (self.backend == "unsloth" and self.device == "cpu"), f"{key}.backend", self.backend,
                 "the unsloth backend needs CUDA; use backend: transformers on CPU")
        _require(not (self.load_in_4bit and self.backend != "unsloth"), f"{key}.load_in_4bit",
                 self.load_in_4bit, "4-bit loading is only wired for backend: unsloth")
        _require(self.max_seq_length >= 64, f"{key}.max_seq_length", self.max_seq_length, "must be >= 64")

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
        _require(self.r >= 1, f"{key}.r", self.r, "must be >= 1")
        _require(0 <= self.dropout < 1, f"{key}.dropout", self.dropout, "must be in [0, 1)")
        _require(len(self.target_modules) > 0, f"{key}.target_modules", self.target_modules,
                 "must name at least one module")


@dataclass(frozen=True)
class GenerationParams:
    batch_size: int
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    #: torch threads while generating on CPU (null = torch's default). Does not change greedy outputs.
    cpu_threads: int | None = None

    def validate(self, key: str) -> None:
        _require(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "must be an integer >= 1")
        _require(self.cpu_threads is None or self.cpu_threads >= 1, f"{key}.cpu_threads", self.cpu_threads,
                 "must be null (torch's default) or an integer >= 1")
        _require(self.max_new_tokens >= 1, f"{key}.max_new_tokens", self.max_new_tokens,
                 "must be an integer >= 1")
        _require(math.isfinite(self.temperature) and self.temperature >= 0, f"{key}.temperature",
                 self.temperature, "must be >= 0 (0 = greedy)")
        _require(0 < self.top_p <= 1, f"{key}.top_p", self.top_p, "must be in (0, 1]")

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
        _require(self.learning_rate > 0, f"{key}.learning_rate", self.learning_rate, "must be > 0")
        _require(self.num_generations >= 2, f"{key}.num_generations", self.num_generations,
                 "must be an integer >= 2 (GRPO/GSPO compare completions within a group)")
        _require(self.per_device_train_batch_size >= 1, f"{key}.per_device_train_batch_size",
                 self.per_device_train_batch_size, "must be >= 1")
        _require(self.gradient_accumulation_steps >= 1, f"{key}.gradient_accumulation_steps",
                 self.gradient_accumulation_steps, "must be >= 1")
        _require(0 <= self.warmup_ratio < 1, f"{key}.warmup_ratio", self.warmup_ratio, "must be in [0, 1)")
        _require(self.max_completion_length >= 1, f"{key}.max_completion_length",
                 self.max_completion_length, "must be >= 1")
        _require(self.max_prompt_length >= 1, f"{key}.max_prompt_length", self.max_prompt_length,
                 "must be >= 1")
        _require(self.max_steps == -1 or self.max_steps >= 1, f"{key}.max_steps", self.max_steps,
                 "must be -1 (use num_train_epochs) or >= 1")
        _require(self.num_train_epochs > 0, f"{key}.num_train_epochs", self.num_train_epochs, "must be > 0")
        _require(self.max_grad_norm > 0, f"{key}.max_grad_norm", self.max_grad_norm, "must be > 0")
        _require(self.temperature > 0, f"{key}.temperature", self.temperature,
                 "must be > 0 (RL needs sampled completions)")
        _require(self.save_steps >= 1, f"{key}.save_steps", self.save_steps, "must be >= 1")
        _require(self.logging_steps >= 1, f"{key}.logging_steps", self.logging_steps, "must be >= 1")
        _require(self.cpu_threads is None or self.cpu_threads >= 1, f"{key}.cpu_threads", self.cpu_threads,
                 "must be null (torch's default) or >= 1")


@dataclass(frozen=True)
class ProfileParams:
    data: DataParams
    model: ModelParams
    lora: LoraParams
    generation: GenerationParams
    train: TrainParams


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
                              f"allowed: {', '.join(sorted(self.profiles))}")
        return self.profiles[name]


# --------------------------------------------------------------------------------------------
# Generic construction from the YAML mapping, with key paths in every error.
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for option in non_none:
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if len(non_none) == 1 else
                          f"params.yaml: {key} = {value!r}: expected {' or '.join(map(_type_name, args))}")
    if origin is Literal:
        _require(value in args, key, value, f"allowed: {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        _require(isinstance(value, list | tuple), key, value, "expected a list")
        return tuple(_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        _require(isinstance(value, dict), key, value, "expected a mapping")
        return {k: _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        _require(isinstance(value, bool), key, value, "expected true or false")
        return value
    if tp is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, value, "expected an integer")
        return value
    if tp is float:
        _require(isinstance(value, int | float) and not isinstance(value, bool), key, value,
                 "expected a number")
        return float(value)
    if tp is str:
        _require(isinstance(value, str) and value != "", key, value, "expected a non-empty string")
        return value
    raise TypeError(f"config: unsupported field type {tp!r} for {key}")  # a bug in this module


def _build(cls: type, mapping: Any, key: str) -> Any:
    _require(isinstance(mapping, dict), key or "params.yaml", mapping, f"expected a mapping ({cls.__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        where = f"{key}.{unknown[0]}" if key else unknown[0]
        raise ConfigError(f"params.yaml: {where}: unknown key; allowed keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name not in mapping:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"params.yaml: {sub}: missing (expected {_type_name(hints[name])})")
            continue
        kwargs[name] = _coerce(hints[name], mapping[name], sub)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(key)
    return obj


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping (as loaded from YAML) into :class:`Params`."""
    params = _build(Params, raw, "")
    for name in params.profiles:
        _require(name in PROFILES, f"profiles.{name}", name, f"allowed profiles: {', '.join(PROFILES)}")
    for name, profile in params.profiles.items():
        check_profile(name, profile, params.gspo)
    return params


def check_profile(name: str, profile: ProfileParams, gspo: GSPOParams) -> None:
    """Cross-section rules that no single section can check alone (before any model loads)."""
    train = profile.train
    key = f"profiles.{name}.train"
    generation_batch = train.per_device_train_batch_size * (gspo.steps_per_generation
                                                            or train.gradient_accumulation_steps)
    _require(generation_batch % train.num_generations == 0, f"{key}.num_generations", train.num_generations,
             f"must divide the generation batch (per_device_train_batch_size x steps_per_generation = "
             f"{generation_batch})")
    if profile.model.backend == "transformers":
        _require(train.optim != "adamw_8bit", f"{key}.optim", train.optim,
                 "adamw_8bit needs bitsandbytes (GPU); use adamw_torch with backend: transformers")


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the repository root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_params(raw or {})


# --------------------------------------------------------------------------------------------
# Per-stage views: what each stage reads, mirrored by its `params:` in dvc.yaml (a test checks).
# ``{profile}`` is replaced by the profile name.
# --------------------------------------------------------------------------------------------

STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "fetch": ("seed", "profiles.{profile}.data"),
    "model": ("seed", "prompt", "profiles.{profile}.model"),
    "generate": ("seed", "prompt", "profiles.{profile}.model", "profiles.{profile}.generation"),
    "score": ("rewards",),
    "train": ("seed", "prompt", "rewards", "gspo", "profiles.{profile}.model", "profiles.{profile}.lora",
              "profiles.{profile}.train"),
    "report": ("report",),
}


class StageParams:
    """The sections one stage declared; anything else raises instead of being read silently."""

    def __init__(self, stage: str, profile: str, params: Params) -> None:
        self._stage, self._profile = stage, profile
        self._allowed: dict[str, Any] = {}
        for dotted in STAGE_PARAMS[stage]:
            dotted = dotted.format(profile=profile)
            if dotted.startswith("profiles."):
                section = dotted.rsplit(".", 1)[1]
                self._allowed[section] = getattr(params.profile(profile), section)
            else:
                self._allowed[dotted] = getattr(params, dotted)

    @property
    def profile(self) -> str:
        return self._profile

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        allowed = self.__dict__.get("_allowed", {})
        if name in allowed:
            return allowed[name]
        raise AttributeError(
            f"stage {self._stage!r} does not declare params section {name!r}; add it to "
            f"config.STAGE_PARAMS[{self._stage!r}] and to the stage's params in dvc.yaml")


def load_stage_params(stage: str, profile: str, path: str | Path = DEFAULT_PARAMS_PATH) -> StageParams:
    """Validate params.yaml and return the view of one stage for one profile."""
    if stage not in STAGE_PARAMS:
        raise ConfigError(f"unknown stage {stage!r}; known stages: {', '.join(STAGE_PARAMS)}")
    params = load_params(path)
    params.profile(profile)  # a clear error for an unknown profile
    return StageParams(stage, profile, params)
