"""Loading a pinned model and its processor on either backend (Unsloth or plain transformers).

See :mod:`vlrl.modeling` for the backends and the import order.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import torch

from vlrl.config import LoraParams, ModelParams
from vlrl.errors import ConfigError, CorruptInputError, EnvironmentProblem
from vlrl.modeling.adapters import check_adapter_dir, load_adapter
from vlrl.modeling.devices import resolve_device
from vlrl.modeling.folders import check_built_folder
from vlrl.modeling.hub import model_config, not_available, offline, requested_revision
from vlrl.modeling.pins import KIND_BUILT, KIND_HUB, PIN_FILE, model_pin
from vlrl.modeling.processor import image_only_processor_class

log = logging.getLogger(__name__)

#: The reference LoRA targets: attention and MLP projections of the language model.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ------------------------------------------------------------------------------------------------
# Backend selection
# ------------------------------------------------------------------------------------------------


def prepare_backend(model: ModelParams) -> None:
    """Import Unsloth first when the backend needs it (it patches transformers/TRL/PEFT on import).

    Call before anything imports trl, transformers or peft. A no-op for ``backend: transformers``.

    >>> from vlrl.config import ModelParams
    >>> prepare_backend(ModelParams("transformers", "x", None, False, 1024, "cpu"))
    """
    if model.backend != "unsloth":
        return
    late = sorted(m for m in ("transformers", "trl", "peft") if m in sys.modules)
    if late:
        log.warning("unsloth imported after %s: Unsloth's patches may not apply; import vlrl.modeling and "
                    "call prepare_backend() before importing trl/transformers/peft", ", ".join(late))
    _import_unsloth()


def _import_unsloth() -> Any:
    """``unsloth.FastVisionModel``, or a clear error naming the install step."""
    try:
        from unsloth import FastVisionModel  # noqa: PLC0415 - must precede transformers (module doc)
    except ImportError as exc:
        raise EnvironmentProblem(
            f"params.yaml: model.backend = 'unsloth' but unsloth cannot be imported ({exc}); on a CUDA "
            "machine run `make install-gpu`, or set profiles.<profile>.model.backend: transformers") from exc
    return FastVisionModel


# ------------------------------------------------------------------------------------------------
# LoRA targeting (one definition for both backends and for training)
# ------------------------------------------------------------------------------------------------


def lora_target_regex(lora: LoraParams) -> str:
    r"""PEFT ``target_modules`` regex: the LoRA modules under the LANGUAGE model only.

    PEFT full-matches a string ``target_modules`` against module names; Qwen3-VL's language layers
    live under ``model.language_model.layers.N`` and the vision tower under ``model.visual`` (whose
    ``linear_fc1``/``qkv`` names would otherwise be caught by "all-linear").

    >>> lora_target_regex(LoraParams(16, 16, 0.0, ("q_proj", "v_proj")))
    '.*language_model.*\\.(q_proj|v_proj)'
    >>> bool(re.fullmatch(_, "model.language_model.layers.0.self_attn.q_proj"))
    True
    """
    names = "|".join(re.escape(name) for name in lora.target_modules)
    return rf".*language_model.*\.({names})"


def lora_config(lora: LoraParams) -> Any:
    """The ``peft.LoraConfig`` of the transformers backend (training may pass it to TRL as ``peft_config``).

    >>> lora_config(LoraParams(16, 16, 0.0, ("q_proj",))).r
    16
    """
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                      target_modules=lora_target_regex(lora), task_type="CAUSAL_LM")


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def language_linear_names(net: Any) -> set[str]:
    """Leaf names of the linear layers under the language model (``q_proj``, ``down_proj``, ...).

    bitsandbytes' ``Linear4bit`` subclasses ``torch.nn.Linear``, so a 4-bit model answers the same.
    """
    return {name.rsplit(".", 1)[-1] for name, module in net.named_modules()
            if isinstance(module, torch.nn.Linear) and re.fullmatch(r".*language_model.*", name)}


def check_lora_targets(net: Any, lora: LoraParams) -> None:
    """Every ``lora.target_modules`` name must be a linear layer of the language model, before training.

    Otherwise PEFT fails deep inside training setup ("Target modules ... not found"), or, with a list
    where only some names exist, silently trains fewer modules than params say.
    """
    present = language_linear_names(net)
    unknown = [name for name in lora.target_modules if name not in present]
    if unknown:
        raise ConfigError(
            f"params.yaml: profiles.<profile>.lora.target_modules = {list(lora.target_modules)}: "
            f"{', '.join(map(repr, unknown))} is not a linear layer of this model's language model; its "
            f"linear layers are: {', '.join(sorted(present)) or '(none)'}")


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def _source(model: ModelParams, model_dir: Path) -> tuple[str, str | None, dict]:
    """(what from_pretrained receives, revision, pin), checking the pin against params and the model's
    config.json (Qwen3-VL, complete files) before anything is allocated."""
    pin = model_pin(model_dir)
    expected_kind = KIND_BUILT if model.is_built_offline else KIND_HUB
    requested = pin.get("requested_revision", pin["revision"])
    if pin["id"] != model.id or pin["backend"] != model.backend or pin["kind"] != expected_kind or (
            pin["kind"] == KIND_HUB and requested != requested_revision(model)):
        raise CorruptInputError(
            f"{Path(model_dir) / PIN_FILE}: pins {pin['id']}@{requested} ({pin['backend']}, "
            f"{pin['kind']}) but params.yaml has model id {model.id!r}, revision {model.revision!r}, backend "
            f"{model.backend!r} ({expected_kind}); "
            "re-run the model stage (dvc repro) so that the model folder matches params")
    if pin["kind"] == KIND_BUILT:
        check_built_folder(Path(model_dir))
        return str(model_dir), None, pin
    model_config(model.id, pin["revision"])  # one line, fast, when neither cache nor network has it
    return model.id, pin["revision"], pin


def load_processor(model: ModelParams, model_dir: Path) -> Any:
    """The processor alone (cheap): used to check prompt lengths before the model is loaded.

    Built models load with the image-only processor; hub models with ``AutoProcessor``, falling
    back to the image-only processor when AutoProcessor returns a bare tokenizer (no torchvision).
    """
    source, revision, pin = _source(model, model_dir)
    return _processor(source, revision, pin)


def _processor(source: str, revision: str | None, pin: dict) -> Any:
    processor_cls = image_only_processor_class()
    kwargs = {"revision": revision, "local_files_only": offline()} if pin["kind"] == KIND_HUB else {}
    try:
        if pin["kind"] == KIND_BUILT:
            return processor_cls.from_pretrained(source)
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(source, **kwargs)
        if getattr(processor, "image_processor", None) is None:
            log.info("AutoProcessor gave no image processor for %s; using the image-only processor", source)
            processor = processor_cls.from_pretrained(source, **kwargs)
        return processor
    except OSError as exc:
        if pin["kind"] == KIND_HUB:
            raise not_available(pin["id"], revision, f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
        raise


def load_model_and_processor(model: ModelParams, model_dir: Path, *, lora: LoraParams | None = None,
                             adapter_dir: Path | None = None, for_training: bool = False,
                             seed: int | None = None) -> tuple[Any, Any]:
    """Load the pinned model and its processor for generation or training.

    - ``for_training=True`` with ``lora``: a fresh LoRA on the language model's ``lora.target_modules``
      (trainable; a name the model lacks is refused first), the rest frozen.
    - ``adapter_dir``: the trained adapter on top of the base model (post evaluation), verified
      (:mod:`vlrl.modeling.adapters`).
    - otherwise: the base model in eval/inference mode.

    ``seed`` (params ``seed``; required with ``for_training``) seeds the LoRA initialisation
    (``random_state`` on Unsloth). Before any weights load, the model folder or the hub config is
    checked (:mod:`vlrl.modeling.folders`, :mod:`vlrl.modeling.hub`).
    """
    if for_training and (lora is None or seed is None):
        raise ValueError("load_model_and_processor: for_training=True needs the lora params "
                         "(profiles.<profile>.lora) and the seed")
    if for_training and adapter_dir is not None:
        raise ValueError("load_model_and_processor: give either for_training (a fresh LoRA) or adapter_dir "
                         "(a trained adapter), not both")
    if adapter_dir is not None:
        check_adapter_dir(Path(adapter_dir))
    if model.backend == "unsloth":
        return _load_unsloth(model, model_dir, lora=lora, adapter_dir=adapter_dir,
                             for_training=for_training, seed=seed)
    return _load_transformers(model, model_dir, lora=lora, adapter_dir=adapter_dir,
                              for_training=for_training, seed=seed)


def _load_transformers(model: ModelParams, model_dir: Path, *, lora: LoraParams | None,
                       adapter_dir: Path | None, for_training: bool, seed: int | None) -> tuple[Any, Any]:
    from transformers import Qwen3VLForConditionalGeneration

    source, revision, pin = _source(model, model_dir)
    device = resolve_device(model)
    processor = _processor(source, revision, pin)
    # bf16 on CUDA as the reference; fp32 on CPU (bf16 matmuls are slow there and the tiny model is fp32).
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
    if pin["kind"] == KIND_HUB:
        kwargs.update(revision=revision, local_files_only=offline())
    try:
        net = Qwen3VLForConditionalGeneration.from_pretrained(source, **kwargs)
    except OSError as exc:
        if pin["kind"] == KIND_HUB:
            raise not_available(model.id, revision, f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
        raise
    net.to(device)
    if for_training:
        from peft import get_peft_model

        check_lora_targets(net, lora)
        torch.manual_seed(seed)  # LoRA A matrices are drawn at wrap time
        net = get_peft_model(net, lora_config(lora))
        net.train()
    elif adapter_dir is not None:
        net = load_adapter(net, Path(adapter_dir))
        net.eval()
    else:
        net.eval()
    return net, processor


#: Keywords of ``FastVisionModel.get_peft_model`` that place the LoRA as the reference notebook does
#: (language layers only, attention + MLP); an explicit ``target_modules`` list is then narrowed by
#: these flags (unsloth/models/vision.py, ``FastBaseModel.get_peft_model``: "Explicit target_modules
#: are constrained by the finetune_(vision|language|attention|mlp) filters").
UNSLOTH_LORA_PLACEMENT = {"finetune_vision_layers": False, "finetune_language_layers": True,
                          "finetune_attention_modules": True, "finetune_mlp_modules": True}


def _load_unsloth(model: ModelParams, model_dir: Path, *, lora: LoraParams | None,
                  adapter_dir: Path | None, for_training: bool, seed: int | None) -> tuple[Any, Any]:
    fast_vision_model = _import_unsloth()  # first: Unsloth must patch before peft/transformers load
    source, revision, pin = _source(model, model_dir)
    resolve_device(model)  # Unsloth's vision models need CUDA (docs/library-notes.md): name the knob
    # No local_files_only: Unsloth reads HF_HUB_OFFLINE itself and then loads from the cache only
    # (unsloth/models/loader_utils.py, _offline_aware_load), and every keyword here is a named
    # parameter of FastModel.from_pretrained (tests/test_gpu_contract.py checks it).
    kwargs: dict[str, Any] = {"load_in_4bit": model.load_in_4bit, "max_seq_length": model.max_seq_length,
                              "use_gradient_checkpointing": "unsloth" if for_training else False}
    if revision is not None:
        kwargs["revision"] = revision
    try:
        net, processor = fast_vision_model.from_pretrained(source, **kwargs)
    except OSError as exc:
        if pin["kind"] == KIND_HUB:
            raise not_available(model.id, revision, f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
        raise
    if pin["kind"] == KIND_BUILT:
        # A built folder's processor_config.json names vlrl's ImageOnlyQwen3VLProcessor, which Unsloth's
        # AutoProcessor chain cannot resolve: use the one vlrl builds.
        processor = _processor(source, revision, pin)
    if for_training:
        check_lora_targets(net, lora)
        net = fast_vision_model.get_peft_model(
            net,
            target_modules=list(lora.target_modules),
            **UNSLOTH_LORA_PLACEMENT,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            bias="none",
            random_state=seed,
            use_gradient_checkpointing="unsloth",
        )
        return net, processor
    if adapter_dir is not None:
        net = load_adapter(net, Path(adapter_dir))
    fast_vision_model.for_inference(net)
    return net, processor
