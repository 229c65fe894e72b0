"""Fetch stage: MathVista (hub / local mirror) or the offline set -> transform -> held-out split.

    python stages/fetch.py --profile tiny --splits-dir data/tiny/splits \
        --manifest metrics/tiny/manifest.json [--params params.yaml]

Writes data/<profile>/splits/{train,eval} (datasets save_to_disk folders) and the manifest (DVC
metrics: rows after each step, dropped rows with reasons, per-split counts and pid hashes).
"""

from __future__ import annotations

from pathlib import Path

from vlrl.config import load_stage_params
from vlrl.data import fetch_splits
from vlrl.entry import run_stage, stage_parser


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--splits-dir", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    args = parser.parse_args()

    params = load_stage_params("fetch", args.profile, args.params)
    manifest = fetch_splits(params.data, params.seed, args.splits_dir, args.manifest)

    splits = manifest["splits"]
    print(f"fetch ({manifest['source']}): {manifest['rows_in']} rows in, train {splits['train']['n']}, "
          f"eval {splits['eval']['n']} -> {args.splits_dir}")


if __name__ == "__main__":
    run_stage(main)
