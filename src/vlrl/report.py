"""The before/after report: ``reports/<profile>/report.md`` plus PNG plots.

Reads only metric and per-example files written by earlier stages (scored JSONL, metrics JSON,
training curves, the data manifest, generation metadata); it never loads a model or a data set, so a
reward-weight change re-renders it in seconds.

What it states, and why:
- a before/after table with a 95% interval on every number (Wilson for rates, normal approximation
  for reward means), never one hero number;
- paired significance (exact McNemar) for format compliance and each accuracy, because before and
  after are scored on the same held-out items;
- the reward-vs-metric gap: answers that earn the numeric 1.5 but are wrong under strict accuracy
  (the case study's "991.0" effect), so a rising reward is not mistaken for rising accuracy;
- the examples that flipped, with short completion excerpts;
- whether training was on- or off-policy: GSPO and GRPO coincide on-policy (docs/library-notes.md).
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from vlrl.config import ReportParams
from vlrl.io import atomic_write_text, read_json, read_jsonl
from vlrl.metrics import MEANS, METRIC_DEFINITIONS, RATES
from vlrl.stats import Z_95, mcnemar_exact

log = logging.getLogger(__name__)

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
    curves_dir: Path | None = None
    generation_meta: tuple[Path, ...] = ()


@dataclass(frozen=True)
class PairedTest:
    label: str
    both: int
    improved: int
    regressed: int
    neither: int
    p_value: float


# ------------------------------------------------------------------------------------------------
# Computations (pure; tested directly)
# ------------------------------------------------------------------------------------------------


def mean_interval(values: list[float], z: float = Z_95) -> tuple[float, float, float]:
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


def pair_by_pid(before: list[dict], after: list[dict]) -> list[tuple[dict, dict]]:
    """Join baseline and post records on pid; both must score the same held-out items."""
    after_by_pid = {r["pid"]: r for r in after}
    missing = sorted({r["pid"] for r in before} ^ set(after_by_pid))
    if missing:
        raise ValueError(f"baseline and post were scored on different items; pids only in one: {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''} (re-run the score stages)")
    return [(r, after_by_pid[r["pid"]]) for r in before]


def paired_test(pairs: list[tuple[dict, dict]], field: str, label: str) -> PairedTest:
    """Exact McNemar test of one boolean verdict before vs after."""
    both = improved = regressed = neither = 0
    for before, after in pairs:
        b, a = bool(before[field]), bool(after[field])
        both += b and a
        improved += (not b) and a
        regressed += b and not a
        neither += not (a or b)
    return PairedTest(label, both, improved, regressed, neither, mcnemar_exact(improved, regressed))


def numeric_only_count(records: list[dict]) -> int:
    """Answers that earn the numeric 1.5 but are wrong under strict accuracy (the "991.0" effect)."""
    return sum(1 for r in records if r.get("correctness_criterion") == "numeric")


def flipped(pairs: list[tuple[dict, dict]], field: str) -> tuple[list[tuple[dict, dict]], list[tuple[dict, dict]]]:
    improved = [(b, a) for b, a in pairs if not b[field] and a[field]]
    regressed = [(b, a) for b, a in pairs if b[field] and not a[field]]
    return improved, regressed


def excerpt(text: str | None, limit: int) -> str:
    """One line, at most ``limit`` characters, safe inside a Markdown table.

    >>> excerpt("<SOLUTION>3</SOLUTION>\\n| x", 80)
    '&lt;SOLUTION&gt;3&lt;/SOLUTION&gt; \\\\| x'
    """
    flat = " ".join((text or "").split())
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return md_escape(flat)


def md_escape(text: str) -> str:
    """Escape what Markdown would swallow: "<SOLUTION>" renders as an (invisible) HTML tag."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _rate_cell(metrics: dict, key: str) -> str:
    """The rate with the Wilson interval the score stage wrote next to it (vlrl.scoring)."""
    if metrics.get(key) is None:
        return "n/a"
    return f"{_pct(metrics[key])} [{_pct(metrics[f'{key}_ci95_low'])}, {_pct(metrics[f'{key}_ci95_high'])}]"


def _mean_cell(values: list[float]) -> str:
    mean, lo, hi = mean_interval(values)
    return "n/a" if math.isnan(mean) else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _delta(before: float | None, after: float | None, as_pct: bool) -> str:
    if before is None or after is None:
        return "n/a"
    d = after - before
    return f"{100 * d:+.1f} pp" if as_pct else f"{d:+.3f}"


