"""Model loading: the ONLY module that knows Unsloth from plain transformers.

Two backends, chosen by ``profiles.<p>.model.backend``:

- ``unsloth`` (CUDA only): ``FastVisionModel.from_pretrained(id, load_in_4bit=True, max_seq_length=...)``,
  LoRA through ``FastVisionModel.get_peft_model`` on the language layers only (the reference
  notebook's settings, FACTS.md), ``FastVisionModel.for_inference`` before generation.
- ``transformers`` (any device; the CPU default): ``Qwen3VLForConditionalGeneration`` + PEFT LoRA on
  the same modules (:func:`lora_target_regex`).

Import order (why transformers/peft are imported inside functions here): Unsloth patches
transformers, TRL and PEFT classes when it is imported, so ``import unsloth`` must run before any of
them. This module therefore imports only the standard library and torch at module level; the
unsloth path imports ``unsloth`` first and then the rest. A script that imports ``trl`` (training)
must call :func:`prepare_backend` before that import, e.g.::

    from vlrl import modeling
    modeling.prepare_backend(params.model)   # imports unsloth on the unsloth backend, else nothing
    from vlrl import training                # imports trl / transformers / peft

The model folder (``data/<profile>/model``, written by the model stage) always holds
``model_pin.json``: ``{"id", "revision", "backend", "kind"}``. ``kind`` is ``"built"`` for the tiny
model (the folder also holds its weights, tokenizer and processor; ``revision`` is a hash of the
weights) and ``"hub"`` for hub models (loaded from the hub or the local HF cache at the pinned
revision; ``local_files_only`` when ``HF_HUB_OFFLINE`` is set). No ``trust_remote_code``; safetensors
only. Load a built folder's processor with :func:`load_processor`, not ``AutoProcessor``: its
``ImageOnlyQwen3VLProcessor`` is not registered with transformers, and AutoProcessor would silently
return the bare tokenizer (FACTS.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vlrl.config import LoraParams, ModelParams
from vlrl.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

PIN_FILE = "model_pin.json"
#: Written by the model stage into a built (tiny) model folder.
KIND_BUILT = "built"
#: Pin of a hub model: loaded by id@revision from the hub or the HF cache.
KIND_HUB = "hub"

#: Qwen's vision placeholders. Plain ``generate`` may emit them (FACTS.md); generation suppresses
#: them as TRL does in training.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
#: Tokens that end an assistant turn (Qwen's generation_config uses both as eos).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")

#: The reference LoRA targets: attention and MLP projections of the language model.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ModelNotAvailableError(RuntimeError):
    """The pinned model is neither on disk nor reachable on the hub."""


class AdapterError(RuntimeError):
    """A LoRA adapter folder is missing or unreadable."""


# ------------------------------------------------------------------------------------------------
# Pins
# ------------------------------------------------------------------------------------------------


def write_pin(model_dir: Path, *, model_id: str, revision: str | None, backend: str, kind: str) -> dict:
    """Write ``model_pin.json`` into a model folder (the model stage does this); returns the pin.

    >>> import tempfile
    >>> write_pin(Path(tempfile.mkdtemp()), model_id="org/m", revision="abc", backend="unsloth", kind="hub")
    {'id': 'org/m', 'revision': 'abc', 'backend': 'unsloth', 'kind': 'hub'}
    """
    pin = {"id": model_id, "revision": revision, "backend": backend, "kind": kind}
    atomic_write_json(Path(model_dir) / PIN_FILE, pin)
    return pin


def model_pin(model_dir: Path) -> dict:
    """The pin of a model folder: ``{"id", "revision", "backend", "kind"}`` (for reports and loading).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = write_pin(d, model_id="tiny-qwen3-vl", revision="sha256:0", backend="transformers", kind="built")
    >>> model_pin(d)["kind"]
    'built'
    """
    path = Path(model_dir) / PIN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; the model stage writes it "
                                f"(run `dvc repro model@<profile>` or stages/model.py)")
    try:
        pin = read_json(path)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); re-run the model stage") from exc
    missing = [k for k in ("id", "revision", "backend", "kind") if k not in pin]
    if missing or pin["kind"] not in (KIND_BUILT, KIND_HUB):
        raise ValueError(f"{path}: {pin!r}: expected keys id, revision, backend and kind "
                         f"({KIND_BUILT!r} or {KIND_HUB!r}); re-run the model stage")
    return pin


# ------------------------------------------------------------------------------------------------
# Backend selection and devices
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
        raise ImportError(
            f"params.yaml: model.backend = 'unsloth' but unsloth cannot be imported ({exc}); on a CUDA "
            "machine run `make install-gpu`, or set profiles.<profile>.model.backend: transformers") from exc
    return FastVisionModel


def resolve_device(model: ModelParams) -> str:
    """``cpu`` or ``cuda`` for ``model.device`` (``auto`` = cuda when available).

    >>> from vlrl.config import ModelParams
    >>> resolve_device(ModelParams("transformers", "x", None, False, 1024, "cpu"))
    'cpu'
    """
    if model.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if model.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("params.yaml: profiles.<profile>.model.device = 'cuda' but no CUDA device is "
                           "visible; use device: cpu (or auto) with backend: transformers")
    return model.device


def _offline() -> bool:
    """HF_HUB_OFFLINE read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


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
# The image-only processor (no torchvision)
# ------------------------------------------------------------------------------------------------


