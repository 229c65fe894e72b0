"""The tiny offline Qwen3-VL: deterministic build, tokenizer/processor contract, warm start in band."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from vlrl import rewards
from vlrl.config import TinyModelBuild
from vlrl.generation import generate_completions
from vlrl.modeling import image_only_processor_class, load_model_and_processor
from vlrl.prompts import TAGS, build_prompt
from vlrl.scoring import score_generations
from vlrl.tiny_model import (
    DEFECTS,
    WELL,
    build_and_warm_start,
    build_tiny_model,
    completion_text,
    kind_styles,
    question_kind,
    train_tokenizer,
)

BUILD = TinyModelBuild()


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_two_builds_are_byte_identical(tmp_path, tiny_params, handmade_split):
    rows = handmade_split(24, seed=1)
    model = dataclasses.replace(tiny_params.profile("tiny").model,
                                build=dataclasses.replace(BUILD, warm_start_steps=3))
    for name in ("a", "b"):
        build_and_warm_start(model, tiny_params.prompt.template, rows, tiny_params.seed, tmp_path / name)
    first, second = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert {"model.safetensors", "tokenizer.json", "config.json", "processor_config.json",
            "model_pin.json", "warm_start.json"} <= set(first)
    assert first == second


def test_another_seed_gives_other_weights(tmp_path):
    build_tiny_model(BUILD, 1, tmp_path / "a", ["How many bars?"])
    build_tiny_model(BUILD, 2, tmp_path / "b", ["How many bars?"])
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("a", "b")]
    assert weights[0] != weights[1]


@pytest.mark.parametrize(("text", "decoded"), [
    pytest.param("<REASONING>a</REASONING><SOLUTION>12</SOLUTION>",
                 "<REASONING>a</REASONING><SOLUTION>12</SOLUTION>", id="tags-survive-skip-special"),
    pytest.param("<SOLUTION>3.5</SOLUTION><|im_end|>", "<SOLUTION>3.5</SOLUTION>", id="im-end-is-special"),
    pytest.param("<|image_pad|>x", "x", id="image-pad-is-special"),
    pytest.param("unseen wörds 991", "unseen wörds 991", id="byte-level-covers-anything"),
])
def test_tokenizer_decodes_like_trl(text, decoded):
    tokenizer = train_tokenizer(["How many bars are there?"], BUILD.vocab_size)
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == decoded


def test_tags_are_single_non_special_tokens():
    tokenizer = train_tokenizer(["x"], BUILD.vocab_size)
    ids = [tokenizer.convert_tokens_to_ids(tag) for tag in TAGS]
    assert [tokenizer(tag)["input_ids"] for tag in TAGS] == [[i] for i in ids]
    assert not set(ids) & set(tokenizer.all_special_ids)
    assert len(tokenizer) <= BUILD.vocab_size


def test_processor_expands_the_image_into_patch_tokens(tmp_path, handmade_split):
    build_tiny_model(BUILD, 0, tmp_path, ["How many bars?"])
    processor = image_only_processor_class().from_pretrained(tmp_path)
    row = handmade_split(1)[0]
    prompt = build_prompt(row["question"], "{question} {solution_start}{solution_end}")
    text = processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    enc = processor(text=[text], images=[row["image"]], return_tensors="pt")
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 64x64 pixels, patch 8, merge 2 -> (64/8/2)^2 = 16 image tokens (docs/library-notes.md).
    assert int((enc["input_ids"] == pad).sum()) == 16
    assert tuple(enc["image_grid_thw"][0].tolist()) == (1, 8, 8)


@pytest.mark.parametrize(("style", "compliant"), [
    pytest.param(WELL, True, id="well-formatted-is-compliant"),
    *[pytest.param(defect, False, id=f"{defect}-is-not-compliant") for defect in DEFECTS],
])
def test_target_styles_are_scored_as_intended_by_the_reward(style, compliant):
    breakdown = rewards.explain(completion_text("12", style), "12", format_weight=0.3, correctness_weight=1.0)
    assert breakdown.format_compliant is compliant
    assert breakdown.format == (2.0 if compliant else 1.0)


@pytest.mark.parametrize(("kinds", "fraction", "expected"), [
    pytest.param(["a", "a", "b", "b"], 0.5, {"a": WELL, "b": DEFECTS[0]}, id="half-and-half"),
    pytest.param(["a", "b", "c", "d"], 0.5, {"a": WELL, "b": WELL, "c": DEFECTS[0], "d": DEFECTS[1]},
                 id="defects-cycle-by-kind"),
    pytest.param(["a", "b", "b", "b"], 0.5, {"b": WELL, "a": DEFECTS[0]}, id="biggest-kind-first"),
    pytest.param(["a", "b"], 1.0, {"a": WELL, "b": DEFECTS[0]}, id="never-all-one-style"),
    pytest.param(["a", "b"], 0.0, {"a": DEFECTS[0], "b": WELL}, id="never-all-defects"),
])
def test_kind_styles(kinds, fraction, expected):
    assert kind_styles(kinds, fraction) == expected


@pytest.mark.parametrize(("row", "kind"), [
    pytest.param({"metadata": {"task": "bar value", "category": "c"}}, "bar value", id="task-first"),
    pytest.param({"metadata": {"task": None, "category": "math-targeted-vqa"}}, "math-targeted-vqa",
                 id="category-if-no-task"),
    pytest.param({"metadata": None, "question_type": "multi_choice"}, "multi_choice",
                 id="question-type-last"),
])
def test_question_kind(row, kind):
    assert question_kind(row) == kind


# ------------------------------------------------------------------------------------------------
# The warm start is a real starting point for RL (on the real tiny splits)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_split(tiny_splits):
    from vlrl.data import load_split

    return load_split(tiny_splits, "eval")


@pytest.fixture(scope="module")
def tiny_model(tiny_params, tiny_model_dir):
    return load_model_and_processor(tiny_params.profile("tiny").model, tiny_model_dir)


def _scored(tiny_params, model, processor, split, generation, seed):
    records = generate_completions(model, processor, split, prompt_template=tiny_params.prompt.template,
                                   generation=generation, seed=seed, progress=False)
    return score_generations(records, split, tiny_params.rewards)


@pytest.fixture(scope="module")
def greedy_eval(tiny_params, tiny_model, eval_split):
    """Greedy generations on the held-out split, scored: (records, metrics)."""
    model, processor = tiny_model
    return _scored(tiny_params, model, processor, eval_split, tiny_params.profile("tiny").generation,
                   tiny_params.seed)


def test_warm_start_puts_held_out_format_compliance_strictly_inside_the_band(greedy_eval):
    _, metrics = greedy_eval
    assert 0.1 < metrics["format_compliance"] < 0.9, metrics["format_compliance"]


def test_sampling_disagrees_with_greedy_on_format_so_gspo_has_reward_variance(tiny_params, tiny_model,
                                                                               eval_split, greedy_eval):
    """At temperature 1, some greedy-non-compliant items get compliant samples and vice versa."""
    model, processor = tiny_model
    sampled_params = dataclasses.replace(tiny_params.profile("tiny").generation, temperature=1.0)
    split = eval_split.select(range(min(48, len(eval_split))))
    greedy_ok = {r["pid"]: r["format_compliant"] for r in greedy_eval[0]}
    flips_up = flips_down = 0
    for seed in range(2):
        sampled, _ = _scored(tiny_params, model, processor, split, sampled_params, seed)
        flips_up += sum(1 for r in sampled if r["format_compliant"] and not greedy_ok[r["pid"]])
        flips_down += sum(1 for r in sampled if not r["format_compliant"] and greedy_ok[r["pid"]])
    assert flips_up > 0 and flips_down > 0, (flips_up, flips_down)


def test_warm_start_summary_records_both_styles(tiny_model_dir):
    summary = json.loads((tiny_model_dir / "warm_start.json").read_text())
    styles = {kind["majority_style"] for kind in summary["kinds"].values()}
    assert WELL in styles and styles & set(DEFECTS)
    assert summary["loss_last"] < summary["loss_first"]


def test_generation_config_stops_at_end_of_turn(tiny_model):
    model, processor = tiny_model
    eos = model.generation_config.eos_token_id
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    assert torch.is_floating_point(next(model.parameters()))