def before_after_table(base_m: dict, post_m: dict, base_r: list[dict], post_r: list[dict]) -> str:
    rows = [["n (held-out items)", str(base_m.get("n")), str(post_m.get("n")), ""]]
    for rate in RATES:
        if rate.key in base_m or rate.key in post_m:
            rows.append([rate.label, _rate_cell(base_m, rate.key), _rate_cell(post_m, rate.key),
                         _delta(base_m.get(rate.key), post_m.get(rate.key), True)])
    for mean in MEANS:
        if not all(mean.field in r for r in (*base_r, *post_r)):
            continue
        b = [float(r[mean.field]) for r in base_r]
        a = [float(r[mean.field]) for r in post_r]
        rows.append([mean.label, _mean_cell(b), _mean_cell(a),
                     _delta(base_m.get(mean.key), post_m.get(mean.key), False)])
    return tabulate(rows, headers=["metric", "baseline [95% CI]", "after GSPO [95% CI]", "change"],
                    tablefmt="github")


def paired_table(tests: list[PairedTest]) -> str:
    rows = [[t.label, t.both, t.improved, t.regressed, t.neither, f"{t.p_value:.4g}"] for t in tests]
    return tabulate(rows, headers=["verdict", "right both", "improved", "regressed", "wrong both",
                                   "exact McNemar p"], tablefmt="github")


def _flip_table(flips: list[tuple[dict, dict]], params: ReportParams) -> str:
    rows = [[b["pid"], b.get("gold", ""), excerpt(b.get("completion"), params.excerpt_chars),
             excerpt(a.get("completion"), params.excerpt_chars)] for b, a in flips[: params.flip_examples]]
    return tabulate(rows, headers=["pid", "gold", "baseline completion", "after GSPO completion"],
                    tablefmt="github", disable_numparse=True)


def policy_statement(train: dict) -> str:
    level = train.get("importance_sampling_level", "?")
    loss = train.get("loss_type", "?")
    if train.get("off_policy"):
        return (f"Training was **off-policy** (importance_sampling_level={level}, loss_type={loss}): "
                "the sequence-level importance ratio differs from GRPO's token-level ratio, so this run is "
                "genuinely GSPO.")
    return (f"Training was **on-policy** (importance_sampling_level={level}, loss_type={loss}; "
            "steps_per_generation equals gradient accumulation and num_iterations is 1): every importance "
            "ratio is exactly 1, so this \"GSPO\" run is mathematically a GRPO run, as in the reference notebook. "
            "Set `gspo.steps_per_generation` above the gradient accumulation or `gspo.num_iterations` > 1 to "
            "make GSPO differ.")


def read_curve(curves_dir: Path | None, name: str) -> list[tuple[float, float]]:
    """(step, value) pairs from a dvclive-style TSV ``<curves_dir>/**/<name>.tsv``; [] if absent."""
    if curves_dir is None or not curves_dir.exists():
        return []
    for path in sorted(curves_dir.rglob(f"{name}.tsv")):
        with path.open() as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if rows:
            value_key = [k for k in rows[0] if k not in ("step", "timestamp")][0]
            return [(float(r["step"]), float(r[value_key])) for r in rows if r[value_key] not in ("", "nan")]
    return []


