"""The reference experiment's two reward functions, with TRL's reward-function signature.

``format_reward`` and ``correctness_reward`` reproduce the case study's reward exactly
(docs/reference-experiment.md, "Rewards"). The format reward and the 2.0 exact match are Unsloth's
Qwen-VL GRPO notebook code (``formatting_reward_func``, ``correctness_reward_func``); the 1.5 numeric
match is the case study's addition (the notebook versions on GitHub score only 2.0 or 0.0):

- format: +1 for exactly one ``<REASONING>`` block, +1 for exactly one ``<SOLUTION>`` block, and -2 when
  ``addCriterion`` plus newlines make up at least half of the completion's characters (the Qwen-VL
  gibberish failure mode);
- correctness: 2.0 when the single SOLUTION content (newlines removed) equals the gold string, 1.5 when it
  and the gold are equal finite numbers, else 0.0.

Both call :mod:`vlrl.answers`, the same checks the evaluation uses, so reward and accuracy cannot drift
apart. :data:`REWARD_NAMES` is the one place that orders them; :func:`build_reward_functions` returns
the functions in that order with their weights from ``params.yaml`` (``rewards.<name>_weight``) for
TRL's ``reward_weights``. :func:`explain` breaks one completion's reward down for ``vlrl reward`` and
the scorer.

Robust by contract: a completion that is ``None``, empty, not a string, a conversational message list
or a megabyte of gibberish gets a defined score; nothing here raises on model output, prints or writes.
Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from vlrl.answers import (
    DEFAULT_REL_TOL,
    AnswerVerdicts,
    count_blocks,
    extract_solution,
    is_numeric_match,
    is_strict_match,
    judge,
)
from vlrl.config import RewardParams
from vlrl.prompts import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START, TAGS

#: The reference's reward values.
ONE_BLOCK_REWARD = 1.0
ADDCRITERION_PENALTY = -2.0
ADDCRITERION_SHARE_THRESHOLD = 0.5
EXACT_REWARD = 2.0
NUMERIC_REWARD = 1.5
NO_REWARD = 0.0
#: The best possible format reward: one REASONING block, one SOLUTION block, no penalty.
MAX_FORMAT_REWARD = 2 * ONE_BLOCK_REWARD

#: The reward terms in the order TRL receives them; ``rewards.<name>_weight`` in params.yaml weighs each.
REWARD_NAMES = ("format", "correctness")
#: The case study's weights (used by ``vlrl reward`` when there is no params.yaml).
REFERENCE_REWARDS = RewardParams(format_weight=0.3, correctness_weight=1.0, numeric_rel_tol=DEFAULT_REL_TOL)
#: What the format reward logs through TRL's ``log_metric``: the share of completions at the maximum.
FORMAT_RATE_KEY = "format_rate"

CorrectnessCriterion = Literal["exact", "numeric", "none"]


# --------------------------------------------------------------------------------------------
# Completion text
# --------------------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    # A message's content is a string, or (multimodal chat format) a list of typed parts.
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        return "".join(part["text"] for part in content
                       if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def completion_text(completion: Any) -> str:
    """The text of one completion as TRL passes it: a plain string or a conversational message list.

    Conversational completions (``[{"role": "assistant", "content": ...}]``) give the concatenated
    content of their assistant messages (messages without a role count as assistant); content may be a
    string or a list of parts such as ``{"type": "text", "text": ...}``. Anything else (``None``, numbers,
    malformed messages) is the empty string, which scores like an empty completion.

    >>> completion_text([{"role": "assistant",
    ...                   "content": [{"type": "text", "text": "<SOLUTION>7</SOLUTION>"}]}])
    '<SOLUTION>7</SOLUTION>'
    >>> completion_text(None)
    ''
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list | tuple):
        return "".join(_content_text(message.get("content")) for message in completion
                       if isinstance(message, dict) and message.get("role", "assistant") == "assistant")
    return ""


# --------------------------------------------------------------------------------------------
# Per-completion scores
# --------------------------------------------------------------------------------------------


def addcriterion_share(text: str) -> float:
    """Share of the characters that are ``addCriterion`` or newlines, computed as the reference does.

    The reference removes ``"addCriterion"`` first and then ``"\\n"`` and compares lengths, so an
    ``addCriterion`` split by a newline counts only its newline. An empty text has share 0.

    >>> addcriterion_share("addCriterion\\n" * 3)
    1.0
    """
    if not text:
        return 0.0
    removal = text.replace("addCriterion", "").replace("\n", "")
    return (len(text) - len(removal)) / len(text)


