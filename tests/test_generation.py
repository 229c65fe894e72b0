"""Generation: batched equals one-at-a-time (greedy), records, suppression, seeds, and bad params."""

from __future__ import annotations

import dataclasses
import runpy
import sys

import pytest
import torch

from helpers import ROOT, edited, raw_params, write_params
from vlrl import generation as generation_module
from vlrl import modeling
from vlrl.config import ConfigError, GenerationParams, parse_params
from vlrl.errors import EnvironmentProblem
from vlrl.generation import check_prompt_lengths, generate_completions, prompt_token_counts
from vlrl.io import atomic_write_jsonl, read_jsonl
from vlrl.tiny_model import build_and_warm_start


@pytest.fixture(scope="module")
def warm_model(tiny_params, handmade_split, tmp_path_factory):
    """A tiny model warm-started on hand-made rows (no vlrl.data needed), plus a held-out split."""
    model_params = tiny_params.profile("tiny").model
    model_params = dataclasses.replace(model_params, build=dataclasses.replace(model_params.build,
                                                                               warm_start_steps=60))
    out = tmp_path_factory.mktemp("gen_model") / "model"
    build_and_warm_start(model_params, tiny_params.prompt.template, handmade_split(96, seed=1),
                         tiny_params.seed, out)
    model, processor = modeling.load_model_and_processor(model_params, out)
    return model, processor, handmade_split(24, seed=7)


def _generate(tiny_params, warm_model, n=None, **changes):
    model, processor, split = warm_model
    split = split if n is None else split.select(range(n))
    params = dataclasses.replace(tiny_params.profile("tiny").generation, **changes)
    return generate_completions(model, processor, split, prompt_template=tiny_params.prompt.template,
                                generation=params, seed=tiny_params.seed, progress=False)


def test_batched_equals_one_at_a_time_greedy(tiny_params, warm_model):
    batched = _generate(tiny_params, warm_model, batch_size=16)
    single = _generate(tiny_params, warm_model, batch_size=1)
    assert batched == single
    # The comparison is only meaningful if prompts of different lengths shared a left-padded batch.
    assert len({r["prompt_tokens"] for r in batched[:16]}) > 1


def test_records_have_the_agreed_fields_and_order(tiny_params, warm_model):
    records = _generate(tiny_params, warm_model)
    _, _, split = warm_model
    assert [r["pid"] for r in records] == list(split["pid"])
    fields = {"pid", "completion", "prompt_tokens", "completion_tokens", "truncated"}
    assert all(set(r) == fields for r in records)
    assert any("<SOLUTION>" in r["completion"] for r in records)  # warm-started: it speaks the format
    assert not any("<|" in r["completion"] for r in records)  # special tokens are skipped when decoding


def test_truncation_is_hitting_max_new_tokens_without_end_of_turn(tiny_params, warm_model):
    records = _generate(tiny_params, warm_model, n=8, max_new_tokens=3)
    assert all(r["truncated"] and r["completion_tokens"] == 3 for r in records)
    finished = _generate(tiny_params, warm_model, n=8, max_new_tokens=48)
    assert any(not r["truncated"] and r["completion_tokens"] < 48 for r in finished)


def test_vision_placeholders_are_suppressed(tiny_params, warm_model):
    """Push <|image_pad|> to the top of every step's logits: suppression must give the plain output."""
    model, processor, _ = warm_model
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def boost(_module, _inputs, logits):
        logits[..., pad] += 1e4
        return logits

    plain = _generate(tiny_params, warm_model, n=8)
    handle = model.lm_head.register_forward_hook(boost)
    try:
        boosted = _generate(tiny_params, warm_model, n=8)
    finally:
        handle.remove()
    assert boosted == plain


def test_cpu_threads_change_neither_greedy_outputs_nor_the_callers_setting(tiny_params, warm_model):
    before = torch.get_num_threads()
    one = _generate(tiny_params, warm_model, n=8, cpu_threads=1)
    assert torch.get_num_threads() == before
    assert _generate(tiny_params, warm_model, n=8, cpu_threads=2) == one


def test_sampling_is_seeded(tiny_params, warm_model):
    first = _generate(tiny_params, warm_model, n=8, temperature=1.0)
    again = _generate(tiny_params, warm_model, n=8, temperature=1.0)
    greedy = _generate(tiny_params, warm_model, n=8)
    assert first == again
    assert first != greedy


def test_out_of_memory_names_the_batch_size_knob(tiny_params, warm_model, monkeypatch):
    model, _, _ = warm_model

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(model, "generate", oom)
    with pytest.raises(EnvironmentProblem, match=r"lower profiles.tiny.generation.batch_size \(now 16\)"):
        model_, processor, split = warm_model
        generate_completions(model_, processor, split, prompt_template=tiny_params.prompt.template,
                             generation=tiny_params.profile("tiny").generation, seed=0, progress=False,
                             profile="tiny")


def test_generation_records_round_trip(tmp_path):
    records = [{"pid": "1", "completion": "<SOLUTION>1</SOLUTION>", "prompt_tokens": 5,
                "completion_tokens": 3, "truncated": False}]
    assert read_jsonl(atomic_write_jsonl(tmp_path / "g" / "baseline.jsonl", records)) == records
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["baseline.jsonl"]  # no temporary left behind


