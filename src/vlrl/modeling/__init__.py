"""Model loading: the ONLY package that knows Unsloth from plain transformers.

Two backends, chosen by ``profiles.<p>.model.backend``:

- ``unsloth`` (CUDA only): ``FastVisionModel.from_pretrained(id, load_in_4bit=True, max_seq_length=...)``,
  LoRA through ``FastVisionModel.get_peft_model`` with ``target_modules = lora.target_modules`` narrowed
  to the language layers (the reference notebook's settings, docs/reference-experiment.md),
  ``FastVisionModel.for_inference`` before generation.
- ``transformers`` (any device; the CPU default): ``Qwen3VLForConditionalGeneration`` + PEFT LoRA on
  the same modules (:func:`~vlrl.modeling.loading.lora_target_regex`).

Modules: :mod:`~vlrl.modeling.loading` (backends, processor and model loading, LoRA targets),
:mod:`~vlrl.modeling.pins` (``model_pin.json``), :mod:`~vlrl.modeling.hub` (a hub revision resolved
to its commit, config.json read before any weights, fast offline failure),
:mod:`~vlrl.modeling.folders` (a model folder checked whole before loading),
:mod:`~vlrl.modeling.adapters` (LoRA adapter folders, verified after loading),
:mod:`~vlrl.modeling.processor` (the image-only processor, special token ids),
:mod:`~vlrl.modeling.devices` (device choice, CPU threads).

Import order (why transformers/peft are imported inside functions here): Unsloth patches
transformers, TRL and PEFT classes when it is imported, so ``import unsloth`` must run before any of
them. This package therefore imports only the standard library and torch at module level; the
unsloth path imports ``unsloth`` first and then the rest. A script that imports ``trl`` (training)
must call :func:`prepare_backend` before that import, e.g.::

    from vlrl import modeling
    modeling.prepare_backend(params.model)   # imports unsloth on the unsloth backend, else nothing
    from vlrl import training                # imports trl / transformers / peft

Hub models load from the hub or the local HF cache at the COMMIT the model stage pinned
(``local_files_only`` when ``HF_HUB_OFFLINE`` is set). No ``trust_remote_code``; safetensors only.
Load a built folder's processor with :func:`load_processor`, not ``AutoProcessor``: its
``ImageOnlyQwen3VLProcessor`` is not registered with transformers, and AutoProcessor would silently
return the bare tokenizer (docs/library-notes.md).
"""

from vlrl.modeling.adapters import AdapterError
from vlrl.modeling.devices import resolve_device, torch_threads
from vlrl.modeling.hub import ModelNotAvailableError, pin_hub_model, resolve_revision
from vlrl.modeling.loading import (
    DEFAULT_LORA_TARGETS,
    check_lora_targets,
    load_model_and_processor,
    load_processor,
    lora_config,
    lora_target_regex,
    prepare_backend,
)
from vlrl.modeling.pins import KIND_BUILT, KIND_HUB, PIN_FILE, model_pin, write_pin
from vlrl.modeling.processor import (
    END_OF_TURN_TOKENS,
    VISION_TOKENS,
    end_of_turn_ids,
    image_only_processor_class,
    vision_token_ids,
)

__all__ = [
    "DEFAULT_LORA_TARGETS", "END_OF_TURN_TOKENS", "KIND_BUILT", "KIND_HUB", "PIN_FILE", "VISION_TOKENS",
    "AdapterError", "ModelNotAvailableError", "check_lora_targets", "end_of_turn_ids",
    "image_only_processor_class", "load_model_and_processor", "load_processor", "lora_config",
    "lora_target_regex", "model_pin", "pin_hub_model", "prepare_backend", "resolve_device", "resolve_revision",
    "torch_threads", "vision_token_ids", "write_pin",
]