def has_addcriterion_penalty(text: str) -> bool:
    """Whether the -2 gibberish penalty fires: ``addCriterion`` + newlines are >= 50% of the characters."""
    return addcriterion_share(text) >= ADDCRITERION_SHARE_THRESHOLD


def format_score(text: str) -> float:
    """The reference format reward of one completion text (range -2 .. 2).

    >>> format_score("<REASONING>bars</REASONING><SOLUTION>991</SOLUTION>")
    2.0
    """
    score = 0.0
    if count_blocks(text, REASONING_START, REASONING_END) == 1:
        score += ONE_BLOCK_REWARD
    if count_blocks(text, SOLUTION_START, SOLUTION_END) == 1:
        score += ONE_BLOCK_REWARD
    if has_addcriterion_penalty(text):
        score += ADDCRITERION_PENALTY
    return score


def is_strict_format(text: str) -> bool:
    """The format the prompt asks for, and nothing else: what the reference format reward fails to demand.

    After stripping surrounding whitespace the completion is exactly ``<REASONING>``, text containing
    none of the four tags, ``</REASONING>``, optional whitespace, ``<SOLUTION>``, text containing none of
    the four tags, ``</SOLUTION>``; and the addCriterion penalty does not fire. Every strict completion
    earns the maximum format reward; :data:`MAX_FORMAT_REWARD` without strictness is gaming
    (:func:`format_gaming_patterns` names how).

    >>> is_strict_format("  <REASONING>count</REASONING>\\n<SOLUTION>3</SOLUTION>\\n")
    True
    >>> is_strict_format("<REASONING>r</REASONING><SOLUTION>1</SOLUTION></SOLUTION></SOLUTION>")
    False
    """
    body = text.strip()
    if not (body.startswith(REASONING_START) and body.endswith(SOLUTION_END)):
        return False
    reasoning_end = body.find(REASONING_END, len(REASONING_START))
    if reasoning_end < 0:
        return False
    reasoning = body[len(REASONING_START):reasoning_end]
    rest = body[reasoning_end + len(REASONING_END):].lstrip()
    if not rest.startswith(SOLUTION_START) or len(rest) < len(SOLUTION_START) + len(SOLUTION_END):
        return False
    solution = rest[len(SOLUTION_START):len(rest) - len(SOLUTION_END)]
    return (not any(tag in reasoning or tag in solution for tag in TAGS)
            and not has_addcriterion_penalty(text))


#: Ways a completion earns the maximum format reward without the strict format, as the report names them.
GAMING_PATTERNS = ("stray closing tag", "repeated opening tag", "text before <REASONING>",
                   "text between the blocks", "text after </SOLUTION>", "blocks out of order")


def format_gaming_patterns(text: str) -> tuple[str, ...]:
    """Which of :data:`GAMING_PATTERNS` a completion shows (several can apply; empty when none does).

    >>> format_gaming_patterns("<REASONING>r</REASONING><SOLUTION>1</SOLUTION></SOLUTION>")
    ('stray closing tag', 'text after </SOLUTION>')
    """
    body = text.strip()
    first_solution = body.find(SOLUTION_START)
    solution_end = body.find(SOLUTION_END, first_solution + len(SOLUTION_START)) if first_solution >= 0 else -1
    first_reasoning = body.find(REASONING_START)
    reasoning_end = body.find(REASONING_END)
    found = {
        "stray closing tag": (body.count(SOLUTION_END) > body.count(SOLUTION_START)
                              or body.count(REASONING_END) > body.count(REASONING_START)),
        "repeated opening tag": body.count(SOLUTION_START) > 1 or body.count(REASONING_START) > 1,
        "text before <REASONING>": first_reasoning != 0,
        "text between the blocks": (0 <= reasoning_end < first_solution
                                    and body[reasoning_end + len(REASONING_END):first_solution].strip() != ""),
        "text after </SOLUTION>": solution_end >= 0 and body[solution_end + len(SOLUTION_END):].strip() != "",
        "blocks out of order": 0 <= first_solution < first_reasoning,
    }
    return tuple(name for name in GAMING_PATTERNS if found[name])


def correctness_criterion(text: str, gold: str, rel_tol: float = DEFAULT_REL_TOL) -> CorrectnessCriterion:
    """Which correctness criterion a completion text meets: ``exact``, ``numeric`` or ``none``.

    >>> correctness_criterion("<SOLUTION>991.0</SOLUTION>", "991")
    'numeric'
    """
    solution = extract_solution(text)
    if is_strict_match(solution, gold):
        return "exact"
    if is_numeric_match(solution, gold, rel_tol):
        return "numeric"
    return "none"


