"""GSPO training with TRL's ``GRPOTrainer``: LoRA adapter, resumable checkpoints, curves, train metrics.

What GSPO is here (FACTS.md, TRL): TRL's ``GRPOTrainer`` with ``importance_sampling_level="sequence"``.
The sequence-level importance ratio only differs from GRPO's token-level one when the policy that
sampled the completions is not the one being updated, i.e. when training is OFF-policy
(``steps_per_generation`` > ``gradient_accumulation_steps`` or ``num_iterations`` > 1). On-policy,
both ratios are exactly 1 with the same gradient, so a "GSPO" run is mathematically a GRPO run; the
reference notebook is on-policy. :func:`is_off_policy` states it, ``train.json`` records it and
``tests/test_training.py`` demonstrates it on the tiny model.

The pieces, each a function:

- :func:`validate_training_setup`: every cross-setting rule, before any model loads (the section
  validators of ``vlrl.config`` re-run, plus the rules no section can check alone).
- :func:`build_train_dataset` / :func:`drop_long_prompts`: the TRAIN split only, with a conversational
  ``prompt`` column (image first, :func:`vlrl.prompts.build_prompt`), the ``image`` column and the gold
  columns the rewards read. TRL removed ``max_prompt_length`` (0.28), so prompts longer than
  ``train.max_prompt_length`` tokens (image tokens included) are dropped here and counted.
- :func:`build_grpo_config`: ``params.yaml`` -> ``GRPOConfig`` under TRL 1.15's names.
- :func:`train`: the stage's whole job. Checkpoints go to ``checkpoints_dir`` (a DVC ``persist``
  output); a later run resumes from the last COMPLETE checkpoint (:func:`last_complete_checkpoint`)
  when the checkpoints were written by the same setup (:func:`setup_fingerprint`), else starts over.
  The adapter is written atomically at the end, never after a non-finite loss
  (:class:`DivergenceGuard`).

Curves: one dvclive-layout TSV per curve, ``<curves_dir>/<name>.tsv`` with the columns ``step`` and
``<name>`` (:data:`CURVES`), rewritten from the trainer's ``log_history`` at every log. Not through
dvclive's ``Live`` on purpose: ``log_history`` is restored from the checkpoint on resume, so a resumed
run writes exactly the curves of an uninterrupted one (dvclive appends, and would keep the steps
logged after the checkpoint); there is no timestamp column, so the same seed gives byte-identical
files; and nothing needs a git commit or touches ``dvc.yaml`` (FACTS.md, DVC).

CPU: TRL 1.15 scores completions with a Triton-only fused LM head, missing on CPU installs;
:func:`ensure_trl_logprob_kernel` gives it a plain-torch twin (:func:`chunked_logprob_torch`) for
non-CUDA tensors and keeps the Triton kernel on CUDA. ``train.cpu_threads`` fixes torch's thread count
while training on CPU (:func:`cpu_threads`).

Import order: this module imports trl/transformers; on the unsloth backend call
:func:`vlrl.modeling.prepare_backend` BEFORE importing it (see the modeling module docstring).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import re
import resource
import shutil
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from vlrl import config as config_module
from vlrl.config import ConfigError, GSPOParams, LoraParams, ModelParams, RewardParams, TrainParams
from vlrl.generation import prompt_token_counts
from vlrl.io import atomic_directory, atomic_write_json, atomic_write_text, read_json
from vlrl.modeling import load_model_and_processor, load_processor, model_pin, resolve_device, torch_threads
from vlrl.prompts import build_prompt
from vlrl.rewards import MAX_FORMAT_REWARD, build_reward_functions

log = logging.getLogger(__name__)

#: Columns of the train split that reach the reward functions as keyword arguments (TRL passes every
#: non-prompt column); ``answer`` is the gold the correctness reward reads.
GOLD_COLUMNS = ("pid", "answer", "question_type", "answer_type", "precision", "choices", "unit")

#: The metric the format-rate wrapper logs: share of completions whose format reward is the maximum.
FORMAT_RATE_KEY = "format_rate"

#: Curve file name (``<curves_dir>/<name>.tsv``, column ``<name>``) -> key in the trainer's logs.
CURVES: dict[str, str] = {
    "reward": "reward",
    "reward_format": "rewards/format_reward/mean",
    "reward_correctness": "rewards/correctness_reward/mean",
    "format_rate": FORMAT_RATE_KEY,
    "kl": "kl",  # TRL computes the KL only when beta != 0: no file otherwise
    "completion_length": "completions/mean_length",
    "loss": "loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
}

#: A checkpoint folder is complete when all of these are there (transformers' Trainer writes them in
#: this order, trainer state last) AND our marker, written after the Trainer's ``on_save``.
CHECKPOINT_FILES = ("adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt",
                    "rng_state.pth", "trainer_state.json")
COMPLETE_MARKER = "vlrl_checkpoint_complete.json"
FINGERPRINT_FILE = "vlrl_setup_fingerprint.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

#: Keys of train.json that depend on the machine or on the interruption history, not on the experiment.
VOLATILE_METRICS = frozenset({"wall_time_s", "seconds_per_step", "peak_rss_mb", "peak_gpu_mem_mb",
                              "tokens_per_second", "resumed_from_step"})


class TrainingDivergedError(RuntimeError):
    """The loss or the trainable weights became NaN/inf; no adapter was written."""


# ------------------------------------------------------------------------------------------------
# TRL 1.15 on CPU
# ------------------------------------------------------------------------------------------------


def chunked_logprob_torch(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor, temperature: float, chunk_size: int,
                          final_logit_softcapping: float | None = None, logit_scale: float = 1.0,
                          outputs: Sequence[str] = ("entropy",)) -> tuple[torch.Tensor | None, ...]:
    """Plain-torch twin of TRL's Triton ``ChunkedLogProbFunction`` (``trl/kernels/chunked_logprob.py``).

    TRL 1.15's ``GRPOTrainer`` scores completions through a fused LM head whose only implementation is a
    Triton kernel (``trl.trainer.utils._ChunkedLogProbFunction``); without Triton (every CPU install)
    that name is ``None`` and training fails with ``'NoneType' object has no attribute 'apply'``. Same
    transform as the kernel's ``_transform`` (``z * logit_scale``, optional tanh soft-cap, ``/ temperature``),
    same outputs (log-probs, entropy, log sum p^2, mean logit, target-is-argmax), logits materialised
    (fine for CPU-sized vocabularies); autograd gives the gradients. ``hidden``: (N, H), ``weight``:
    (V, H), ``targets``: (N,). ``chunk_size`` is unused (kept for the signature).

    >>> h, w = torch.eye(2), torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    >>> logp, ent, *_ = chunked_logprob_torch(h, w, None, torch.tensor([0, 2]), 1.0, 8)
    >>> [round(x, 4) for x in logp.tolist()]
    [-0.2395, -2.2395]
    """
    z = hidden.float() @ weight.float().t()
    if bias is not None:
        z = z + bias.float()
    z = z * logit_scale
    if final_logit_softcapping is not None:
        z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
    z = z / temperature
    log_z = torch.logsumexp(z, dim=-1)
    logprobs = z.gather(-1, targets[:, None]).squeeze(-1) - log_z
    probs = torch.softmax(z, dim=-1)
    entropy = log_z - (probs * z).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():  # the kernel marks these non-differentiable
        log_sum_sq = torch.log((probs * probs).sum(-1)) if "log_sum_sq_probs" in outputs else None
        mean_logits = z.mean(-1) if "mean_logits" in outputs else None
        is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None  # first maximum, as the kernel
    return logprobs, entropy, log_sum_sq, mean_logits, is_top1


class _ChunkedLogProbDispatch:
    """``.apply`` like TRL's autograd Function: the Triton kernel on CUDA/XPU when present, else torch."""

    def __init__(self, triton_function: Any) -> None:
        self.triton_function = triton_function

    def apply(self, hidden: torch.Tensor, *args: Any) -> tuple[torch.Tensor | None, ...]:
        if self.triton_function is not None and hidden.device.type in ("cuda", "xpu"):
            return self.triton_function.apply(hidden, *args)
        return chunked_logprob_torch(hidden, *args)