def _plot_before_after(base_m: dict, post_m: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(r.key, r.label) for r in RATES if r.paired and r.key in base_m and r.key in post_m]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.38
    for offset, (metrics, name, colour) in enumerate(((base_m, "baseline", "#8c8c8c"),
                                                      (post_m, "after GSPO", "#1f77b4"))):
        xs = [i + (offset - 0.5) * width for i in range(len(keys))]
        values = [metrics[k] for k, _ in keys]
        lows = [metrics[k] - metrics[f"{k}_ci95_low"] for k, _ in keys]
        highs = [metrics[f"{k}_ci95_high"] - metrics[k] for k, _ in keys]
        ax.bar(xs, values, width, label=name, color=colour, yerr=[lows, highs], capsize=3)
    ax.set_xticks(range(len(keys)), [label.replace(" (", "\n(") for _, label in keys], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate (95% Wilson CI)")
    ax.legend(fontsize=8)
    ax.set_title(f"Held-out before/after (n = {base_m.get('n')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_curve(points: list[tuple[float, float]], ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, color="#1f77b4", linewidth=1.2)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _environment_section(manifest: dict, metas: list[dict], train: dict) -> str:
    lines = []
    lines.append(f"- data: source `{manifest.get('source')}`, revision `{manifest.get('revision')}`, "
                 f"fingerprint `{manifest.get('source_fingerprint')}`")
    for meta in metas:
        model = meta.get("model", {})
        lines.append(f"- {meta.get('which', 'generation')}: model `{model.get('id')}` revision "
                     f"`{model.get('revision')}` backend `{model.get('backend')}`"
                     + (f", adapter `{meta.get('adapter')}`" if meta.get("adapter") else "")
                     + (f", device `{meta.get('device')}`" if meta.get("device") else ""))
    versions: dict[str, str] = {}
    for meta in metas:
        versions.update(meta.get("versions", {}))
    if versions:
        lines.append("- libraries: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    commit = next((m.get("git_commit") for m in metas if m.get("git_commit")), None)
    if commit:
        lines.append(f"- git commit of the generation runs: `{commit}`")
    for key in ("wall_time_s", "seconds_per_step", "peak_rss_mb", "peak_gpu_mem_mb", "steps"):
        if train.get(key) is not None:
            lines.append(f"- training {key.replace('_', ' ')}: {train[key]}")
    return "\n".join(lines)


def build_report(inputs: ReportInputs, params: ReportParams, out_dir: Path) -> Path:
    """Write ``out_dir/report.md`` and its PNG plots; returns the report path."""
    base_m, post_m = read_json(inputs.baseline_metrics), read_json(inputs.post_metrics)
    base_r, post_r = read_jsonl(inputs.baseline_scored), read_jsonl(inputs.post_scored)
    train, manifest = read_json(inputs.train_metrics), read_json(inputs.manifest)
    metas = [read_json(p) for p in inputs.generation_meta if Path(p).exists()]
    pairs = pair_by_pid(base_r, post_r)
    out_dir.mkdir(parents=True, exist_ok=True)

    tests = [paired_test(pairs, rate.field, rate.label) for rate in RATES
             if rate.paired and all(rate.field in r for r in base_r[:1] + post_r[:1])]
    gap_before, gap_after = numeric_only_count(base_r), numeric_only_count(post_r)

    _plot_before_after(base_m, post_m, out_dir / "before_after.png")
    reward_curve = read_curve(inputs.curves_dir, "reward")
    if reward_curve:
        _plot_curve(reward_curve, "mean reward (weighted)", out_dir / "train_reward.png")

    splits = manifest.get("splits", {})
    md: list[str] = []
    md.append(f"# vlrl report: profile `{inputs.profile}`\n")
    md.append("GSPO fine-tuning of Qwen3-VL with TRL's GRPOTrainer, rewarded by "
              "`format_weight * format + correctness_weight * correctness`, evaluated on a held-out split "
              f"(train n = {splits.get('train', {}).get('n', '?')}, held-out n = {base_m.get('n')}, disjoint by pid). "
              "The reference case study reports format compliance 77% -> 84% and strict accuracy 5% -> 6% "
              "for Qwen3-VL-8B on MathVista (no held-out split).\n")
    if inputs.profile == "tiny":
        md.append("> **Tiny profile**: a ~0.2 M-parameter Qwen3-VL built offline and a generated MathVista-format "
                  "data set. These numbers test the pipeline; they say nothing about Qwen3-VL-8B.\n")
    md.append("## Before / after (95% intervals)\n")
    md.append(before_after_table(base_m, post_m, base_r, post_r) + "\n")
    md.append("![before/after](before_after.png)\n")
    md.append("## Paired significance (same held-out items before and after)\n")
    md.append(paired_table(tests) + "\n")
    md.append("## Reward vs metric gap (the case study's \"991.0\" effect)\n")
    md.append(f"Answers that earn the numeric 1.5 reward but are wrong under strict accuracy: "
              f"**{gap_before}** of {len(base_r)} before, **{gap_after}** of {len(post_r)} after. "
              "A rising correctness reward with flat strict accuracy can come from these.\n")
    md.append("## Training\n")
    md.append(policy_statement(train) + "\n")
    first, last = train.get("reward_mean_first_tenth"), train.get("reward_mean_last_tenth")
    if first is not None and last is not None:
        md.append(f"Mean training reward: {first:.3f} over the first tenth of steps, {last:.3f} over the last "
                  f"tenth; format rate {_pct(train.get('format_rate_first_tenth'))} -> "
                  f"{_pct(train.get('format_rate_last_tenth'))}. Prompts dropped as too long: "
                  f"{train.get('prompts_dropped', 0)}.\n")
    if reward_curve:
        md.append("![training reward](train_reward.png)\n")
    for field, label in (("format_compliant", "format compliance"), ("accuracy_strict", "strict accuracy")):
        improved, regressed = flipped(pairs, field)
        md.append(f"## Examples that flipped: {label} ({len(improved)} improved, {len(regressed)} regressed)\n")
        if improved:
            md.append("Improved:\n\n" + _flip_table(improved, params) + "\n")
        if regressed:
            md.append("Regressed:\n\n" + _flip_table(regressed, params) + "\n")
    md.append("## Environment\n")
    md.append(_environment_section(manifest, metas, train) + "\n")
    md.append("## Metric glossary\n")
    md.append("\n".join(f"- `{k}`: {md_escape(v)}" for k, v in METRIC_DEFINITIONS.items()) + "\n")
    path = atomic_write_text(out_dir / "report.md", "\n".join(md))
    log.info("wrote %s", path)
    return path
