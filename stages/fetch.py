"""Fetch stage: MathVista (hub / local mirror) or the offline set -> transform -> held-out split.

    python stages/fetch.py --profile tiny --splits-dir data/tiny/splits \
        --manifest metrics/tiny/manifest.json [--params params.yaml]

Writes data/<profile>/splits/{train,eval} (datasets save_to_disk folders) and the manifest (DVC
metrics: rows after each step, dropped rows with reasons, per-split counts and pid hashes).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vlrl.config import load_stage_params
from vlrl.data import fetch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--splits-dir", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = load_stage_params("fetch", args.profile, args.params)
    manifest = fetch(params.data, params.seed, args.splits_dir, args.manifest)

    splits = manifest["splits"]
    print(f"fetch ({manifest['source']}): {manifest['rows_in']} rows in, train {splits['train']['n']}, "
          f"eval {splits['eval']['n']} -> {args.splits_dir}")


if __name__ == "__main__":
    main()
