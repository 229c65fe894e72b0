"""The pull-request comment: what a change did to the committed results, headline first, with pictures.

    python -m vlrl.prcomment --base origin/main [--profile tiny] [--out pr-comment.md]

Writes Markdown with, in this order:
1. the headline metrics of the pull request's head, before and after GSPO, each with its 95% Wilson
   interval, next to the base branch's post-training value and the change the pull request makes to it;
2. the training summary (reward and its parts, first vs last tenth of the steps) on head and base;
3. ``dvc params diff`` against the base;
4. the head's figures (before/after bars, training curves), linked by repository path: CML's
   ``cml comment update --publish`` uploads them, as DVC's example project does, so the comment needs
   no server of ours.

Reads the committed metric files at the base with ``git show`` and the head's from the working tree;
runs ``git`` and ``dvc`` as commands and imports neither torch nor DVC.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from vlrl.entry import run_stage
from vlrl.errors import UsageError
from vlrl.metrics import MEANS, RATES

#: The training summary keys shown (train.json), as first/last tenth pairs.
TRAIN_PARTS = (("reward_mean", "weighted reward"), ("reward_format_mean", "format reward"),
               ("reward_correctness_mean", "correctness reward"), ("format_rate", "format rate"))


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False)


def committed_json(rev: str, path: str) -> dict | None:
    """A JSON object as committed at ``rev``; None when the file is not there or is not an object."""
    shown = _git("show", f"{rev}:{path}")
    if shown.returncode != 0:
        return None
    try:
        value = json.loads(shown.stdout)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def workspace_json(path: str) -> dict | None:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _rate(metrics: dict | None, key: str) -> str:
    if not metrics or metrics.get(key) is None:
        return "n/a"
    low, high = metrics.get(f"{key}_ci95_low"), metrics.get(f"{key}_ci95_high")
    interval = f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None and high is not None else ""
    return f"{100 * metrics[key]:.1f}%{interval}"


def _change(before: dict | None, after: dict | None, key: str, scale: float, unit: str) -> str:
    if not before or not after or before.get(key) is None or after.get(key) is None:
        return "n/a"
    delta = scale * (after[key] - before[key])
    return "0" if delta == 0 else f"{delta:+.{1 if unit else 3}f}{unit}"


def headline_table(head: dict[str, dict | None], base: dict[str, dict | None]) -> str:
    rows = []
    for rate in RATES:
        rows.append([rate.label, _rate(head["baseline"], rate.key), _rate(head["post"], rate.key),
                     _rate(base["post"], rate.key), _change(base["post"], head["post"], rate.key, 100, " pp")])
    for mean in MEANS:
        values = [m.get(mean.key) if m else None for m in (head["baseline"], head["post"], base["post"])]
        rows.append([mean.label, *("n/a" if v is None else f"{v:.3f}" for v in values),
                     _change(base["post"], head["post"], mean.key, 1, "")])
    return tabulate(rows, headers=["metric (held-out)", "head: baseline [95% CI]", "head: after GSPO [95% CI]",
                                   "base: after GSPO", "this PR (after GSPO)"], tablefmt="github")


def training_table(head: dict | None, base: dict | None) -> str:
    rows = []
    for key, label in TRAIN_PARTS:
        cells = []
        for train in (head, base):
            first, last = (train or {}).get(f"{key}_first_tenth"), (train or {}).get(f"{key}_last_tenth")
            cells.append("n/a" if first is None or last is None else f"{first:.3f} -> {last:.3f}")
        rows.append([label, *cells])
    return tabulate(rows, headers=["training (first -> last tenth of steps)", "head", "base"], tablefmt="github")


def params_diff(base: str) -> str:
    if shutil.which("dvc") is None:
        return "(`dvc` is not on PATH: params diff not available)"
    result = subprocess.run(["dvc", "params", "diff", base, "--md"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"(`dvc params diff` failed: {' '.join(result.stderr.split())[:300]})"
    return result.stdout.strip() or "none: the pull request changes no parameter."


def comment(base: str, profile: str) -> str:
    """The comment's Markdown (see the module docstring)."""
    files = {name: f"metrics/{profile}/{name}.json" for name in ("baseline", "post", "train")}
    head = {name: workspace_json(path) for name, path in files.items()}
    if head["post"] is None:
        raise UsageError(f"vlrl.prcomment: {files['post']} is missing or not JSON; run `dvc repro report@{profile}` "
                         "and commit the results first")
    base_metrics = {name: committed_json(base, path) for name, path in files.items()}
    head_rev = _git("rev-parse", "--short", "HEAD").stdout.strip() or "HEAD"
    base_rev = _git("rev-parse", "--short", base).stdout.strip() or base
    figures = [(name, f"reports/{profile}/{file}") for name, file in (("before/after", "before_after.png"),
                                                                       ("training curves", "train_curves.png"))]
    parts = [
        f"## vlrl `{profile}` results: head `{head_rev}` vs base `{base_rev}`",
        "### Headline metrics (held-out split; rates with 95% Wilson intervals, in %)",
        headline_table(head, base_metrics),
        "`format compliance` is the case study's; `format compliance (strict)` requires exactly the asked "
        "format; `format gamed` is the difference. Breakdowns and flipped examples: "
        f"`reports/{profile}/report.md`.",
        "### Training", training_table(head["train"], base_metrics["train"]),
        "### Parameters changed (`dvc params diff`)", params_diff(base),
        "### Figures (head)",
        *(f"![{name}](./{path})" for name, path in figures if Path(path).is_file()),
    ]
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlrl.prcomment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision of the base branch, e.g. origin/main")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--out", type=Path, default=None, help="write here (default: stdout)")
    args = parser.parse_args(argv)
    if _git("rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}").returncode != 0:
        raise UsageError(f"vlrl.prcomment: --base {args.base}: not a commit here; fetch it first "
                         "(actions/checkout with fetch-depth: 0)")
    text = comment(args.base, args.profile)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    run_stage(main, prog="python -m vlrl.prcomment")
