"""Model loading: LoRA targeting, the transformers backend on the tiny model, adapters (verified after
loading), model folders (checked before any weights), hub pins resolved to a commit (against a fake
hub), and the unsloth backend against a fake ``unsloth`` module (no GPU here; the real one is marked gpu).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fakes import COMMIT, UNSLOTH, FakeFastVisionModel, fake_hub, install_fake_unsloth
from helpers import FIXTURE_PARAMS, ROOT, raw_params, write_params
from vlrl import modeling
from vlrl.config import GenerationParams, LoraParams, ModelParams, TinyModelBuild
from vlrl.errors import ConfigError, CorruptInputError, EnvironmentProblem, VlrlError
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
    pytest.param(_corrupt_weights, "adapter_model.safetensors: unreadable", id="truncated-weights"),
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
    assert "`hf download vlrl-tests/no-such-model --revision 0123abc` (or unset HF_HUB_OFFLINE once)" in text


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
# Adapters are verified after loading: a mismatched or untrained adapter never evaluates as "post"
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def trained_adapter(built_dir, tmp_path) -> Path:
    """An adapter with non-zero B matrices (a trained one), saved as the train stage saves it."""
    model, _ = load_model_and_processor(TINY, built_dir, lora=LORA, for_training=True, seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def _rewrite_weights(adapter: Path, change) -> None:
    path = adapter / "adapter_model.safetensors"
    save_file(change(load_file(str(path))), str(path))


def _other_module_paths(tensors: dict) -> dict:
    # As an adapter trained on a model whose text layers live elsewhere: PEFT injects fresh LoRA
    # modules from adapter_config.json, finds none of the file's keys, and only warns.
    return {k.replace("language_model", "text_model"): v for k, v in tensors.items()}


def _one_module_missing(tensors: dict) -> dict:
    return {k: v for k, v in tensors.items() if "v_proj" not in k}


def _extra_layer(tensors: dict) -> dict:
    extra = {k.replace("layers.0.", "layers.7."): v.clone() for k, v in tensors.items() if "layers.0." in k}
    return {**tensors, **extra}


def _untrained(tensors: dict) -> dict:
    return {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in tensors.items()}


def _nan_weight(tensors: dict) -> dict:
    first = sorted(tensors)[0]
    return {**tensors, first: torch.full_like(tensors[first], float("nan"))}


@pytest.mark.parametrize(("change", "message"), [
    pytest.param(_other_module_paths, "does not fit the base model .28 LoRA key.s. of the model missing from the "
                 "file, 28 in the file unused",
                 id="trained-on-another-model"),
    pytest.param(_one_module_missing, "does not fit the base model .4 LoRA key.s. of the model missing from the "
                 "file, 0 in the file", id="a-module-missing"),
    pytest.param(_extra_layer, "0 LoRA key.s. of the model missing from the file, 14 in the file unused",
                 id="trained-on-a-deeper-model"),
    pytest.param(_untrained, "every LoRA B matrix of the loaded model is zero", id="untrained-adapter"),
    pytest.param(_nan_weight, "hold NaN or inf", id="diverged-nan-weights"),
])
def test_adapter_that_would_evaluate_the_baseline_is_refused(built_dir, trained_adapter, change, message):
    _rewrite_weights(trained_adapter, change)
    with pytest.raises(AdapterError, match=message) as info:
        load_model_and_processor(TINY, built_dir, adapter_dir=trained_adapter)
    assert str(trained_adapter) in str(info.value) and "\n" not in str(info.value)
    assert "re-run the train stage" in str(info.value)


def test_trained_adapter_passes_the_verification(built_dir, trained_adapter):
    model, _ = load_model_and_processor(TINY, built_dir, adapter_dir=trained_adapter)
    assert any(p.count_nonzero() for n, p in model.named_parameters() if "lora_B" in n)


# ------------------------------------------------------------------------------------------------
# LoRA targets are checked against the model before training
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("targets", "unknown"), [
    pytest.param(("q_proj", "qkv_proj"), "'qkv_proj'", id="typo"),
    pytest.param(("q_proj", "qkv"), "'qkv'", id="a-vision-tower-layer"),
    pytest.param(("lm_head",), "'lm_head'", id="the-output-head"),
])
def test_lora_target_the_model_lacks_is_refused_at_load(built_dir, targets, unknown):
    with pytest.raises(ConfigError, match=f"lora.target_modules = .*{unknown} is not a linear layer of this "
                                          "model's language model; its linear layers are: down_proj, "
                                          "gate_proj, k_proj"):
        load_model_and_processor(TINY, built_dir, lora=dataclasses.replace(LORA, target_modules=targets),
                                 for_training=True, seed=1)


def test_lora_on_fewer_modules_wraps_exactly_those(built_dir):
    model, _ = load_model_and_processor(TINY, built_dir, lora=dataclasses.replace(
        LORA, target_modules=("q_proj", "v_proj")), for_training=True, seed=1)
    wrapped = {n.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert wrapped == {"q_proj", "v_proj"}


# ------------------------------------------------------------------------------------------------
# Model folders: checked whole, before any weights are allocated
# ------------------------------------------------------------------------------------------------


def _delete(name):
    return lambda folder: (folder / name).unlink()


def _write(name, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


def _truncate(name):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:-100])


def _append(name):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes() + b"\0" * 16)


def _edit_config(**changes):
    def edit(folder):
        config = json.loads((folder / "config.json").read_text())
        for key, value in changes.items():
            *parents, leaf = key.split("__")
            node = config
            for parent in parents:
                node = node[parent]
            node[leaf] = value
        (folder / "config.json").write_text(json.dumps(config))
    return edit


def _image_pad_renumbered(folder):
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    for token in tokenizer["added_tokens"]:
        if token["content"] == "<|image_pad|>":
            token["id"] += 1
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))


@pytest.mark.parametrize(("damage", "file", "message"), [
    pytest.param(_delete("config.json"), "config.json", "not found", id="no-config-would-build-a-default-8b-model"),
    pytest.param(_write("config.json", b"{ not json"), "config.json", "not valid JSON", id="config-not-json"),
    pytest.param(_edit_config(model_type="llama", architectures=["LlamaForCausalLM"]), "config.json",
                 "declares model_type 'llama'", id="config-of-another-architecture"),
    pytest.param(_edit_config(text_config__hidden_size=4096, text_config__vocab_size=151936), "config.json",
                 r"declares vocab_size x hidden_size = \[151936, 4096\], but the weights hold an embedding of",
                 id="config-declares-a-bigger-model"),
    pytest.param(_edit_config(text_config__num_hidden_layers=36), "config.json", "declares 36 text layers",
                 id="config-declares-more-layers"),
    pytest.param(_write("model.safetensors", b""), "model.safetensors", "not a safetensors file .0 bytes",
                 id="empty-weights"),
    pytest.param(_truncate("model.safetensors"), "model.safetensors", "truncated", id="truncated-weights"),
    pytest.param(_append("model.safetensors"), "model.safetensors", "trailing bytes", id="padded-weights"),
    pytest.param(_write("model.safetensors", bytes(range(256)) * 64), "model.safetensors",
                 "not a safetensors file", id="random-weights"),
    pytest.param(_delete("model.safetensors"), "model.safetensors", "not found", id="no-weights"),
    pytest.param(_delete("tokenizer.json"), "tokenizer.json", "not found", id="no-tokenizer"),
    pytest.param(_write("tokenizer.json", b"\xff\xfe"), "tokenizer.json", "not valid JSON", id="tokenizer-garbage"),
    pytest.param(_write("tokenizer.json", b"{}"), "tokenizer.json", "not a tokenizers file", id="tokenizer-empty"),
    pytest.param(_image_pad_renumbered, "tokenizer.json", "tokenizer and model do not belong together",
                 id="tokenizer-of-another-model"),
    pytest.param(_delete("processor_config.json"), "processor_config.json", "not found", id="no-processor"),
])
def test_broken_model_folder_is_one_line_naming_the_file(built_dir, tmp_path, monkeypatch, damage, file, message):
    from transformers import Qwen3VLForConditionalGeneration

    folder = tmp_path / "tiny" / "model"
    shutil.copytree(built_dir, folder)
    damage(folder)

    def must_not_allocate(*args, **kwargs):
        raise AssertionError("weights were loaded before the folder was checked")

    monkeypatch.setattr(Qwen3VLForConditionalGeneration, "from_pretrained", must_not_allocate)
    with pytest.raises(VlrlError, match=message) as info:
        load_model_and_processor(TINY, folder)
    text = str(info.value)
    assert text.startswith(str(folder / file)) and "\n" not in text
    assert f"delete {folder} and run `dvc repro model@tiny`" in text


def test_generate_stage_on_a_folder_without_config_fails_in_one_line(built_dir, tiny_splits, tmp_path):
    import subprocess

    folder = tmp_path / "model"
    shutil.copytree(built_dir, folder)
    (folder / "config.json").unlink()
    done = subprocess.run([sys.executable, "stages/generate.py", "--profile", "tiny", "--params", str(FIXTURE_PARAMS),
                           "--model-dir", str(folder), "--splits-dir", str(tiny_splits),
                           "--out", str(tmp_path / "out.jsonl")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == (f"stages/generate.py: error: {folder / 'config.json'}: not found; "
                                            f"delete {folder} and run `dvc repro model@<profile>`")
    assert not (tmp_path / "out.jsonl").exists()


# ------------------------------------------------------------------------------------------------
# Hub models: the model stage pins a commit, later stages load by it (fake hub: no network here)
# ------------------------------------------------------------------------------------------------

HUB_MAIN = dataclasses.replace(HUB, revision="main")


def test_model_stage_pins_the_commit_that_main_names(tmp_path, monkeypatch):
    requests = fake_hub(monkeypatch, tmp_path / "hub", {HUB.id: {"main": COMMIT}}, cached=False)
    pin = modeling.pin_hub_model(HUB_MAIN, tmp_path / "model")
    assert pin == {"id": HUB.id, "revision": COMMIT, "backend": "transformers", "kind": "hub",
                   "requested_revision": "main"}
    assert model_pin(tmp_path / "model") == pin
    assert requests == [f"model_info {HUB.id}@main", f"model_info {HUB.id}@{COMMIT}",
                        f"download {HUB.id}@{COMMIT}/config.json"]


def test_later_stages_load_by_the_pinned_commit_not_by_main(tmp_path, monkeypatch):
    fake = install_fake_unsloth(monkeypatch)
    fake_hub(monkeypatch, tmp_path / "hub", {UNSLOTH.id: {"main": COMMIT}})
    modeling.pin_hub_model(UNSLOTH, tmp_path / "model")
    # main moves on the hub after the pin: the pinned commit still loads
    fake_hub(monkeypatch, tmp_path / "hub", {UNSLOTH.id: {"main": "f" * 40, COMMIT: COMMIT}})
    load_model_and_processor(UNSLOTH, tmp_path / "model")
    assert fake.calls[0][2]["revision"] == COMMIT


@pytest.mark.parametrize(("reachable", "cached", "outcome"), [
    pytest.param(True, False, COMMIT, id="online"),
    pytest.param(False, True, COMMIT, id="no-network-but-cached"),
    pytest.param(False, False, ModelNotAvailableError, id="neither-network-nor-cache"),
])
def test_revision_resolves_from_the_hub_else_the_cache(tmp_path, monkeypatch, reachable, cached, outcome):
    fake_hub(monkeypatch, tmp_path / "hub", {HUB.id: {"main": COMMIT}}, reachable=reachable, cached=cached)
    if isinstance(outcome, str):
        assert modeling.resolve_revision(HUB.id, "main") == outcome
        return
    with pytest.raises(outcome, match=r"not in the local Hugging Face cache and the hub could not be reached "
                                      r"\(ConnectError: .Errno -2. Name or service not known\)"):
        modeling.resolve_revision(HUB.id, "main")


def test_offline_uses_only_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests = fake_hub(monkeypatch, tmp_path / "hub", {HUB.id: {"main": COMMIT}})
    assert modeling.pin_hub_model(HUB_MAIN, tmp_path / "model")["revision"] == COMMIT
    assert requests == []


@pytest.mark.parametrize(("model_id", "revision", "message"), [
    pytest.param("org/missing", "main", "model.id = 'org/missing': no such model on the hub", id="unknown-id"),
    pytest.param(HUB.id, "v9", "model.revision = 'v9': the hub has no such revision", id="unknown-revision"),
])
def test_hub_answers_that_the_model_does_not_exist(tmp_path, monkeypatch, model_id, revision, message):
    fake_hub(monkeypatch, tmp_path / "hub", {HUB.id: {"main": COMMIT}}, cached=False)
    with pytest.raises(ConfigError, match=message):
        modeling.resolve_revision(model_id, revision)


def test_pin_of_another_revision_asks_for_the_model_stage(tmp_path, monkeypatch):
    fake_hub(monkeypatch, tmp_path / "hub", {HUB.id: {"main": COMMIT, "v2": "e" * 40}})
    modeling.pin_hub_model(HUB_MAIN, tmp_path / "model")
    with pytest.raises(CorruptInputError, match="pins vlrl-tests/no-such-model@main .* revision 'v2'.*re-run the "
                                                "model stage"):
        load_model_and_processor(dataclasses.replace(HUB, revision="v2"), tmp_path / "model")


def test_hub_config_of_another_architecture_is_refused_before_loading(tmp_path, monkeypatch):
    from fakes import QWEN3_VL_CONFIG

    monkeypatch.setitem(QWEN3_VL_CONFIG, "model_type", "llava")
    fake_hub(monkeypatch, tmp_path / "hub", {HUB.id: {"main": COMMIT}})
    with pytest.raises(CorruptInputError, match=f"{HUB.id}@{COMMIT[:12]}/config.json: declares model_type 'llava'"):
        modeling.pin_hub_model(HUB_MAIN, tmp_path / "model")


def test_model_stage_offline_without_cache_fails_fast_in_one_line(tmp_path):
    import subprocess
    import time

    raw = raw_params()
    write_params(tmp_path / "params.yaml", raw)
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "stages/model.py", "--profile", "full", "--params",
                           str(tmp_path / "params.yaml"), "--splits-dir", str(tmp_path / "splits"), "--out",
                           str(tmp_path / "model")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 1 and time.monotonic() - started < 30
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("stages/model.py: error: model 'unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit' "
                                  "(revision 'main') is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    assert not (tmp_path / "model").exists()


# ------------------------------------------------------------------------------------------------
# Unsloth backend against a fake module (the real one needs CUDA: see the gpu-marked test, and
# tests/test_gpu_contract.py, which checks the keywords recorded here against the real signatures)
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def fake_unsloth(monkeypatch, tmp_path):
    fake = install_fake_unsloth(monkeypatch)
    fake_hub(monkeypatch, tmp_path / "hub", {UNSLOTH.id: {"main": COMMIT}})
    modeling.pin_hub_model(UNSLOTH, tmp_path / "model")
    fake.calls = []
    return tmp_path / "model"


def test_unsloth_training_uses_the_reference_lora(fake_unsloth):
    model, processor = load_model_and_processor(UNSLOTH, fake_unsloth, lora=LoraParams(16, 16, 0.0,
                                                modeling.DEFAULT_LORA_TARGETS), for_training=True, seed=3407)
    (load, load_args, load_kwargs), (peft, _, peft_kwargs) = FakeFastVisionModel.calls
    assert (load, load_args) == ("from_pretrained", (UNSLOTH.id,))
    assert load_kwargs == {"load_in_4bit": True, "max_seq_length": 16384, "revision": COMMIT,
                           "use_gradient_checkpointing": "unsloth"}
    assert peft == "get_peft_model"
    assert peft_kwargs == {
        "target_modules": list(modeling.DEFAULT_LORA_TARGETS),
        "finetune_vision_layers": False, "finetune_language_layers": True, "finetune_attention_modules": True,
        "finetune_mlp_modules": True, "r": 16, "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none",
        "random_state": 3407, "use_gradient_checkpointing": "unsloth"}
    assert (model.name, processor.name) == ("peft-net", "processor")


def test_unsloth_applies_the_configured_lora_targets(fake_unsloth):
    load_model_and_processor(UNSLOTH, fake_unsloth, lora=LoraParams(16, 16, 0.0, ("q_proj", "v_proj")),
                             for_training=True, seed=3407)
    assert FakeFastVisionModel.calls[1][2]["target_modules"] == ["q_proj", "v_proj"]


def test_unsloth_refuses_a_lora_target_the_model_lacks(fake_unsloth):
    with pytest.raises(ConfigError, match="'qkv' is not a linear layer of this model's language model"):
        load_model_and_processor(UNSLOTH, fake_unsloth, lora=LoraParams(16, 16, 0.0, ("q_proj", "qkv")),
                                 for_training=True, seed=3407)
    assert [c[0] for c in FakeFastVisionModel.calls] == ["from_pretrained"]  # never reached get_peft_model


def test_unsloth_generation_switches_to_inference_mode(fake_unsloth):
    model, _ = load_model_and_processor(UNSLOTH, fake_unsloth)
    assert [c[0] for c in FakeFastVisionModel.calls] == ["from_pretrained", "for_inference"]
    assert FakeFastVisionModel.calls[1][1] == (model,)


def test_unsloth_offline_is_left_to_unsloth(fake_unsloth, monkeypatch):
    """Unsloth reads HF_HUB_OFFLINE itself (tests/test_gpu_contract.py checks it); vlrl passes only named
    parameters of FastModel.from_pretrained, and local_files_only is not one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_model_and_processor(UNSLOTH, fake_unsloth)
    assert "local_files_only" not in FakeFastVisionModel.calls[0][2]