# ------------------------------------------------------------------------------------------------
# Nonsense parameters fail before any model loads
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    pytest.param({"max_new_tokens": 1024}, "max_new_tokens = 1024: must be smaller than "
                 "profiles.tiny.model.max_seq_length", id="no-room-for-the-prompt"),
    pytest.param({"top_p": 0.5}, "top_p = 0.5: has no effect with temperature = 0", id="top-p-with-greedy"),
])
def test_cross_checks(changes, message):
    raw = raw_params()
    for key, value in changes.items():
        edited(raw, f"profiles.tiny.generation.{key}", value)
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


@pytest.mark.parametrize(("key", "value", "message"), [
    pytest.param("batch_size", 0, "batch_size = 0: must be an integer >= 1", id="zero-batch"),
    pytest.param("max_new_tokens", -5, "max_new_tokens = -5: must be an integer >= 1", id="negative-length"),
    pytest.param("temperature", -1.0, "temperature = -1.0: must be >= 0", id="negative-temperature"),
    pytest.param("top_p", 1.5, "top_p = 1.5: must be in", id="top-p-above-one"),
    pytest.param("batch_size", "sixteen", "batch_size = 'sixteen': expected an integer", id="word-batch"),
    pytest.param("cpu_threads", 0, "cpu_threads = 0: must be null", id="zero-threads"),
])
def test_config_rejects_nonsense(key, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(edited(raw_params(), f"profiles.tiny.generation.{key}", value))


def test_prompt_longer_than_the_context_names_the_pid(tiny_params, warm_model):
    _, processor, split = warm_model
    counts = prompt_token_counts(processor, split, tiny_params.prompt.template)
    model_params = dataclasses.replace(tiny_params.profile("tiny").model, max_seq_length=max(counts) + 47)
    worst = list(split["pid"])[counts.index(max(counts))]
    with pytest.raises(ConfigError, match=f"longest prompt \\(pid {worst}, {max(counts)} tokens\\)"):
        check_prompt_lengths(counts, list(split["pid"]), GenerationParams(16, 48), model_params, "tiny")


def test_generate_stage_rejects_bad_params_before_loading_anything(tmp_path, monkeypatch, capsys):
    write_params(tmp_path / "params.yaml", edited(raw_params(), "profiles.tiny.generation.max_new_tokens", 5000))

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model or data was loaded before the params were checked")

    monkeypatch.setattr(modeling, "load_model_and_processor", must_not_load)
    monkeypatch.setattr(modeling, "load_processor", must_not_load)
    monkeypatch.setattr(generation_module, "generate_completions", must_not_load)
    monkeypatch.setattr(sys, "argv", [
        "generate.py", "--profile", "tiny", "--params", str(tmp_path / "params.yaml"), "--model-dir",
        str(tmp_path / "model"), "--splits-dir", str(tmp_path / "s"), "--out", str(tmp_path / "out.jsonl")])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "stages" / "generate.py"), run_name="__main__")
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "max_new_tokens = 5000" in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


# ------------------------------------------------------------------------------------------------
# The generation config comes from params only, and is recorded
# ------------------------------------------------------------------------------------------------


def test_the_model_s_shipped_generation_config_is_not_inherited(tiny_params, warm_model):
    """transformers fills a passed config's unset fields from model.generation_config: a penalty shipped
    with the model would apply under greedy decoding too."""
    from transformers import GenerationConfig

    model, _, _ = warm_model
    plain = _generate(tiny_params, warm_model, n=8)
    model.generation_config = GenerationConfig(repetition_penalty=50.0, no_repeat_ngram_size=1, min_new_tokens=40,
                                               top_k=1, bad_words_ids=[[5], [6]])
    assert _generate(tiny_params, warm_model, n=8) == plain


def test_pad_token_id_is_passed_to_generate_explicitly(tiny_params, warm_model, monkeypatch):
    """Unsloth's generate wrapper replaces a missing pad_token_id keyword by config.eos_token_id (None for
    Qwen3-VL)."""
    model, processor, _ = warm_model
    seen = []
    original = model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    _generate(tiny_params, warm_model, n=2)
    assert seen and all(kw["pad_token_id"] == processor.tokenizer.pad_token_id is not None for kw in seen)


def test_run_metadata_records_the_effective_generation_config(tiny_params, warm_model):
    model, processor, _ = warm_model
    records = _generate(tiny_params, warm_model, n=2)
    meta = generation_module.run_metadata("baseline", model=model, pin={}, adapter_dir=None,
                                          generation=tiny_params.profile("tiny").generation, records=records)
    config = meta["generation_config"]
    assert (config["do_sample"], config["repetition_penalty"], config["max_new_tokens"], config["num_beams"]) == \
        (False, 1.0, tiny_params.profile("tiny").generation.max_new_tokens, 1)
    assert config["suppress_tokens"] == modeling.vision_token_ids(processor)
    assert config["pad_token_id"] == processor.tokenizer.pad_token_id
