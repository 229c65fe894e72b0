"""A deliberately naive, notebook-style reference of the reward semantics (NOT used by the package).

Written the way the reference notebook writes it (Unsloth's Qwen-VL GRPO notebooks,
``formatting_reward_func`` / ``correctness_reward_func``): ``re.findall`` with lazy ``.*?`` f-string
patterns on every call. It is quadratic on degenerate inputs, which is the point: the property tests
check that ``vlrl.rewards`` and ``vlrl.answers`` give exactly the same results, and
``benchmarks/bench_rewards.py`` times both.

The numeric (1.5) criterion is the one docs/reference-experiment.md describes: both the SOLUTION
content and the gold parse with ``float()`` as finite numbers and are equal; ``rel_tol=0`` is plain
float equality.
"""

from __future__ import annotations

import math
import re

REASONING_START, REASONING_END = "<REASONING>", "</REASONING>"
SOLUTION_START, SOLUTION_END = "<SOLUTION>", "</SOLUTION>"


def naive_reasoning_blocks(completion: str) -> list[str]:
    return re.findall(f"{REASONING_START}(.*?){REASONING_END}", completion, re.DOTALL)


def naive_solution_blocks(completion: str) -> list[str]:
    return re.findall(f"{SOLUTION_START}(.*?){SOLUTION_END}", completion, re.DOTALL)


def naive_format_reward(completions: list[str], **kwargs) -> list[float]:
    thinking_pattern = f"{REASONING_START}(.*?){REASONING_END}"
    answer_pattern = f"{SOLUTION_START}(.*?){SOLUTION_END}"
    scores = []
    for completion in completions:
        score = 0
        thinking_matches = re.findall(thinking_pattern, completion, re.DOTALL)
        answer_matches = re.findall(answer_pattern, completion, re.DOTALL)
        if len(thinking_matches) == 1:
            score += 1.0
        if len(answer_matches) == 1:
            score += 1.0
        if len(completion) != 0:
            removal = completion.replace("addCriterion", "").replace("\n", "")
            if (len(completion) - len(removal)) / len(completion) >= 0.5:
                score -= 2.0
        scores.append(score)
    return scores


def _naive_number(text: str) -> float | None:
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def naive_numeric_equal(solution: str, gold: str, rel_tol: float = 1e-9) -> bool:
    x, g = _naive_number(solution), _naive_number(gold)
    if x is None or g is None:
        return False
    if rel_tol == 0:
        return x == g
    return math.isclose(x, g, rel_tol=0.0, abs_tol=rel_tol * max(abs(g), 1.0))


def naive_correctness_reward(completions: list[str], answer: list[str], rel_tol: float = 1e-9,
                             **kwargs) -> list[float]:
    answer_pattern = f"{SOLUTION_START}(.*?){SOLUTION_END}"
    responses = [re.findall(answer_pattern, completion, re.DOTALL) for completion in completions]
    return [
        2.0 if len(r) == 1 and a == r[0].replace("\n", "") else
        1.5 if len(r) == 1 and naive_numeric_equal(r[0].replace("\n", ""), a, rel_tol) else
        0.0
        for r, a in zip(responses, answer, strict=True)
    ]


_NO_TAG = r"(?:(?!</?(?:REASONING|SOLUTION)>).)*"
#: The strict format as one regular expression (quadratic-safe enough for the short test inputs).
STRICT_FORMAT = re.compile(rf"<REASONING>{_NO_TAG}</REASONING>\s*<SOLUTION>{_NO_TAG}</SOLUTION>", re.DOTALL)


def naive_is_strict_format(completion: str) -> bool:
    """The strict format by regex: whole (stripped) text, no tag inside a block, no addCriterion penalty."""
    return bool(STRICT_FORMAT.fullmatch(completion.strip())) and naive_format_reward([completion])[0] >= 2.0