@functools.cache
def image_only_processor_class() -> type:
    """``ImageOnlyQwen3VLProcessor``: Qwen3VLProcessor without the video processor.

    ``Qwen3VLProcessor`` cannot be built without torchvision (its video processor), and
    ``AutoProcessor`` on such a folder silently returns only the tokenizer, which makes TRL treat the
    model as text-only (FACTS.md). This subclass declares just ``image_processor`` and ``tokenizer``
    (ProcessorMixin derives its sub-processors from the ``__init__`` signature) and is used with
    ``Qwen2VLImageProcessorPil``. Defined lazily so that importing this module does not import
    transformers (see the module docstring on Unsloth's import order).

    >>> image_only_processor_class().__name__
    'ImageOnlyQwen3VLProcessor'
    """
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            # Same token attributes as Qwen3VLProcessor.__init__, minus the video processor.
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
            self.vision_start_token, self.vision_end_token = "<|vision_start|>", "<|vision_end|>"
            self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
            self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)

    ImageOnlyQwen3VLProcessor.__module__ = __name__
    ImageOnlyQwen3VLProcessor.__qualname__ = "ImageOnlyQwen3VLProcessor"
    return ImageOnlyQwen3VLProcessor


def __getattr__(name: str) -> Any:
    """``vlrl.modeling.ImageOnlyQwen3VLProcessor`` resolves lazily (PEP 562), so pickling works."""
    if name == "ImageOnlyQwen3VLProcessor":
        return image_only_processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def vision_token_ids(processor: Any) -> list[int]:
    """Ids of the vision placeholder tokens present in the processor's tokenizer."""
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    return sorted({i for i in ids if i is not None and i != tokenizer.unk_token_id})


def end_of_turn_ids(processor: Any) -> list[int]:
    """Ids that end generation (``<|im_end|>``, ``<|endoftext|>``), present ones only."""
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in END_OF_TURN_TOKENS]
    ids = [i for i in ids if i is not None and i != tokenizer.unk_token_id]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def _source(model: ModelParams, model_dir: Path) -> tuple[str, str | None, dict]:
    """(what from_pretrained receives, revision, pin), checking the pin against params."""
    pin = model_pin(model_dir)
    expected_kind = KIND_BUILT if model.is_built_offline else KIND_HUB
    if pin["id"] != model.id or pin["backend"] != model.backend or pin["kind"] != expected_kind or (
            pin["kind"] == KIND_HUB and pin["revision"] != model.revision):
        raise ValueError(
            f"{Path(model_dir) / PIN_FILE}: pins {pin['id']}@{pin['revision']} ({pin['backend']}, "
            f"{pin['kind']}) but params.yaml has model id {model.id!r}, revision {model.revision!r}, backend "
            f"{model.backend!r} ({expected_kind}); "
            "re-run the model stage (dvc repro) so that the model folder matches params")
    if pin["kind"] == KIND_BUILT:
        return str(model_dir), None, pin
    return model.id, model.revision, pin


def _not_available(model_id: str, revision: str | None, exc: BaseException) -> ModelNotAvailableError:
    where = "HF_HUB_OFFLINE is set" if _offline() else "the hub could not be reached"
    return ModelNotAvailableError(
        f"model {model_id!r} (revision {revision!r}) is not in the local Hugging Face cache and {where} "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). To fix: on a machine with "
        f"network run `huggingface-cli download {model_id} --revision {revision or 'main'}` (or unset "
        "HF_HUB_OFFLINE once) to fill the cache, or set profiles.<profile>.model.id to a local model "
        "folder; the tiny profile needs no download.")


def load_processor(model: ModelParams, model_dir: Path) -> Any:
    """The processor alone (cheap): used to check prompt lengths before the model is loaded.

    Built models load with the image-only processor; hub models with ``AutoProcessor``, falling
    back to the image-only processor when AutoProcessor returns a bare tokenizer (no torchvision).
    """
    source, revision, pin = _source(model, model_dir)
    processor_cls = image_only_processor_class()
    kwargs = {"revision": revision, "local_files_only": _offline()} if pin["kind"] == KIND_HUB else {}
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
            raise _not_available(model.id, model.revision, exc) from exc
        raise


