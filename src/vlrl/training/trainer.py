"""The train stage's job: TRL's ``GRPOTrainer`` in GSPO mode on the TRAIN split -> LoRA adapter.

GSPO here is TRL's ``GRPOTrainer`` with ``importance_sampling_level="sequence"``; it differs from GRPO
only off-policy (:func:`vlrl.config.is_off_policy`), which ``train.json`` records.

- :func:`build_train_dataset` / :func:`drop_long_prompts`: the TRAIN split only, with a conversational
  ``prompt`` column (image first, :func:`vlrl.prompts.build_prompt`), the ``image`` column and the gold
  fields the rewards read. TRL removed ``max_prompt_length`` (0.28), so prompts longer than
  ``train.max_prompt_length`` tokens (image tokens included) are dropped here and counted.
- :func:`build_grpo_config`: the typed params -> ``GRPOConfig`` under TRL 1.15's names.
- :func:`train`: the stage's whole job: resume (:mod:`~vlrl.training.checkpoints`), train with the
  callbacks (:mod:`~vlrl.training.callbacks`), write the adapter atomically (never after a non-finite
  loss), the curves and ``train.json``; the run's cost (time, memory) is returned as telemetry for the
  untracked run log, never written into committed files.

Several processes (:mod:`vlrl.launch`): every process runs :func:`train`; the training arguments join
the process group first (before the model loads, so each process lands on its own GPU), the main
process alone prepares the checkpoints folder (the others wait for its answer) and writes every output;
TRL seeds each process's sampling with ``seed + rank`` itself.

Import order: this module imports trl/transformers; on the unsloth backend call
:func:`vlrl.modeling.prepare_backend` BEFORE importing it (see :mod:`vlrl.modeling`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import ProgressCallback, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from vlrl import launch
from vlrl.config import GSPOParams, TrainParams, TrainStageParams, is_off_policy
from vlrl.errors import ConfigError, VlrlError
from vlrl.generation import prompt_token_counts
from vlrl.io import atomic_directory, atomic_write_json, check_replaceable
from vlrl.mathvista import GOLD_FIELDS
from vlrl.modeling import load_model_and_processor, load_processor, resolve_device, torch_threads, vision_token_ids
from vlrl.prompts import build_prompt
from vlrl.rewards import FORMAT_RATE_KEY, build_reward_functions, reward_weights
from vlrl.telemetry import peak_memory_mb
from vlrl.training.callbacks import CURVES, CheckpointMarker, CurveWriter, DivergenceGuard, QuietProgress, write_curves
from vlrl.training.checkpoints import (
    checkpoint_step,
    data_fingerprint,
    finished_state,
    prepare_checkpoints_dir,
    setup_fingerprint,
)
from vlrl.training.trl_cpu_shim import ensure_trl_logprob_kernel

log = logging.getLogger(__name__)

#: Columns of the train split that reach the reward functions as keyword arguments (TRL passes every
#: non-prompt column); ``answer`` is the gold the correctness reward reads.
REWARD_COLUMNS = ("pid", *GOLD_FIELDS)


class TrainingDivergedError(VlrlError):
    """The loss or the trainable weights became NaN/inf; no adapter was written."""


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def build_train_dataset(train_split: Any, prompt_template: str) -> Any:
    """The TRL data set: ``prompt`` (conversational, image first), ``image`` and the gold columns."""
    keep = ["image", "question", *[c for c in REWARD_COLUMNS if c in train_split.column_names]]
    dataset = train_split.select_columns(keep)
    return dataset.map(lambda row: {"prompt": build_prompt(row["question"], prompt_template)},
                       remove_columns=["question"], desc="prompts")


def drop_long_prompts(dataset: Any, processor: Any, prompt_template: str, max_prompt_length: int,
                      questions: Sequence[str]) -> tuple[Any, int]:
    """Drop rows whose templated prompt (image tokens included) exceeds ``max_prompt_length`` tokens.

    TRL 0.28 removed ``max_prompt_length`` (docs/library-notes.md), and truncating a multimodal prompt
    would cut image tokens out of their image, so over-long prompts are dropped and counted instead.
    """
    lengths = prompt_token_counts(processor, dataset.add_column("question", list(questions)), prompt_template)
    keep = [i for i, n in enumerate(lengths) if n <= max_prompt_length]
    dropped = len(lengths) - len(keep)
    if dropped:
        log.warning("dropped %d of %d train prompts longer than train.max_prompt_length = %d tokens "
                    "(longest: %d)", dropped, len(lengths), max_prompt_length, max(lengths))
    if not keep:
        raise ConfigError(f"params.yaml: train.max_prompt_length = {max_prompt_length}: every train prompt "
                          f"is longer (shortest: {min(lengths)} tokens); raise it")
    return (dataset.select(keep) if dropped else dataset), dropped


# ------------------------------------------------------------------------------------------------
# TRL config
# ------------------------------------------------------------------------------------------------


#: TrainParams fields that are not GRPOConfig fields: ``warmup_ratio`` is passed as ``warmup_steps``
#: (transformers 5 dropped ``warmup_ratio``; a float < 1 is a ratio), ``max_prompt_length`` was removed
#: from TRL in 0.28 (:func:`drop_long_prompts` applies it), ``cpu_threads`` is vlrl's own.
_NOT_IN_GRPO_CONFIG = ("warmup_ratio", "max_prompt_length", "cpu_threads")


def build_grpo_config(train: TrainParams, gspo: GSPOParams, seed: int, output_dir: Path, *, device: str,
                      reward_weights: Sequence[float], suppress_tokens: Sequence[int] = (),
                      world_size: int = 1, deepspeed: bool = False) -> GRPOConfig:
    """``GRPOConfig`` from params (docs/reference-experiment.md, "Training").

    Every field of the ``gspo`` section (as :meth:`~vlrl.config.GSPOParams.effective` makes it: its
    ``preset`` applied) and of ``train`` (but :data:`_NOT_IN_GRPO_CONFIG`) is the GRPOConfig field of the
    same name in TRL 1.15, so a knob added to params.yaml reaches TRL as is; the rest is fixed here, with
    the reason.

    ``suppress_tokens`` (the vision placeholders) are never sampled in training: TRL 1.15's generation
    config suppresses nothing, and a sampled ``<|image_pad|>`` makes the next forward pass fail
    ("Image features and image tokens do not match"). ``world_size`` > 1 on a CPU: DDP over gloo.
    ``deepspeed``: the stage runs under an accelerate DeepSpeed config; on a CPU it then needs
    ``use_cpu=False`` (``use_cpu=True`` turns DeepSpeed off in accelerate) and gloo (DeepSpeed's CPU
    accelerator).

    >>> from vlrl.config import GSPOParams, TrainParams
    >>> t = TrainParams(5e-6, 0.9, 0.99, 0.1, 0.1, "cosine", "adamw_torch", 2, 1, 2, 64, 64, 1.0, -1, 0.1)
    >>> g = GSPOParams("sequence", "dr_grpo", False, 0.0, 0.2, None, 1, None)
    >>> c = build_grpo_config(t, g, 3407, Path("/tmp/ckpt"), device="cpu", reward_weights=[0.3, 1.0])
    >>> c.importance_sampling_level, c.loss_type, c.bf16, c.steps_per_generation, c.warmup_steps
    ('sequence', 'dr_grpo', False, 1, 0.1)
    """
    on_cuda = device == "cuda"
    same_names = {name: value for name, value in dataclasses.asdict(train).items()
                  if name not in _NOT_IN_GRPO_CONFIG}
    return GRPOConfig(
        output_dir=str(output_dir),
        **gspo.trl_fields(train.gradient_accumulation_steps),
        **same_names,
        reward_weights=list(reward_weights),
        warmup_steps=train.warmup_ratio,
        generation_kwargs={"suppress_tokens": list(suppress_tokens)} if suppress_tokens else None,
        # ---- precision and memory: TRL sets bf16=True when unset, even on CPU (docs/library-notes.md)
        bf16=on_cuda,
        fp16=False,
        # ---- devices: DDP over gloo on a CPU needs use_cpu=True; DeepSpeed on a CPU needs it False
        use_cpu=not on_cuda and not deepspeed,
        ddp_backend="gloo" if (world_size > 1 or deepspeed) and not on_cuda else None,  # None: NCCL on CUDA
        # Every trainable weight (LoRA) takes part in every forward: DDP need not search for unused ones
        # (the Trainer's default for a PEFT model is to search, an extra pass over the graph per step).
        ddp_find_unused_parameters=False,
        gradient_checkpointing=on_cuda,  # saves memory on the 8B model; only slows the tiny one
        # ---- checkpoints, logs, determinism
        save_strategy="steps",
        save_only_model=False,  # optimizer, scheduler and RNG states are needed to resume exactly
        save_total_limit=2,  # older checkpoints are deleted only after a newer one is complete
        logging_nan_inf_filter=False,  # the Trainer would hide a NaN loss behind the running mean
        report_to="none",  # curves are written from log_history (vlrl.training.callbacks)
        log_completions=False,
        disable_tqdm=False,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


def _tenth_means(log_history: Sequence[dict], key: str) -> tuple[float | None, float | None]:
    values = [e[key] for e in log_history if e.get(key) is not None and "train_runtime" not in e]
    if not values:
        return None, None
    k = max(1, len(values) // 10)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def train_metrics(log_history: Sequence[dict], *, params: TrainStageParams, steps: int, prompts_dropped: int,
                  prompts_used: int, world_size: int = 1) -> dict:
    """The flat ``train.json``: what training did and the first/last tenth of its reward curves.

    ``*_first_tenth`` / ``*_last_tenth`` average the first / last tenth of the logged steps (at least one),
    rounded to 6 decimals (float32 logs carry no more). Only what the experiment determines: the cost
    of the run is telemetry (:func:`train_telemetry`). ``world_size`` is part of the experiment: the
    global batch (completions per optimizer step) is per-device batch x processes x accumulation.
    """
    metrics: dict[str, Any] = {"steps": steps}
    for name, key in (("reward_mean", "reward"), ("reward_format_mean", CURVES["reward_format"]),
                      ("reward_correctness_mean", CURVES["reward_correctness"]),
                      ("format_rate", FORMAT_RATE_KEY)):
        first, last = _tenth_means(log_history, key)
        metrics[f"{name}_first_tenth"] = None if first is None else round(first, 6)
        metrics[f"{name}_last_tenth"] = None if last is None else round(last, 6)
    return {
        **metrics,
        "reward_weights": reward_weights(params.rewards),
        "prompts_used": prompts_used,
        "prompts_dropped": prompts_dropped,
        "off_policy": is_off_policy(params.train, params.gspo),
        "gspo_preset": params.gspo.preset,
        "importance_sampling_level": params.gspo.importance_sampling_level,
        "loss_type": params.gspo.loss_type,
        "num_generations": params.train.num_generations,
        "world_size": world_size,
        "global_batch_size": params.train.per_device_train_batch_size * world_size
        * params.train.gradient_accumulation_steps,
    }


def train_telemetry(log_history: Sequence[dict], *, wall_time_s: float, steps_run: int,
                    resumed_from_step: int) -> dict:
    """What this run cost on this machine (for the run log, never for committed files).

    Timing covers this process only: a resumed run times its own steps.
    """
    tokens = _tokens_seen(log_history, resumed_from_step)
    return {
        "resumed_from_step": resumed_from_step,
        "steps_run": steps_run,
        "wall_time_s": round(wall_time_s, 3),
        "seconds_per_step": round(wall_time_s / steps_run, 4) if steps_run else None,
        "tokens_per_second": round(tokens / wall_time_s, 1) if wall_time_s > 0 and steps_run else None,
        **peak_memory_mb(),
    }


def _tokens_seen(log_history: Sequence[dict], since_step: int) -> int:
    """Prompt + completion tokens processed after ``since_step`` (TRL logs a running ``num_tokens``)."""
    counts = [(e["step"], e["num_tokens"]) for e in log_history if "num_tokens" in e]
    if not counts:
        return 0
    before = max((n for step, n in counts if step <= since_step), default=0)
    return int(counts[-1][1] - before)


# ------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` wrote to ``train.json`` (``metrics``) and what it cost (``telemetry``)."""

    metrics: dict[str, Any]
    telemetry: dict[str, Any]


