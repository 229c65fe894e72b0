"""What the real, pinned Unsloth says about the calls vlrl makes: run by tests/test_gpu_contract.py.

    UNSLOTH_ALLOW_CPU=1 PYTHONPATH=<unsloth --no-deps target dir> python tests/unsloth_probe.py OUT.json PARAMS

Runs in its own process (``import unsloth`` patches transformers/TRL/PEFT classes in the process that
imports it) and in a scratch working directory (Unsloth writes ``unsloth_compiled_cache/`` there).
Writes one JSON object; the test makes the assertions. On CPU, ``UNSLOTH_ALLOW_CPU=1`` lets
``import unsloth`` work without torchvision, triton or bitsandbytes (Unsloth then skips its TRL
trainer rewriting, unsloth/models/rl.py ``PatchFastRL``), which is enough to read signatures and
sources, and to run the GRPO rewriting by hand.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import json
import os
import re
import sys
import textwrap


def named_parameters(function) -> list[str]:
    """Parameters a caller can pass by name, ``**kwargs`` and ``*args`` excluded."""
    return [name for name, p in inspect.signature(function).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def literal_anchors(patch) -> tuple[str | None, list[str]]:
    """(TRL method a GRPO patch rewrites, the literal strings it anchors ``function.replace`` on)."""
    source = textwrap.dedent(inspect.getsource(patch))
    target = re.search(r'function_name\s*!=\s*"(\w+)"', source)
    tree = ast.parse(source)
    assigned = {node.targets[0].id: node.value.value for node in ast.walk(tree)
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    anchors = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "replace"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "function" and node.args):
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                anchors.append(first.value)
            elif isinstance(first, ast.Name) and first.id in assigned:
                anchors.append(assigned[first.id])
    return (target.group(1) if target else None), anchors


def main(out: str, params_path: str) -> None:
    importlib.import_module("unsloth")  # first, as on the GPU path: it patches transformers/TRL/PEFT
    from unsloth import FastModel, FastVisionModel
    from unsloth.models import loader_utils, rl
    from unsloth.models.rl_replacements import RL_FUNCTIONS
    from unsloth.models.vision import FastBaseModel
    trl = importlib.import_module("trl")
    grpo_trainer = importlib.import_module("trl.trainer.grpo_trainer")

    result: dict = {"versions": {name: importlib.metadata.version(name)
                                 for name in ("unsloth", "unsloth_zoo", "trl", "transformers", "peft")}}
    result["from_pretrained"] = named_parameters(inspect.unwrap(FastVisionModel.from_pretrained))
    result["get_peft_model"] = named_parameters(FastBaseModel.get_peft_model)
    result["fast_vision_model_is_fast_model"] = issubclass(FastVisionModel, FastModel)
    result["get_peft_model_forwards_kwargs"] = (
        "FastBaseModel.get_peft_model(model, *args, **kwargs)" in inspect.getsource(FastModel.get_peft_model))
    os.environ["HF_HUB_OFFLINE"] = "1"
    result["offline_env_read"] = loader_utils._get_effective_local_files_only({})
    del os.environ["HF_HUB_OFFLINE"]
    result["offline_env_unset"] = loader_utils._get_effective_local_files_only({})

    # Each GRPO patch: the TRL method it targets, whether it still changes it, and each literal anchor.
    trainer = grpo_trainer.GRPOTrainer
    patches = []
    for patch in RL_FUNCTIONS["grpo_trainer"]:
        target, anchors = literal_anchors(patch)
        entry = {"patch": patch.__name__, "target": target, "exists": bool(target) and hasattr(trainer, target)}
        if entry["exists"]:
            original = inspect.getsource(getattr(trainer, target))
            entry["changes_source"] = patch(target, original) != original
            entry["anchors"] = {anchor: anchor in original for anchor in anchors}
        patches.append(entry)
    result["grpo_patches"] = patches

    # The rewriting Unsloth does on a GPU at import, run by hand: the patched trainer and config.
    pristine_config = trl.GRPOConfig
    rl._patch_trl_rl_trainers_impl("grpo_trainer")
    generated = sys.modules["UnslothGRPOTrainer"]  # Unsloth's generated module (its classes keep TRL's names)
    result["patched_trainer"] = trl.GRPOTrainer is generated.UnslothGRPOTrainer
    result["patched_config"] = trl.GRPOConfig is generated.UnslothGRPOConfig is not pristine_config

    # vlrl's GRPOConfig for the full profile, both GSPO presets, built as the train stage builds it on a
    # GPU: after the rewriting, so `from trl import GRPOConfig` in vlrl.training is Unsloth's (its
    # __init__ may override values: they are compared with plain TRL's in the test). bf16 check patched.
    import dataclasses

    import transformers.training_args

    from vlrl.config import load_params
    from vlrl.rewards import build_reward_functions

    transformers.training_args.is_torch_bf16_gpu_available = lambda: True
    from vlrl.training.trainer import build_grpo_config

    params = load_params(params_path)
    full = params.profile("full")
    _, weights = build_reward_functions(params.rewards)
    result["vlrl_configs"] = {}
    for preset in ("reference", "paper"):
        config = build_grpo_config(full.train, dataclasses.replace(params.gspo, preset=preset), params.seed,
                                   os.path.abspath("ckpt"), device="cuda", reward_weights=weights)
        result["vlrl_config_is_unsloths"] = type(config) is generated.UnslothGRPOConfig
        result["vlrl_configs"][preset] = {k: v for k, v in config.to_dict().items()
                                          if isinstance(v, (bool, int, float, str, type(None)))}
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
