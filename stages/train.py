"""Train stage: GSPO (TRL GRPOTrainer, sequence-level importance sampling) -> LoRA adapter.

    python stages/train.py --profile tiny --model-dir data/tiny/model --splits-dir data/tiny/splits \
        --adapter-dir data/tiny/adapter --checkpoints-dir data/tiny/checkpoints \
        --curves-dir metrics/tiny/train_curves --metrics metrics/tiny/train.json

Trains on the TRAIN split only. Writes the adapter (safetensors, atomically), checkpoints under
``--checkpoints-dir`` (a re-run after an interruption resumes from the last complete one), one TSV
per training curve under ``--curves-dir`` and the flat ``--metrics`` JSON (vlrl.training), all at the
end. The run's cost goes to the untracked ``logs/<profile>/train.json``, and the curves follow the run
live in ``logs/<profile>/train_curves/``. Exit status 1 with a message, and no adapter, when the loss
or the weights become NaN/inf.

With ``profiles.<profile>.launch.num_processes > 1`` the same command starts itself under ``accelerate
launch`` and waits for its processes (vlrl.launch); the main one writes the outputs.
"""

from __future__ import annotations

from pathlib import Path

from vlrl import launch, modeling
from vlrl.config import load_stage_params
from vlrl.data import load_split
from vlrl.entry import run_stage, stage_parser
from vlrl.telemetry import describe, logs_dir, write_run_log


def main() -> int | None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--splits-dir", type=Path, required=True)
    parser.add_argument("--adapter-dir", type=Path, required=True)
    parser.add_argument("--checkpoints-dir", type=Path, required=True)
    parser.add_argument("--curves-dir", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()

    # ---- params (validated at load); several processes: this one launches them and waits ------------
    params = load_stage_params("train", args.profile, args.params)
    status = launch.launch_or_enter(params.launch, params.model, args.profile)
    if status is not None:  # this process was the launcher: the stage ran in its processes
        return status
    modeling.prepare_backend(params.model)  # Unsloth must be imported before trl/transformers/peft
    from vlrl import training  # noqa: PLC0415 - imports trl: only after prepare_backend (vlrl.modeling)

    # ---- train, checkpoint, write adapter + curves + metrics ---------------------------------------
    result = training.train(params, load_split(args.splits_dir, "train"), model_dir=args.model_dir,
                            adapter_dir=args.adapter_dir, checkpoints_dir=args.checkpoints_dir,
                            curves_dir=args.curves_dir, metrics_path=args.metrics,
                            live_curves_dir=logs_dir(args.profile) / "train_curves")
    if not launch.is_main_process():
        return None
    telemetry = {**result.telemetry, **launch.telemetry()}
    log = write_run_log(args.profile, "train", telemetry)
    metrics = result.metrics
    print(f"train: {metrics['steps']} steps, reward {metrics['reward_mean_first_tenth']} -> "
          f"{metrics['reward_mean_last_tenth']}, format rate {metrics['format_rate_first_tenth']} -> "
          f"{metrics['format_rate_last_tenth']}, off-policy {metrics['off_policy']} -> {args.adapter_dir}")
    print(f"train cost: {describe(telemetry)} (log {log})")
    return None


if __name__ == "__main__":
    run_stage(main)
