"""The ablation table: finished experiments' metrics in, one markdown table out.

:func:`results_frame` collects one row per finished experiment (:class:`vlrl.ablate.Experiment`
plus its baseline and post-training metrics, as :func:`vlrl.ablate.experiment_metrics` reads them),
pandas aggregates the default settings' seeds (mean, sample standard deviation, range) and tabulate
renders GitHub markdown. Cells are percentages, ``before → after [95% Wilson interval of after]``.

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from tabulate import tabulate

from vlrl.ablate import Experiment

#: Metrics shown in the table: key in metrics/<profile>/*.json -> column label.
TABLE_METRICS = {
    "format_compliance": "format compliance",
    "format_compliance_strict": "strict format compliance",
    "accuracy_strict": "strict accuracy",
}


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _rate_cell(before: Mapping[str, Any], after: Mapping[str, Any], key: str) -> str:
    """``before -> after [low, high]``, percentages; the interval is the post-training rate's (Wilson 95%)."""
    if key not in after:
        return "n/a"
    low, high = after.get(f"{key}_ci95_low"), after.get(f"{key}_ci95_high")
    interval = f" [{_percent(low)}, {_percent(high)}]" if low is not None and high is not None else ""
    start = f"{_percent(before[key])} → " if key in before else ""
    return f"{start}{_percent(after[key])}{interval}"


def results_frame(experiments: Sequence[Experiment], metrics: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per finished experiment: its settings, and baseline/post value and interval per metric."""
    rows = []
    for experiment in experiments:
        found = metrics.get(experiment.exp_name)
        if not found or not found.get("post"):
            continue
        row: dict[str, Any] = {"experiment": experiment.label, "name": experiment.name, "seed": experiment.seed,
                               "format_weight": experiment.format_weight,
                               "correctness_weight": experiment.correctness_weight, "default": experiment.default,
                               "n": found["post"].get("n")}
        for key in TABLE_METRICS:
            for when in ("baseline", "post"):
                source = found.get(when) or {}
                for suffix in ("", "_ci95_low", "_ci95_high"):
                    row[f"{when}.{key}{suffix}"] = source.get(f"{key}{suffix}")
        rows.append(row)
    return pd.DataFrame(rows)


def _seed_summary(frame: pd.DataFrame) -> dict[str, str]:
    """The default's rows aggregated across seeds: ``mean before -> mean after ± sd (min-max)``."""
    defaults = frame[frame["default"]]
    cells = {"experiment": f"default, mean of {len(defaults)} seeds", "seed": ", ".join(map(str, defaults["seed"])),
             "λ format": f"{defaults['format_weight'].iloc[0]:g}",
             "λ correctness": f"{defaults['correctness_weight'].iloc[0]:g}"}
    for key, label in TABLE_METRICS.items():
        after = defaults[f"post.{key}"].astype(float) * 100
        before = defaults[f"baseline.{key}"].astype(float) * 100
        spread = f" ± {after.std(ddof=1):.1f} sd" if len(after) > 1 else ""
        cells[label] = (f"{before.mean():.1f} → {after.mean():.1f}{spread} "
                        f"(range {after.min():.1f}–{after.max():.1f})")
    return cells


def ablation_table(frame: pd.DataFrame) -> str:
    """The markdown table: one row per experiment, then the mean and spread of the default's seeds.

    Cells are percentages, ``before → after [95% Wilson interval of after]``.
    """
    if frame.empty:
        return "(no finished ablation experiments)"
    rows = []
    for _, row in frame.iterrows():
        cells = {"experiment": row["experiment"], "seed": str(row["seed"]),
                 "λ format": f"{row['format_weight']:g}", "λ correctness": f"{row['correctness_weight']:g}"}
        for key, label in TABLE_METRICS.items():
            before = {key: row[f"baseline.{key}"]} if pd.notna(row[f"baseline.{key}"]) else {}
            after = {k: row[f"post.{k}"] for k in (key, f"{key}_ci95_low", f"{key}_ci95_high")
                     if pd.notna(row[f"post.{k}"])}
            cells[label] = _rate_cell(before, after, key)
        rows.append(cells)
    if int(frame["default"].sum()) > 1:
        rows.append(_seed_summary(frame))
    table = pd.DataFrame(rows)
    return tabulate(table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)


def table_markdown(frame: pd.DataFrame, profile: str) -> str:
    """The table with a one-paragraph legend (what the cells are, what n is)."""
    n = sorted({int(v) for v in frame["n"].dropna()}) if not frame.empty else []
    legend = (f"Ablations on the `{profile}` profile (`vlrl ablate`). Cells: held-out rate before GSPO → after, "
              f"in %, with the 95% Wilson interval of the after value; n = {', '.join(map(str, n)) or '?'} "
              "held-out items per run. The last row averages the default's seeds (sample sd, range).")
    return f"{legend}\n\n{ablation_table(frame)}\n"


