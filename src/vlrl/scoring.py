"""Scoring: rewards and accuracy verdicts per example, and a flat metrics object.

One definition of "correct": every verdict comes from :func:`vlrl.rewards.explain`, the same code
that computes the training reward (as nanochat's ``tasks/gsm8k.py`` re-uses ``evaluate()`` in
``reward()``). This module only joins generations with the gold answers and aggregates.

The metrics object is FLAT with stable keys so that ``dvc metrics diff`` lines up before/after and
across commits: ``n``, every rate of :data:`vlrl.metrics.RATES` with ``<rate>_ci95_low`` /
``<rate>_ci95_high`` (Wilson), every mean of :data:`vlrl.metrics.MEANS`, and the same within each
question type and answer type as dotted keys (``by_question_type.free_form.accuracy_strict``).

Cheap on purpose: a change of reward weights or reward code re-scores cached completions in seconds.
Imports neither torch nor DVC.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from vlrl import rewards as reward_rules
from vlrl.config import RewardParams
from vlrl.errors import CorruptInputError
from vlrl.mathvista import GOLD_FIELDS
from vlrl.metrics import GROUPS, MEANS, RATES
from vlrl.stats import wilson_interval

#: Fields every generation record must carry (generation.py writes them).
GENERATION_FIELDS = ("pid", "completion", "completion_tokens", "truncated")
#: Columns of the eval split the scorer reads (the image is never decoded).
EVAL_COLUMNS = ("pid", *GOLD_FIELDS)


class ScoringError(CorruptInputError):
    """Generations and the eval split do not match one to one, or a record is malformed."""


def _check_one_to_one(generations: Sequence[dict], eval_pids: Sequence[str]) -> None:
    for i, record in enumerate(generations):
        missing = [k for k in GENERATION_FIELDS if k not in record]
        if missing:
            raise ScoringError(f"generation record {i} (pid {record.get('pid')!r}): missing "
                               f"{', '.join(missing)}; expected fields {', '.join(GENERATION_FIELDS)}")
    seen: dict[str, int] = {}
    for record in generations:
        seen[str(record["pid"])] = seen.get(str(record["pid"]), 0) + 1
    duplicated = sorted(p for p, c in seen.items() if c > 1)
    missing = sorted(set(eval_pids) - set(seen))
    extra = sorted(set(seen) - set(eval_pids))
    problems = []
    if missing:
        problems.append(f"{len(missing)} eval pids have no generation: {missing[:10]}")
    if duplicated:
        problems.append(f"{len(duplicated)} pids have several generations: {duplicated[:10]}")
    if extra:
        problems.append(f"{len(extra)} generations are for pids not in the eval split: {extra[:10]}")
    if problems:
        raise ScoringError("every eval pid needs exactly one generation; " + "; ".join(problems)
                           + ". Re-run the generate stage on this eval split (dvc repro)")


def score_generations(generations: list[dict], eval_split: Any,
                      rewards: RewardParams) -> tuple[list[dict], dict]:
    """Per-example records (in eval-split order) and the flat metrics object.
    """
    # Only the gold columns: the images are never decoded.
    gold_rows = [dict(row) for row in eval_split.select_columns(list(EVAL_COLUMNS))]
    eval_pids = [str(row["pid"]) for row in gold_rows]
    _check_one_to_one(generations, eval_pids)
    by_pid = {str(g["pid"]): g for g in generations}
    records = [_score_one(row, by_pid[str(row["pid"])], rewards) for row in gold_rows]
    return records, metrics_of(records)


def _score_one(row: dict, generation: dict, rewards: RewardParams) -> dict:
    breakdown = reward_rules.explain(
        generation["completion"], str(row["answer"]),
        format_weight=rewards.format_weight, correctness_weight=rewards.correctness_weight,
        rel_tol=rewards.numeric_rel_tol, question_type=row.get("question_type"),
        answer_type=row.get("answer_type"), precision=row.get("precision"), choices=row.get("choices"),
    ).to_dict()
    return {
        "pid": str(row["pid"]),
        "question_type": row.get("question_type"),
        "answer_type": row.get("answer_type"),
        "gold": str(row["answer"]),
        **breakdown,
        "completion_tokens": int(generation["completion_tokens"]),
        "truncated": bool(generation["truncated"]),
        "completion": generation["completion"],
    }


def metrics_of(records: Sequence[dict]) -> dict[str, Any]:
    """The flat metrics of a list of scored records (overall, then by question and answer type).

    >>> m = metrics_of([{"format_compliant": True, "accuracy_strict": False, "accuracy_numeric": False,
    ...                  "accuracy_mathvista": False, "addcriterion_penalty": False, "truncated": False,
    ...                  "format": 2.0, "correctness": 0.0, "total": 0.6, "completion_tokens": 10,
    ...                  "question_type": "free_form", "answer_type": "integer"}])
    >>> m["n"], m["format_compliance"], m["by_question_type.free_form.n"]
    (1, 1.0, 1)
    """
    metrics = _summary(records)
    for field, prefix in GROUPS:
        for value in sorted({str(r.get(field)) for r in records}):
            group = [r for r in records if str(r.get(field)) == value]
            for key, number in _summary(group).items():
                metrics[f"{prefix}.{value}.{key}"] = number
    return metrics


def _summary(records: Sequence[dict]) -> dict[str, Any]:
    n = len(records)
    out: dict[str, Any] = {"n": n}
    for rate in RATES:
        hits = sum(1 for r in records if r[rate.field])
        out[rate.key] = hits / n if n else 0.0
        out[f"{rate.key}_ci95_low"], out[f"{rate.key}_ci95_high"] = wilson_interval(hits, n)
    for mean in MEANS:
        out[mean.key] = statistics.fmean(float(r[mean.field]) for r in records) if n else 0.0
    return out
