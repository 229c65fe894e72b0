"""Rules that no single section of params.yaml can check alone, run for every profile at load.

Each names the key to change. They hold before any model or data is loaded; what needs the model
(prompt lengths in tokens, LoRA target names, the resolved device) is checked where it is loaded.

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlrl.config.checks import require
from vlrl.config.sections import BITSANDBYTES_OPTIMIZERS, ProfileParams

if TYPE_CHECKING:
    from vlrl.config.sections import GSPOParams, Params, TrainParams


def generation_batch_size(train: TrainParams, gspo: GSPOParams) -> int:
    """Completions TRL samples per generation round on one device: batch x steps_per_generation
    (of the effective settings, ``gspo.preset`` applied).

    >>> from vlrl.config.sections import GSPOParams, TrainParams
    >>> t = TrainParams(5e-6, 0.9, 0.99, 0.1, 0.1, "cosine", "adamw_torch", 2, 1, 2, 64, 64, 1.0, -1, 0.1)
    >>> generation_batch_size(t, GSPOParams("sequence", "dr_grpo", False, 0.0, 0.2, None, 1, 4))
    8
    """
    gspo = gspo.effective(train.gradient_accumulation_steps)
    return train.per_device_train_batch_size * (gspo.steps_per_generation or train.gradient_accumulation_steps)


def check_profile(name: str, profile: ProfileParams, params: Params) -> None:
    """Raise :class:`~vlrl.errors.ConfigError` when the profile's sections contradict each other."""
    train, model, generation = profile.train, profile.model, profile.generation
    key = f"profiles.{name}"
    # TRL splits a generation round over all processes: only the global batch must hold whole groups.
    processes = profile.launch.num_processes
    batch = generation_batch_size(train, params.gspo) * processes
    per = " x launch.num_processes" if processes > 1 else ""
    require(batch % train.num_generations == 0, f"{key}.train.num_generations", train.num_generations,
            f"must divide the generation batch (per_device_train_batch_size{per} x steps_per_generation = {batch}"
            f"{', with gspo.preset ' + repr(params.gspo.preset) if params.gspo.preset != 'reference' else ''})")
    require(not (model.backend == "unsloth" and profile.launch.launched), f"{key}.launch.num_processes",
            profile.launch.num_processes, f"Unsloth runs one process on one GPU; set {key}.model.backend: "
            "transformers to run several processes (or launch.num_processes: 1 and no launch.config_file)")
    require(not (train.optim in BITSANDBYTES_OPTIMIZERS and model.device == "cpu"), f"{key}.train.optim",
            train.optim, f"{train.optim} needs bitsandbytes and a CUDA device; use adamw_torch with device: cpu")
    total = train.max_prompt_length + train.max_completion_length
    require(total <= model.max_seq_length, f"{key}.train.max_completion_length", train.max_completion_length,
            f"max_prompt_length ({train.max_prompt_length}) + max_completion_length = {total} exceeds "
            f"{key}.model.max_seq_length ({model.max_seq_length}); lower one of them")
    require(generation.max_new_tokens < model.max_seq_length, f"{key}.generation.max_new_tokens",
            generation.max_new_tokens, f"must be smaller than {key}.model.max_seq_length "
            f"({model.max_seq_length}), which must also hold the prompt")


def is_off_policy(train: TrainParams, gspo: GSPOParams) -> bool:
    """Whether completions are reused after the policy changed: only then does GSPO differ from GRPO.

    TRL generates once per ``steps_per_generation`` optimizer micro-steps and reuses the batch
    ``num_iterations`` times; on-policy means one generation feeds one optimizer step, once. On-policy,
    the sequence-level (GSPO) and token-level (GRPO) importance ratios are both exactly 1 with the same
    gradient (docs/library-notes.md, "GSPO and GRPO").

    >>> from vlrl.config.sections import GSPOParams, TrainParams
    >>> t = TrainParams(5e-6, 0.9, 0.99, 0.1, 0.1, "cosine", "adamw_torch", 2, 1, 2, 64, 64, 1.0, -1, 0.1)
    >>> g = GSPOParams("sequence", "dr_grpo", False, 0.0, 0.2, None, 1, None)
    >>> is_off_policy(t, g), is_off_policy(t, GSPOParams("sequence", "dr_grpo", False, 0.0, 0.2, None, 1, 2))
    (False, True)
    """
    gspo = gspo.effective(train.gradient_accumulation_steps)
    steps_per_generation = gspo.steps_per_generation or train.gradient_accumulation_steps
    return steps_per_generation > train.gradient_accumulation_steps or gspo.num_iterations > 1
