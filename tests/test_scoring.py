"""Scoring: a hand-made generations file gives hand-computed metrics; one-to-one pid checks; flat keys."""

from __future__ import annotations

import dataclasses
import math

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlrl.config import RewardParams
from vlrl.io import atomic_write_jsonl, read_jsonl
from vlrl.metrics import BREAKDOWN_FIELDS, SMALL_CELL
from vlrl.scoring import ScoringError, breakdown_metrics, headline_metrics, score_generations

REWARDS = RewardParams(format_weight=0.3, correctness_weight=1.0, numeric_rel_tol=1e-9)
R = "<REASONING>read the chart</REASONING>"

#: pid -> (gold row, generation). Rewards by the reference rules (docs/reference-experiment.md), computed by hand:
#: format = #REASONING==1 + #SOLUTION==1 (-2 for addCriterion gibberish); correctness 2 exact, 1.5 numeric.
CASES = {
    # format 2, correctness 2 -> total 0.3*2 + 2 = 2.6; strict, numeric and mathvista correct.
    "1": ({"answer": "991", "question_type": "free_form", "answer_type": "integer", "precision": None,
           "choices": None},
          {"completion": f"{R}<SOLUTION>991</SOLUTION>", "completion_tokens": 10, "truncated": False}),
    # "991.0" for "991": format 2, correctness 1.5 -> 2.1; strict wrong, numeric and mathvista right.
    "2": ({"answer": "991", "question_type": "free_form", "answer_type": "integer", "precision": None,
           "choices": None},
          {"completion": f"{R}<SOLUTION>991.0</SOLUTION>", "completion_tokens": 12, "truncated": False}),
    # well formatted, wrong: format 2, correctness 0 -> 0.6.
    "3": ({"answer": "2.5", "question_type": "free_form", "answer_type": "float", "precision": 1.0,
           "choices": None},
          {"completion": f"{R}<SOLUTION>3</SOLUTION>", "completion_tokens": 8, "truncated": False}),
    # missing </SOLUTION>: format 1, no SOLUTION block so correctness 0 -> 0.3; truncated.
    "4": ({"answer": "7", "question_type": "multi_choice", "answer_type": "integer", "precision": None,
           "choices": ["5", "7"]},
          {"completion": f"{R}<SOLUTION>7", "completion_tokens": 48, "truncated": True}),
    # addCriterion gibberish: no blocks, penalty -2 -> format -2, total -0.6; truncated.
    "5": ({"answer": "12", "question_type": "free_form", "answer_type": "integer", "precision": None,
           "choices": None},
          {"completion": "addCriterion\n" * 20, "completion_tokens": 48, "truncated": True}),
}


#: MathVista metadata per pid (pid 2 has two skills; pid 5 has no metadata at all).
METADATA = {"1": {"task": "bar value", "skills": ["statistical reasoning"], "grade": "high school"},
            "2": {"task": "bar value", "skills": ["statistical reasoning", "arithmetic reasoning"]},
            "3": {"task": "geometry", "skills": ["geometry reasoning"]},
            "4": {"task": "counting", "skills": ["arithmetic reasoning"]},
            "5": None}


def _eval_split() -> datasets.Dataset:
    return datasets.Dataset.from_list([{"pid": pid, "question": "q", **gold, "metadata": METADATA[pid]}
                                       for pid, (gold, _) in CASES.items()])


def _generations() -> list[dict]:
    return [{"pid": pid, "prompt_tokens": 30, **generation} for pid, (_, generation) in CASES.items()]


@pytest.fixture()
def generations_file(tmp_path):
    return atomic_write_jsonl(tmp_path / "baseline.jsonl", _generations())


