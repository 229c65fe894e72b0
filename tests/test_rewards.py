"""Reward functions: reference semantics (tables, naive reference), robustness, the explainer's breakdown."""

from __future__ import annotations

import functools
import pickle
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from naive_reference import naive_correctness_reward, naive_format_reward, naive_is_strict_format
from vlrl.answers import judge
from vlrl.config import RewardParams
from vlrl.rewards import (
    PRESETS,
    RewardBreakdown,
    build_reward_functions,
    completion_text,
    correctness_reward,
    explain,
    format_gaming_patterns,
    format_reward,
    is_strict_format,
)

REASONING = "<REASONING>The tallest bar reads 991.</REASONING>"
# Completions built from tags, tag fragments and free text, so that hypothesis explores nesting, unclosed,
# split and repeated tags (tags get their own branch: a plain mix makes them too rare).
TAGS = ["<SOLUTION>", "</SOLUTION>", "<REASONING>", "</REASONING>"]
PIECES = ["<", "</", "/", ">", "SOLUTION>", "<SOLUTION", "REASONING>", "\n", "\n\n", " ", "addCriterion",
          "addCrit", "erion", "991", "991.0", "-0", "0", "é"]
tag_soup = st.lists(st.one_of(st.sampled_from(TAGS), st.sampled_from(PIECES), st.text(max_size=3)),
                    max_size=40).map("".join)
golds = st.one_of(st.sampled_from(["991", "991.0", "0", "0.0", "-0", "", "nan", "inf", "1,000", " 991"]),
                  st.text(max_size=4))


def _explain(completion, gold="991", **kwargs):
    return explain(completion, gold, format_weight=0.3, correctness_weight=1.0, **kwargs)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        pytest.param(f"{REASONING}<SOLUTION>991</SOLUTION>", 2.0, id="one of each"),
        pytest.param(f"{REASONING}<SOLUTION>1</SOLUTION><SOLUTION>2</SOLUTION>", 1.0,
                     id="two SOLUTION blocks"),
        pytest.param(f"{REASONING}{REASONING}<SOLUTION>1</SOLUTION>", 1.0, id="two REASONING blocks"),
        pytest.param("<REASONING>never closed <SOLUTION>991</SOLUTION>", 1.0, id="unclosed REASONING"),
        pytest.param("991", 0.0, id="no tags"),
        pytest.param("addCriterion\n" * 20, -2.0, id="addCriterion spam"),
        pytest.param(f"{REASONING}<SOLUTION>991</SOLUTION>" + "\n" * 200, 0.0,
                     id="well formatted but mostly newlines: penalty"),
        pytest.param("ab\n\n", -2.0, id="exactly 50% newlines: penalty (>=)"),
        pytest.param("abc\n\n", 0.0, id="40% newlines: no penalty"),
        pytest.param("addCrit\nerion" * 4, 0.0, id="split addCriterion counts only its newline"),
        pytest.param("", 0.0, id="empty completion"),
        pytest.param(None, 0.0, id="None completion"),
        pytest.param(42, 0.0, id="non-string completion"),
        pytest.param([{"role": "assistant", "content": f"{REASONING}<SOLUTION>991</SOLUTION>"}], 2.0,
                     id="conversational"),
    ],
)
def test_format_reward(completion, expected):
    assert format_reward([completion]) == [expected]


