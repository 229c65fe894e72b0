"""Model stage: build + warm-start the tiny offline Qwen3-VL, or pin a hub model to a commit.

    python stages/model.py --profile tiny --splits-dir data/tiny/splits --out data/tiny/model
    python stages/model.py --profile full --splits-dir data/full/splits --out data/full/model

tiny (``model.build`` set): tokenizer, processor and model built offline, warm-started on the TRAIN
split (vlrl.tiny_model); the folder is written atomically. full: only ``model_pin.json``
{id, revision, requested_revision, backend, kind}, where ``revision`` is the commit hash that
``model.revision`` (e.g. ``main``) names today, from the hub's metadata or, offline, the local HF cache
(vlrl.modeling.hub); the model's config.json is checked to be Qwen3-VL. The weights load in the
generate/train stages, by that hash.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vlrl.config import load_stage_params
from vlrl.data import load_split
from vlrl.entry import run_stage, stage_parser
from vlrl.io import atomic_directory
from vlrl.modeling import pin_hub_model
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
            pin = pin_hub_model(model, tmp)
            if pin["revision"] != model.revision:
                log.info("profiles.%s.model.revision = %r resolved to commit %s; set it to that hash in "
                         "params.yaml to freeze it", args.profile, model.revision, pin["revision"])
    print(f"model: {pin['id']} @ {pin['revision']} ({pin['kind']}) -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