_CRITERION_REWARD: dict[str, float] = {"exact": EXACT_REWARD, "numeric": NUMERIC_REWARD, "none": NO_REWARD}


def correctness_score(text: str, gold: str, rel_tol: float = DEFAULT_REL_TOL) -> float:
    """The reference correctness reward of one completion text: 2.0 exact, 1.5 numeric, else 0.0.

    >>> correctness_score("<SOLUTION>991</SOLUTION>", "991")
    2.0
    >>> correctness_score("<SOLUTION>991.0</SOLUTION>", "991")
    1.5
    """
    return _CRITERION_REWARD[correctness_criterion(text, gold, rel_tol)]


# --------------------------------------------------------------------------------------------
# TRL reward functions
# --------------------------------------------------------------------------------------------


def format_reward(completions: Sequence[Any], log_metric: Callable[[str, float], None] | None = None,
                  **kwargs: Any) -> list[float]:
    """TRL reward function: the reference format reward of each completion.

    TRL passes ``log_metric`` (``GRPOTrainer._log_metric``, averaged per logging step); through it the
    format reward reports :data:`FORMAT_RATE_KEY`, the share of completions at the maximum reward,
    which the mean alone cannot show. The returned scores do not depend on it.

    >>> format_reward(["<REASONING>r</REASONING><SOLUTION>1</SOLUTION>", "addCriterion\\n" * 5, None])
    [2.0, -2.0, 0.0]
    >>> seen = {}
    >>> format_reward(["<REASONING>a</REASONING><SOLUTION>1</SOLUTION>", "x"], log_metric=seen.__setitem__)
    [2.0, 0.0]
    >>> seen
    {'format_rate': 0.5}
    """
    scores = [format_score(completion_text(completion)) for completion in completions]
    if log_metric is not None and scores:
        log_metric(FORMAT_RATE_KEY, sum(score == MAX_FORMAT_REWARD for score in scores) / len(scores))
    return scores


def correctness_reward(
    completions: Sequence[Any], answer: Sequence[str], rel_tol: float = DEFAULT_REL_TOL, **kwargs: Any
) -> list[float]:
    """TRL reward function: the reference correctness reward of each completion against its gold ``answer``.

    TRL passes the data set's ``answer`` column as a keyword, one gold per completion. ``rel_tol`` is the
    numeric criterion's tolerance (see :func:`vlrl.answers.is_numeric_match`); a gold that is not a
    string never matches.

    >>> correctness_reward([[{"role": "assistant", "content": "<SOLUTION>991.0</SOLUTION>"}], "no tags"],
    ...                    answer=["991", "991"])
    [1.5, 0.0]
    """
    return [correctness_score(completion_text(completion), gold, rel_tol)
            for completion, gold in zip(completions, answer, strict=True)]


def reward_weights(rewards: RewardParams) -> dict[str, float]:
    """Reward name -> weight, in :data:`REWARD_NAMES` order.

    >>> reward_weights(REFERENCE_REWARDS)
    {'format': 0.3, 'correctness': 1.0}
    """
    return {name: getattr(rewards, f"{name}_weight") for name in REWARD_NAMES}


def build_reward_functions(rewards: RewardParams) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """The reward functions for ``GRPOTrainer(reward_funcs=...)`` and their weights for ``reward_weights``.

    In :data:`REWARD_NAMES` order. The functions keep the names ``format_reward`` and
    ``correctness_reward`` (TRL logs ``rewards/<name>/mean``), with ``rewards.numeric_rel_tol`` bound.

    >>> funcs, weights = build_reward_functions(REFERENCE_REWARDS)
    >>> [f.__name__ for f in funcs], weights
    (['format_reward', 'correctness_reward'], [0.3, 1.0])
    """
    bound_correctness = functools.partial(correctness_reward, rel_tol=rewards.numeric_rel_tol)
    functools.update_wrapper(bound_correctness, correctness_reward)
    functions = {"format": format_reward, "correctness": bound_correctness}
    return [functions[name] for name in REWARD_NAMES], list(reward_weights(rewards).values())


