"""LoRA adapter folders: checked before any model loads, loaded onto the base model.

Import order: PEFT is imported inside :func:`load_adapter` (see :mod:`vlrl.modeling`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlrl.errors import CorruptInputError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class AdapterError(CorruptInputError):
    """A LoRA adapter folder is missing, unreadable, or does not fit the base model."""


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_adapter_dir(adapter_dir: Path) -> None:
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


def load_adapter(net: Any, adapter_dir: Path) -> Any:
    """The trained adapter on top of ``net`` (inference mode)."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(net, str(adapter_dir), is_trainable=False)
    except Exception as exc:  # safetensors/PEFT raise many types for a truncated or mismatched file
        raise AdapterError(f"{adapter_dir}: the adapter could not be loaded onto the base model "
                           f"({type(exc).__name__}: {exc}); it is corrupt or was trained on another "
                           "model: re-run the train stage") from exc

