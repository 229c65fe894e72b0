"""Scoring: rewards and accuracy verdicts per example, and a flat metrics object.

One definition of "correct": every verdict comes from :func:`vlrl.rewards.explain`, the same code
that computes the training reward (as nanochat's ``tasks/gsm8k.py`` re-uses ``evaluate()`` in
``reward()``). This module only joins generations with the gold answers and aggregates.

Two outputs per scored file:

- the headline metrics, FLAT with stable keys so that ``dvc metrics diff`` lines up before/after and
  across commits: ``n``, every rate of :data:`vlrl.metrics.RATES` with ``<rate>_ci95_low`` /
  ``<rate>_ci95_high`` (Wilson), every mean of :data:`vlrl.metrics.MEANS`;
- the breakdowns (:func:`breakdown_metrics`, a separate file): the main rates within each MathVista
  question type, answer type and metadata value, aggregated with pandas.

Cheap on purpose: a change of reward weights or reward code re-scores cached completions in seconds.
Imports neither torch nor DVC.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import pandas as pd

from vlrl import rewards as reward_rules
from vlrl.config import RewardParams
from vlrl.errors import CorruptInputError
from vlrl.mathvista import GOLD_FIELDS
from vlrl.metrics import BREAKDOWN_FIELDS, BREAKDOWN_RATES, CI_SUFFIXES, MEANS, RATES, SMALL_CELL
from vlrl.stats import wilson_interval

#: Fields every generation record must carry (generation.py writes them).
GENERATION_FIELDS = ("pid", "completion", "completion_tokens", "truncated")
#: Columns of the eval split the scorer reads (the image is never decoded).
EVAL_COLUMNS = ("pid", *GOLD_FIELDS, "metadata")
#: MathVista metadata fields copied into each scored record (for the breakdowns).
METADATA_FIELDS = ("task", "category", "context", "grade", "source", "skills")


class ScoringError(CorruptInputError):
    """Generations and the eval split do not match one to one, or a record is malformed."""


def _check_one_to_one(generations: Sequence[dict], eval_pids: Sequence[str]) -> None:
    for i, record in enumerate(generations):
        problem = _record_problem(record)
        if problem:
            raise ScoringError(f"generation record {i} (pid {record.get('pid')!r}): {problem}; re-run the generate "
                               "stage (dvc repro)")
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


def _record_problem(record: dict) -> str | None:
    """What is wrong with one generation record's fields, or None."""
    missing = [k for k in GENERATION_FIELDS if k not in record]
    if missing:
        return f"missing {', '.join(missing)}; expected fields {', '.join(GENERATION_FIELDS)}"
    types = {"pid": (str, int), "completion": (str,), "completion_tokens": (int,), "truncated": (bool,)}
    for key, allowed in types.items():
        value = record[key]
        if not isinstance(value, allowed) or (key == "completion_tokens" and isinstance(value, bool)):
            return f"{key} = {value!r} is a {type(value).__name__}, expected {' or '.join(t.__name__ for t in allowed)}"
    return None


def score_generations(generations: list[dict], eval_split: Any,
                      rewards: RewardParams) -> tuple[list[dict], dict]:
    """Per-example records (in eval-split order) and the headline metrics (:func:`headline_metrics`)."""
    # Only the gold columns and the metadata: the images are never decoded.
    gold_rows = [dict(row) for row in eval_split.select_columns(list(EVAL_COLUMNS))]
    eval_pids = [str(row["pid"]) for row in gold_rows]
    _check_one_to_one(generations, eval_pids)
    by_pid = {str(g["pid"]): g for g in generations}
    records = [_score_one(row, by_pid[str(row["pid"])], rewards) for row in gold_rows]
    return records, headline_metrics(records)