def ensure_trl_logprob_kernel() -> None:
    """Give TRL's fused LM head a CPU path (see :func:`chunked_logprob_torch`); idempotent."""
    from trl.trainer import utils as trl_utils

    current = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if not isinstance(current, _ChunkedLogProbDispatch):
        trl_utils._ChunkedLogProbFunction = _ChunkedLogProbDispatch(current)


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """The params sections the train stage reads (config.STAGE_PARAMS["train"]), as one value."""

    profile: str
    seed: int
    prompt_template: str
    rewards: RewardParams
    gspo: GSPOParams
    model: ModelParams
    lora: LoraParams
    train: TrainParams

    @classmethod
    def from_stage_params(cls, params: Any) -> TrainSettings:
        """From ``config.load_stage_params("train", profile)``.

        >>> from vlrl.config import load_stage_params
        >>> # settings = TrainSettings.from_stage_params(load_stage_params("train", "tiny"))
        """
        return cls(profile=params.profile, seed=params.seed, prompt_template=params.prompt.template,
                   rewards=params.rewards, gspo=params.gspo, model=params.model, lora=params.lora,
                   train=params.train)


def is_off_policy(train: TrainParams, gspo: GSPOParams) -> bool:
    """Whether completions are reused after the policy changed: only then does GSPO differ from GRPO.

    TRL generates once per ``steps_per_generation`` optimizer micro-steps and reuses the batch
    ``num_iterations`` times; on-policy means one generation feeds one optimizer step, once.

    >>> from vlrl.config import GSPOParams, TrainParams
    >>> t = TrainParams(5e-6, 0.9, 0.99, 0.1, 0.1, "cosine", "adamw_torch", 2, 1, 2, 64, 64, 1.0, -1, 0.1)
    >>> g = GSPOParams("sequence", "dr_grpo", False, 0.0, 0.2, None, 1, None)
    >>> is_off_policy(t, g), is_off_policy(t, dataclasses.replace(g, steps_per_generation=2))
    (False, True)
    """
    steps_per_generation = gspo.steps_per_generation or train.gradient_accumulation_steps
    return steps_per_generation > train.gradient_accumulation_steps or gspo.num_iterations > 1


