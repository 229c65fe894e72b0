"""What the report computes from metric and per-example files (pure; tested directly).

- paired tests: before and after are scored on the same held-out items, so each boolean verdict gets
  an exact McNemar test on the discordant pairs;
- the reward-vs-metric gap: answers that earn the numeric 1.5 but are wrong under strict accuracy (the
  case study's "991.0" effect);
- format gaming: completions at the maximum format reward that are not strictly formatted, by pattern;
- the training reward split into its weighted format and correctness parts, so the report can say from
  the run's own numbers why the total moved.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vlrl.errors import CorruptInputError
from vlrl.rewards import GAMING_PATTERNS, format_gaming_patterns
from vlrl.stats import Z_95, mcnemar_exact


@dataclass(frozen=True)
class PairedTest:
    label: str
    both: int
    improved: int
    regressed: int
    neither: int
    p_value: float


def mean_interval(values: Sequence[float], z: float = Z_95) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95% interval (mean +- z * sd / sqrt(n)).

    >>> mean_interval([1.0, 1.0, 1.0])
    (1.0, 1.0, 1.0)
    """
    if not values:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = z * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def pair_by_pid(before: Sequence[dict], after: Sequence[dict]) -> list[tuple[dict, dict]]:
    """Join baseline and post records on pid; both must score the same held-out items."""
    after_by_pid = {r["pid"]: r for r in after}
    only_one = sorted({r["pid"] for r in before} ^ set(after_by_pid))
    if only_one:
        raise CorruptInputError(
            f"baseline and post were scored on different items; pids only in one: {only_one[:10]}"
            f"{' ...' if len(only_one) > 10 else ''}; re-run the score stages (dvc repro)")
    return [(r, after_by_pid[r["pid"]]) for r in before]


def paired_test(pairs: Sequence[tuple[dict, dict]], field: str, label: str) -> PairedTest:
    """Exact McNemar test of one boolean verdict before vs after."""
    counts = Counter((bool(before[field]), bool(after[field])) for before, after in pairs)
    improved, regressed = counts[(False, True)], counts[(True, False)]
    return PairedTest(label, counts[(True, True)], improved, regressed, counts[(False, False)],
                      mcnemar_exact(improved, regressed))


def flipped(pairs: Sequence[tuple[dict, dict]], field: str) -> tuple[list[tuple[dict, dict]], list]:
    """(improved, regressed) pairs of one boolean verdict."""
    improved = [(b, a) for b, a in pairs if not b[field] and a[field]]
    regressed = [(b, a) for b, a in pairs if b[field] and not a[field]]
    return improved, regressed


def numeric_only_count(records: Sequence[dict]) -> int:
    """Answers that earn the numeric 1.5 but are wrong under strict accuracy (the "991.0" effect)."""
    return sum(1 for r in records if r.get("correctness_criterion") == "numeric")


def gaming_counts(records: Sequence[dict]) -> dict[str, int]:
    """Gamed completions (maximum format reward, not strict) per pattern of :data:`GAMING_PATTERNS`.

    >>> counts = gaming_counts([{"format_gamed": True,
    ...                          "completion": "<REASONING>r</REASONING><SOLUTION>1</SOLUTION>!"}])
    >>> {pattern: n for pattern, n in counts.items() if n}
    {'text after </SOLUTION>': 1}
    """
    counts = Counter(pattern for r in records if r.get("format_gamed")
                     for pattern in format_gaming_patterns(r.get("completion") or ""))
    return {pattern: counts[pattern] for pattern in GAMING_PATTERNS}


def read_curve(curves_dir: Path | None, name: str) -> list[tuple[float, float]]:
    """(step, value) pairs from ``<curves_dir>/<name>.tsv`` (columns ``step``, ``<name>``); [] if absent."""
    path = None if curves_dir is None else Path(curves_dir) / f"{name}.tsv"
    if path is None or not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if not rows or rows[0] != ["step", name]:
        raise CorruptInputError(f"{path}: expected the header 'step<TAB>{name}'; re-run the train stage")
    try:
        return [(float(step), float(value)) for step, value in rows[1:]]
    except ValueError as exc:
        raise CorruptInputError(f"{path}: not a curve of numbers ({exc}); re-run the train stage") from exc


def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (shorter at the start).

    >>> rolling_mean([1.0, 3.0, 5.0, 7.0], 2)
    [1.0, 2.0, 4.0, 6.0]
    """
    return [statistics.fmean(values[max(0, i + 1 - window): i + 1]) for i in range(len(values))]


def reward_movement(train: dict, format_weight: float, correctness_weight: float) -> str | None:
    """One sentence, from the run's own numbers, on why the weighted training reward moved as it did.

    >>> reward_movement({"reward_mean_first_tenth": 0.6, "reward_mean_last_tenth": 1.1,
    ...                  "reward_format_mean_first_tenth": 1.5, "reward_format_mean_last_tenth": 2.0,
    ...                  "reward_correctness_mean_first_tenth": 0.15, "reward_correctness_mean_last_tenth": 0.5},
    ...                 0.3, 1.0)[:60]
    'The weighted training reward went from 0.600 (first tenth of'
    """
    keys = [f"{part}_{end}_tenth" for part in ("reward_mean", "reward_format_mean", "reward_correctness_mean")
            for end in ("first", "last")]
    if any(train.get(key) is None for key in keys):
        return None
    total0, total1, format0, format1, correct0, correct1 = (float(train[key]) for key in keys)
    d_format, d_correct = format_weight * (format1 - format0), correctness_weight * (correct1 - correct0)
    main = "format" if abs(d_format) > abs(d_correct) else "correctness"
    return (f"The weighted training reward went from {total0:.3f} (first tenth of the steps) to {total1:.3f} "
            f"(last tenth): the format part contributed {format_weight:g} x ({format0:.3f} -> {format1:.3f}) = "
            f"{d_format:+.3f} and the correctness part {correctness_weight:g} x ({correct0:.3f} -> {correct1:.3f}) "
            f"= {d_correct:+.3f}, so the {main} reward drove the change.")