def test_hand_made_generations_give_hand_computed_metrics(generations_file):
    records, metrics = score_generations(read_jsonl(generations_file), _eval_split(), REWARDS)
    expected = {
        "n": 5,
        "format_compliance": 3 / 5, "accuracy_strict": 1 / 5, "accuracy_numeric": 2 / 5,
        "accuracy_mathvista": 2 / 5, "addcriterion_rate": 1 / 5, "truncation_rate": 2 / 5,
        "reward_format_mean": (2 + 2 + 2 + 1 - 2) / 5,
        "reward_correctness_mean": (2 + 1.5 + 0 + 0 + 0) / 5,
        "reward_total_mean": (2.6 + 2.1 + 0.6 + 0.3 - 0.6) / 5,
        "completion_tokens_mean": (10 + 12 + 8 + 48 + 48) / 5,
        # Wilson 95% for 3/5, by hand (z = 1.96): centre (0.6 + z²/10) / (1 + z²/5),
        # half-width z * sqrt(0.048 + z²/100) / (1 + z²/5).
        "format_compliance_ci95_low": 0.2307, "format_compliance_ci95_high": 0.8824,
        # Strictly formatted: 1, 2, 3 (4 lacks </SOLUTION>, 5 is gibberish); nothing is gamed.
        "format_compliance_strict": 3 / 5, "format_gamed_rate": 0.0,
    }
    got = {key: metrics[key] for key in expected}
    assert got == pytest.approx(expected, abs=1e-4)
    assert [r["pid"] for r in records] == list(CASES)
    assert [(r["format"], r["correctness"], round(r["total"], 6)) for r in records] == [
        (2.0, 2.0, 2.6), (2.0, 1.5, 2.1), (2.0, 0.0, 0.6), (1.0, 0.0, 0.3), (-2.0, 0.0, -0.6)]
    assert not any(key.startswith("by_") for key in metrics), "breakdowns live in their own file"


def test_breakdowns_by_type_and_metadata(generations_file):
    records, _ = score_generations(read_jsonl(generations_file), _eval_split(), REWARDS)
    breakdown = breakdown_metrics(records)
    assert set(breakdown) == set(BREAKDOWN_FIELDS)
    assert breakdown["question_type"]["free_form"]["n"] == 4 and breakdown["question_type"]["multi_choice"]["n"] == 1
    assert breakdown["answer_type"]["integer"]["accuracy_numeric"] == pytest.approx(2 / 4)
    # An item counts under each of its skills: pid 2 under both, so the skill cells hold 5 items for 4 pids.
    skills = breakdown["skills"]
    assert {k: v["n"] for k, v in skills.items()} == {"(none)": 1, "arithmetic reasoning": 2,
                                                      "geometry reasoning": 1, "statistical reasoning": 2}
    assert skills["statistical reasoning"]["accuracy_strict"] == pytest.approx(0.5)
    assert breakdown["grade"]["(none)"]["n"] == 4, "missing metadata is a visible cell, not dropped"
    cell = breakdown["task"]["bar value"]
    assert cell["small"] is (cell["n"] < SMALL_CELL) is True
    assert cell["accuracy_strict_ci95_low"] <= cell["accuracy_strict"] <= cell["accuracy_strict_ci95_high"]


def test_per_example_records_carry_what_the_report_reads(generations_file):
    records, _ = score_generations(read_jsonl(generations_file), _eval_split(), REWARDS)
    needed = {"pid", "question_type", "answer_type", "gold", "completion", "completion_tokens", "truncated",
              "format", "correctness", "total", "format_compliant", "format_compliant_strict", "format_gamed",
              "accuracy_strict", "accuracy_numeric", "accuracy_mathvista", "addcriterion_penalty", "solution",
              "task", "category", "context", "grade", "source", "skills"}
    assert all(needed <= set(r) for r in records)
    assert records[1]["gold"] == "991" and records[1]["solution"] == "991.0"


def test_reward_weights_come_from_params(generations_file):
    heavy = dataclasses.replace(REWARDS, format_weight=1.0)
    _, metrics = score_generations(read_jsonl(generations_file), _eval_split(), heavy)
    assert metrics["reward_total_mean"] == pytest.approx((4 + 3.5 + 2 + 1 - 2) / 5)