def validate_training_setup(settings: TrainSettings) -> None:
    """Raise :class:`~vlrl.config.ConfigError` on inconsistent settings, before any model loads.

    Re-runs ``vlrl.config``'s validators (the sections may have been built in code, bypassing
    ``load_params``) and adds what no section can check alone.

    >>> # validate_training_setup(TrainSettings.from_stage_params(load_stage_params("train", "tiny")))
    """
    key = f"profiles.{settings.profile}"
    settings.train.validate(f"{key}.train")
    settings.gspo.validate("gspo")
    settings.rewards.validate("rewards")
    settings.model.validate(f"{key}.model")
    settings.lora.validate(f"{key}.lora")
    # The generation-batch rule lives in config (checked at load time); re-check these objects with it.
    config_module.check_profile(settings.profile,
                                 types.SimpleNamespace(train=settings.train, model=settings.model),
                                 settings.gspo)
    _, weights = build_reward_functions(settings.rewards)
    if not any(w > 0 for w in weights):
        raise ConfigError(f"params.yaml: rewards = {settings.rewards.weights}: at least one reward weight "
                          "must be > 0, otherwise every advantage is 0 and training learns nothing")
    total = settings.train.max_prompt_length + settings.train.max_completion_length
    generate_every = (settings.gspo.steps_per_generation or settings.train.gradient_accumulation_steps) \
        * settings.gspo.num_iterations
    if (settings.train.save_steps * settings.train.gradient_accumulation_steps) % generate_every:
        # TRL keeps the completions of a generation block in memory only: a checkpoint inside a block
        # resumes by generating anew, so the resumed run is valid but not identical to an uninterrupted one.
        log.warning("%s.train.save_steps = %d is not a multiple of a generation block (%d micro-steps): "
                    "resuming from a checkpoint will not reproduce an uninterrupted run exactly",
                    key, settings.train.save_steps, generate_every)
    if total > settings.model.max_seq_length:
        raise ConfigError(
            f"params.yaml: {key}.train.max_completion_length = {settings.train.max_completion_length}: "
            f"max_prompt_length ({settings.train.max_prompt_length}) + max_completion_length = {total} "
            f"exceeds {key}.model.max_seq_length ({settings.model.max_seq_length}); lower one of them")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def build_train_dataset(train_split: Any, prompt_template: str) -> Any:
    """The TRL data set: ``prompt`` (conversational, image first), ``image`` and the gold columns.

    >>> # ds = build_train_dataset(load_split(splits_dir, "train"), params.prompt.template)
    >>> # ds[0]["prompt"][0]["content"][0] -> {"type": "image", "text": None}
    """
    keep = ["image", "question", *[c for c in GOLD_COLUMNS if c in train_split.column_names]]
    dataset = train_split.select_columns(keep)
    return dataset.map(lambda row: {"prompt": build_prompt(row["question"], prompt_template)},
                       remove_columns=["question"], desc="prompts")


