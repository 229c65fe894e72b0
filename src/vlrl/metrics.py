"""The metric vocabulary: every key in ``metrics/<profile>/*.json``, its label and its meaning.

One owner for the names: the scorer writes these keys, the report labels and tests them, and
``vlrl explain-metrics`` prints the glossary, all from the tables below.

- :data:`RATES`: shares of held-out completions, each written with a 95% Wilson interval as
  ``<key>_ci95_low`` / ``<key>_ci95_high``; those marked ``paired`` get an exact McNemar test in the
  report (before and after are scored on the same items).
- :data:`MEANS`: means of per-example values (rewards, lengths).
- :data:`BREAKDOWN_FIELDS` / :data:`BREAKDOWN_RATES`: the cells of the breakdown files
  (``breakdown_<which>.json``): the same rates within each value of a MathVista field, each with its
  n, its Wilson interval, and ``small: true`` below :data:`SMALL_CELL` items.

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """A rate: the share of per-example records whose boolean ``field`` is true."""

    key: str
    field: str
    label: str
    paired: bool = False


@dataclass(frozen=True)
class Mean:
    """A mean of the per-example number ``field``."""

    key: str
    field: str
    label: str


RATES = (
    Rate("format_compliance", "format_compliant", "format compliance", paired=True),
    Rate("format_compliance_strict", "format_compliant_strict", "format compliance (strict)", paired=True),
    Rate("format_gamed_rate", "format_gamed", "format gamed (max reward, not strict)", paired=True),
    Rate("accuracy_strict", "accuracy_strict", "accuracy (strict, case study)", paired=True),
    Rate("accuracy_numeric", "accuracy_numeric", "accuracy (strict or numeric)", paired=True),
    Rate("accuracy_mathvista", "accuracy_mathvista", "accuracy (MathVista official)", paired=True),
    Rate("addcriterion_rate", "addcriterion_penalty", "addCriterion penalty rate"),
    Rate("truncation_rate", "truncated", "truncation rate"),
)
MEANS = (
    Mean("reward_format_mean", "format", "mean format reward"),
    Mean("reward_correctness_mean", "correctness", "mean correctness reward"),
    Mean("reward_total_mean", "total", "mean total reward (weighted)"),
    Mean("completion_tokens_mean", "completion_tokens", "mean completion length (tokens)"),
)
CI_SUFFIXES = ("_ci95_low", "_ci95_high")

#: Per-example fields the breakdowns group by: MathVista's question and answer types and its metadata,
#: as lmms-eval and VLMEvalKit report them. ``skills`` is a list: an item counts under each of its skills.
BREAKDOWN_FIELDS = ("question_type", "answer_type", "task", "category", "context", "grade", "source", "skills")
#: The rates each breakdown cell carries.
BREAKDOWN_RATES = tuple(r for r in RATES if r.key in ("format_compliance", "format_compliance_strict",
                                                      "accuracy_strict", "accuracy_numeric", "accuracy_mathvista"))
#: Cells with fewer items than this are marked ``small`` (shown, not hidden: their intervals say why).
SMALL_CELL = 5

#: Every metric key users meet in metrics/<profile>/*.json, with its meaning.
METRIC_DEFINITIONS: dict[str, str] = {
    "n": "number of held-out (eval split) examples scored",
    "format_compliance": "share of completions whose format reward is the maximum 2.0: exactly one "
    "<REASONING> block, exactly one <SOLUTION> block, no addCriterion penalty",
    "format_compliance_strict": "share of completions in exactly the asked format: <REASONING>...</REASONING>, "
    "optional whitespace, <SOLUTION>...</SOLUTION>, no other tag inside, nothing else but surrounding whitespace, "
    "no addCriterion penalty",
    "format_gamed_rate": "share of completions with the maximum format reward that are not strictly formatted "
    "(e.g. stray </SOLUTION> tags or text after the answer): reward the reference regex pays for gaming",
    "accuracy_strict": "the case study's accuracy: the single SOLUTION content, newlines removed, equals the "
    "gold answer string exactly (991.0 is wrong for 991)",
    "accuracy_numeric": "strict OR numeric match: the SOLUTION content and the gold both parse as finite numbers "
    "and are equal (the 1.5 reward criterion)",
    "accuracy_mathvista": "MathVista's official normalisation of the SOLUTION content (integer -> int, float -> "
    "rounded to the item's precision, multiple choice -> choice text), comparable with published numbers",
    "reward_format_mean": "mean unweighted format reward (range -2..2)",
    "reward_correctness_mean": "mean unweighted correctness reward (2.0 exact, 1.5 numeric, 0 otherwise)",
    "reward_total_mean": "mean weighted total: format_weight * format + correctness_weight * correctness",
    "addcriterion_rate": "share of completions that triggered the addCriterion/newline gibberish penalty (-2)",
    "truncation_rate": "share of completions that hit max_new_tokens without an end-of-turn token",
    "completion_tokens_mean": "mean number of generated tokens per completion",
    "*_ci95_low / *_ci95_high": "95% Wilson score interval of the rate named before the suffix",
    "breakdown_<which>.json": "the main rates within each MathVista question type, answer type, task, category, "
    "context, grade, source and skill (an item counts under each of its skills); cells with n < 5 are marked small",
}


def glossary_text() -> str:
    """The glossary as aligned plain text (``vlrl explain-metrics``).

    >>> glossary_text().splitlines()[0].split()[:2]
    ['n', 'number']
    """
    width = max(map(len, METRIC_DEFINITIONS))
    return "\n".join(f"{key:<{width}}  {meaning}" for key, meaning in METRIC_DEFINITIONS.items())
