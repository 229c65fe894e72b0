"""Answer checks: the one definition of "correct" shared by the rewards, the scorer and the explainer.

Three verdicts on a completion, from the strictest to the most lenient:

- **strict** (the case study's accuracy): the completion has exactly one ``<SOLUTION>...</SOLUTION>``
  block and its content, with newlines removed, equals the gold string (``991.0`` is wrong for
  ``991``). This is the reference correctness reward's 2.0 condition.
- **numeric**: strict, or the single SOLUTION content and the gold both parse as *finite* numbers that
  are equal within a relative tolerance (the reference's 1.5 condition; see :func:`is_numeric_match`).
- **mathvista**: MathVista's official normalisation of the extracted answer (integer, float rounded to
  the item's precision, multiple choice -> choice text) compared with the gold string, so the number is
  comparable with published MathVista results (lupantech/MathVista, ``evaluation/calculate_score.py``,
  ``normalize_extracted_answer`` and ``safe_equal``).

Block extraction follows ``re.findall(f"{START}(.*?){END}", text, re.DOTALL)`` (the reference notebook's
patterns) exactly, but scans with ``str.find`` so that it runs in linear time: the lazy regex is
quadratic on degenerate completions such as ``"<SOLUTION>" * 100_000`` with no closing tag.

Pure module: imports neither torch nor DVC, never prints, and never raises on model output.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from vlrl.prompts import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START

#: Default tolerance of the numeric criterion (params.yaml ``rewards.numeric_rel_tol``).
DEFAULT_REL_TOL = 1e-9



# --------------------------------------------------------------------------------------------
# Block extraction (linear time, findall-equivalent)
# --------------------------------------------------------------------------------------------


def _block_spans(text: str, start_tag: str, end_tag: str) -> Iterator[tuple[int, int]]:
    """(begin, end) of each block's content, exactly as ``re.findall(start(.*?)end, re.DOTALL)`` finds them.

    Why this equals the regex: the regex tries each position left to right; a match at position p needs
    ``start_tag`` at p, and the lazy ``.*?`` then stops at the *nearest* ``end_tag`` after the opening tag,
    which is ``text.find(end_tag, p + len(start_tag))``. The next attempt begins where the match ended.
    If no closing tag follows an opening tag, no later opening tag can have one either (it would need a
    closing tag even further right), so the scan stops: each character is looked at a bounded number of
    times instead of once per opening tag.
    """
    position = 0
    while True:
        opening = text.find(start_tag, position)
        if opening < 0:
            return
        content_begin = opening + len(start_tag)
        closing = text.find(end_tag, content_begin)
        if closing < 0:
            return
        yield content_begin, closing
        position = closing + len(end_tag)


def _blocks(text: str, start_tag: str, end_tag: str) -> list[str]:
    return [text[begin:end] for begin, end in _block_spans(text, start_tag, end_tag)]


def count_blocks(text: str, start_tag: str, end_tag: str) -> int:
    """How many blocks ``re.findall`` would return, without copying their content.

    >>> count_blocks("<SOLUTION>1</SOLUTION><SOLUTION>2</SOLUTION>", SOLUTION_START, SOLUTION_END)
    2
    """
    return sum(1 for _ in _block_spans(text, start_tag, end_tag))


def solution_blocks(text: str) -> list[str]:
    """The contents of the ``<SOLUTION>...</SOLUTION>`` blocks, as the reference's ``re.findall`` gives them.

    >>> solution_blocks("<SOLUTION>991</SOLUTION> and <SOLUTION>\\n7</SOLUTION>")
    ['991', '\\n7']
    >>> solution_blocks("<SOLUTION><SOLUTION>5</SOLUTION>")  # the leftmost opening tag wins
    ['<SOLUTION>5']
    """
    return _blocks(text, SOLUTION_START, SOLUTION_END)


def reasoning_blocks(text: str) -> list[str]:
    """The contents of the ``<REASONING>...</REASONING>`` blocks (``re.findall`` semantics).

    >>> reasoning_blocks("<REASONING>count the bars</REASONING>")
    ['count the bars']
    """
    return _blocks(text, REASONING_START, REASONING_END)


def extract_solution(text: str) -> str | None:
    """The single SOLUTION block's content with newlines removed; ``None`` unless there is exactly one block.

    Newlines (``"\\n"`` only) are removed as the reference does (``r[0].replace('\\n', '')``); spaces,
    tabs and ``"\\r"`` are kept, so the strict check sees them.

    >>> extract_solution("<REASONING>...</REASONING><SOLUTION>\\n991\\n</SOLUTION>")
    '991'
    >>> extract_solution("<SOLUTION>1</SOLUTION><SOLUTION>2</SOLUTION>") is None
    True
    """
    if not isinstance(text, str):
        return None
    spans = _block_spans(text, SOLUTION_START, SOLUTION_END)
    first = next(spans, None)
    if first is None or next(spans, None) is not None:
        return None
    return text[first[0]:first[1]].replace("\n", "")


# --------------------------------------------------------------------------------------------
# Strict and numeric criteria (the reference correctness reward)
# --------------------------------------------------------------------------------------------


def is_strict_match(solution: str | None, gold: str) -> bool:
    """The case study's accuracy: the SOLUTION content, newlines removed, equals the gold string exactly.

    Nothing else is normalised (the reference compares ``a == r[0].replace('\\n', '')``), so surrounding
    spaces make a strict mismatch. A gold that is not a string never matches.

    >>> is_strict_match("991", "991"), is_strict_match("991.0", "991"), is_strict_match(" 991", "991")
    (True, False, False)
    """
    if not isinstance(solution, str) or not isinstance(gold, str):
        return False
    return solution.replace("\n", "") == gold


def parse_finite_number(text: object) -> float | None:
    """``float(text)`` if that gives a finite number, else ``None`` (never raises).

    This is Python's ``float()`` grammar, the same the reference uses to keep MathVista rows
    (rows whose answer parses with ``float()``,
    docs/reference-experiment.md): surrounding whitespace is ignored, and
    ``"9.91e2"``, ``"+991"``, ``"1_000"`` (PEP 515) and non-ASCII digits are numbers; ``"1,000"``,
    ``""``, ``"nan"`` and ``"inf"`` are not (the last two parse but are not finite).

    >>> parse_finite_number(" 9.91e2 "), parse_finite_number("1,000"), parse_finite_number("nan")
    (991.0, None, None)
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        return None
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def is_numeric_match(solution: str | None, gold: str, rel_tol: float = DEFAULT_REL_TOL) -> bool:
    """The 1.5 criterion: SOLUTION content and gold both parse as finite numbers and are equal.

    "Equal" means ``|x - gold| <= rel_tol * max(|gold|, 1)``: relative to the gold for large numbers,
    absolute (``rel_tol``) below 1 so that ``0`` and ``-0.0`` and tiny golds behave. The default
    ``1e-9`` only absorbs float noise (``0.1 + 0.2`` style) and never accepts a rounding a human
    would call different; ``rel_tol=0`` is exact float equality.

    Whitespace: the content is parsed with ``float()``, which ignores surrounding whitespace, so
    ``" 991 "`` earns the numeric 1.5 although it fails the strict 2.0. We keep this because it is what
    "parses as a number" means in the reference (``float()``) and the strict criterion already rewards
    the clean form more; newlines are removed before parsing anyway.

    >>> is_numeric_match("991.0", "991"), is_numeric_match(" 9.91e2 ", "991"), is_numeric_match("990", "991")
    (True, True, False)
    >>> is_numeric_match("-0", "0"), is_numeric_match("inf", "inf")
    (True, False)
    """
    if not isinstance(solution, str):
        return False
    value = parse_finite_number(solution.replace("\n", ""))
    target = parse_finite_number(gold) if isinstance(gold, str) else None
    if value is None or target is None:
        return False
    # The difference of two finite floats can overflow to inf; the comparison is then False, as it should be.
    return abs(value - target) <= rel_tol * max(abs(target), 1.0)


