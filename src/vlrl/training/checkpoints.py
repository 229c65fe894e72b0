"""Checkpoints that resume exactly, and only when they belong to this very setup.

Checkpoints go to ``checkpoints_dir`` (kept across ``dvc repro``). A later run resumes from the newest
COMPLETE checkpoint (:func:`last_complete_checkpoint`): the Trainer's files are all there and
:data:`COMPLETE_MARKER`, written after the Trainer's ``on_save``, too. It resumes only when the
checkpoints were written by the same setup (:func:`setup_fingerprint`: params, model pin, train data);
otherwise it starts over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from vlrl.config import TrainStageParams
from vlrl.io import atomic_write_json, read_json
from vlrl.modeling.pins import model_pin

log = logging.getLogger(__name__)

#: A checkpoint folder is complete when all of these are there (transformers' Trainer writes them in
#: this order, trainer state last) AND our marker, written after the Trainer's ``on_save``.
CHECKPOINT_FILES = ("adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt",
                    "rng_state.pth", "trainer_state.json")
COMPLETE_MARKER = "vlrl_checkpoint_complete.json"
FINGERPRINT_FILE = "vlrl_setup_fingerprint.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def setup_fingerprint(settings: TrainStageParams, model_dir: Path, dataset_fingerprint: str) -> str:
    """A hash of everything that makes checkpoints resumable: params, model pin, train data.

    Checkpoints persist across ``dvc repro``; after a params or data change they belong to another
    run and must not be resumed.
    """
    payload = {"settings": dataclasses.asdict(settings), "model": model_pin(model_dir),
               "data": dataset_fingerprint}
    text = json.dumps(payload, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def data_fingerprint(train_split: Any) -> str:
    """A content hash of the train split (pid, question, answer, image pixels), row order included."""
    digest = hashlib.sha256()
    for row in train_split:
        digest.update(json.dumps([str(row["pid"]), row["question"], str(row["answer"])]).encode())
        image = row.get("image")
        if image is not None:
            digest.update(f"{image.mode}{image.size}".encode())
            digest.update(image.tobytes())
    return "sha256:" + digest.hexdigest()


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder, else None."""
    match = _CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def is_complete_checkpoint(path: Path) -> bool:
    """All files of a Trainer checkpoint are there and our marker (written after saving) too.

    >>> import tempfile
    >>> is_complete_checkpoint(Path(tempfile.mkdtemp()) / "checkpoint-5")
    False
    """
    path = Path(path)
    if not all((path / name).is_file() for name in (*CHECKPOINT_FILES, COMPLETE_MARKER)):
        return False
    try:
        state = read_json(path / "trainer_state.json")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return state.get("global_step") == checkpoint_step(path)


def last_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None.

    >>> import tempfile
    >>> last_complete_checkpoint(Path(tempfile.mkdtemp())) is None
    True
    """
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return None
    candidates = sorted((p for p in checkpoints_dir.iterdir() if checkpoint_step(p) is not None),
                        key=checkpoint_step, reverse=True)
    return next((p for p in candidates if is_complete_checkpoint(p)), None)


def prepare_checkpoints_dir(checkpoints_dir: Path, fingerprint: str) -> Path | None:
    """Make ``checkpoints_dir`` ready and return the checkpoint to resume from (or None).

    Checkpoints from another setup (fingerprint mismatch) are removed; incomplete checkpoints (a
    process killed while saving) are removed; the newest complete one is returned.
    """
    checkpoints_dir = Path(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    stamp = checkpoints_dir / FINGERPRINT_FILE
    previous = read_json(stamp).get("fingerprint") if stamp.is_file() else None
    if previous != fingerprint:
        stale = [p for p in checkpoints_dir.iterdir() if p.name != FINGERPRINT_FILE]
        if stale:
            log.warning("%s: checkpoints were written by another setup (params, model or data changed); "
                        "removing them and training from scratch", checkpoints_dir)
        for path in stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        atomic_write_json(stamp, {"fingerprint": fingerprint})
        return None
    resume = last_complete_checkpoint(checkpoints_dir)
    for path in checkpoints_dir.iterdir():
        step = checkpoint_step(path)
        if step is not None and not is_complete_checkpoint(path):
            log.warning("%s: incomplete checkpoint (interrupted while saving); removing it", path)
            shutil.rmtree(path)
    return resume



def finished_state(checkpoint: Path | None) -> dict | None:
    """The trainer state of ``checkpoint`` if training ended there (global_step == max_steps), else None."""
    if checkpoint is None:
        return None
    state = read_json(checkpoint / "trainer_state.json")
    return state if state.get("max_steps") and state["global_step"] >= state["max_steps"] else None