def test_unsloth_on_a_built_folder_uses_vlrl_s_processor(built_dir, tmp_path, monkeypatch):
    install_fake_unsloth(monkeypatch)
    shutil.copytree(built_dir, tmp_path / "model")
    params = dataclasses.replace(TINY, backend="unsloth", load_in_4bit=True, device="cuda")
    write_pin(tmp_path / "model", model_id=params.id, revision="sha256:test", backend="unsloth",
              kind=modeling.KIND_BUILT)
    _, processor = load_model_and_processor(params, tmp_path / "model")
    assert isinstance(processor, image_only_processor_class())
    assert FakeFastVisionModel.calls[0][1] == (str(tmp_path / "model"),)


def test_unsloth_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "unsloth", None)  # makes `import unsloth` raise ImportError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    write_pin(tmp_path, model_id=UNSLOTH.id, revision=COMMIT, backend="unsloth", kind=modeling.KIND_HUB)
    with pytest.raises(EnvironmentProblem, match="make install-gpu"):
        load_model_and_processor(UNSLOTH, tmp_path)


def test_cuda_requested_without_cuda_names_the_key(monkeypatch, built_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"model.device = 'cuda'"):
        load_model_and_processor(dataclasses.replace(TINY, device="cuda"), built_dir)


@pytest.mark.gpu
def test_unsloth_on_a_gpu_loads_the_tiny_model_4bit_with_lora(built_dir, tmp_path, handmade_split):
    """Needs CUDA and `make install-gpu`; `make gpu-smoke` runs the same path end to end."""
    pytest.importorskip("unsloth")
    shutil.copytree(built_dir, tmp_path / "model")
    params = dataclasses.replace(TINY, backend="unsloth", load_in_4bit=True, device="cuda")
    write_pin(tmp_path / "model", model_id=params.id, revision="sha256:test", backend="unsloth",
              kind=modeling.KIND_BUILT)
    model, _ = load_model_and_processor(params, tmp_path / "model", lora=LORA, for_training=True, seed=1)
    assert any(p.requires_grad for p in model.parameters())
    model, processor = load_model_and_processor(params, tmp_path / "model")
    assert isinstance(processor, image_only_processor_class())
    records = generate_completions(model, processor, handmade_split(4), prompt_template="{question}",
                                   generation=GenerationParams(4, 8), seed=0, progress=False)
    assert len(records) == 4