@pytest.mark.parametrize(
    ("solution_part", "gold", "expected"),
    [
        pytest.param("<SOLUTION>991</SOLUTION>", "991", 2.0, id="exact"),
        pytest.param("<SOLUTION>991.0</SOLUTION>", "991", 1.5, id="991.0 numeric"),
        pytest.param("<SOLUTION>9.91e2</SOLUTION>", "991", 1.5, id="scientific numeric"),
        pytest.param("<SOLUTION>\n991\n</SOLUTION>", "991", 2.0, id="newlines removed: exact"),
        pytest.param("<SOLUTION> 991 </SOLUTION>", "991", 1.5, id="spaces: numeric only"),
        pytest.param("<SOLUTION>-0</SOLUTION>", "0", 1.5, id="-0 vs 0"),
        pytest.param("<SOLUTION>0</SOLUTION>", "0.0", 1.5, id="0 vs 0.0"),
        pytest.param("<SOLUTION>-12</SOLUTION>", "-12", 2.0, id="negative exact"),
        pytest.param("<SOLUTION>12</SOLUTION>", "-12", 0.0, id="wrong sign"),
        pytest.param("<SOLUTION>991</SOLUTION><SOLUTION>991</SOLUTION>", "991", 0.0,
                     id="two SOLUTION blocks"),
        pytest.param("<SOLUTION>991", "991", 0.0, id="unclosed SOLUTION"),
        pytest.param("<SOLUTION>1,000</SOLUTION>", "1,000", 2.0, id="non-number gold, exact string"),
        pytest.param("<SOLUTION>1000</SOLUTION>", "1,000", 0.0, id="non-number gold, no numeric"),
        pytest.param("<SOLUTION>nan</SOLUTION>", "nan", 2.0, id="nan gold: string match only"),
        pytest.param("<SOLUTION>inf</SOLUTION>", "Infinity", 0.0, id="inf not finite"),
        pytest.param("<SOLUTION></SOLUTION>", "", 2.0, id="empty gold equals empty SOLUTION (reference)"),
        pytest.param("<SOLUTION>９９１</SOLUTION>", "991", 1.5, id="full-width digits parse with float()"),
    ],
)
def test_correctness_reward(solution_part, gold, expected):
    completion = f"{REASONING}\n{solution_part}"
    assert correctness_reward([completion], answer=[gold]) == [expected]


@pytest.mark.parametrize(
    "completion",
    [
        pytest.param("<SOLUTION>991.0</SOLUTION>", id="plain string"),
        pytest.param([{"role": "assistant", "content": "<SOLUTION>991.0</SOLUTION>"}],
                     id="message, str content"),
        pytest.param([{"role": "assistant",
                       "content": [{"type": "text", "text": "<SOLUTION>991.0</SOLUTION>"}]}],
                     id="message, list of parts"),
        pytest.param([{"role": "assistant", "content": [{"type": "text", "text": "<SOLUTION>991"},
                                                        {"type": "image"},
                                                        {"type": "text", "text": ".0</SOLUTION>"}]}],
                     id="parts are concatenated, non-text parts skipped"),
        pytest.param({"role": "assistant", "content": "<SOLUTION>991.0</SOLUTION>"},
                     id="a bare message dict"),
        pytest.param([{"content": "<SOLUTION>991.0</SOLUTION>"}], id="message without a role"),
        pytest.param([{"role": "tool", "content": "<SOLUTION>7</SOLUTION>"},
                      {"role": "assistant", "content": "<SOLUTION>991.0</SOLUTION>"}],
                     id="tool output ignored"),
    ],
)
def test_conversational_and_plain_completions_score_alike(completion):
    assert completion_text(completion) == "<SOLUTION>991.0</SOLUTION>"
    assert correctness_reward([completion], answer=["991"]) == [1.5]


@pytest.mark.parametrize(
    "completion",
    [
        pytest.param(None, id="None"),
        pytest.param(3.5, id="float"),
        pytest.param(b"<SOLUTION>991</SOLUTION>", id="bytes"),
        pytest.param([{"role": "assistant", "content": None}], id="content None"),
        pytest.param([{"role": "assistant", "content": [{"type": "text", "text": 5}]}],
                     id="non-str text part"),
        pytest.param(["not a message"], id="list of strings"),
        pytest.param([], id="empty list"),
    ],
)
def test_malformed_completions_score_as_empty(completion):
    assert completion_text(completion) == ""
    assert (format_reward([completion]), correctness_reward([completion], answer=["991"])) == ([0.0], [0.0])


def test_correctness_needs_one_gold_per_completion():
    with pytest.raises(ValueError):  # zip(strict=True): a misaligned batch is a bug, not a 0 reward
        correctness_reward(["a", "b"], answer=["1"])


def test_unicode_and_extra_trl_kwargs():
    completion = "<REASONING>Σ of ∠s = 180°, so x = 40°</REASONING><SOLUTION>40</SOLUTION>"
    kwargs = {"prompts": ["p"], "completion_ids": [[1]], "trainer_state": None,
              "question_type": ["free_form"]}
    assert format_reward([completion], **kwargs) == [2.0]
    assert correctness_reward([completion], answer=["40"], **kwargs) == [2.0]


def test_megabyte_adversarial_completions_score_in_linear_time():
    # A quadratic scan (the reference's lazy regex) takes minutes on these; the bound is a regression
    # guard with a wide margin, not a benchmark (see benchmarks/bench_rewards.py).
    adversarial = ["<SOLUTION>" * 100_000, "<REASONING>" * 90_000 + "<SOLUTION>1" * 90_000,
                   "addCriterion\n" * 80_000, "<SOLUTION>" + "9" * 1_000_000 + "</SOLUTION>"]
    for completion in adversarial:
        assert len(completion) >= 1_000_000
        start = time.perf_counter()
        explain(completion, "991", format_weight=0.3, correctness_weight=1.0)
        assert time.perf_counter() - start < 1.0, completion[:30]


