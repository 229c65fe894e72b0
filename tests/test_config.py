"""params.yaml validation: every error names the key, the value and what is allowed; numbers in any
spelling DVC or a person writes; each stage sees exactly its declared sections."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import FIXTURE_PARAMS, edited, raw_params, write_params
from vlrl.config import (
    ConfigError,
    TrainStageParams,
    load_params,
    load_stage_params,
    params_keys,
    parse_params,
    read_yaml,
    stage_view,
)
from vlrl.rewards import reward_weights


def test_fixture_params_are_valid_and_carry_the_reference_weights():
    params = load_params(FIXTURE_PARAMS)
    assert set(params.profiles) == {"tiny", "full"}
    assert reward_weights(params.rewards) == {"format": 0.3, "correctness": 1.0}


def test_full_profile_carries_the_reference_settings():
    # docs/reference-experiment.md, "Training".
    params = load_params(FIXTURE_PARAMS)
    full = params.profile("full")
    t = full.train
    assert (t.learning_rate, t.adam_beta1, t.adam_beta2, t.weight_decay, t.warmup_ratio) == (5e-6, 0.9, 0.99, 0.1, 0.1)
    assert (t.lr_scheduler_type, t.optim, t.per_device_train_batch_size, t.gradient_accumulation_steps) == (
        "cosine", "adamw_8bit", 2, 1)
    assert (t.num_generations, t.max_completion_length, t.max_prompt_length, t.num_train_epochs, t.max_grad_norm) == (
        2, 1024, 1024, 0.5, 0.1)
    assert (full.lora.r, full.lora.alpha, full.lora.dropout) == (16, 16, 0.0)
    assert full.model.id == "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit" and full.model.load_in_4bit
    assert full.data.image_size == 512
    assert (params.gspo.importance_sampling_level, params.gspo.loss_type, params.gspo.mask_truncated_completions) == (
        "sequence", "dr_grpo", False)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        pytest.param("rewards.format_weight", -0.3, r"rewards\.format_weight = -0\.3: must be a finite number >= 0",
                     id="negative weight"),
        pytest.param("rewards.format_weight", "high", r"rewards\.format_weight = 'high': expected a number",
                     id="weight not a number"),
        pytest.param("rewards.numeric_rel_tol", ".nan", r"numeric_rel_tol = nan: must be a finite number",
                     id="nan tolerance accepts every number"),
        pytest.param("profiles.tiny.train.num_generations", 1, r"num_generations = 1: must be an integer >= 2",
                     id="a group of one has no advantage"),
        pytest.param("profiles.tiny.train.num_generations", 3, r"must divide the generation batch",
                     id="generation batch not divisible"),
        pytest.param("profiles.tiny.train.num_generations", 2.5, r"num_generations = 2\.5: expected an integer",
                     id="half a generation"),
        pytest.param("gspo.loss_type", "ppo", r"gspo\.loss_type = 'ppo': allowed: 'grpo', 'dr_grpo'",
                     id="unknown loss type"),
        pytest.param("gspo.importance_sampling_level", "batch", r"allowed: 'token', 'sequence'", id="unknown level"),
        pytest.param("gspo.epsilon_high", 0.1, r"epsilon_high = 0\.1: must be null or in \[epsilon, 1\)",
                     id="upper clip below the lower"),
        pytest.param("profiles.tiny.generation.batch_size", 0, r"generation\.batch_size = 0: must be an integer >= 1",
                     id="empty batches"),
        pytest.param("profiles.tiny.data.eval_fraction", 1.0, r"eval_fraction = 1\.0: must be strictly between",
                     id="nothing left to train on"),
        pytest.param("profiles.tiny.train.optim", "adamw_8bit", r"adamw_8bit needs bitsandbytes and a CUDA device",
                     id="8-bit Adam on a CPU"),
        pytest.param("profiles.tiny.train.optim", "adamw", r"optim = 'adamw': allowed: 'adamw_torch'",
                     id="unknown optimizer found before TRL is loaded"),
        pytest.param("profiles.tiny.train.lr_scheduler_type", "cosine_warm", r"allowed: 'linear', 'cosine'",
                     id="unknown scheduler found before TRL is loaded"),
        pytest.param("profiles.tiny.train.adam_beta2", 1.0, r"adam_beta2 = 1\.0: must be in \[0, 1\)",
                     id="beta of one never forgets"),
        pytest.param("profiles.tiny.train.weight_decay", -0.1, r"weight_decay = -0\.1: must be >= 0",
                     id="negative weight decay grows the weights"),
        pytest.param("profiles.tiny.train.save_steps", 1000, r"save_steps = 1000: must be <= max_steps \(100\)",
                     id="no checkpoint before the end"),
        pytest.param("profiles.tiny.train.max_prompt_length", 1000,
                     r"max_prompt_length \(1000\) \+ max_completion_length = 1048 exceeds",
                     id="prompt plus completion too long"),
        pytest.param("profiles.tiny.generation.max_new_tokens", 1024, r"max_new_tokens = 1024: must be smaller than",
                     id="no room for the prompt"),
        pytest.param("profiles.tiny.model.backend", "unsloth", r"unsloth backend needs CUDA", id="unsloth on cpu"),
        pytest.param("profiles.tiny.model.build.text_layers", 0, r"text_layers = 0: must be an integer >= 1",
                     id="a model without layers"),
        pytest.param("profiles.tiny.lora.target_modules", [], r"target_modules = \(\): must name at least one",
                     id="LoRA on nothing"),
        pytest.param("prompt.template", "{question} {answer} {solution_start}{solution_end}",
                     r"unknown placeholder \{answer\}", id="placeholder the prompt cannot fill"),
        pytest.param("prompt.template", "{question} {solution_start} {solution_end} }", r"literal brace",
                     id="stray brace"),
        pytest.param("prompt.template", "{question} answer: ", r"must contain the placeholder\(s\) \{solution_start\}",
                     id="never asks for the SOLUTION tags"),
        pytest.param("seed", KeyError, r"seed: missing", id="missing key"),
        pytest.param("gspo.bogus", 1, r"gspo\.bogus: unknown key; allowed keys here", id="typo in a key"),
        pytest.param("profiles.huge", {}, r"profiles\.huge", id="unknown profile"),
    ],
)
def test_bad_params_name_key_value_and_rule(path, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(edited(raw_params(), path, value))


def test_all_reward_weights_zero_is_refused():
    raw = edited(edited(raw_params(), "rewards.format_weight", 0.0), "rewards.correctness_weight", 0)
    with pytest.raises(ConfigError, match="at least one reward weight must be > 0"):
        parse_params(raw)


@pytest.mark.parametrize(("spelling", "value"), [
    pytest.param("1e-06", 1e-6, id="dvc exp run -S writes this (no dot)"),
    pytest.param("2e-3", 2e-3, id="hand-written, no dot"),
    pytest.param("1.5e-09", 1.5e-9, id="YAML 1.1 style"),
    pytest.param("1.0e+9", 1e9, id="explicit plus in the exponent"),
    pytest.param("1E-6", 1e-6, id="upper-case exponent"),
    pytest.param(".5", 0.5, id="no leading zero"),
    pytest.param("1_000", 1000.0, id="digit separators"),
    pytest.param("'1e-6'", 1e-6, id="quoted number"),
    pytest.param("3", 3.0, id="an integer where a float is expected"),
])
def test_numbers_in_any_spelling(tmp_path, spelling, value):
    assert "numeric_rel_tol: 1.0e-9" in FIXTURE_PARAMS.read_text()
    text = FIXTURE_PARAMS.read_text().replace("numeric_rel_tol: 1.0e-9", f"numeric_rel_tol: {spelling}")
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").rewards.numeric_rel_tol == value


def test_integers_in_any_spelling(tmp_path):
    text = FIXTURE_PARAMS.read_text().replace("n_items: 480", "n_items: 1_000")
    text = text.replace("max_steps: 100", "max_steps: 1e2")
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml").profile("tiny")
    assert (params.data.offline.n_items, params.train.max_steps) == (1000, 100)


@given(st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False))
def test_every_float_repr_reads_back(number):
    for text in (repr(number), f"{number:e}", f"{number:.3e}"):
        assert read_yaml(f"x: {text}")["x"] == float(text)


def test_params_keys_come_from_the_view_fields():
    assert params_keys("score", "tiny") == ["rewards"]
    fields = [f.name for f in dataclasses.fields(TrainStageParams)]
    assert fields[0] == "profile" and len(params_keys("train", "full")) == len(fields) - 1


def test_stage_view_holds_only_declared_sections():
    view = load_stage_params("score", "tiny", FIXTURE_PARAMS)
    assert view.rewards.correctness_weight == 1.0
    assert not hasattr(view, "train")
    train = stage_view("train", load_params(FIXTURE_PARAMS), "full")
    assert (train.profile, train.train.learning_rate) == ("full", 5e-6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.seed = 1


def test_a_bad_full_profile_fails_a_tiny_stage_too(tmp_path):
    # params.yaml is one file, validated whole: a typo in any profile is found on the first run.
    path = write_params(tmp_path / "params.yaml", edited(raw_params(), "profiles.full.train.num_generations", 1))
    with pytest.raises(ConfigError, match=r"profiles\.full\.train\.num_generations = 1"):
        load_stage_params("fetch", "tiny", path)


def test_missing_params_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="not found; run from the repository root"):
        load_params(tmp_path / "params.yaml")


def test_broken_yaml_names_the_file(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: not valid YAML .*git checkout"):
        load_params(tmp_path / "params.yaml")