def drop_long_prompts(dataset: Any, processor: Any, prompt_template: str, max_prompt_length: int,
                      questions: Sequence[str]) -> tuple[Any, int]:
    """Drop rows whose templated prompt (image tokens included) exceeds ``max_prompt_length`` tokens.

    TRL 0.28 removed ``max_prompt_length`` (FACTS.md), and truncating a multimodal prompt would cut
    image tokens out of their image, so over-long prompts are dropped and counted instead.
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
# Rewards as TRL sees them
# ------------------------------------------------------------------------------------------------


def with_format_rate(format_reward: Callable[..., list[float]]) -> Callable[..., list[float]]:
    """Wrap the format reward so that TRL also logs the share of completions at the maximum format reward.

    TRL passes ``log_metric`` to reward functions (averaged per logging step, logged under its name).
    The wrapper keeps the name ``format_reward`` (TRL logs ``rewards/format_reward/mean``) and returns
    the reward unchanged: the reward itself stays the pure :func:`vlrl.rewards.format_reward`.

    >>> from vlrl.rewards import format_reward
    >>> seen = {}
    >>> with_format_rate(format_reward)(["<REASONING>a</REASONING><SOLUTION>1</SOLUTION>", "x"],
    ...                                 log_metric=seen.__setitem__)
    [2.0, 0.0]
    >>> seen
    {'format_rate': 0.5}
    """
    @functools.wraps(format_reward)
    def logged(completions: Sequence[Any], log_metric: Callable[[str, float], None] | None = None,
               **kwargs: Any) -> list[float]:
        scores = format_reward(completions, **kwargs)
        if log_metric is not None and scores:
            log_metric(FORMAT_RATE_KEY, sum(s == MAX_FORMAT_REWARD for s in scores) / len(scores))
        return scores

    return logged


# ------------------------------------------------------------------------------------------------
# TRL config
# ------------------------------------------------------------------------------------------------


def build_grpo_config(train: TrainParams, gspo: GSPOParams, seed: int, output_dir: Path, *, device: str,
                      reward_weights: Sequence[float]) -> GRPOConfig:
    """``GRPOConfig`` from params, under TRL 1.15's names (FACTS.md, TRL; the reference experiment).

    >>> from vlrl.config import GSPOParams, TrainParams
    >>> t = TrainParams(5e-6, 0.9, 0.99, 0.1, 0.1, "cosine", "adamw_torch", 2, 1, 2, 64, 64, 1.0, -1, 0.1)
    >>> g = GSPOParams("sequence", "dr_grpo", False, 0.0, 0.2, None, 1, None)
    >>> c = build_grpo_config(t, g, 3407, Path("/tmp/ckpt"), device="cpu", reward_weights=[0.3, 1.0])
    >>> c.importance_sampling_level, c.loss_type, c.bf16, c.steps_per_generation
    ('sequence', 'dr_grpo', False, 1)
    """
    on_cuda = device == "cuda"
    return GRPOConfig(
        output_dir=str(output_dir),
        # ---- GSPO / GRPO objective
        importance_sampling_level=gspo.importance_sampling_level,
        loss_type=gspo.loss_type,
        mask_truncated_completions=gspo.mask_truncated_completions,
        beta=gspo.beta,
        epsilon=gspo.epsilon,
        epsilon_high=gspo.epsilon_high,
        num_iterations=gspo.num_iterations,
        steps_per_generation=gspo.steps_per_generation,
        reward_weights=list(reward_weights),
        # ---- sampling
        num_generations=train.num_generations,
        max_completion_length=train.max_completion_length,
        temperature=train.temperature,
        # ---- optimisation (the reference: adamw_8bit, lr 5e-6, betas 0.9/0.99, wd 0.1, cosine, warmup 0.1)
        learning_rate=train.learning_rate,
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        weight_decay=train.weight_decay,
        lr_scheduler_type=train.lr_scheduler_type,
        warmup_steps=train.warmup_ratio,  # transformers 5: a float < 1 is a ratio (warmup_ratio is gone)
        optim=train.optim,
        max_grad_norm=train.max_grad_norm,
        per_device_train_batch_size=train.per_device_train_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps,
        # ---- precision and memory: TRL sets bf16=True when unset, even on CPU (FACTS.md)
        bf16=on_cuda,
        fp16=False,
        use_cpu=not on_cuda,
        gradient_checkpointing=on_cuda,  # saves memory on the 8B model; only slows the tiny one
        # ---- checkpoints, logs, determinism
        save_strategy="steps",
        save_steps=train.save_steps,
        save_only_model=False,  # optimizer, scheduler and RNG states are needed to resume exactly
        save_total_limit=2,  # older checkpoints are deleted only after a newer one is complete
        logging_steps=train.logging_steps,
        logging_nan_inf_filter=False,  # the Trainer would hide a NaN loss behind the running mean
        report_to="none",  # curves are written from log_history (module docstring)
        log_completions=False,
        disable_tqdm=False,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


def setup_fingerprint(settings: TrainSettings, model_dir: Path, dataset_fingerprint: str) -> str:
    """A hash of everything that makes checkpoints resumable: params, model pin, train data.

    Checkpoints persist across ``dvc repro``; after a params or data change they belong to another
    run and must not be resumed.
    """
    payload = {"settings": dataclasses.asdict(settings), "model": model_pin(model_dir),
               "data": dataset_fingerprint}
    text = json.dumps(payload, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def data_fingerprint(train_split: Any) -> str:
    """A content hash of the train split (pid, question, answer, image pixels), row order included."""
    digest = hashlib.sha256()
    for row in train_split:
        digest.update(json.dumps([str(row["pid"]), row["question"], str(row["answer"])]).encode())
        image = row.get("image")
        if image is not None:
            digest.update(f"{image.mode}{image.size}".encode())
            digest.update(image.tobytes())
    return "sha256:" + digest.hexdigest()


def _checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def is_complete_checkpoint(path: Path) -> bool:
    """All files of a Trainer checkpoint are there and our marker (written after saving) too.

    >>> import tempfile
    >>> is_complete_checkpoint(Path(tempfile.mkdtemp()) / "checkpoint-5")
    False
    """
    path = Path(path)
    if not all((path / name).is_file() for name in (*CHECKPOINT_FILES, COMPLETE_MARKER)):
        return False
    try:
        state = read_json(path / "trainer_state.json")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return state.get("global_step") == _checkpoint_step(path)


def last_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None.

    >>> import tempfile
    >>> last_complete_checkpoint(Path(tempfile.mkdtemp())) is None
    True
    """
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return None
    candidates = sorted((p for p in checkpoints_dir.iterdir() if _checkpoint_step(p) is not None),
                        key=_checkpoint_step, reverse=True)
    return next((p for p in candidates if is_complete_checkpoint(p)), None)