def test_metric_keys_are_flat_and_cover_the_agreed_names(generations_file):
    _, metrics = score_generations(read_jsonl(generations_file), _eval_split(), REWARDS)
    agreed = ["n", "format_compliance", "accuracy_strict", "accuracy_numeric", "accuracy_mathvista",
              "reward_format_mean", "reward_correctness_mean", "reward_total_mean", "addcriterion_rate",
              "truncation_rate", "completion_tokens_mean"]
    rates = ["format_compliance", "format_compliance_strict", "format_gamed_rate", "accuracy_strict",
             "accuracy_numeric", "accuracy_mathvista", "addcriterion_rate", "truncation_rate"]
    assert set(agreed) | {f"{r}_ci95_{side}" for r in rates for side in ("low", "high")} <= set(metrics)
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values())


def _drop(pid):
    return [g for g in _generations() if g["pid"] != pid]


def _duplicate(pid):
    return [*_generations(), next(g for g in _generations() if g["pid"] == pid)]


def _foreign(pid):
    return [*_generations(), {**_generations()[0], "pid": pid}]


def _no_field(field):
    return [{k: v for k, v in g.items() if k != field} for g in _generations()]


@pytest.mark.parametrize(("generations", "message"), [
    pytest.param(_drop("3"), r"1 eval pids have no generation: \['3'\]", id="missing-pid"),
    pytest.param(_duplicate("2"), r"1 pids have several generations: \['2'\]", id="duplicate-pid"),
    pytest.param(_foreign("99"), r"not in the eval split: \['99'\]", id="foreign-pid"),
    pytest.param(_no_field("truncated"), r"generation record 0 \(pid '1'\): missing truncated",
                 id="no-field"),
])
def test_generations_must_match_the_eval_split_one_to_one(generations, message):
    with pytest.raises(ScoringError, match=message):
        score_generations(generations, _eval_split(), REWARDS)


_record = st.fixed_dictionaries({
    "format_compliant": st.booleans(), "format_compliant_strict": st.booleans(), "format_gamed": st.booleans(),
    "accuracy_strict": st.booleans(), "accuracy_numeric": st.booleans(),
    "accuracy_mathvista": st.booleans(), "addcriterion_penalty": st.booleans(), "truncated": st.booleans(),
    "format": st.sampled_from([-2.0, 0.0, 1.0, 2.0]), "correctness": st.sampled_from([0.0, 1.5, 2.0]),
    "total": st.floats(-1, 3), "completion_tokens": st.integers(0, 100),
    "question_type": st.sampled_from(["free_form", "multi_choice"]), "task": st.sampled_from(["a", "b", None]),
    "skills": st.lists(st.sampled_from(["x", "y"]), max_size=2),
    "answer_type": st.sampled_from(["integer", "float"]),
})


@settings(max_examples=60, deadline=None)
@given(st.lists(_record, min_size=1, max_size=30))
def test_every_rate_lies_inside_its_interval_and_groups_partition_n(records):
    metrics = headline_metrics(records)
    for key, value in metrics.items():
        if key.endswith("_ci95_low"):
            rate = key.removesuffix("_ci95_low")
            # 1e-12: stats.wilson_interval returns ~5.6e-17 (not 0.0) as the lower bound of 0/n.
            assert 0.0 <= value <= metrics[rate] + 1e-12
            assert metrics[rate] <= metrics[f"{rate}_ci95_high"] + 1e-12 <= 1.0 + 1e-12
    assert all(math.isfinite(v) for v in metrics.values())
    breakdown = breakdown_metrics(records)
    for field in ("question_type", "answer_type"):  # single-valued fields partition the items
        assert sum(cell["n"] for cell in breakdown[field].values()) == metrics["n"]
