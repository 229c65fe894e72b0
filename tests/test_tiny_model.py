"""The tiny offline Qwen3-VL: deterministic build, tokenizer/processor contract, warm start in band."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from helpers import fixture_params
from vlrl import rewards
from vlrl.config import TinyModelBuild
from vlrl.errors import ConfigError
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
    kind_guesses,
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
    assert (breakdown.format_compliant, breakdown.format) == (compliant, 2.0 if compliant else 1.0)
    # A defect costs a format point only: the answer is still right, so format and correctness stay apart
    # (with correctness_weight = 0, learning the format must not be a way to learn the answers).
    assert (breakdown.correctness, breakdown.verdicts.strict) == (2.0, True)


@pytest.mark.parametrize("style", DEFECTS)
def test_a_defect_leaves_the_text_just_before_the_answer_as_in_a_well_formatted_target(style):
    well, defect = completion_text("12", WELL), completion_text("12", style)
    tail = well[well.index("</REASONING>"):]
    assert defect.endswith(tail), defect


@pytest.mark.parametrize(("kinds", "fraction", "expected"), [
    pytest.param(["a", "a", "b", "b"], 0.5, {"a": WELL, "b": DEFECTS[0]}, id="half-and-half"),
    pytest.param(["a", "b", "c", "d"], 0.5, {"a": WELL, "b": WELL, "c": DEFECTS[0], "d": DEFECTS[-1]},
                 id="the-rest-get-defects"),
    pytest.param(["a", "b", "b", "b"], 0.5, {"b": WELL, "a": DEFECTS[0]}, id="biggest-kind-first"),
    pytest.param(["a", "b"], 1.0, {"a": WELL, "b": DEFECTS[0]}, id="never-all-one-style"),
    pytest.param(["a", "b"], 0.0, {"a": DEFECTS[0], "b": WELL}, id="never-all-defects"),
])
def test_kind_styles(kinds, fraction, expected):
    assert kind_styles(kinds, fraction) == expected


@pytest.mark.parametrize(("answers", "kinds", "expected"), [
    pytest.param(["3", "3", "5"], ["a", "a", "a"], {"a": "3"}, id="most-common-answer"),
    pytest.param(["5", "3"], ["a", "a"], {"a": "3"}, id="tie-goes-to-the-smallest-string"),
    pytest.param(["1", "2", "2", "7"], ["a", "b", "b", "a"], {"a": "1", "b": "2"}, id="one-guess-per-kind"),
])
def test_kind_guesses(answers, kinds, expected):
    assert kind_guesses([{"answer": a} for a in answers], kinds) == expected


@pytest.mark.parametrize(("field", "value", "message"), [
    pytest.param("guess_fraction", 1.0, r"guess_fraction = 1\.0: must be in \[0, 1\)", id="all-guesses-teach-nothing"),
    pytest.param("guess_fraction", -0.1, r"guess_fraction = -0\.1", id="negative-share"),
    pytest.param("initializer_range", 0, r"initializer_range = 0\.0: must be in \(0, 1\]", id="all-zero-weights"),
])
def test_build_fields_are_validated_naming_the_key(field, value, message):
    with pytest.raises(ConfigError, match=rf"profiles\.tiny\.model\.build\.{message}"):
        fixture_params(**{f"profiles__tiny__model__build__{field}": value})


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


@pytest.fixture(scope="module")
def sampled_eval(tiny_params, tiny_model, eval_split):
    """``num_generations`` samplings of the held-out split at the training temperature: GSPO's groups."""
    model, processor = tiny_model
    train = tiny_params.profile("tiny").train
    sampling = dataclasses.replace(tiny_params.profile("tiny").generation, temperature=train.temperature)
    return [_scored(tiny_params, model, processor, eval_split, sampling, seed)[0]
            for seed in range(train.num_generations)]


def test_warm_start_puts_held_out_format_compliance_strictly_inside_the_band(greedy_eval):
    _, metrics = greedy_eval
    assert 0.1 < metrics["format_compliance"] < 0.9, metrics["format_compliance"]


def test_warm_start_leaves_room_on_accuracy_greedy_well_below_what_sampling_reaches(greedy_eval, sampled_eval):
    """Greedy reads some pictures right; a group of samples gets many more right (pass@k > pass@1)."""
    records, metrics = greedy_eval
    by_pid = [{r["pid"]: r["accuracy_strict"] for r in sampled} for sampled in sampled_eval]
    pass_at_k = sum(any(group[r["pid"]] for group in by_pid) for r in records) / len(records)
    assert 0.1 < metrics["accuracy_strict"] < pass_at_k - 0.15, (metrics["accuracy_strict"], pass_at_k)


def test_most_sampled_groups_have_reward_variance_so_advantages_are_not_zero(greedy_eval, sampled_eval):
    records, _ = greedy_eval
    totals = [{r["pid"]: r["total"] for r in sampled} for sampled in sampled_eval]
    zero_std = sum(len({group[r["pid"]] for group in totals}) == 1 for r in records) / len(records)
    assert zero_std < 0.5, zero_std


def test_sampling_disagrees_with_greedy_on_format_both_ways(greedy_eval, sampled_eval):
    """Some greedy-non-compliant items get compliant samples and vice versa: the format reward has work."""
    greedy_ok = {r["pid"]: r["format_compliant"] for r in greedy_eval[0]}
    flips_up = sum(r["format_compliant"] and not greedy_ok[r["pid"]] for sampled in sampled_eval for r in sampled)
    flips_down = sum(not r["format_compliant"] and greedy_ok[r["pid"]] for sampled in sampled_eval for r in sampled)
    assert flips_up > 0 and flips_down > 0, (flips_up, flips_down)


def test_warm_start_summary_records_both_styles_and_the_guess_share(tiny_params, tiny_model_dir):
    build = tiny_params.profile("tiny").model.build
    summary = json.loads((tiny_model_dir / "warm_start.json").read_text())
    styles = {kind["majority_style"] for kind in summary["kinds"].values()}
    assert WELL in styles and styles & set(DEFECTS)
    assert summary["loss_last"] < summary["loss_first"]
    assert abs(summary["guessed_target_share"] - build.guess_fraction) < 0.05, summary["guessed_target_share"]


def test_generation_config_stops_at_end_of_turn(tiny_model):
    model, processor = tiny_model
    eos = model.generation_config.eos_token_id
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    assert torch.is_floating_point(next(model.parameters()))
