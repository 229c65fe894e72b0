"""Model loading: LoRA targeting, the transformers backend on the tiny model, adapters, pins, errors,
and the unsloth backend against a fake ``unsloth`` module (no GPU here; the real one is marked gpu).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from vlrl import modeling
from vlrl.config import GenerationParams, LoraParams, ModelParams, TinyModelBuild
from vlrl.errors import EnvironmentProblem
from vlrl.generation import generate_completions
from vlrl.modeling import (
    AdapterError,
    ModelNotAvailableError,
    image_only_processor_class,
    load_model_and_processor,
    lora_target_regex,
    model_pin,
    write_pin,
)
from vlrl.tiny_model import build_tiny_model

LORA = LoraParams(r=4, alpha=8, dropout=0.0, target_modules=modeling.DEFAULT_LORA_TARGETS)
TINY = ModelParams(backend="transformers", id="tiny-qwen3-vl", revision=None, load_in_4bit=False,
                   max_seq_length=1024, device="cpu", build=TinyModelBuild())
HUB = ModelParams(backend="transformers", id="vlrl-tests/no-such-model", revision="0123abc",
                  load_in_4bit=False, max_seq_length=1024, device="cpu")


@pytest.fixture(scope="module")
def built_dir(tmp_path_factory) -> Path:
    """An untrained tiny model folder with its pin (cheaper than the warm-started fixture)."""
    out = tmp_path_factory.mktemp("built") / "model"
    build_tiny_model(TINY.build, 0, out, ["How many bars are there?"])
    write_pin(out, model_id=TINY.id, revision="sha256:test", backend=TINY.backend, kind=modeling.KIND_BUILT)
    return out


@pytest.mark.parametrize(("name", "targeted"), [
    pytest.param("model.language_model.layers.0.self_attn.q_proj", True, id="language-attention"),
    pytest.param("model.language_model.layers.11.mlp.down_proj", True, id="language-mlp"),
    pytest.param("model.visual.blocks.0.attn.qkv", False, id="vision-attention"),
    pytest.param("model.visual.blocks.0.mlp.linear_fc1", False, id="vision-mlp"),
    pytest.param("model.visual.merger.linear_fc1", False, id="vision-merger"),
    pytest.param("lm_head", False, id="lm-head"),
    pytest.param("model.language_model.layers.0.self_attn.q_proj_extra", False, id="full-match-only"),
])
def test_lora_targets_only_the_language_model(name, targeted):
    assert bool(re.fullmatch(lora_target_regex(LORA), name)) is targeted


def test_tiny_model_loads_for_generation(built_dir):
    model, processor = load_model_and_processor(TINY, built_dir)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert not model.training
    assert isinstance(processor, image_only_processor_class())
    assert processor.image_processor is not None  # not a bare tokenizer: TRL must see a vision model
    # Picklable (data loaders and multiprocessing may copy it): the lazily built class resolves by name.
    assert type(pickle.loads(pickle.dumps(processor))) is type(processor)


def test_lora_for_training_touches_only_language_attention_and_mlp(built_dir):
    model, _ = load_model_and_processor(TINY, built_dir, lora=LORA, for_training=True, seed=1)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name and "language_model" in name for name in trainable)
    wrapped = {name.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for name in trainable}
    assert wrapped == set(LORA.target_modules)
    layers = TINY.build.text_layers
    assert len(trainable) == 2 * layers * len(LORA.target_modules)  # A and B per module


def test_lora_initialisation_follows_the_seed(built_dir):
    def lora_a(seed):
        model, _ = load_model_and_processor(TINY, built_dir, lora=LORA, for_training=True, seed=seed)
        return torch.cat([p.flatten() for n, p in model.named_parameters() if "lora_A" in n])

    assert torch.equal(lora_a(5), lora_a(5))
    assert not torch.equal(lora_a(5), lora_a(6))


def test_adapter_round_trip_gives_the_trained_model(built_dir, tmp_path, handmade_split):
    model, processor = load_model_and_processor(TINY, built_dir, lora=LORA, for_training=True, seed=1)
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    loaded, _ = load_model_and_processor(TINY, built_dir, adapter_dir=tmp_path / "adapter")
    base, _ = load_model_and_processor(TINY, built_dir)
    row = handmade_split(1)[0]
    enc = processor(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[row["image"]],
                    return_tensors="pt")
    model.eval()
    with torch.no_grad():
        trained, reloaded, plain = (m(**enc).logits for m in (model, loaded, base))
    assert torch.allclose(trained, reloaded, atol=1e-5)
    assert not torch.allclose(trained, plain, atol=1e-3)


def _corrupt_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 10)


def _corrupt_config(folder: Path) -> None:
    (folder / "adapter_config.json").write_text("{ not json")


def _wrong_peft_type(folder: Path) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "PREFIX_TUNING"}))


def _no_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").unlink()


@pytest.mark.parametrize(("damage", "message"), [
    pytest.param(_corrupt_weights, "could not be loaded", id="truncated-weights"),
    pytest.param(_corrupt_config, "corrupt", id="config-not-json"),
    pytest.param(_wrong_peft_type, "expected 'LORA'", id="not-a-lora"),
    pytest.param(_no_weights, "missing adapter_model.safetensors", id="weights-missing"),
])
def test_corrupt_adapter_is_a_clear_error(built_dir, tmp_path, damage, message):
    model, _ = load_model_and_processor(TINY, built_dir, lora=LORA, for_training=True, seed=1)
    model.save_pretrained(tmp_path / "adapter")
    damage(tmp_path / "adapter")
    with pytest.raises(AdapterError, match=message):
        load_model_and_processor(TINY, built_dir, adapter_dir=tmp_path / "adapter")


def test_missing_adapter_is_a_clear_error(built_dir, tmp_path):
    with pytest.raises(AdapterError, match="adapter folder not found; run the train stage"):
        load_model_and_processor(TINY, built_dir, adapter_dir=tmp_path / "nope")


def test_missing_hub_model_offline_names_the_id_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    write_pin(tmp_path, model_id=HUB.id, revision=HUB.revision, backend=HUB.backend, kind=modeling.KIND_HUB)
    with pytest.raises(ModelNotAvailableError) as info:
        load_model_and_processor(HUB, tmp_path)
    text = str(info.value)
    assert "'vlrl-tests/no-such-model'" in text and "0123abc" in text and "HF_HUB_OFFLINE" in text
    assert "huggingface-cli download vlrl-tests/no-such-model --revision 0123abc" in text


@pytest.mark.parametrize(("params", "message"), [
    pytest.param(dataclasses.replace(TINY, id="other-model"), "other-model", id="other-id"),
    pytest.param(dataclasses.replace(HUB, id="tiny-qwen3-vl"), "'0123abc', backend 'transformers' .hub.",
                 id="hub-params-on-built-dir"),
])
def test_pin_that_disagrees_with_params_asks_for_a_rebuild(built_dir, params, message):
    with pytest.raises(ValueError, match=f"{message}.*re-run the model stage"):
        load_model_and_processor(params, built_dir)


def test_missing_pin_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_pin.json: not found; the model stage writes it"):
        model_pin(tmp_path)


def test_for_training_needs_lora_and_seed(built_dir):
    with pytest.raises(ValueError, match="needs the lora params"):
        load_model_and_processor(TINY, built_dir, for_training=True, seed=1)
    with pytest.raises(ValueError, match="needs the lora params"):
        load_model_and_processor(TINY, built_dir, lora=LORA, for_training=True)


def test_model_module_does_not_import_transformers_at_import_time():
    """Unsloth must be imported before transformers/peft: vlrl.modeling may not pull them in."""
    import subprocess

    code = ("import sys, vlrl.modeling, vlrl.generation; "
            "print(sorted(m for m in ('transformers', 'peft', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------------
# Unsloth backend against a fake module (the real one needs CUDA: see the gpu-marked test)
# ------------------------------------------------------------------------------------------------

UNSLOTH = ModelParams(backend="unsloth", id="unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit",
                      revision="abc123", load_in_4bit=True, max_seq_length=16384, device="cuda")


class FakeFastVisionModel:
    calls: list[tuple[str, tuple, dict]] = []

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        cls.calls.append(("from_pretrained", args, kwargs))
        return types.SimpleNamespace(name="net"), types.SimpleNamespace(name="processor")

    @classmethod
    def get_peft_model(cls, *args, **kwargs):
        cls.calls.append(("get_peft_model", args, kwargs))
        return types.SimpleNamespace(name="peft-net")

    @classmethod
    def for_inference(cls, *args, **kwargs):
        cls.calls.append(("for_inference", args, kwargs))


@pytest.fixture()
def fake_unsloth(monkeypatch, tmp_path):
    FakeFastVisionModel.calls = []
    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastVisionModel=FakeFastVisionModel))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    write_pin(tmp_path, model_id=UNSLOTH.id, revision=UNSLOTH.revision, backend="unsloth",
              kind=modeling.KIND_HUB)
    return tmp_path


def test_unsloth_training_uses_the_reference_lora(fake_unsloth):
    model, processor = load_model_and_processor(UNSLOTH, fake_unsloth, lora=LoraParams(16, 16, 0.0,
                                                modeling.DEFAULT_LORA_TARGETS), for_training=True, seed=3407)
    (load, load_args, load_kwargs), (peft, _, peft_kwargs) = FakeFastVisionModel.calls
    assert (load, load_args) == ("from_pretrained", (UNSLOTH.id,))
    assert load_kwargs == {"load_in_4bit": True, "max_seq_length": 16384, "revision": "abc123",
                           "use_gradient_checkpointing": "unsloth"}
    assert peft == "get_peft_model"
    assert peft_kwargs == {
        "finetune_vision_layers": False, "finetune_language_layers": True, "finetune_attention_modules": True,
        "finetune_mlp_modules": True, "r": 16, "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none",
        "random_state": 3407, "use_gradient_checkpointing": "unsloth"}
    assert (model.name, processor.name) == ("peft-net", "processor")


def test_unsloth_generation_switches_to_inference_mode(fake_unsloth):
    model, _ = load_model_and_processor(UNSLOTH, fake_unsloth)
    assert [c[0] for c in FakeFastVisionModel.calls] == ["from_pretrained", "for_inference"]
    assert FakeFastVisionModel.calls[1][1] == (model,)


def test_unsloth_offline_loads_from_the_cache_only(fake_unsloth, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_model_and_processor(UNSLOTH, fake_unsloth)
    assert FakeFastVisionModel.calls[0][2]["local_files_only"] is True


def test_unsloth_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "unsloth", None)  # makes `import unsloth` raise ImportError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    write_pin(tmp_path, model_id=UNSLOTH.id, revision=UNSLOTH.revision, backend="unsloth",
              kind=modeling.KIND_HUB)
    with pytest.raises(EnvironmentProblem, match="make install-gpu"):
        load_model_and_processor(UNSLOTH, tmp_path)


def test_cuda_requested_without_cuda_names_the_key(monkeypatch, built_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"model.device = 'cuda'"):
        load_model_and_processor(dataclasses.replace(TINY, device="cuda"), built_dir)


@pytest.mark.gpu
def test_unsloth_on_a_gpu_loads_the_tiny_model_4bit_with_lora(built_dir, tmp_path, handmade_split):
    """Never run in this project's CI (no GPU, no unsloth); the path is exercised above with a fake."""
    pytest.importorskip("unsloth")
    shutil.copytree(built_dir, tmp_path / "model")
    params = dataclasses.replace(TINY, backend="unsloth", load_in_4bit=True, device="cuda")
    write_pin(tmp_path / "model", model_id=params.id, revision="sha256:test", backend="unsloth",
              kind=modeling.KIND_BUILT)
    model, _ = load_model_and_processor(params, tmp_path / "model", lora=LORA, for_training=True, seed=1)
    assert any(p.requires_grad for p in model.parameters())
    model, processor = load_model_and_processor(params, tmp_path / "model")
    records = generate_completions(model, processor, handmade_split(4), prompt_template="{question}",
                                   generation=GenerationParams(4, 8), seed=0, progress=False)
    assert len(records) == 4
