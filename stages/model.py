"""Model stage: build + warm-start the tiny offline Qwen3-VL, or pin a hub model.

    python stages/model.py --profile tiny --splits-dir data/tiny/splits --out data/tiny/model
    python stages/model.py --profile full --splits-dir data/full/splits --out data/full/model

tiny (``model.build`` set): tokenizer, processor and model built offline, warm-started on the TRAIN
split (vlrl.tiny_model); the folder is written atomically. full: only ``model_pin.json``
{id, revision, backend, kind}; no network needed (the weights load in the generate/train stages).
"""

from __future__ import annotations

import logging
from pathlib import Path

from vlrl.config import load_stage_params
from vlrl.data import load_split
from vlrl.entry import run_stage, stage_parser
from vlrl.io import atomic_directory
from vlrl.modeling import KIND_HUB, write_pin
from vlrl.tiny_model import build_and_warm_start

log = logging.getLogger("stages.model")


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--splits-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    # ---- params --------------------------------------------------------------------------------
    params = load_stage_params("model", args.profile, args.params)
    model = params.model

    # ---- build (tiny) or pin (hub) ---------------------------------------------------------------
    with atomic_directory(args.out) as tmp:
        if model.is_built_offline:
            train = load_split(args.splits_dir, "train")
            pin = build_and_warm_start(model, params.prompt.template, train, params.seed, tmp)
        else:
            if model.revision in (None, "main"):
                log.warning("profiles.%s.model.revision = %r is a moving reference; pin a commit hash for "
                            "reproducible results", args.profile, model.revision)
            pin = write_pin(tmp, model_id=model.id, revision=model.revision, backend=model.backend,
                            kind=KIND_HUB)
    print(f"model: {pin['id']} @ {pin['revision']} ({pin['kind']}) -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