# --------------------------------------------------------------------------------------------
# The explainer's breakdown
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardBreakdown:
    """Every part of one completion's reward and its accuracy verdicts (``vlrl reward``, per-example rows)."""

    reasoning_blocks: int
    solution_blocks: int
    addcriterion_share: float
    addcriterion_penalty: bool
    format: float
    format_compliant: bool
    format_compliant_strict: bool
    format_gamed: bool
    solution: str | None
    correctness: float
    correctness_criterion: CorrectnessCriterion
    format_weight: float
    correctness_weight: float
    format_weighted: float
    correctness_weighted: float
    total: float
    verdicts: AnswerVerdicts

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-ready dict; the verdicts become ``accuracy_strict``, ``accuracy_numeric`` and
        ``accuracy_mathvista``."""
        flat = {key: value for key, value in asdict(self).items() if key != "verdicts"}
        flat.update(accuracy_strict=self.verdicts.strict, accuracy_numeric=self.verdicts.numeric,
                    accuracy_mathvista=self.verdicts.mathvista)
        return flat


def explain(
    completion: Any,
    gold: str,
    *,
    format_weight: float,
    correctness_weight: float,
    rel_tol: float = DEFAULT_REL_TOL,
    question_type: str | None = None,
    answer_type: str | None = None,
    precision: float | int | None = None,
    choices: Sequence[str] | None = None,
) -> RewardBreakdown:
    """Break one completion's reward down. Scores come from :func:`format_reward` and
    :func:`correctness_reward` themselves and verdicts from :func:`vlrl.answers.judge`, so the explainer
    shows what training and evaluation compute, not a copy.

    >>> b = explain("<REASONING>read the bar</REASONING><SOLUTION>991</SOLUTION>", "991",
    ...             format_weight=0.3, correctness_weight=1.0)
    >>> b.format, b.correctness, b.total, b.verdicts.strict
    (2.0, 2.0, 2.6, True)
    """
    text = completion_text(completion)
    strict_format = is_strict_format(text)
    format_value = format_reward([text])[0]
    correctness_value = correctness_reward([text], answer=[gold], rel_tol=rel_tol)[0]
    criterion = {EXACT_REWARD: "exact", NUMERIC_REWARD: "numeric"}.get(correctness_value, "none")
    verdicts = judge(text, gold, question_type=question_type, answer_type=answer_type, precision=precision,
                     choices=choices, rel_tol=rel_tol)
    format_weighted = format_weight * format_value
    correctness_weighted = correctness_weight * correctness_value
    return RewardBreakdown(
        reasoning_blocks=count_blocks(text, REASONING_START, REASONING_END),
        solution_blocks=count_blocks(text, SOLUTION_START, SOLUTION_END),
        addcriterion_share=addcriterion_share(text),
        addcriterion_penalty=has_addcriterion_penalty(text),
        format=format_value,
        format_compliant=format_value == MAX_FORMAT_REWARD,
        format_compliant_strict=strict_format,
        format_gamed=format_value == MAX_FORMAT_REWARD and not strict_format,
        solution=extract_solution(text),
        correctness=correctness_value,
        correctness_criterion=criterion,
        format_weight=format_weight,
        correctness_weight=correctness_weight,
        format_weighted=format_weighted,
        correctness_weighted=correctness_weighted,
        total=format_weighted + correctness_weighted,
        verdicts=verdicts,
    )


# --------------------------------------------------------------------------------------------
# The case study's presets: name -> (gold, completion)
# --------------------------------------------------------------------------------------------

_READING = ("The bar chart shows yearly totals. The tallest bar, for 2019, ends just below the 1000 "
            "gridline, and its data label reads 991. The question asks for that value.")

PRESETS: dict[str, tuple[str, str]] = {
    # One REASONING block, one SOLUTION block, SOLUTION equals the gold: 0.3 * 2 + 1.0 * 2.0 = 2.60.
    "exact": ("991", f"<REASONING>{_READING}</REASONING>\n<SOLUTION>991</SOLUTION>"),
    # The same number written as a float: strict accuracy fails, the numeric 1.5 fires: 0.3 * 2 + 1.5 = 2.10.
    "numeric": ("991", f"<REASONING>{_READING}</REASONING>\n<SOLUTION>991.0</SOLUTION>"),
    # Well formatted but wrong: only the format reward, 0.3 * 2 = 0.60.
    "wrong": ("991", f"<REASONING>{_READING.replace('991', '919')}</REASONING>\n<SOLUTION>919</SOLUTION>"),
    # Qwen-VL's gibberish failure mode: the reasoning degenerates into addCriterion lines and never
    # closes, so no block is found and the -2 penalty fires: 0.3 * -2 = -0.60.
    "addcriterion": ("991", "<REASONING>The tallest bar is for 2019 and\n" + "addCriterion\n" * 60),
}
