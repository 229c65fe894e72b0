"""Answer checks: extraction, strict, numeric and MathVista verdicts (tables), and findall-equivalence."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from naive_reference import naive_numeric_equal, naive_reasoning_blocks, naive_solution_blocks
from vlrl.answers import (
    AnswerVerdicts,
    extract_solution,
    infer_answer_type,
    is_mathvista_match,
    is_numeric_match,
    is_strict_match,
    judge,
    levenshtein,
    mathvista_normalize,
    parse_finite_number,
    reasoning_blocks,
    solution_blocks,
)

# Completions built from tags, tag fragments and free text, so that hypothesis explores nesting, unclosed,
# split and repeated tags (tags get their own branch: a plain mix makes them too rare).
TAGS = ["<SOLUTION>", "</SOLUTION>", "<REASONING>", "</REASONING>"]
PIECES = ["<", "</", "/", ">", "SOLUTION>", "<SOLUTION", "REASONING>", "\n", "\n\n", " ", "addCriterion",
          "addCrit", "erion", "991", "991.0", "-0", "0", "é"]
tag_soup = st.lists(st.one_of(st.sampled_from(TAGS), st.sampled_from(PIECES), st.text(max_size=3)),
                    max_size=40).map("".join)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("<REASONING>r</REASONING><SOLUTION>991</SOLUTION>", "991", id="one block"),
        pytest.param("<SOLUTION>1</SOLUTION> then <SOLUTION>2</SOLUTION>", None, id="two blocks: no answer"),
        pytest.param("<SOLUTION>9\n91\n</SOLUTION>", "991", id="newlines inside are removed"),
        pytest.param("<SOLUTION> 991 </SOLUTION>", " 991 ", id="spaces are kept"),
        pytest.param("<SOLUTION>991\r\n</SOLUTION>", "991\r", id="only \\n is removed, not \\r"),
        pytest.param("<SOLUTION>991", None, id="unclosed block"),
        pytest.param("<SOLUTION><SOLUTION>5</SOLUTION>", "<SOLUTION>5", id="leftmost opening tag wins"),
        pytest.param("</SOLUTION><SOLUTION>7</SOLUTION>", "7", id="stray closing tag before"),
        pytest.param("<SOLUTION></SOLUTION>", "", id="empty block is one block"),
        pytest.param("<solution>991</solution>", None, id="tags are case-sensitive"),
        pytest.param("", None, id="empty text"),
        pytest.param(None, None, id="None"),
        pytest.param(991, None, id="not a string"),
    ],
)
def test_extract_solution(text, expected):
    assert extract_solution(text) == expected


@pytest.mark.parametrize(
    ("solution", "gold", "strict", "numeric"),
    [
        pytest.param("991", "991", True, True, id="exact"),
        pytest.param("991.0", "991", False, True, id="991.0: numeric only (the case-study gap)"),
        pytest.param("9.91e2", "991", False, True, id="scientific notation"),
        pytest.param(" 991 ", "991", False, True, id="surrounding spaces: float() strips, strict does not"),
        pytest.param("-0", "0", False, True, id="-0 equals 0"),
        pytest.param("0", "0.0", False, True, id="0 vs gold 0.0"),
        pytest.param("-3.5", "-3.5", True, True, id="negative exact"),
        pytest.param("3.5", "-3.5", False, False, id="sign matters"),
        pytest.param("-3.50", "-3.5", False, True, id="negative trailing zero"),
        pytest.param("990", "991", False, False, id="off by one"),
        pytest.param("991.00001", "991", False, False, id="beyond the 1e-9 tolerance"),
        pytest.param("0.30000000000000004", "0.3", False, True, id="float noise within tolerance"),
        pytest.param("1_000", "1000", False, True, id="PEP 515 underscores parse with float()"),
        pytest.param("1,000", "1,000", True, False, id="non-number gold: strict only"),
        pytest.param("1000", "1,000", False, False, id="gold 1,000 is not a number"),
        pytest.param("nan", "nan", True, False, id="nan gold: strict string match, never numeric"),
        pytest.param("NaN", "nan", False, False, id="nan is not finite"),
        pytest.param("Infinity", "inf", False, False, id="inf is not finite"),
        pytest.param("1e400", "1e400", True, False, id="overflow to inf is not finite"),
        pytest.param("", "", True, False, id="empty gold and empty SOLUTION: reference string equality"),
        pytest.param("0", "", False, False, id="empty gold is not a number"),
        pytest.param(None, "991", False, False, id="no single SOLUTION block"),
        pytest.param("991", None, False, False, id="gold not a string"),
        pytest.param("١٢", "12", False, True, id="float() reads non-ASCII digits"),
    ],
)
def test_strict_and_numeric(solution, gold, strict, numeric):
    assert (is_strict_match(solution, gold), is_numeric_match(solution, gold)) == (strict, numeric)


def test_numeric_tolerance_is_relative_to_gold_and_zero_means_exact():
    assert is_numeric_match("1000001", "1000000", rel_tol=1e-6)
    assert not is_numeric_match("1000002", "1000000", rel_tol=1e-6)
    assert is_numeric_match("0.0000005", "0", rel_tol=1e-6), "absolute below |gold| = 1"
    assert not is_numeric_match("0.30000000000000004", "0.3", rel_tol=0.0), "rel_tol=0: exact float equality"


@pytest.mark.parametrize(
    ("extraction", "question_type", "answer_type", "precision", "choices", "expected"),
    [
        pytest.param("991.0", "free_form", "integer", None, None, "991", id="integer: str(int(float(x)))"),
        pytest.param("991.7", "free_form", "integer", None, None, "991", id="integer truncates like int()"),
        pytest.param("-0", "free_form", "integer", None, None, "0", id="integer -0 becomes 0"),
        pytest.param("inf", "free_form", "integer", None, None, None, id="integer inf fails -> None"),
        pytest.param("abc", "free_form", "integer", None, None, None, id="integer unparseable -> None"),
        pytest.param("1.256", "free_form", "float", 2.0, None, "1.26",
                     id="float rounds to precision (stored as a float)"),
        pytest.param("3", "free_form", "float", 1, None, "3.0", id="float keeps one decimal"),
        pytest.param("2.675", "free_form", "float", 2, None, "2.67", id="Python round on binary floats"),
        pytest.param("x", "free_form", "float", 1, None, None, id="float unparseable -> None"),
        pytest.param("1.5", "free_form", "float", float("nan"), None, None, id="NaN precision -> None"),
        pytest.param("[1, 2]", "free_form", "list", None, None, "[1, 2]", id="list: str(x)"),
        pytest.param("blue", "free_form", "text", None, None, "blue", id="text: unchanged"),
        pytest.param("(B) five", "multi_choice", "integer", None, ["3", "5"], "5", id="(B) -> second choice"),
        pytest.param(" B ", "multi_choice", "integer", None, ["3", "5"], "5", id="letter after strip"),
        pytest.param("5", "multi_choice", "integer", None, ["3", "5"], "5", id="choice text itself"),
        pytest.param("4", "multi_choice", "integer", None, ["3", "5"], "3", id="tie: first most similar"),
        pytest.param("b", "multi_choice", "integer", None, ["3", "5"], "3",
                     id="bare lowercase letter is not upper-cased (official quirk)"),
        pytest.param("(c)", "multi_choice", "integer", None, ["3", "5"], "3",
                     id="letter beyond the choices: most similar to 'C'"),
        pytest.param(None, "multi_choice", "integer", None, ["3", "5"], None, id="no answer -> None"),
        pytest.param("5", "multi_choice", "integer", None, [], None, id="no choices -> None"),
    ],
)
def test_mathvista_normalize(extraction, question_type, answer_type, precision, choices, expected):
    got = mathvista_normalize(extraction, question_type=question_type, answer_type=answer_type,
                              precision=precision, choices=choices)
    assert got == expected


def test_mathvista_match_compares_the_normalised_answer_with_the_gold_string():
    kwargs = {"question_type": "free_form", "answer_type": "float", "precision": 1.0, "choices": None}
    assert is_mathvista_match("1.50", "1.5", **kwargs)
    assert not is_mathvista_match("1.54", "1.6", **kwargs)
    assert not is_mathvista_match(None, "1.5", **kwargs)


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        pytest.param("kitten", "sitting", 3, id="classic"),
        pytest.param("", "abc", 3, id="empty side"),
        pytest.param("abc", "abc", 0, id="equal"),
        pytest.param("ab", "ba", 2, id="transposition costs two (no Damerau)"),
    ],
)
def test_levenshtein(a, b, distance):
    assert (levenshtein(a, b), levenshtein(b, a)) == (distance, distance)


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        pytest.param("991", ("integer", None), id="integer"),
        pytest.param("-3", ("integer", None), id="negative integer"),
        pytest.param("0.0", ("float", 1), id="0.0 is a float gold with one decimal"),
        pytest.param("1.25", ("float", 2), id="two decimals"),
        pytest.param("1e3", ("float", 0), id="exponent: float, no decimals"),
        pytest.param("1,000", ("text", None), id="not a number"),
        pytest.param("nan", ("text", None), id="not finite"),
        pytest.param("", ("text", None), id="empty"),
    ],
)
def test_infer_answer_type(gold, expected):
    assert infer_answer_type(gold) == expected


@pytest.mark.parametrize(
    ("text", "gold", "kwargs", "expected"),
    [
        pytest.param("<SOLUTION>991</SOLUTION>", "991", {}, (True, True, True), id="exact"),
        pytest.param("<SOLUTION>991.0</SOLUTION>", "991", {}, (False, True, True), id="991.0"),
        pytest.param("<SOLUTION>1.50</SOLUTION>", "1.5", {}, (False, True, True),
                     id="float gold, precision inferred"),
        pytest.param("<SOLUTION>1.46</SOLUTION>", "1.5", {}, (False, False, True),
                     id="MathVista rounds to the gold's precision"),
        pytest.param("<SOLUTION>B</SOLUTION>", "5",
                     {"question_type": "multi_choice", "answer_type": "integer", "choices": ["3", "5"]},
                     (False, False, True), id="multiple choice letter"),
        pytest.param("<SOLUTION>1</SOLUTION><SOLUTION>991</SOLUTION>", "991", {}, (False, False, False),
                     id="two SOLUTION blocks: no answer"),
        pytest.param("<SOLUTION>1,000</SOLUTION>", "1,000", {}, (True, True, True), id="text gold"),
        pytest.param(None, "991", {}, (False, False, False), id="None completion"),
    ],
)
def test_judge(text, gold, kwargs, expected):
    assert judge(text, gold, **kwargs) == AnswerVerdicts(*expected)


# --------------------------------------------------------------------------------------------
# Equivalence with the naive re.findall reference
# --------------------------------------------------------------------------------------------


@settings(derandomize=True, max_examples=1000, deadline=None)
@given(text=tag_soup)
@example(text="<SOLUTION>a</SOLUTION>b</SOLUTION>")  # the nearest closing tag ends a block
@example(text="<SOLUTION><SOLUTION>a</SOLUTION>")  # the leftmost opening tag starts it
@example(text="<SOLUTION>a</SOLUTION><SOLUTION>b</SOLUTION><SOLUTION>")  # scanning resumes after a block
@example(text="<SOLUTION></SOLUTION></SOLUTION>")
@example(text="<SOLUTION>" * 50 + "</SOLUTION>" * 3)
def test_blocks_equal_re_findall(text):
    assert solution_blocks(text) == naive_solution_blocks(text)
    assert reasoning_blocks(text) == naive_reasoning_blocks(text)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(solution=st.one_of(st.sampled_from(["991", "991.0", "-0", "0", " 1e3", "nan", "inf", "1_0"]),
                          st.text(alphabet="0123456789.-+e_ \n", max_size=8)),
       gold=st.sampled_from(["991", "0", "0.0", "-3.5", "1000", "1,000", "nan", ""]),
       rel_tol=st.sampled_from([0.0, 1e-9, 1e-3]))
def test_numeric_match_equals_naive(solution, gold, rel_tol):
    expected = naive_numeric_equal(solution.replace("\n", ""), gold, rel_tol)
    assert is_numeric_match(solution, gold, rel_tol) == expected


@given(st.text(max_size=20))
def test_parse_finite_number_never_raises(text):
    value = parse_finite_number(text)
    assert value is None or value == value  # finite, never NaN
