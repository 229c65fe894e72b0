"""``reports/<profile>/report.md``: the before/after story, every number with its interval.

Reads only the files earlier stages wrote (headline metrics, breakdowns, scored examples, training
curves and metrics, the data manifest, generation metadata); it never loads a model or a data set, so a
reward-weight change re-renders it in seconds. Nothing in it depends on the machine or the time of
the run: the committed report is reproduced byte for byte.

Sections, and why:
- the headline table: reference format compliance next to strict compliance and the gamed rate, so a
  format gain that is reward gaming reads as such;
- paired exact McNemar tests (the same held-out items before and after);
- the gaming section: patterns counted, a few excerpts;
- the reward-vs-metric gap (the "991.0" effect);
- training: on- or off-policy, the curves split into format and correctness with rolling means, and one
  sentence on why the total moved;
- breakdowns by MathVista type and metadata, before -> after;
- examples that flipped; the environment (data and model pins, library versions); the glossary.
Empty sections say "none" in one line.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from vlrl.config import ReportParams
from vlrl.io import atomic_directory, atomic_write_text, read_json_object, read_jsonl
from vlrl.metrics import BREAKDOWN_FIELDS, MEANS, METRIC_DEFINITIONS, RATES, SMALL_CELL
from vlrl.report import analysis
from vlrl.report.markdown import cell, code_span, fenced, one_line
from vlrl.report.plots import plot_before_after, plot_training

log = logging.getLogger(__name__)

#: The training curves the report plots (plots/<profile>/train_curves/<name>.tsv).
CURVE_NAMES = ("reward", "reward_format", "reward_correctness", "format_rate", "frac_reward_zero_std")
HEADLINE_KEYS = ("n", *(rate.key for rate in RATES))
#: Fields of each scored record the report reads.
SCORED_FIELDS = ("pid", "gold", "completion", "correctness_criterion", *(rate.field for rate in RATES))
#: The tags in the glossary's text, shown as code rather than swallowed as HTML.
_TAG = re.compile(r"</?[A-Z]+>")


@dataclass(frozen=True)
class ReportInputs:
    """Paths the report stage reads (all declared as deps in dvc.yaml)."""

    profile: str
    baseline_metrics: Path
    post_metrics: Path
    baseline_scored: Path
    post_scored: Path
    train_metrics: Path
    manifest: Path
    baseline_breakdown: Path | None = None
    post_breakdown: Path | None = None
    curves_dir: Path | None = None
    generation_meta: tuple[Path, ...] = ()


# ------------------------------------------------------------------------------------------------
# Cells and tables
# ------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _rate_cell(metrics: dict, key: str) -> str:
    """The rate with the Wilson interval the score stage wrote next to it."""
    if metrics.get(key) is None:
        return "n/a"
    return f"{_pct(metrics[key])} [{_pct(metrics.get(f'{key}_ci95_low'))}, {_pct(metrics.get(f'{key}_ci95_high'))}]"


def _mean_cell(values: list[float]) -> str:
    mean, lo, hi = analysis.mean_interval(values)
    return "n/a" if math.isnan(mean) else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _delta(before: float | None, after: float | None, as_pct: bool) -> str:
    if before is None or after is None:
        return "n/a"
    d = after - before
    return f"{100 * d:+.1f} pp" if as_pct else f"{d:+.3f}"


def headline_table(base_m: dict, post_m: dict, base_r: list[dict], post_r: list[dict]) -> str:
    rows = [["n (held-out items)", str(base_m.get("n")), str(post_m.get("n")), ""]]
    for rate in RATES:
        if rate.key in base_m or rate.key in post_m:
            rows.append([rate.label, _rate_cell(base_m, rate.key), _rate_cell(post_m, rate.key),
                         _delta(base_m.get(rate.key), post_m.get(rate.key), True)])
    for mean in MEANS:
        if all(mean.field in r for r in (*base_r, *post_r)):
            rows.append([mean.label, _mean_cell([float(r[mean.field]) for r in base_r]),
                         _mean_cell([float(r[mean.field]) for r in post_r]),
                         _delta(base_m.get(mean.key), post_m.get(mean.key), False)])
    return tabulate(rows, headers=["metric", "baseline [95% CI]", "after GSPO [95% CI]", "change"], tablefmt="github")


def paired_table(tests: list[analysis.PairedTest]) -> str:
    rows = [[t.label, t.both, t.improved, t.regressed, t.neither, f"{t.p_value:.4g}"] for t in tests]
    return tabulate(rows, headers=["verdict", "right both", "improved", "regressed", "wrong both",
                                   "exact McNemar p"], tablefmt="github")


def breakdown_tables(base: dict, post: dict) -> str:
    """Before -> after tables by MathVista field (pandas join of the two breakdown files)."""
    if not base or not post:
        return "none: no breakdown files were given."
    frames = {name: pd.DataFrame.from_records(
        [{"field": field, "value": value, **cell_} for field, values in data.items() for value, cell_ in values.items()]
    ).set_index(["field", "value"]) for name, data in (("before", base), ("after", post))}
    joined = frames["before"].join(frames["after"], lsuffix="_before", rsuffix="_after", how="outer")
    parts = []
    for field in BREAKDOWN_FIELDS:
        if field not in joined.index.get_level_values("field"):
            continue
        rows = []
        for value, row in joined.loc[field].iterrows():
            n = int(row["n_before"]) if not math.isnan(row["n_before"]) else int(row["n_after"])
            rows.append([cell(value, 60), f"{n}{' (small)' if n < SMALL_CELL else ''}",
                         *(f"{_rate_cell(_cell(row, 'before'), key)} -> {_rate_cell(_cell(row, 'after'), key)}"
                           for key in ("accuracy_strict", "format_compliance_strict"))])
        parts.append(f"**{field}**\n\n" + tabulate(
            rows, headers=[field, "n", "accuracy (strict) before -> after", "format (strict) before -> after"],
            tablefmt="github", disable_numparse=True))
    return "\n\n".join(parts)


def _cell(row: pd.Series, side: str) -> dict:
    suffix = f"_{side}"
    return {k[: -len(suffix)]: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in row.items() if k.endswith(suffix)}


def _flip_table(flips: list[tuple[dict, dict]], params: ReportParams) -> str:
    rows = [[cell(b["pid"]), cell(b.get("gold", "")), cell(b.get("completion") or "", params.excerpt_chars),
             cell(a.get("completion") or "", params.excerpt_chars)] for b, a in flips[: params.flip_examples]]
    return tabulate(rows, headers=["pid", "gold", "baseline completion", "after GSPO completion"],
                    tablefmt="github", disable_numparse=True)


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------


def policy_statement(train: dict) -> str:
    level, loss = train.get("importance_sampling_level", "?"), train.get("loss_type", "?")
    if train.get("off_policy"):
        return (f"Training was **off-policy** (importance_sampling_level={level}, loss_type={loss}): the "
                "sequence-level importance ratio differs from GRPO's token-level ratio, so this run is genuinely GSPO.")
    return (f"Training was **on-policy** (importance_sampling_level={level}, loss_type={loss}; steps_per_generation "
            "equals gradient accumulation and num_iterations is 1): every importance ratio is exactly 1, so this "
            "\"GSPO\" run is mathematically a GRPO run, as in the reference notebook. Set `gspo.steps_per_generation` "
            "above the gradient accumulation or `gspo.num_iterations` > 1 to make GSPO differ.")


def gaming_section(base_r: list[dict], post_r: list[dict], params: ReportParams) -> str:
    gamed = {name: sum(bool(r.get("format_gamed")) for r in records) for name, records in
             (("baseline", base_r), ("after", post_r))}
    lines = [f"Completions with the maximum format reward that are not strictly formatted: **{gamed['baseline']}** "
             f"of {len(base_r)} before, **{gamed['after']}** of {len(post_r)} after GSPO. The reference reward pays "
             "them in full; `format_compliance_strict` does not count them."]
    if not any(gamed.values()):
        return lines[0] + "\n\nGaming patterns: none."
    counts = {name: analysis.gaming_counts(records) for name, records in (("baseline", base_r), ("after", post_r))}
    rows = [[pattern, counts["baseline"][pattern], counts["after"][pattern]] for pattern in counts["after"]
            if counts["baseline"][pattern] or counts["after"][pattern]]
    lines.append(tabulate(rows, headers=["pattern (a completion can show several)", "baseline", "after GSPO"],
                          tablefmt="github"))
    examples = [r for r in (post_r if gamed["after"] else base_r) if r.get("format_gamed")][:3]
    which = "after GSPO" if gamed["after"] else "baseline"
    lines.append(f"Examples ({which}):")
    # Twice the usual excerpt: the gaming is usually at the end (stray tags, text after the answer).
    lines += [f"pid {code_span(str(r['pid']))}, gold {code_span(str(r.get('gold', '')))}:\n\n"
              + fenced(one_line(r.get("completion") or "", 2 * params.excerpt_chars)) for r in examples]
    return "\n\n".join(lines)


def training_section(train: dict, curves: dict[str, list], out_dir: Path) -> str:
    lines = [policy_statement(train)]
    weights = train.get("reward_weights") or {}
    sentence = analysis.reward_movement(train, float(weights.get("format", 0.0)),
                                        float(weights.get("correctness", 0.0)))
    if sentence:
        lines.append(sentence)
    if train.get("format_rate_first_tenth") is not None:
        lines.append(f"Format rate (share of sampled completions at the maximum format reward): "
                     f"{_pct(train['format_rate_first_tenth'])} -> {_pct(train.get('format_rate_last_tenth'))}.")
    zero_std = [value for _, value in curves.get("frac_reward_zero_std", [])]
    if zero_std:
        k = max(1, len(zero_std) // 10)
        lines.append(f"Groups whose completions all got the same reward (zero advantage, no learning signal): "
                     f"{_pct(sum(zero_std[:k]) / k)} over the first tenth of the steps, "
                     f"{_pct(sum(zero_std[-k:]) / k)} over the last.")
    lines.append(f"Prompts dropped as too long: {train.get('prompts_dropped', 0)}.")
    if curves.get("reward"):
        window = max(3, len(curves["reward"]) // 10)
        plot_training(curves, window, out_dir / "train_curves.png")
        lines.append("![training curves](train_curves.png)")
    else:
        lines.append("Training curves: none were written.")
    return "\n\n".join(lines)


def flips_section(pairs: list[tuple[dict, dict]], field: str, label: str, params: ReportParams) -> str:
    improved, regressed = analysis.flipped(pairs, field)
    head = f"## Examples that flipped: {label} ({len(improved)} improved, {len(regressed)} regressed)\n"
    if not improved and not regressed:
        return head + "\nnone.\n"
    parts = [head]
    for name, flips in (("Improved", improved), ("Regressed", regressed)):
        parts.append(f"{name}:\n\n" + (_flip_table(flips, params) if flips else "none.") + "\n")
    return "\n".join(parts)


def environment_section(manifest: dict, metas: list[dict]) -> str:
    lines = [f"- data: source {code_span(str(manifest.get('source')))}, revision "
             f"{code_span(str(manifest.get('revision')))}, fingerprint "
             f"{code_span(str(manifest.get('source_fingerprint')))}"]
    for meta in metas:
        model = meta.get("model", {})
        lines.append(f"- {meta.get('which', 'generation')}: model {code_span(str(model.get('id')))} revision "
                     f"{code_span(str(model.get('revision')))} backend {code_span(str(model.get('backend')))}"
                     + (f", adapter {code_span(str(meta['adapter']))}" if meta.get("adapter") else "")
                     + (f", device {code_span(str(meta['device']))}" if meta.get("device") else ""))
    versions = {k: v for meta in metas for k, v in meta.get("versions", {}).items()}
    if versions:
        lines.append("- libraries: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


def build_report(inputs: ReportInputs, params: ReportParams, out_dir: Path) -> Path:
    """Write ``out_dir/report.md`` and its PNG figures, replacing the folder whole (atomically, and only
    if vlrl wrote it: :func:`vlrl.io.atomic_directory`); returns the report path."""
    with atomic_directory(out_dir) as tmp:
        _write_report(inputs, params, tmp)
    log.info("wrote %s", Path(out_dir) / "report.md")
    return Path(out_dir) / "report.md"


def _write_report(inputs: ReportInputs, params: ReportParams, out_dir: Path) -> None:
    base_m = read_json_object(inputs.baseline_metrics, HEADLINE_KEYS)
    post_m = read_json_object(inputs.post_metrics, HEADLINE_KEYS)
    base_r, post_r = (read_jsonl(path, SCORED_FIELDS) for path in (inputs.baseline_scored, inputs.post_scored))
    train, manifest = read_json_object(inputs.train_metrics), read_json_object(inputs.manifest)
    breakdowns = [read_json_object(p) if p is not None else {} for p in (inputs.baseline_breakdown,
                                                                          inputs.post_breakdown)]
    metas = [read_json_object(p) for p in inputs.generation_meta if Path(p).exists()]
    curves = {name: analysis.read_curve(inputs.curves_dir, name) for name in CURVE_NAMES}
    pairs = analysis.pair_by_pid(base_r, post_r)
    tests = [analysis.paired_test(pairs, rate.field, rate.label) for rate in RATES
             if rate.paired and all(rate.field in r for r in base_r[:1] + post_r[:1])]
    plot_before_after(base_m, post_m, out_dir / "before_after.png")

    splits = manifest.get("splits", {})
    md = [f"# vlrl report: profile `{inputs.profile}`\n",
          "GSPO fine-tuning of Qwen3-VL with TRL's GRPOTrainer, rewarded by "
          "`format_weight * format + correctness_weight * correctness`, evaluated on a held-out split "
          f"(train n = {splits.get('train', {}).get('n', '?')}, held-out n = {base_m.get('n')}, disjoint by pid). "
          "The reference case study reports format compliance 77% -> 84% and strict accuracy 5% -> 6% "
          "for Qwen3-VL-8B on MathVista (no held-out split, no intervals).\n"]
    if inputs.profile == "tiny":
        md.append("> **Tiny profile**: a ~0.2 M-parameter Qwen3-VL built offline and a generated MathVista-format "
                  "data set. These numbers test the pipeline and the method; they say nothing about Qwen3-VL-8B.\n")
    md += ["## Headline: before / after (95% intervals)\n", headline_table(base_m, post_m, base_r, post_r) + "\n",
           "`format compliance` is the case study's (the reference format reward at its maximum); `format compliance "
           "(strict)` requires exactly the asked format; the difference is the gamed rate.\n",
           "![before/after](before_after.png)\n",
           "## Paired significance (same held-out items before and after)\n", paired_table(tests) + "\n",
           "## Format gaming\n", gaming_section(base_r, post_r, params) + "\n",
           "## Reward vs metric gap (the case study's \"991.0\" effect)\n",
           f"Answers that earn the numeric 1.5 reward but are wrong under strict accuracy: "
           f"**{analysis.numeric_only_count(base_r)}** of {len(base_r)} before, "
           f"**{analysis.numeric_only_count(post_r)}** of {len(post_r)} after. A rising correctness reward with "
           "flat strict accuracy can come from these.\n",
           "## Training\n", training_section(train, curves, out_dir) + "\n",
           f"## Breakdowns (cells with n < {SMALL_CELL} are marked small; their intervals are wide)\n",
           breakdown_tables(*breakdowns) + "\n"]
    for field, label in (("accuracy_strict", "strict accuracy"), ("format_compliant_strict", "strict format")):
        md.append(flips_section(pairs, field, label, params))
    md += ["## Environment\n", environment_section(manifest, metas) + "\n", "## Metric glossary\n",
           "\n".join(f"- `{key}`: {_TAG.sub(lambda m: code_span(m.group()), meaning)}"
                     for key, meaning in METRIC_DEFINITIONS.items()) + "\n"]
    atomic_write_text(out_dir / "report.md", "\n".join(md))
