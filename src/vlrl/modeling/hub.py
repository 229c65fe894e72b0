"""Hub models: the configured revision resolved to a commit, and the model's config.json, fast offline.

Why a commit: a branch such as ``main`` moves, so a run that loads ``id@main`` is not reproducible.
The model stage resolves the configured revision ONCE to the commit it names and writes that hash into
``model_pin.json``; every later stage loads ``id@<hash>`` (:mod:`vlrl.modeling.pins`).

Where the hash comes from:

- the hub's metadata (``HfApi.model_info(id, revision=...).sha``): one request, no retries, so a
  machine without network fails in well under a second (``hf_hub_download`` retries five times with
  back-off, about 24 s, before it gives up);
- the local Hugging Face cache when the hub cannot be reached or ``HF_HUB_OFFLINE`` is set: the cache
  keeps each commit in ``snapshots/<hash>`` and each branch in ``refs/<branch>``, and
  ``snapshot_download(..., local_files_only=True)`` resolves the revision through them (huggingface_hub's
  cache layout: https://huggingface.co/docs/huggingface_hub/guides/manage-cache).

With neither, :class:`~vlrl.modeling.loading.ModelNotAvailableError` says so in one line.

A local folder as the model id is pinned by a fingerprint of its files (names, sizes, and the bytes of
every file under 16 MB, so config, tokenizer and index changes show) instead of a commit.

huggingface_hub is imported when needed (and looked up on the module, so tests can replace it).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from vlrl.config import ModelParams
from vlrl.errors import ConfigError, EnvironmentProblem
from vlrl.modeling.folders import CONFIG_FILE, check_architecture, read_json_file
from vlrl.modeling.pins import KIND_HUB, write_pin

#: A full commit hash, as the hub names commits.
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
#: Files of a local model folder whose whole content enters its fingerprint.
_SMALL_FILE_BYTES = 16 * 2**20


class ModelNotAvailableError(EnvironmentProblem):
    """The pinned model is neither on disk nor reachable on the hub."""


def offline() -> bool:
    """HF_HUB_OFFLINE read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_local_folder(model_id: str) -> bool:
    """A model id that names an existing folder is loaded from there, not from the hub."""
    return Path(model_id).expanduser().is_dir()


def not_available(model_id: str, revision: str | None, reason: str) -> ModelNotAvailableError:
    """The one-line error for a model that neither the network nor the cache can provide."""
    where = "HF_HUB_OFFLINE is set" if offline() else "the hub could not be reached"
    unset = " (or unset HF_HUB_OFFLINE once)" if offline() else ""
    # `hf` is huggingface_hub's CLI since 1.0 (`huggingface-cli` no longer works there).
    return ModelNotAvailableError(
        f"model {model_id!r} (revision {revision!r}) is not in the local Hugging Face cache and {where} "
        f"({reason}). To fix: on a machine with network run `hf download {model_id} --revision "
        f"{revision or 'main'}`{unset} to fill the cache, or set profiles.<profile>.model.id to a local model "
        "folder; the tiny profile needs no download.")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _definite_answer(exc: BaseException, model_id: str, revision: str) -> Exception | None:
    """The error to raise when the hub answered that the id or revision does not exist (or is gated)."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return EnvironmentProblem(f"model {model_id!r} is gated on the hub: accept its terms on huggingface.co and "
                                  "set HF_TOKEN, or point profiles.<profile>.model.id at a local copy")
    if isinstance(exc, errors.RevisionNotFoundError):
        return ConfigError(f"params.yaml: profiles.<profile>.model.revision = {revision!r}: the hub has no such "
                           f"revision of {model_id!r}; give a branch, tag or commit hash of that repository")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return ConfigError(f"params.yaml: profiles.<profile>.model.id = {model_id!r}: no such model on the hub "
                           "(or it is private: set HF_TOKEN); check the id")
    return None


def _cached_commit(model_id: str, revision: str) -> str | None:
    """The commit ``revision`` names in the local cache (a snapshot holding config.json), else None."""
    import huggingface_hub

    try:
        folder = huggingface_hub.snapshot_download(model_id, revision=revision, local_files_only=True,
                                                   allow_patterns=[CONFIG_FILE])
    except (OSError, ValueError, huggingface_hub.errors.EntryNotFoundError):
        return None
    commit = Path(folder).name
    if not COMMIT_RE.fullmatch(commit) or not (Path(folder) / CONFIG_FILE).is_file():
        return None
    return commit


def folder_fingerprint(folder: Path) -> str:
    """``local:sha256:<hex>`` over a local model folder (see the module docstring).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "config.json").write_text("{}")
    >>> folder_fingerprint(d).startswith("local:sha256:")
    True
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        if size <= _SMALL_FILE_BYTES:
            digest.update(path.read_bytes())
    return f"local:sha256:{digest.hexdigest()}"


