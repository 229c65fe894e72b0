"""params.yaml validation: every error names the key, the value and what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from vlrl.config import ConfigError, load_params, load_stage_params, parse_params

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def _with(path: str, value):
    raw = copy.deepcopy(RAW)
    *parents, leaf = path.split(".")
    node = raw
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


def test_committed_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert set(params.profiles) == {"tiny", "full"}
    assert params.rewards.weights == {"format": 0.3, "correctness": 1.0}, "the reference weights"


def test_full_profile_carries_the_reference_settings():
    # FACTS.md, "The reference experiment".
    full = load_params(ROOT / "params.yaml").profile("full")
    t = full.train
    assert (t.learning_rate, t.adam_beta1, t.adam_beta2, t.weight_decay, t.warmup_ratio) == (5e-6, 0.9, 0.99, 0.1, 0.1)
    assert (t.lr_scheduler_type, t.optim, t.per_device_train_batch_size, t.gradient_accumulation_steps) == (
        "cosine", "adamw_8bit", 2, 1)
    assert (t.num_generations, t.max_completion_length, t.max_prompt_length, t.num_train_epochs, t.max_grad_norm) == (
        2, 1024, 1024, 0.5, 0.1)
    assert (full.lora.r, full.lora.alpha, full.lora.dropout) == (16, 16, 0.0)
    assert full.model.id == "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit" and full.model.load_in_4bit
    assert full.data.image_size == 512
    gspo = load_params(ROOT / "params.yaml").gspo
    assert (gspo.importance_sampling_level, gspo.loss_type, gspo.mask_truncated_completions) == (
        "sequence", "dr_grpo", False)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        pytest.param("rewards.format_weight", -0.3, r"rewards\.format_weight = -0\.3: must be a finite number >= 0",
                     id="negative weight"),
        pytest.param("rewards.format_weight", "high", r"rewards\.format_weight = 'high': expected a number",
                     id="weight not a number"),
        pytest.param("profiles.tiny.train.num_generations", 1, r"num_generations = 1: must be an integer >= 2",
                     id="a group of one has no advantage"),
        pytest.param("profiles.tiny.train.num_generations", 3, r"must divide the generation batch",
                     id="generation batch not divisible"),
        pytest.param("gspo.loss_type", "ppo", r"gspo\.loss_type = 'ppo': allowed: 'grpo', 'dr_grpo'",
                     id="unknown loss type"),
        pytest.param("gspo.importance_sampling_level", "batch", r"allowed: 'token', 'sequence'", id="unknown level"),
        pytest.param("profiles.tiny.generation.batch_size", 0, r"generation\.batch_size = 0: must be an integer >= 1",
                     id="empty batches"),
        pytest.param("profiles.tiny.data.eval_fraction", 1.0, r"eval_fraction = 1\.0: must be strictly between",
                     id="nothing left to train on"),
        pytest.param("profiles.tiny.train.optim", "adamw_8bit", r"adamw_8bit needs bitsandbytes",
                     id="8-bit Adam on the CPU backend"),
        pytest.param("profiles.tiny.model.backend", "unsloth", r"unsloth backend needs CUDA", id="unsloth on cpu"),
        pytest.param("seed", KeyError, r"seed: missing", id="missing key"),
        pytest.param("gspo.bogus", 1, r"gspo\.bogus: unknown key; allowed keys here", id="typo in a key"),
        pytest.param("profiles.huge", {}, r"profiles\.huge", id="unknown profile"),
    ],
)
def test_bad_params_name_key_value_and_rule(path, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(_with(path, value))


def test_stage_view_refuses_undeclared_sections():
    view = load_stage_params("score", "tiny", ROOT / "params.yaml")
    assert view.rewards.correctness_weight == 1.0
    with pytest.raises(AttributeError, match="does not declare params section 'train'"):
        view.train  # noqa: B018


def test_missing_params_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="not found; run from the repository root"):
        load_params(tmp_path / "params.yaml")