def prepare_checkpoints_dir(checkpoints_dir: Path, fingerprint: str) -> Path | None:
    """Make ``checkpoints_dir`` ready and return the checkpoint to resume from (or None).

    Checkpoints from another setup (fingerprint mismatch) are removed; incomplete checkpoints (a
    process killed while saving) are removed; the newest complete one is returned.
    """
    checkpoints_dir = Path(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    stamp = checkpoints_dir / FINGERPRINT_FILE
    previous = read_json(stamp).get("fingerprint") if stamp.is_file() else None
    if previous != fingerprint:
        stale = [p for p in checkpoints_dir.iterdir() if p.name != FINGERPRINT_FILE]
        if stale:
            log.warning("%s: checkpoints were written by another setup (params, model or data changed); "
                        "removing them and training from scratch", checkpoints_dir)
        for path in stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        atomic_write_json(stamp, {"fingerprint": fingerprint})
        return None
    resume = last_complete_checkpoint(checkpoints_dir)
    for path in checkpoints_dir.iterdir():
        step = _checkpoint_step(path)
        if step is not None and not is_complete_checkpoint(path):
            log.warning("%s: incomplete checkpoint (interrupted while saving); removing it", path)
            shutil.rmtree(path)
    return resume


# ------------------------------------------------------------------------------------------------
# Callbacks
# ------------------------------------------------------------------------------------------------


class CheckpointMarker(TrainerCallback):
    """Writes :data:`COMPLETE_MARKER` into a checkpoint once the Trainer has written all of it."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            atomic_write_json(folder / COMPLETE_MARKER, {"global_step": state.global_step})
        return control


class DivergenceGuard(TrainerCallback):
    """Stops training at the first non-finite loss or trainable weight, before it is checkpointed.

    ``on_log`` runs before the Trainer saves in the same step, so ``should_save = False`` keeps a
    garbage checkpoint off disk; ``on_step_end`` checks the trainable (LoRA) weights every step, which
    also catches a NaN between two logging steps.
    """

    def __init__(self) -> None:
        self.problem: str | None = None

    def _stop(self, control: Any, problem: str) -> Any:
        self.problem = self.problem or problem
        control.should_training_stop = True
        control.should_save = False
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                return self._stop(control, f"{key} = {value} at step {state.global_step}")
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            for name, param in model.named_parameters():
                if param.requires_grad and not torch.isfinite(param).all():
                    return self._stop(control, f"trainable weight {name} is not finite after step "
                                               f"{state.global_step}")
        return control


class CurveWriter(TrainerCallback):
    """Rewrites ``<curves_dir>/<name>.tsv`` from ``state.log_history`` at every log (module docstring)."""

    def __init__(self, curves_dir: Path) -> None:
        self.curves_dir = Path(curves_dir)

    def on_log(self, args, state, control, **kwargs):
        write_curves(state.log_history, self.curves_dir)
        return control


def write_curves(log_history: Sequence[dict], curves_dir: Path) -> list[Path]:
    """One TSV per curve in :data:`CURVES` that has values: columns ``step`` and the curve's name.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> [p.name for p in write_curves([{"step": 1, "loss": 0.5, "reward": 1.0}], d)]
    ['reward.tsv', 'loss.tsv']
    >>> (d / "loss.tsv").read_text()
    'step\\tloss\\n1\\t0.5\\n'
    """
    written = []
    for name, key in CURVES.items():
        rows = [(entry["step"], entry[key]) for entry in log_history
                if key in entry and entry[key] is not None and "train_runtime" not in entry]
        if not rows:
            continue
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow(["step", name])
        writer.writerows((step, repr(float(value))) for step, value in rows)
        written.append(atomic_write_text(Path(curves_dir) / f"{name}.tsv", buffer.getvalue()))
    return written


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


def _tenth_means(log_history: Sequence[dict], key: str) -> tuple[float | None, float | None]:
    values = [e[key] for e in log_history if e.get(key) is not None and "train_runtime" not in e]
    if not values:
        return None, None
    k = max(1, len(values) // 10)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def _peak_memory() -> dict[str, float]:
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return {"peak_gpu_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mb": round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)}


def train_metrics(log_history: Sequence[dict], *, settings: TrainSettings, steps: int, wall_time_s: float,
                  steps_run: int, tokens_run: int, prompts_dropped: int, prompts_used: int,
                  resumed_from_step: int) -> dict:
    """The flat ``train.json``: what training did, the first/last tenth of its curves, its cost.

    ``*_first_tenth`` / ``*_last_tenth`` average the first / last tenth of the logged steps (at least one).
    Timing fields cover this process only (a resumed run times its own steps).
    """
    reward_first, reward_last = _tenth_means(log_history, "reward")
    format_first, format_last = _tenth_means(log_history, FORMAT_RATE_KEY)
    def rounded(value: float | None) -> float | None:  # float32 logs: 6 decimals are all there is
        return None if value is None else round(value, 6)

    reward_first, reward_last, format_first, format_last = map(
        rounded, (reward_first, reward_last, format_first, format_last))
    return {
        "steps": steps,
        "reward_mean_first_tenth": reward_first,
        "reward_mean_last_tenth": reward_last,
        "format_rate_first_tenth": format_first,
        "format_rate_last_tenth": format_last,
        "prompts_used": prompts_used,
        "prompts_dropped": prompts_dropped,
        "off_policy": is_off_policy(settings.train, settings.gspo),
        "importance_sampling_level": settings.gspo.importance_sampling_level,
        "loss_type": settings.gspo.loss_type,
        "num_generations": settings.train.num_generations,
        "resumed_from_step": resumed_from_step,
        "wall_time_s": round(wall_time_s, 3),
        "seconds_per_step": round(wall_time_s / steps_run, 4) if steps_run else None,
        "tokens_per_second": round(tokens_run / wall_time_s, 1) if wall_time_s > 0 and steps_run else None,
        **_peak_memory(),
    }


# ------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------


def train(stage_params: Any, *, model_dir: Path, splits_dir: Path, adapter_dir: Path, checkpoints_dir: Path,
          curves_dir: Path, metrics_path: Path) -> dict:
    """Train the LoRA adapter on the TRAIN split with GSPO; returns the metrics written to ``metrics_path``.

    ``stage_params``: ``config.load_stage_params("train", profile)`` or a :class:`TrainSettings`.

    >>> # train(load_stage_params("train", "tiny"), model_dir=Path("data/tiny/model"), ...)
    """
    from vlrl.data import load_split  # the data package (issue 3); imported here to keep this module light

    settings = stage_params if isinstance(stage_params, TrainSettings) else \
        TrainSettings.from_stage_params(stage_params)
    validate_training_setup(settings)  # before any data or model is loaded
    return train_on_split(settings, load_split(Path(splits_dir), "train"), model_dir=model_dir,
                          adapter_dir=adapter_dir, checkpoints_dir=checkpoints_dir, curves_dir=curves_dir,
                          metrics_path=metrics_path)


def train_on_split(settings: TrainSettings, train_split: Any, *, model_dir: Path, adapter_dir: Path,
                   checkpoints_dir: Path, curves_dir: Path, metrics_path: Path,
                   extra_callbacks: Sequence[TrainerCallback] = ()) -> dict:
    """:func:`train` on a loaded train split (a ``datasets.Dataset`` in the MathVista format)."""
    validate_training_setup(settings)
    model_dir, adapter_dir, checkpoints_dir = Path(model_dir), Path(adapter_dir), Path(checkpoints_dir)

    # ---- data: prompts, over-long prompts dropped (processor only, no model yet) ---------------------
    processor = load_processor(settings.model, model_dir)
    dataset = build_train_dataset(train_split, settings.prompt_template)
    dataset, dropped = drop_long_prompts(dataset, processor, settings.prompt_template,
                                         settings.train.max_prompt_length, list(train_split["question"]))

    # ---- checkpoints: resume only what this very setup wrote ------------------------------------------
    fingerprint = setup_fingerprint(settings, model_dir, data_fingerprint(train_split))
    resume = prepare_checkpoints_dir(checkpoints_dir, fingerprint)
    resumed_from_step = _checkpoint_step(resume) if resume is not None else 0
    if resume is not None:
        log.info("resuming from %s (step %d)", resume, resumed_from_step)
    if is_off_policy(settings.train, settings.gspo):
        log.info("off-policy training: GSPO's sequence-level ratio differs from GRPO's token-level one")
    else:
        log.info("on-policy training (steps_per_generation = gradient_accumulation_steps, num_iterations = "
                 "1): importance_sampling_level %r is mathematically GRPO here",
                 settings.gspo.importance_sampling_level)

    # ---- model and trainer (unless the last checkpoint already is the end of training) ---------------
    finished = _finished_state(resume)
    if finished is not None:
        # transformers would run one extra step (at learning rate 0) when resumed at max_steps.
        log.info("%s is the end of training: writing its adapter, nothing to train", resume)
        with atomic_directory(adapter_dir) as tmp:
            for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
                if (resume / name).is_file():
                    shutil.copy2(resume / name, tmp / name)
        history, global_step, wall_time_s = finished["log_history"], finished["global_step"], 0.0
    else:
        with torch_threads(settings.train.cpu_threads if resolve_device(settings.model) == "cpu" else None):
            trainer, guard = _trainer(settings, model_dir, dataset, checkpoints_dir, curves_dir,
                                      extra_callbacks)
            started = time.perf_counter()
            trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
            wall_time_s = time.perf_counter() - started
        if guard.problem is not None:
            raise TrainingDivergedError(
                f"training stopped: {guard.problem}. No adapter was written. Lower "
                f"profiles.{settings.profile}.train.learning_rate (now {settings.train.learning_rate}) or "
                f"max_grad_norm (now {settings.train.max_grad_norm}) in params.yaml, then delete "
                f"{checkpoints_dir} (its checkpoints predate the divergence but share its setup) and re-run")
        with atomic_directory(adapter_dir) as tmp:
            trainer.model.save_pretrained(tmp, safe_serialization=True)
        history, global_step = trainer.state.log_history, trainer.state.global_step

    # ---- outputs: curves, metrics ----------------------------------------------------------------
    write_curves(history, curves_dir)
    steps_run = global_step - resumed_from_step
    metrics = train_metrics(history, settings=settings, steps=global_step,
                            wall_time_s=wall_time_s, steps_run=steps_run,
                            tokens_run=_tokens_seen(history, resumed_from_step),
                            prompts_dropped=dropped, prompts_used=len(dataset),
                            resumed_from_step=resumed_from_step)
    atomic_write_json(metrics_path, metrics)
    return metrics


def _finished_state(checkpoint: Path | None) -> dict | None:
    """The trainer state of ``checkpoint`` if training ended there (global_step == max_steps), else None."""
    if checkpoint is None:
        return None
    state = read_json(checkpoint / "trainer_state.json")
    return state if state.get("max_steps") and state["global_step"] >= state["max_steps"] else None


def _trainer(settings: TrainSettings, model_dir: Path, dataset: Any, checkpoints_dir: Path, curves_dir: Path,
             extra_callbacks: Sequence[TrainerCallback]) -> tuple[GRPOTrainer, DivergenceGuard]:
    """The LoRA model (vlrl.modeling: Unsloth or transformers) in TRL's GRPOTrainer, with our callbacks."""
    model, processor = load_model_and_processor(settings.model, model_dir, lora=settings.lora,
                                                for_training=True, seed=settings.seed)
    device = str(next(model.parameters()).device.type)
    funcs, weights = build_reward_functions(settings.rewards)
    funcs = [with_format_rate(f) if f.__name__ == "format_reward" else f for f in funcs]
    args = build_grpo_config(settings.train, settings.gspo, settings.seed, checkpoints_dir, device=device,
                             reward_weights=weights)
    guard = DivergenceGuard()
    ensure_trl_logprob_kernel()
    trainer = GRPOTrainer(model=model, processing_class=processor, reward_funcs=funcs, args=args,
                          train_dataset=dataset,
                          callbacks=[CheckpointMarker(), guard, CurveWriter(curves_dir), *extra_callbacks])
    return trainer, guard


def _tokens_seen(log_history: Sequence[dict], since_step: int) -> int:
    """Prompt + completion tokens processed after ``since_step`` (TRL logs a running ``num_tokens``)."""
    counts = [(e["step"], e["num_tokens"]) for e in log_history if "num_tokens" in e]
    if not counts:
        return 0
    before = max((n for step, n in counts if step <= since_step), default=0)
    return int(counts[-1][1] - before)


__all__ = [
    "CURVES",
    "TrainSettings",
    "TrainingDivergedError",
    "build_grpo_config",
    "build_train_dataset",
    "drop_long_prompts",
    "is_off_policy",
    "last_complete_checkpoint",
    "train",
    "train_on_split",
    "validate_training_setup",
    "write_curves",
]

