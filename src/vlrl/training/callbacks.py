"""Trainer callbacks: checkpoint markers, the divergence guard, the progress bar and the training curves.

Curves: one dvclive-layout TSV per curve, ``<curves_dir>/<name>.tsv`` with the columns ``step`` and
``<name>`` (:data:`CURVES`), written from the trainer's ``log_history`` at the end of training (and,
for people watching a long run, mirrored into an untracked folder at every log). Not through
dvclive's ``Live`` on purpose: ``log_history`` is restored from the checkpoint on resume, so a resumed
run writes exactly the curves of an uninterrupted one (dvclive appends, and would keep the steps
logged after the checkpoint); there is no timestamp column, so the same seed gives byte-identical
files; and nothing needs a git commit or touches ``dvc.yaml`` (docs/library-notes.md, DVC).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import ProgressCallback, TrainerCallback

from vlrl.io import atomic_write_text
from vlrl.rewards import FORMAT_RATE_KEY
from vlrl.training.checkpoints import write_complete_marker

#: Curve file name (``<curves_dir>/<name>.tsv``, column ``<name>``) -> key in the trainer's logs.
CURVES: dict[str, str] = {
    "reward": "reward",
    "reward_format": "rewards/format_reward/mean",
    "reward_correctness": "rewards/correctness_reward/mean",
    "format_rate": FORMAT_RATE_KEY,
    # Share of prompt groups whose completions all got the same reward: no advantage, no gradient.
    "frac_reward_zero_std": "frac_reward_zero_std",
    "kl": "kl",  # TRL computes the KL only when beta != 0: no file otherwise
    "clip_ratio": "clip_ratio/region_mean",  # share of tokens clipped: > 0 only off-policy
    "completion_length": "completions/mean_length",
    "loss": "loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
}


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint complete (file digests included) once the Trainer has written all of it.

    Under several processes every process writes part of a checkpoint (its ``rng_state_<rank>.pth``;
    under DeepSpeed its optimizer shard), and the Trainer's ``_save_checkpoint`` waits for nobody
    before ``on_save`` (transformers/trainer.py): all processes meet here first, then process zero
    alone writes the marker, so that it lists every file of every process.
    """

    def on_save(self, args, state, control, **kwargs):
        if args.world_size > 1:
            PartialState().wait_for_everyone()
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            write_complete_marker(folder, state.global_step)
        return control


class DivergenceGuard(TrainerCallback):
    """Stops training at the first non-finite loss or trainable weight, before it is checkpointed.

    ``on_log`` runs before the Trainer saves in the same step, so ``should_save = False`` keeps a
    garbage checkpoint off disk; ``on_step_end`` checks the trainable (LoRA) weights every step, which
    also catches a NaN between two logging steps.
    """

    def __init__(self) -> None:
        self.problem: str | None = None

    def _stop(self, control: Any, problem: str) -> Any:
        self.problem = self.problem or problem
        control.should_training_stop = True
        control.should_save = False
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                return self._stop(control, f"{key} = {value} at step {state.global_step}")
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            for name, param in model.named_parameters():
                if param.requires_grad and not torch.isfinite(param).all():
                    return self._stop(control, f"trainable weight {name} is not finite after step "
                                               f"{state.global_step}")
        return control


class QuietProgress(ProgressCallback):
    """transformers' progress bar, with the latest reward and format rate as its postfix.

    The stock callback prints every log entry (about 30 numbers) as a line per step; those go to the
    curves and the run log instead.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {name: logs[key] for name, key in (("reward", "reward"), ("format", FORMAT_RATE_KEY))
                     if isinstance(logs.get(key), int | float)}
            if shown:
                self.training_bar.set_postfix({name: f"{value:.3f}" for name, value in shown.items()},
                                              refresh=False)
        return control


class CurveWriter(TrainerCallback):
    """Rewrites ``<curves_dir>/<name>.tsv`` from ``state.log_history`` at every log: a live view of the
    curves in an untracked folder (the stage's declared curves are written once, at the end)."""

    def __init__(self, curves_dir: Path) -> None:
        self.curves_dir = Path(curves_dir)

    def on_log(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # every process has the same (gathered) log history
            write_curves(state.log_history, self.curves_dir)
        return control


def write_curves(log_history: Sequence[dict], curves_dir: Path) -> list[Path]:
    """One TSV per curve in :data:`CURVES` that has values: columns ``step`` and the curve's name.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> [p.name for p in write_curves([{"step": 1, "loss": 0.5, "reward": 1.0}], d)]
    ['reward.tsv', 'loss.tsv']
    >>> (d / "loss.tsv").read_text()
    'step\\tloss\\n1\\t0.5\\n'
    """
    written = []
    for name, key in CURVES.items():
        rows = [(entry["step"], entry[key]) for entry in log_history
                if key in entry and entry[key] is not None and "train_runtime" not in entry]
        if not rows:
            continue
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow(["step", name])
        writer.writerows((step, repr(float(value))) for step, value in rows)
        written.append(atomic_write_text(Path(curves_dir) / f"{name}.tsv", buffer.getvalue()))
    return written