# --------------------------------------------------------------------------------------------
# Equivalence with the naive notebook-style reference, and agreement with the verdicts
# --------------------------------------------------------------------------------------------


@settings(derandomize=True, max_examples=1000, deadline=None)
@given(completion=tag_soup, gold=golds, rel_tol=st.sampled_from([0.0, 1e-9]))
@example(completion="<REASONING>r</REASONING><SOLUTION> 991 </SOLUTION>", gold="991", rel_tol=1e-9)
@example(completion="<SOLUTION>991</SOLUTION>a</SOLUTION>", gold="991", rel_tol=1e-9)
@example(completion="<SOLUTION>nan</SOLUTION>", gold="NaN", rel_tol=1e-9)
@example(completion="<SOLUTION>0.30000000000000004</SOLUTION>", gold="0.3", rel_tol=0.0)
@example(completion="ab\n\n", gold="991", rel_tol=1e-9)  # exactly half newlines: the penalty fires
@example(completion="addCrit\nerion" * 3, gold="991", rel_tol=1e-9)  # removal order matters
def test_rewards_equal_naive_reference(completion, gold, rel_tol):
    completions, answer = [completion, completion + "\n"], [gold, gold]
    assert format_reward(completions) == naive_format_reward(completions)
    assert (correctness_reward(completions, answer=answer, rel_tol=rel_tol)
            == naive_correctness_reward(completions, answer=answer, rel_tol=rel_tol))


@settings(derandomize=True, max_examples=300, deadline=None)
@given(completion=tag_soup, gold=golds)
def test_correctness_reward_and_verdicts_agree(completion, gold):
    breakdown = _explain(completion, gold)
    verdicts = judge(completion, gold)
    assert breakdown.verdicts == verdicts
    assert (breakdown.correctness == 2.0) == verdicts.strict
    assert (breakdown.correctness >= 1.5) == verdicts.numeric
    assert breakdown.format_compliant == (breakdown.format == 2.0)
    assert breakdown.total == pytest.approx(0.3 * breakdown.format + 1.0 * breakdown.correctness)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(completion=st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8), tag_soup,
                            st.lists(st.dictionaries(st.sampled_from(["role", "content", "text", "type"]),
                                                     st.one_of(st.none(), st.text(max_size=5), st.integers()),
                                                     max_size=3), max_size=3)),
       gold=st.one_of(golds, st.none(), st.integers()))
def test_rewards_never_raise(completion, gold):
    assert len(format_reward([completion])) == 1
    assert correctness_reward([completion], answer=[gold])[0] in (0.0, 1.5, 2.0)


# --------------------------------------------------------------------------------------------
# build_reward_functions, presets, breakdown
# --------------------------------------------------------------------------------------------


def test_build_reward_functions_binds_tolerance_and_returns_weights():
    funcs, weights = build_reward_functions(RewardParams(format_weight=0.3, correctness_weight=1.0,
                                                         numeric_rel_tol=0.01))
    assert [f.__name__ for f in funcs] == ["format_reward", "correctness_reward"], "TRL logs these names"
    assert weights == [0.3, 1.0]
    near = ["<SOLUTION>995</SOLUTION>"]
    assert funcs[1](near, answer=["991"], prompts=["p"]) == [1.5], "rel_tol 0.01 is bound"
    assert correctness_reward(near, answer=["991"]) == [0.0], "the default 1e-9 is not"
    assert isinstance(funcs[1], functools.partial), "a partial: picklable, and TRL unwraps it for the name"
    assert pickle.loads(pickle.dumps(funcs[1])).func is correctness_reward


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        pytest.param("exact", {"format": 2.0, "correctness": 2.0, "total": 2.6, "accuracy_strict": True,
                               "correctness_criterion": "exact", "addcriterion_penalty": False},
                     id="case study: 0.3*2 + 1.0*2 = 2.60"),
        pytest.param("numeric", {"format": 2.0, "correctness": 1.5, "total": 2.1, "accuracy_strict": False,
                                 "accuracy_numeric": True, "correctness_criterion": "numeric"},
                     id="case study: 991.0 -> 2.10, strict accuracy false"),
        pytest.param("wrong", {"format": 2.0, "correctness": 0.0, "total": 0.6, "accuracy_numeric": False},
                     id="formatted but wrong: 0.60"),
        pytest.param("addcriterion", {"format": -2.0, "addcriterion_penalty": True, "format_weighted": -0.6,
                                      "total": -0.6, "format_compliant": False},
                     id="gibberish: the -2 penalty"),
    ],
)
def test_presets(preset, expected):
    gold, completion = PRESETS[preset]
    flat = _explain(completion, gold).to_dict()
    got = {key: flat[key] for key in expected}
    assert got == pytest.approx(expected)