def load_model_and_processor(model: ModelParams, model_dir: Path, *, lora: LoraParams | None = None,
                             adapter_dir: Path | None = None, for_training: bool = False,
                             seed: int | None = None) -> tuple[Any, Any]:
    """Load the pinned model and its processor for generation or training.

    - ``for_training=True`` with ``lora``: a fresh LoRA on the language model's attention + MLP
      projections (trainable), the rest frozen.
    - ``adapter_dir``: the trained adapter on top of the base model (post evaluation).
    - otherwise: the base model in eval/inference mode.

    ``seed`` (params ``seed``; required with ``for_training``) seeds the LoRA initialisation
    (``random_state`` on Unsloth).

    >>> # model, processor = load_model_and_processor(params.model, Path("data/tiny/model"))
    """
    if for_training and (lora is None or seed is None):
        raise ValueError("load_model_and_processor: for_training=True needs the lora params "
                         "(profiles.<profile>.lora) and the seed")
    if for_training and adapter_dir is not None:
        raise ValueError("load_model_and_processor: give either for_training (a fresh LoRA) or adapter_dir "
                         "(a trained adapter), not both")
    if adapter_dir is not None:
        _check_adapter_dir(Path(adapter_dir))
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
    processor = load_processor(model, model_dir)
    # bf16 on CUDA as the reference; fp32 on CPU (bf16 matmuls are slow there and the tiny model is fp32).
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
    if pin["kind"] == KIND_HUB:
        kwargs.update(revision=revision, local_files_only=_offline())
    try:
        net = Qwen3VLForConditionalGeneration.from_pretrained(source, **kwargs)
    except OSError as exc:
        if pin["kind"] == KIND_HUB:
            raise _not_available(model.id, model.revision, exc) from exc
        raise
    net.to(device)
    if for_training:
        from peft import get_peft_model

        torch.manual_seed(seed)  # LoRA A matrices are drawn at wrap time
        net = get_peft_model(net, lora_config(lora))
        net.train()
    elif adapter_dir is not None:
        net = _load_adapter(net, Path(adapter_dir))
        net.eval()
    else:
        net.eval()
    return net, processor


def _load_unsloth(model: ModelParams, model_dir: Path, *, lora: LoraParams | None,
                  adapter_dir: Path | None, for_training: bool, seed: int | None) -> tuple[Any, Any]:
    fast_vision_model = _import_unsloth()  # first: Unsloth must patch before peft/transformers load
    source, revision, pin = _source(model, model_dir)
    resolve_device(model)  # Unsloth's vision models need CUDA (FACTS.md): fail with the knob named
    kwargs: dict[str, Any] = {"load_in_4bit": model.load_in_4bit, "max_seq_length": model.max_seq_length,
                              "use_gradient_checkpointing": "unsloth" if for_training else False}
    if revision is not None:
        kwargs["revision"] = revision
    if pin["kind"] == KIND_HUB and _offline():
        kwargs["local_files_only"] = True
    try:
        net, processor = fast_vision_model.from_pretrained(source, **kwargs)
    except OSError as exc:
        if pin["kind"] == KIND_HUB:
            raise _not_available(model.id, model.revision, exc) from exc
        raise
    if for_training:
        if tuple(sorted(lora.target_modules)) != tuple(sorted(DEFAULT_LORA_TARGETS)):
            log.warning("backend unsloth: LoRA targets come from finetune_attention_modules/"
                        "finetune_mlp_modules (all attention + MLP projections of the language model); "
                        "profiles.<profile>.lora.target_modules = %s is not applied as a list",
                        list(lora.target_modules))
        net = fast_vision_model.get_peft_model(
            net,
            finetune_vision_layers=False,
            finetune_language_layers=True,
            finetune_attention_modules=True,
            finetune_mlp_modules=True,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            bias="none",
            random_state=seed,
            use_gradient_checkpointing="unsloth",
        )
        return net, processor
    if adapter_dir is not None:
        net = _load_adapter(net, Path(adapter_dir))
    fast_vision_model.for_inference(net)
    return net, processor


# ------------------------------------------------------------------------------------------------
# Adapters
# ------------------------------------------------------------------------------------------------

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _check_adapter_dir(adapter_dir: Path) -> None:
    """Fail early, before any model loads, on a missing or incomplete adapter folder."""
    if not adapter_dir.is_dir():
        raise AdapterError(f"{adapter_dir}: adapter folder not found; run the train stage first "
                           "(dvc repro train@<profile>) or drop --adapter for the baseline")
    missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (adapter_dir / name).is_file()]
    if missing:
        raise AdapterError(f"{adapter_dir}: not a PEFT adapter folder (missing {', '.join(missing)}); "
                           "re-run the train stage")
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{adapter_dir / ADAPTER_CONFIG}: corrupt ({exc}); re-run the train stage"
                           ) from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterError(f"{adapter_dir / ADAPTER_CONFIG}: peft_type = "
                           f"{config.get('peft_type') if isinstance(config, dict) else config!r}: expected "
                           "'LORA'; re-run the train stage")


def _load_adapter(net: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(net, str(adapter_dir), is_trainable=False)
    except Exception as exc:  # safetensors/PEFT raise many types for a truncated or mismatched file
        raise AdapterError(f"{adapter_dir}: the adapter could not be loaded onto the base model "
                           f"({type(exc).__name__}: {exc}); it is corrupt or was trained on another "
                           "model: re-run the train stage") from exc


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads and restore the previous count (None: no change).

    CPU runs pin the count (``cpu_threads`` in params.yaml): results then do not depend on the core
    count (reduction order), and on a small model two threads gain little while a busy neighbour
    process makes them wait on each other (about 10x slower steps, measured on 2 cores).

    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
