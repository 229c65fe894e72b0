"""LoRA adapter folders: checked before any model loads, loaded onto the base model, then verified.

Why the verification: ``PeftModel.from_pretrained`` only WARNS when adapter keys are missing (PEFT
``peft_model.py``, "Found missing adapter keys while loading the checkpoint"). A mismatched adapter
then leaves the freshly initialised LoRA in place, whose B matrices are zero, so the "post" model IS the
base model and post-training metrics silently equal the baseline's. After loading, :func:`verify_adapter`
requires that LoRA modules exist, that the adapter file and the model hold the same ``lora_`` keys, and
that not every B matrix is zero; :func:`adapter_tensors` refuses non-finite weights (a diverged run
evaluated as "!!!!" completions otherwise). Each failure is one line naming the folder.

Import order: PEFT and safetensors are imported inside functions (see :mod:`vlrl.modeling`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlrl.errors import CorruptInputError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: How the fix reads in every adapter error.
_RETRAIN = "delete it and re-run the train stage (dvc repro train@<profile>)"


class AdapterError(CorruptInputError):
    """A LoRA adapter folder is missing, unreadable, or does not fit the base model."""


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


def adapter_tensors(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's tensors (CPU), refused when unreadable or not finite."""
    import torch
    from safetensors.torch import load_file

    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for truncated or random bytes
        raise AdapterError(f"{path}: unreadable ({type(exc).__name__}: {exc}); {_RETRAIN}") from exc
    bad = sorted(name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())
    if bad:
        raise AdapterError(f"{path}: {len(bad)} tensor(s) hold NaN or inf (first: {bad[0]}); the training "
                           f"diverged or the file is corrupt: {_RETRAIN}")
    return tensors


def verify_adapter(net: Any, adapter_dir: Path, tensors: dict[str, Any]) -> None:
    """The loaded model carries exactly the adapter's LoRA weights, and they are not a fresh LoRA."""
    from peft.utils import get_peft_model_state_dict

    expected = {k for k in get_peft_model_state_dict(net) if "lora_" in k}
    if not expected:
        raise AdapterError(f"{adapter_dir}: no LoRA module exists after loading the adapter (its target_modules "
                           f"match nothing in the base model); {_RETRAIN}")
    in_file = {k for k in tensors if "lora_" in k}
    missing, unexpected = sorted(expected - in_file), sorted(in_file - expected)
    if missing or unexpected:
        first = missing[0] if missing else unexpected[0]
        raise AdapterError(
            f"{adapter_dir}: the adapter does not fit the base model ({len(missing)} LoRA key(s) of the model "
            f"missing from the file, {len(unexpected)} in the file unused by the model; first: {first}); it "
            f"was trained on another model or setup: {_RETRAIN}")
    lora_b = [p for name, p in net.named_parameters() if "lora_B" in name]
    if not lora_b or all(int(p.count_nonzero()) == 0 for p in lora_b):
        raise AdapterError(f"{adapter_dir}: every LoRA B matrix of the loaded model is zero, so it equals the base "
                           f"model (an untrained or not loaded adapter); {_RETRAIN}")


def load_adapter(net: Any, adapter_dir: Path) -> Any:
    """The trained adapter on top of ``net`` (inference mode), verified (module docstring)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    tensors = adapter_tensors(adapter_dir)
    try:
        net = PeftModel.from_pretrained(net, str(adapter_dir), is_trainable=False)
    except Exception as exc:  # safetensors/PEFT raise many types for a truncated or mismatched file
        raise AdapterError(f"{adapter_dir}: the adapter could not be loaded onto the base model "
                           f"({type(exc).__name__}: {exc}); it is corrupt or was trained on another "
                           "model: re-run the train stage") from exc
    verify_adapter(net, adapter_dir, tensors)
    return net