def _score_one(row: dict, generation: dict, rewards: RewardParams) -> dict:
    breakdown = reward_rules.explain(
        generation["completion"], str(row["answer"]),
        format_weight=rewards.format_weight, correctness_weight=rewards.correctness_weight,
        rel_tol=rewards.numeric_rel_tol, question_type=row.get("question_type"),
        answer_type=row.get("answer_type"), precision=row.get("precision"), choices=row.get("choices"),
    ).to_dict()
    metadata = row.get("metadata") or {}
    return {
        "pid": str(row["pid"]),
        "question_type": row.get("question_type"),
        "answer_type": row.get("answer_type"),
        **{field: metadata.get(field) for field in METADATA_FIELDS},
        "gold": str(row["answer"]),
        **breakdown,
        "completion_tokens": int(generation["completion_tokens"]),
        "truncated": bool(generation["truncated"]),
        "completion": generation["completion"],
    }


def headline_metrics(records: Sequence[dict]) -> dict[str, Any]:
    """The flat headline metrics of scored records: ``n``, every rate with its Wilson interval, every mean.

    >>> m = headline_metrics([{"format_compliant": True, "format_compliant_strict": False, "format_gamed": True,
    ...     "accuracy_strict": False, "accuracy_numeric": False, "accuracy_mathvista": False,
    ...     "addcriterion_penalty": False, "truncated": False, "format": 2.0, "correctness": 0.0, "total": 0.6,
    ...     "completion_tokens": 10}])
    >>> m["n"], m["format_compliance"], m["format_gamed_rate"], m["accuracy_strict_ci95_high"] < 1
    (1, 1.0, 1.0, True)
    """
    n = len(records)
    out: dict[str, Any] = {"n": n}
    for rate in RATES:
        hits = sum(1 for r in records if r[rate.field])
        out[rate.key] = hits / n if n else 0.0
        out[f"{rate.key}_ci95_low"], out[f"{rate.key}_ci95_high"] = wilson_interval(hits, n)
    for mean in MEANS:
        out[mean.key] = statistics.fmean(float(r[mean.field]) for r in records) if n else 0.0
    return out


def breakdown_table(records: Sequence[dict]) -> pd.DataFrame:
    """One row per (field, value) of :data:`~vlrl.metrics.BREAKDOWN_FIELDS`: n, and each breakdown rate
    with its Wilson interval; an item counts under each of its skills. Missing values are ``"(none)"``.

    >>> rows = [{"pid": str(i), "task": "bar value", "skills": ["counting", "reading"], "format_compliant": True,
    ...          "format_compliant_strict": True, "accuracy_strict": i < 3, "accuracy_numeric": i < 3,
    ...          "accuracy_mathvista": i < 3} for i in range(6)]
    >>> table = breakdown_table(rows)
    >>> cell = table.loc[("skills", "reading")]
    >>> int(cell["n"]), float(cell["accuracy_strict"]), bool(cell["small"])
    (6, 0.5, False)
    """
    frame = pd.DataFrame.from_records(list(records))
    cells = []
    for field in BREAKDOWN_FIELDS:
        if field not in frame:
            continue
        column = frame[[field, *(rate.field for rate in BREAKDOWN_RATES)]].explode(field)
        column[field] = column[field].map(lambda value: "(none)" if value is None or value != value else str(value))
        grouped = column.groupby(field, sort=True)
        counts = grouped.size()
        hits = grouped[[rate.field for rate in BREAKDOWN_RATES]].sum()
        for value, n in counts.items():
            cell = {"field": field, "value": value, "n": int(n), "small": bool(n < SMALL_CELL)}
            for rate in BREAKDOWN_RATES:
                k = int(hits.loc[value, rate.field])
                cell[rate.key] = k / n
                cell[f"{rate.key}_ci95_low"], cell[f"{rate.key}_ci95_high"] = wilson_interval(k, int(n))
            cells.append(cell)
    columns = ["field", "value", "n", "small", *(f"{r.key}{suffix}" for r in BREAKDOWN_RATES
                                                   for suffix in ("", *CI_SUFFIXES))]
    return pd.DataFrame.from_records(cells, columns=columns).set_index(["field", "value"])


def breakdown_metrics(records: Sequence[dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`breakdown_table` as the nested JSON of ``breakdown_<which>.json``: field -> value -> cell."""
    table = breakdown_table(records)
    nested: dict[str, dict[str, dict[str, Any]]] = {}
    for (field, value), row in table.iterrows():
        nested.setdefault(field, {})[value] = {key: number.item() if hasattr(number, "item") else number
                                               for key, number in row.items()}
    return nested