def train(params: TrainStageParams, train_split: Any, *, model_dir: Path, adapter_dir: Path,
          checkpoints_dir: Path, curves_dir: Path, metrics_path: Path, live_curves_dir: Path | None = None,
          extra_callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Train the LoRA adapter with GSPO on ``train_split`` (the TRAIN split, MathVista format).

    The adapter, ``curves_dir`` and ``metrics_path`` are written at the end, atomically, so that an
    interrupted run never leaves a partial result that looks complete; ``live_curves_dir`` (an
    untracked folder, e.g. under ``logs/``) follows the run at every log for people watching it.
    """
    model_dir, adapter_dir, checkpoints_dir = Path(model_dir), Path(adapter_dir), Path(checkpoints_dir)
    for folder in (adapter_dir, Path(curves_dir)):  # before hours of training, not after
        check_replaceable(folder)
    # The GSPO settings this run trains with (gspo.preset applied), for TRL, the logs and train.json alike.
    params = dataclasses.replace(params, gspo=params.gspo.effective(params.train.gradient_accumulation_steps))

    # ---- data: prompts, over-long prompts dropped (processor only, no model yet) ---------------------
    processor = load_processor(params.model, model_dir)
    dataset = build_train_dataset(train_split, params.prompt.template)
    dataset, dropped = drop_long_prompts(dataset, processor, params.prompt.template,
                                         params.train.max_prompt_length, list(train_split["question"]))

    # ---- processes: the training arguments join the process group before any model loads -----------
    device = resolve_device(params.model)
    funcs, weights = build_reward_functions(params.rewards)
    args = build_grpo_config(params.train, params.gspo, params.seed, checkpoints_dir, device=device,
                             reward_weights=weights, suppress_tokens=vision_token_ids(processor),
                             world_size=launch.world_size(), deepspeed=launch.deepspeed_enabled())
    processes = launch.Processes.of(args)

    # ---- checkpoints: resume only what this very setup wrote (prepared once, by the main process) ----
    resume = None
    if processes.is_main:
        fingerprint = setup_fingerprint(params, model_dir, data_fingerprint(train_split), processes.count)
        resume = prepare_checkpoints_dir(checkpoints_dir, fingerprint)
    resume = processes.broadcast(resume)  # the others wait here until the folder is ready
    resumed_from_step = checkpoint_step(resume) if resume is not None else 0
    if resume is not None:
        log.info("resuming from %s (step %d)", resume, resumed_from_step)
    _log_policy(params)

    # ---- model and trainer (unless the last checkpoint already is the end of training) ---------------
    finished = finished_state(resume)
    if finished is not None:
        # transformers would run one extra step (at learning rate 0) when resumed at max_steps.
        log.info("%s is the end of training: writing its adapter, nothing to train", resume)
        if processes.is_main:
            with atomic_directory(adapter_dir) as tmp:
                for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
                    if (resume / name).is_file():
                        shutil.copy2(resume / name, tmp / name)
        history, global_step, wall_time_s = finished["log_history"], finished["global_step"], 0.0
    else:
        with torch_threads(params.train.cpu_threads if device == "cpu" else None):
            callbacks = [*extra_callbacks, *([CurveWriter(live_curves_dir)] if live_curves_dir else [])]
            trainer, guard = _trainer(params, model_dir, dataset, args, funcs, device, callbacks)
            started = time.perf_counter()
            trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
            wall_time_s = time.perf_counter() - started
        if guard.problem is not None:
            raise TrainingDivergedError(
                f"training stopped: {guard.problem}. No adapter was written. Lower "
                f"profiles.{params.profile}.train.learning_rate (now {params.train.learning_rate}) or "
                f"max_grad_norm (now {params.train.max_grad_norm}) in params.yaml, then delete "
                f"{checkpoints_dir} (its checkpoints predate the divergence but share its setup) and re-run")
        _save_adapter(trainer, adapter_dir, processes)
        history, global_step = trainer.state.log_history, trainer.state.global_step

    # ---- outputs: curves, metrics (after the adapter: a kill before here leaves no metrics) ---------
    metrics = train_metrics(history, params=params, steps=global_step, prompts_dropped=dropped,
                            prompts_used=len(dataset), world_size=processes.count)
    if processes.is_main:
        with atomic_directory(curves_dir) as tmp:
            write_curves(history, tmp)
        atomic_write_json(metrics_path, metrics)
    processes.finish()
    return TrainResult(metrics, train_telemetry(history, wall_time_s=wall_time_s,
                                                steps_run=global_step - resumed_from_step,
                                                resumed_from_step=resumed_from_step))


def _save_adapter(trainer: GRPOTrainer, adapter_dir: Path, processes: launch.Processes) -> None:
    """The trained LoRA adapter, written once by the main process (atomically).

    Under DeepSpeed ZeRO-3 every process holds a shard of the weights: all of them gather the full
    state dict first (a collective, as transformers' ``Trainer.save_model`` does), then the main process
    saves it. DDP and ZeRO-2 keep full weights in every process.
    """
    state_dict = None
    plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    if plugin is not None and plugin.zero_stage == 3:
        state_dict = trainer.accelerator.get_state_dict(trainer.deepspeed)
    if processes.is_main:
        with atomic_directory(adapter_dir) as tmp:
            trainer.model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)


def _log_policy(params: TrainStageParams) -> None:
    generate_every = (params.gspo.steps_per_generation or params.train.gradient_accumulation_steps) \
        * params.gspo.num_iterations
    if (params.train.save_steps * params.train.gradient_accumulation_steps) % generate_every:
        # TRL keeps the completions of a generation block in memory only: a checkpoint inside a block
        # resumes by generating anew, so the resumed run is valid but not identical to an uninterrupted one.
        log.warning("profiles.%s.train.save_steps = %d is not a multiple of a generation block (%d micro-steps): "
                    "resuming from a checkpoint will not reproduce an uninterrupted run exactly",
                    params.profile, params.train.save_steps, generate_every)
    if params.gspo.preset != "reference":
        log.info("gspo.preset = %r: loss_type %s, epsilon %s, epsilon_high %s, beta %s, steps_per_generation %s "
                 "(in place of the gspo fields of params.yaml)", params.gspo.preset, params.gspo.loss_type,
                 params.gspo.epsilon, params.gspo.epsilon_high, params.gspo.beta, params.gspo.steps_per_generation)
    if is_off_policy(params.train, params.gspo):
        log.info("off-policy training: GSPO's sequence-level ratio differs from GRPO's token-level one")
    else:
        log.info("on-policy training (steps_per_generation = gradient_accumulation_steps, num_iterations = "
                 "1): importance_sampling_level %r is mathematically GRPO here",
                 params.gspo.importance_sampling_level)


def _trainer(params: TrainStageParams, model_dir: Path, dataset: Any, args: GRPOConfig, funcs: Sequence[Any],
             device: str, extra_callbacks: Sequence[TrainerCallback]) -> tuple[GRPOTrainer, DivergenceGuard]:
    """The LoRA model (vlrl.modeling: Unsloth or transformers) in TRL's GRPOTrainer, with our callbacks."""
    model, processor = load_model_and_processor(params.model, model_dir, lora=params.lora,
                                                for_training=True, seed=params.seed)
    guard = DivergenceGuard()
    if device != "cuda":  # every process: on CUDA, TRL's Triton kernel (or Unsloth's fused head) stays
        ensure_trl_logprob_kernel()
    trainer = GRPOTrainer(model=model, processing_class=processor, reward_funcs=funcs, args=args,
                          train_dataset=dataset, callbacks=[CheckpointMarker(), guard, *extra_callbacks])
    # A progress bar with the reward as its postfix instead of a dict of 30 numbers printed per step.
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    return trainer, guard
