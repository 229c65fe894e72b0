"""Report stage: before/after tables with intervals, paired tests, flips, plots.

    python stages/report.py --profile tiny --metrics-dir metrics/tiny --scored-dir data/tiny/scored \
        --breakdowns-dir data/tiny/breakdowns --generations-dir data/tiny/generations \
        --manifest data/tiny/manifest.json --curves-dir plots/tiny/train_curves --out-dir reports/tiny

Reads only metric and per-example files (see vlrl.report).
"""

from __future__ import annotations

from pathlib import Path

from vlrl.config import load_stage_params
from vlrl.entry import run_stage, stage_parser
from vlrl.report import ReportInputs, build_report


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--metrics-dir", type=Path, required=True)
    parser.add_argument("--scored-dir", type=Path, required=True)
    parser.add_argument("--breakdowns-dir", type=Path, required=True)
    parser.add_argument("--generations-dir", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--curves-dir", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()

    params = load_stage_params("report", args.profile, args.params)
    inputs = ReportInputs(
        profile=args.profile,
        baseline_metrics=args.metrics_dir / "baseline.json",
        post_metrics=args.metrics_dir / "post.json",
        baseline_scored=args.scored_dir / "baseline.jsonl",
        post_scored=args.scored_dir / "post.jsonl",
        train_metrics=args.metrics_dir / "train.json",
        manifest=args.manifest,
        baseline_breakdown=args.breakdowns_dir / "baseline.json",
        post_breakdown=args.breakdowns_dir / "post.json",
        curves_dir=args.curves_dir,
        generation_meta=(args.generations_dir / "baseline.meta.json", args.generations_dir / "post.meta.json"),
    )
    path = build_report(inputs, params.report, args.out_dir)
    print(f"report: {path}")


if __name__ == "__main__":
    run_stage(main)