# --------------------------------------------------------------------------------------------
# MathVista's official normalisation
# --------------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions), as ``Levenshtein.distance`` computes it.

    MathVista uses it to map a free-text answer to the most similar choice. Choices are short, so the
    O(len(a) * len(b)) dynamic programme is fine; it keeps one row of memory.

    >>> levenshtein("kitten", "sitting"), levenshtein("", "abc"), levenshtein("7", "7")
    (3, 3, 0)
    """
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _most_similar(prediction: str, choices: Sequence[str]) -> str:
    # MathVista's get_most_similar: the first choice with the smallest edit distance.
    distances = [levenshtein(prediction, choice) for choice in choices]
    return choices[distances.index(min(distances))]


#: MathVista caps nothing, but the edit distance is quadratic: an answer longer than this cannot be a
#: choice's text and is compared by its first characters only (a bound on the work, not on the verdict
#: for any realistic choice list).
_MAX_CHOICE_MATCH_CHARS = 1000


def mathvista_normalize(
    extraction: str | None,
    *,
    question_type: str | None,
    answer_type: str | None,
    precision: float | int | None,
    choices: Sequence[str] | None,
) -> str | None:
    """MathVista's ``normalize_extracted_answer`` (lupantech/MathVista, evaluation/calculate_score.py).

    - ``multi_choice``: strip; a letter in parentheses ``"(B) ..."`` becomes ``"B"``; a letter ``A``,
      ``B``, ... maps to that choice; anything else becomes the most similar choice by edit distance.
    - ``integer``: ``str(int(float(x)))``; ``float``: ``str(round(float(x), int(precision)))``
      (the hub stores precision as a float, so it is cast; ``None`` rounds to an int as Python's
      ``round(x, None)`` does in the official code); ``list``: ``str(x)``; other types: unchanged.
    - Whatever the official code catches (unparseable numbers, ``inf`` for integers) gives ``None``.

    Deviations, both where the official pipeline cannot reach: ``extraction=None`` (no single SOLUTION
    block, i.e. no answer) gives ``None`` instead of letting the most-similar rule pick a choice for the
    text ``"None"``; an empty ``choices`` list gives ``None`` instead of an ``IndexError``.

    >>> mathvista_normalize("991.0", question_type="free_form", answer_type="integer", precision=None,
    ...                     choices=None)
    '991'
    >>> mathvista_normalize("1.256", question_type="free_form", answer_type="float", precision=2.0,
    ...                     choices=None)
    '1.26'
    >>> mathvista_normalize("(B)", question_type="multi_choice", answer_type="integer", precision=None,
    ...                     choices=["3", "5"])
    '5'
    """
    if extraction is None or not isinstance(extraction, str):
        return None
    if question_type == "multi_choice":
        if not choices:
            return None
        options = [str(choice) for choice in choices]
        answer = extraction.strip()
        letter = re.search(r"\(([a-zA-Z])\)", answer)  # official: re.findall(...)[0], the first one
        if letter:
            answer = letter.group(1).upper()
        letters = [chr(ord("A") + i) for i in range(len(options))]
        if answer in letters:
            return options[letters.index(answer)]
        return _most_similar(answer[:_MAX_CHOICE_MATCH_CHARS], options)
    if answer_type == "integer":
        value = _float_or_none(extraction)
        if value is None or not math.isfinite(value):  # int(inf) / int(nan) raise in the official code
            return None
        return str(int(value))
    if answer_type == "float":
        value = _float_or_none(extraction)
        if value is None:
            return None
        try:
            digits = None if precision is None else int(precision)
            return str(round(value, digits))
        except (ValueError, OverflowError, TypeError):  # precision NaN/inf; round(inf, None)
            return None
    if answer_type == "list":
        return str(extraction)
    return extraction


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None


def is_mathvista_match(
    extraction: str | None,
    gold: str,
    *,
    question_type: str | None,
    answer_type: str | None,
    precision: float | int | None,
    choices: Sequence[str] | None,
) -> bool:
    """MathVista's verdict: the normalised extraction equals the gold string (their ``safe_equal``).

    >>> is_mathvista_match("991.0", "991", question_type="free_form", answer_type="integer", precision=None,
    ...                    choices=None)
    True
    """
    normalized = mathvista_normalize(extraction, question_type=question_type, answer_type=answer_type,
                                     precision=precision, choices=choices)
    return normalized is not None and normalized == gold


def infer_answer_type(gold: str) -> tuple[str, int | None]:
    """(answer_type, precision) for a free-form gold when the item does not say.

    ``integer`` when the gold parses as a finite, integer-valued number written without a dot or
    exponent (``"991"``, ``"-3"``); ``float`` with ``precision`` = the number of digits after the dot when
    it is another finite number (``"0.25"`` -> 2, ``"9.91e2"`` -> 2); ``text`` otherwise (compared as
    is). This matches how MathVista labels its numeric items, whose golds are written canonically.

    >>> infer_answer_type("991"), infer_answer_type("1.50"), infer_answer_type("1,000")
    (('integer', None), ('float', 2), ('text', None))
    """
    value = parse_finite_number(gold)
    if value is None:
        return "text", None
    mantissa = re.split(r"[eE]", gold.strip(), maxsplit=1)[0]
    if "." not in mantissa and mantissa == gold.strip() and value.is_integer():
        return "integer", None
    decimals = mantissa.split(".", 1)[1] if "." in mantissa else ""
    return "float", len(decimals)


# --------------------------------------------------------------------------------------------
# All verdicts at once
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerVerdicts:
    """The three accuracy verdicts on one completion.

    ``numeric`` is "strict OR numeric criterion": ``accuracy_numeric`` counts an answer that earns the
    numeric 1.5 as correct too, so ``strict`` implies ``numeric``.
    """

    strict: bool
    numeric: bool
    mathvista: bool


def judge(
    completion_text: str,
    gold: str,
    *,
    question_type: str | None = None,
    answer_type: str | None = None,
    precision: float | int | None = None,
    choices: Sequence[str] | None = None,
    rel_tol: float = DEFAULT_REL_TOL,
) -> AnswerVerdicts:
    """Strict, numeric and MathVista verdicts for one completion text against its gold answer.

    When ``question_type`` is ``None`` the item is taken as ``free_form``; when ``answer_type`` is
    ``None`` it is inferred from the gold by :func:`infer_answer_type` (``integer``, ``float`` with the
    gold's decimals as precision, else ``text``), which is how MathVista labels its numeric items.

    >>> judge("<REASONING>r</REASONING><SOLUTION>991.0</SOLUTION>", "991")
    AnswerVerdicts(strict=False, numeric=True, mathvista=True)
    """
    solution = extract_solution(completion_text) if isinstance(completion_text, str) else None
    strict = is_strict_match(solution, gold)
    numeric = strict or is_numeric_match(solution, gold, rel_tol)
    if not isinstance(gold, str):
        return AnswerVerdicts(strict=strict, numeric=numeric, mathvista=False)
    question_type = question_type or "free_form"
    if answer_type is None:
        answer_type, inferred_precision = infer_answer_type(gold)
        precision = inferred_precision if precision is None else precision
    mathvista = is_mathvista_match(solution, gold, question_type=question_type, answer_type=answer_type,
                                   precision=precision, choices=choices)
    return AnswerVerdicts(strict=strict, numeric=numeric, mathvista=mathvista)
