"""Fetch from a local MathVista copy in one command (air-gapped GPU clusters), same transform as DVC's.

    python -m vlrl.data --local /mirror/MathVista --splits-dir data/full/splits \
        --manifest metrics/full/manifest.json [--split testmini] [--image-size 512] \
        [--eval-fraction 0.3] [--min-image-side 8] [--seed 3407] [--params params.yaml --profile full]

``--local`` is a ``datasets`` save_to_disk folder, a parquet file, or a folder of parquet files (e.g. a
``hf download AI4Math/MathVista --repo-type dataset`` snapshot). Defaults for image size,
eval fraction, minimum image side and seed come from the profile's ``data`` section and the shared
``seed`` in params.yaml; flags override them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from vlrl.config import DEFAULT_PARAMS_PATH, LocalSource, load_params
from vlrl.data.fetch import fetch_splits


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local", required=True, metavar="PATH",
                        help="save_to_disk folder, parquet file or folder of parquet files (hub's columns)")
    parser.add_argument("--split", default="testmini", help="split of a DatasetDict or hub snapshot")
    parser.add_argument("--splits-dir", type=Path, required=True, help="output: train/ and eval/ folders")
    parser.add_argument("--manifest", type=Path, required=True, help="output: manifest JSON")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH)
    parser.add_argument("--profile", default="full", help="profile whose data section gives the defaults")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--eval-fraction", type=float)
    parser.add_argument("--min-image-side", type=int)
    parser.add_argument("--seed", type=int)


def fetch_local(args: argparse.Namespace) -> int:
    """Handler: fetch from ``args.local`` into ``args.splits_dir`` / ``args.manifest``."""
    params = load_params(args.params)
    data = params.profile(args.profile).data
    overrides = {key: value for key, value in (("image_size", args.image_size),
                                               ("eval_fraction", args.eval_fraction),
                                               ("min_image_side", args.min_image_side)) if value is not None}
    local = LocalSource(path=str(args.local), split=args.split)
    data = dataclasses.replace(data, source="local", local=local, **overrides)
    data.validate(f"profiles.{args.profile}.data (with command-line overrides)")
    seed = params.seed if args.seed is None else args.seed
    manifest = fetch_splits(data, seed, args.splits_dir, args.manifest)
    logging.getLogger(__name__).info("train %d, eval %d -> %s; manifest %s", manifest["splits"]["train"]["n"],
                                     manifest["splits"]["eval"]["n"], args.splits_dir, args.manifest)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlrl.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return fetch_local(args)