def resolve_revision(model_id: str, revision: str | None) -> str:
    """The commit hash ``revision`` (default ``main``) names for ``model_id``: hub metadata, else the cache.

    A local folder id gives its :func:`folder_fingerprint`.
    """
    if is_local_folder(model_id):
        return folder_fingerprint(Path(model_id).expanduser())
    import huggingface_hub

    revision = revision or "main"
    reason = "HF_HUB_OFFLINE is set"
    if not offline():
        try:
            sha = huggingface_hub.HfApi().model_info(model_id, revision=revision).sha
        except Exception as exc:  # noqa: BLE001 - any failure to ask the hub falls back to the cache
            definite = _definite_answer(exc, model_id, revision)
            if definite is not None:
                raise definite from exc
            reason = _reason(exc)
        else:
            if sha and COMMIT_RE.fullmatch(sha):
                return sha
            reason = f"the hub gave no commit for revision {revision!r}"
    cached = _cached_commit(model_id, revision)
    if cached is None:
        raise not_available(model_id, revision, reason)
    return cached


def model_config(model_id: str, commit: str) -> dict:
    """The model's config.json at ``commit`` (cache first, then the hub), checked to declare Qwen3-VL.

    Read before any weights load, so that a wrong model id fails in one line instead of loading
    gigabytes (or building a default model) first.
    """
    fix = ("set profiles.<profile>.model.id to a Qwen3-VL model (e.g. unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit)"
           " and re-run the model stage")
    if is_local_folder(model_id):
        path = Path(model_id).expanduser() / CONFIG_FILE
        return check_architecture(read_json_file(path, fix), str(path), fix)
    import huggingface_hub

    path = huggingface_hub.try_to_load_from_cache(model_id, CONFIG_FILE, revision=commit)
    if not isinstance(path, str):
        if offline():
            raise not_available(model_id, commit, f"{CONFIG_FILE} is not cached")
        try:
            # One metadata request first: it fails at once without network, where the download
            # below would retry for about 24 s.
            huggingface_hub.HfApi().model_info(model_id, revision=commit)
            path = huggingface_hub.hf_hub_download(model_id, CONFIG_FILE, revision=commit)
        except Exception as exc:  # noqa: BLE001 - one line whatever the hub client raised
            definite = _definite_answer(exc, model_id, commit)
            raise (definite or not_available(model_id, commit, _reason(exc))) from exc
    where = f"{model_id}@{commit[:12]}/{CONFIG_FILE}"
    return check_architecture(read_json_file(Path(path), fix), where, fix)



def pin_hub_model(model: ModelParams, out_dir: Path) -> dict:
    """The model stage's job for a hub model: resolve, check config.json, write ``model_pin.json``.

    Returns the pin; its ``revision`` is the commit hash, ``requested_revision`` the params value.
    """
    commit = resolve_revision(model.id, model.revision)
    model_config(model.id, commit)
    return write_pin(out_dir, model_id=model.id, revision=commit, backend=model.backend, kind=KIND_HUB,
                     requested_revision=requested_revision(model))


def requested_revision(model: ModelParams) -> str:
    """The revision params ask for (``main`` when null), as recorded in and compared with a hub pin."""
    return model.revision or "main"