def test_breakdown_to_dict_is_flat_and_complete():
    breakdown = _explain(PRESETS["numeric"][1])
    flat = breakdown.to_dict()
    assert isinstance(breakdown, RewardBreakdown)
    assert all(not isinstance(value, dict) for value in flat.values())
    assert flat == {
        "reasoning_blocks": 1, "solution_blocks": 1, "addcriterion_share": flat["addcriterion_share"],
        "addcriterion_penalty": False, "format": 2.0, "format_compliant": True,
        "format_compliant_strict": True, "format_gamed": False, "solution": "991.0",
        "correctness": 1.5, "correctness_criterion": "numeric", "format_weight": 0.3,
        "correctness_weight": 1.0,
        "format_weighted": pytest.approx(0.6), "correctness_weighted": 1.5, "total": pytest.approx(2.1),
        "accuracy_strict": False, "accuracy_numeric": True, "accuracy_mathvista": True,
    }



# --------------------------------------------------------------------------------------------
# The strict format, and the gaming the reference format reward pays for
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("completion", "strict", "patterns"), [
    pytest.param(f"{REASONING}\n<SOLUTION>991</SOLUTION>", True, (), id="what the prompt asks for"),
    pytest.param(f"  \n{REASONING}<SOLUTION>991</SOLUTION>\n\n", True, (), id="surrounding whitespace is fine"),
    pytest.param(f"{REASONING}<SOLUTION>1</SOLUTION></SOLUTION></SOLUTION>", False,
                 ("stray closing tag", "text after </SOLUTION>"), id="the tiny run's gaming: extra closing tags"),
    pytest.param(f"{REASONING}<SOLUTION>991</SOLUTION> I hope this helps", False, ("text after </SOLUTION>",),
                 id="chatter after the answer"),
    pytest.param(f"Sure! {REASONING}<SOLUTION>991</SOLUTION>", False, ("text before <REASONING>",),
                 id="chatter before the reasoning"),
    pytest.param(f"{REASONING} so: <SOLUTION>991</SOLUTION>", False, ("text between the blocks",),
                 id="text between the blocks"),
    pytest.param(f"<SOLUTION>991</SOLUTION>{REASONING}", False, ("text before <REASONING>", "text after </SOLUTION>",
                 "blocks out of order"), id="answer first"),
    pytest.param(f"{REASONING}<SOLUTION><SOLUTION>991</SOLUTION>", False, ("repeated opening tag",),
                 id="a nested opening tag still gives one regex match"),
    pytest.param(f"{REASONING}<SOLUTION>991</SOLUTION><SOLUTION>992</SOLUTION>", False, None,
                 id="two SOLUTION blocks lose a format point: not gaming"),
    pytest.param("<REASONING>" + "addCriterion\n" * 20 + "</REASONING><SOLUTION>1</SOLUTION>", False, None,
                 id="the addCriterion penalty is never strict"),
])
def test_strict_format_and_gaming(completion, strict, patterns):
    breakdown = _explain(completion)
    assert (breakdown.format_compliant_strict, is_strict_format(completion)) == (strict, strict)
    assert breakdown.format_gamed == (breakdown.format == 2.0 and not strict)
    if patterns is not None:
        assert format_gaming_patterns(completion) == patterns


@settings(derandomize=True, max_examples=1000, deadline=None)
@given(completion=tag_soup)
@example(completion="<REASONING></REASONING><SOLUTION></SOLUTION>")
@example(completion="<REASONING>a</REASONING>\n \t<SOLUTION>b</SOLUTION> ")
@example(completion="<REASONING>a</SOLUTION></REASONING><SOLUTION>b</SOLUTION>")
def test_strict_format_equals_the_regex_reference(completion):
    assert is_strict_format(completion) == naive_is_strict_format(completion)
    if is_strict_format(completion):
        assert format_reward([completion]) == [2.0] and format_gaming_patterns(completion) == ()
