"""Generate stage: batched completions on the held-out (eval) split, baseline or with an adapter.

    python stages/generate.py --profile tiny --model-dir data/tiny/model --splits-dir data/tiny/splits \
        --out data/tiny/generations/baseline.jsonl
    python stages/generate.py --profile tiny --model-dir data/tiny/model --splits-dir data/tiny/splits \
        --adapter data/tiny/adapter --out data/tiny/generations/post.jsonl

Writes OUT (one JSON record per eval example, atomically at the end: an interrupted run leaves no
file) and OUT with suffix ``.meta.json`` (model pin, adapter, device, generation params, library
versions). Timing goes to the untracked run log ``logs/<profile>/generate_<name>.json``.

With ``profiles.<profile>.launch.num_processes > 1`` the same command starts itself under ``accelerate
launch``: each process generates its share of the batches, and the main one writes the gathered
records, the same file as one process writes (vlrl.generation).
"""

from __future__ import annotations

import time
from pathlib import Path

from vlrl import launch, modeling
from vlrl.config import load_stage_params
from vlrl.data import load_split
from vlrl.entry import run_stage, stage_parser
from vlrl.generation import check_prompt_lengths, generate_completions, prompt_token_counts, run_metadata
from vlrl.io import atomic_write_json, atomic_write_jsonl
from vlrl.telemetry import describe, peak_memory_mb, write_run_log


def main() -> int | None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--splits-dir", type=Path, required=True)
    parser.add_argument("--adapter", type=Path, default=None, help="trained LoRA adapter (post evaluation)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    # ---- params (validated at load); several processes: this one launches them and waits ------------
    params = load_stage_params("generate", args.profile, args.params)
    status = launch.launch_or_enter(params.launch, params.model, args.profile)
    if status is not None:  # this process was the launcher: the stage ran in its processes
        return status
    modeling.prepare_backend(params.model)  # Unsloth must be imported before transformers/peft
    processes = launch.Processes.start(params.model)  # before the model loads: one GPU per process

    # ---- data and prompt lengths (processor only) -----------------------------------------------
    eval_split = load_split(args.splits_dir, "eval")
    processor = modeling.load_processor(params.model, args.model_dir)
    check_prompt_lengths(prompt_token_counts(processor, eval_split, params.prompt.template),
                         list(eval_split["pid"]), params.generation, params.model, args.profile)

    # ---- model and generation --------------------------------------------------------------------
    model, processor = modeling.load_model_and_processor(params.model, args.model_dir,
                                                         adapter_dir=args.adapter)
    started = time.perf_counter()
    records = generate_completions(model, processor, eval_split, prompt_template=params.prompt.template,
                                   generation=params.generation, seed=params.seed, profile=args.profile,
                                   processes=processes)
    wall_time_s = time.perf_counter() - started

    # ---- outputs (atomic, by the main process) -------------------------------------------------------
    if not processes.is_main:
        processes.finish()
        return None
    atomic_write_jsonl(args.out, records)
    atomic_write_json(args.out.with_suffix(".meta.json"), run_metadata(
        args.out.stem, model=model, pin=modeling.model_pin(args.model_dir), adapter_dir=args.adapter,
        generation=params.generation, records=records))
    telemetry = {"wall_time_s": round(wall_time_s, 3), "samples_per_second": round(len(records) / wall_time_s, 2),
                 **peak_memory_mb(), **launch.telemetry()}
    log = write_run_log(args.profile, f"generate_{args.out.stem}", telemetry)
    processes.finish()
    print(f"generations: {len(records)} -> {args.out} ({describe(telemetry)}; log {log})")
    return None


if __name__ == "__main__":
    run_stage(main)
