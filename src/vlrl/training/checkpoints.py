"""Checkpoints that resume exactly, only when they belong to this very setup, and only when intact.

Checkpoints go to ``checkpoints_dir`` (kept across ``dvc repro``: no stage declares it). A later run
resumes from the newest VERIFIED checkpoint (:func:`last_complete_checkpoint`): the marker
:data:`COMPLETE_MARKER`, written after the Trainer's ``on_save``, lists every file of the checkpoint
with its SHA-256, and each is checked before use, so a truncated optimizer state or adapter behind a
marker is skipped (with a warning) for the next older intact checkpoint. It resumes only when the
checkpoints were written by the same setup (:func:`setup_fingerprint`: params, model pin, train data);
otherwise it starts over.

Never deleting what vlrl did not write: the folder must be new, empty, or carry vlrl's output marker
or fingerprint; what vlrl removes (stale or incomplete checkpoints) is only ``checkpoint-<step>``
folders and its own files.
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
from vlrl.errors import CorruptInputError, OutputError
from vlrl.io import OUTPUT_MARKER, atomic_write_json, mark_output, read_json
from vlrl.modeling.pins import model_pin

log = logging.getLogger(__name__)

#: Files every Trainer checkpoint of a LoRA run must hold, whatever the launcher (single process, DDP:
#: ``rng_state_<rank>.pth``, DeepSpeed: no ``optimizer.pt``); the marker lists everything else.
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors", "trainer_state.json")
COMPLETE_MARKER = "vlrl_checkpoint_complete.json"
FINGERPRINT_FILE = "vlrl_setup_fingerprint.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_complete_marker(folder: Path, global_step: int) -> Path:
    """Mark a checkpoint folder complete: its step and the SHA-256 of every file in it (sub-folders too)."""
    files = {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(Path(folder).rglob("*"))
             if p.is_file() and p.name != COMPLETE_MARKER}
    return atomic_write_json(Path(folder) / COMPLETE_MARKER, {"global_step": global_step, "files": files})


def setup_fingerprint(settings: TrainStageParams, model_dir: Path, dataset_fingerprint: str,
                      world_size: int = 1) -> str:
    """A hash of everything that makes checkpoints resumable: params, model pin, train data, and how
    many processes train (with the accelerate config they run under).

    Checkpoints persist across ``dvc repro``; after a params or data change they belong to another
    run and must not be resumed. The world size counts too: each process has its own RNG state
    (``rng_state_<rank>.pth``) and sampling seed, and a DeepSpeed checkpoint holds one optimizer shard
    per process, so a checkpoint of 2 processes does not continue the run of 1 (or of DDP). The
    launch section's addresses (``main_process_ip``/``port``) do not change the run and are left out.
    """
    config = settings.launch.accelerate_config if settings.launch.launched else None
    launch = {"world_size": world_size, "accelerate_config": config,
              "accelerate_config_sha256": file_digest(Path(config)) if config and Path(config).is_file() else None}
    payload = {"settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "launch"},
               "model": model_pin(model_dir), "data": dataset_fingerprint, "launch": launch}
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


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete, intact checkpoint of its step, or None when it is.

    >>> import tempfile
    >>> checkpoint_problem(Path(tempfile.mkdtemp()) / "checkpoint-5")
    'no completeness marker (interrupted while saving)'
    """
    path = Path(path)
    try:
        marker = read_json(path / COMPLETE_MARKER)
        state = read_json(path / "trainer_state.json")
    except FileNotFoundError as exc:
        return ("no completeness marker (interrupted while saving)" if COMPLETE_MARKER in str(exc)
                else "no trainer_state.json")
    except CorruptInputError:
        return "an unreadable marker or trainer state"
    listed = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(listed, dict) or not isinstance(state, dict):
        return "a marker without file digests"
    if state.get("global_step") != checkpoint_step(path):
        return f"trainer state of step {state.get('global_step')}"
    missing = [name for name in REQUIRED_FILES if name not in listed]
    if missing:
        return f"missing {', '.join(missing)}"
    for name, digest in listed.items():
        file = path / name
        if not file.is_file():
            return f"{name} is gone"
        if file_digest(file) != digest:
            return f"{name} changed since it was saved (truncated or overwritten)"
    return None


def is_complete_checkpoint(path: Path) -> bool:
    """All files the marker lists are there with their saved digests (:func:`checkpoint_problem`)."""
    return checkpoint_problem(path) is None


def last_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest intact checkpoint, or None; a damaged newer one is skipped with a warning.

    >>> import tempfile
    >>> last_complete_checkpoint(Path(tempfile.mkdtemp())) is None
    True
    """
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return None
    candidates = sorted((p for p in checkpoints_dir.iterdir() if checkpoint_step(p) is not None),
                        key=checkpoint_step, reverse=True)
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("%s: not resumable (%s); trying an older checkpoint", path, problem)
    return None


def _own_checkpoints_dir(checkpoints_dir: Path) -> None:
    """Create the folder, or check that an existing one is vlrl's (marker or fingerprint) or empty."""
    if checkpoints_dir.is_dir():
        ours = (checkpoints_dir / OUTPUT_MARKER).is_file() or (checkpoints_dir / FINGERPRINT_FILE).is_file()
        if not ours and any(checkpoints_dir.iterdir()):
            raise OutputError(f"{checkpoints_dir}: refusing to keep checkpoints in this folder: it holds files vlrl "
                              "did not write; choose another --checkpoints-dir or empty it")
    elif checkpoints_dir.exists():
        raise OutputError(f"{checkpoints_dir}: exists and is not a folder; choose another --checkpoints-dir")
    try:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {checkpoints_dir}: {exc.strerror}") from exc
    mark_output(checkpoints_dir)


def _remove_checkpoints(paths: list[Path], why: str) -> None:
    for path in paths:
        log.warning("%s: %s; removing it", path, why)
        shutil.rmtree(path)


def prepare_checkpoints_dir(checkpoints_dir: Path, fingerprint: str) -> Path | None:
    """Make ``checkpoints_dir`` ready and return the checkpoint to resume from (or None).

    Checkpoints from another setup (fingerprint mismatch, or an unreadable fingerprint) are removed, and
    so are incomplete ones (a process killed while saving); the newest intact one is returned. Only
    ``checkpoint-<step>`` folders are ever removed.
    """
    checkpoints_dir = Path(checkpoints_dir)
    _own_checkpoints_dir(checkpoints_dir)
    stamp = checkpoints_dir / FINGERPRINT_FILE
    try:
        previous = read_json(stamp).get("fingerprint") if stamp.is_file() else None
    except (CorruptInputError, AttributeError):
        log.warning("%s: unreadable; treating its checkpoints as another setup's", stamp)
        previous = None
    checkpoints = [p for p in checkpoints_dir.iterdir() if checkpoint_step(p) is not None]
    if previous != fingerprint:
        _remove_checkpoints(checkpoints, "written by another setup (params, model or data changed)")
        atomic_write_json(stamp, {"fingerprint": fingerprint})
        return None
    resume = last_complete_checkpoint(checkpoints_dir)
    newer = [p for p in checkpoints if resume is None or checkpoint_step(p) > checkpoint_step(resume)]
    _remove_checkpoints(newer, "incomplete or damaged, newer than the checkpoint resumed from")
    return resume


def finished_state(checkpoint: Path | None) -> dict | None:
    """The trainer state of ``checkpoint`` if training ended there (global_step == max_steps), else None."""
    if checkpoint is None:
        return None
    state = read_json(checkpoint / "trainer_state.json")
    return state if state.get("max_steps") and state["global_step"] >= state["max_steps"] else None
