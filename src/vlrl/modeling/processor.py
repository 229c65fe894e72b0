"""The image-only Qwen3-VL processor (no torchvision) and the token ids generation needs.

Pure of Unsloth: transformers is imported lazily, inside :func:`image_only_processor_class`, so that
importing this module does not import transformers (see :mod:`vlrl.modeling` on import order).
"""

from __future__ import annotations

import functools
from typing import Any

#: Qwen's vision placeholders. Plain ``generate`` may emit them (docs/library-notes.md); generation
#: suppresses them as TRL does in training.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
#: Tokens that end an assistant turn (Qwen's generation_config uses both as eos).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")


@functools.cache
def image_only_processor_class() -> type:
    """``ImageOnlyQwen3VLProcessor``: Qwen3VLProcessor without the video processor.

    ``Qwen3VLProcessor`` cannot be built without torchvision (its video processor), and
    ``AutoProcessor`` on such a folder silently returns only the tokenizer, which makes TRL treat the
    model as text-only (docs/library-notes.md). This subclass declares just ``image_processor`` and ``tokenizer``
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
    """``vlrl.modeling.processor.ImageOnlyQwen3VLProcessor`` resolves lazily (PEP 562), so pickling works."""
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

