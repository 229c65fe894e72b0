"""The model pin: ``model_pin.json`` in every model folder, naming exactly which model a run used.

The model stage writes it into ``data/<profile>/model``; every later stage reads it and the report
shows it. Keys: ``id``, ``revision``, ``backend``, ``kind``. ``kind`` is :data:`KIND_BUILT` for the
tiny model (the folder also holds its weights, tokenizer and processor; ``revision`` is a hash of
the weights) and :data:`KIND_HUB` for hub models, loaded by id at ``revision``: the COMMIT HASH the
configured revision resolved to when the model stage ran (:func:`vlrl.modeling.hub.resolve_revision`),
so a run stays reproducible when params say ``main``. A hub pin also keeps ``requested_revision``
(the params value), which later stages compare with params to tell a stale pin.

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlrl.errors import CorruptInputError, MissingInputError
from vlrl.io import atomic_write_json, read_json

PIN_FILE = "model_pin.json"
#: Written by the model stage into a built (tiny) model folder.
KIND_BUILT = "built"
#: Pin of a hub model: loaded by id@revision from the hub or the HF cache.
KIND_HUB = "hub"


def write_pin(model_dir: Path, *, model_id: str, revision: str | None, backend: str, kind: str,
              requested_revision: str | None = None) -> dict:
    """Write ``model_pin.json`` into a model folder (the model stage does this); returns the pin.

    >>> import tempfile
    >>> write_pin(Path(tempfile.mkdtemp()), model_id="org/m", revision="abc", backend="unsloth", kind="hub")
    {'id': 'org/m', 'revision': 'abc', 'backend': 'unsloth', 'kind': 'hub'}
    """
    pin = {"id": model_id, "revision": revision, "backend": backend, "kind": kind}
    if requested_revision is not None:
        pin["requested_revision"] = requested_revision
    atomic_write_json(Path(model_dir) / PIN_FILE, pin)
    return pin


def model_pin(model_dir: Path) -> dict:
    """The pin of a model folder: ``{"id", "revision", "backend", "kind"}`` (for reports and loading).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = write_pin(d, model_id="tiny-qwen3-vl", revision="sha256:0", backend="transformers", kind="built")
    >>> model_pin(d)["kind"]
    'built'
    """
    path = Path(model_dir) / PIN_FILE
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; the model stage writes it "
                                f"(run `dvc repro model@<profile>` or stages/model.py)")
    try:
        pin = read_json(path)
    except json.JSONDecodeError as exc:
        raise CorruptInputError(f"{path}: not valid JSON ({exc}); re-run the model stage") from exc
    missing = [k for k in ("id", "revision", "backend", "kind") if k not in pin] if isinstance(pin, dict) else [1]
    if missing or pin["kind"] not in (KIND_BUILT, KIND_HUB):
        raise CorruptInputError(f"{path}: {pin!r}: expected keys id, revision, backend and kind "
                         f"({KIND_BUILT!r} or {KIND_HUB!r}); re-run the model stage")
    return pin

