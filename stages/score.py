"""Score stage: rewards and accuracy verdicts per example, the headline metrics and the breakdowns.

    python stages/score.py --profile tiny --generations data/tiny/generations/baseline.jsonl \
        --splits-dir data/tiny/splits --per-example data/tiny/scored/baseline.jsonl \
        --metrics metrics/tiny/baseline.json --breakdown data/tiny/breakdowns/baseline.json

Cheap on purpose: a reward-weight or reward-code change re-scores cached completions in seconds.
"""

from __future__ import annotations

from pathlib import Path

from vlrl.config import load_stage_params
from vlrl.data import load_split
from vlrl.entry import run_stage, stage_parser
from vlrl.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from vlrl.scoring import breakdown_metrics, score_generations


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--generations", type=Path, required=True)
    parser.add_argument("--splits-dir", type=Path, required=True)
    parser.add_argument("--per-example", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="headline metrics (DVC metrics)")
    parser.add_argument("--breakdown", type=Path, required=True, help="rates by MathVista type and metadata")
    args = parser.parse_args()

    params = load_stage_params("score", args.profile, args.params)
    generations = read_jsonl(args.generations)
    eval_split = load_split(args.splits_dir, "eval")

    records, metrics = score_generations(generations, eval_split, params.rewards)

    atomic_write_jsonl(args.per_example, records)
    atomic_write_json(args.metrics, metrics)
    atomic_write_json(args.breakdown, breakdown_metrics(records))
    print(f"scored {metrics['n']}: format_compliance {metrics['format_compliance']:.3f}, "
          f"accuracy_strict {metrics['accuracy_strict']:.3f} -> {args.metrics}")


if __name__ == "__main__":
    run_stage(main)
