"""The fetch stage's job (source -> transform -> held-out split -> disk), and reading the splits back.

:func:`fetch_splits` writes ``splits_dir/train`` and ``splits_dir/eval`` (``datasets.Dataset.save_to_disk``
folders with :data:`vlrl.data.schema.SPLIT_FEATURES`) plus ``splits_dir/manifest.json``, all inside
one :func:`vlrl.io.atomic_directory` (an interrupted run leaves the previous complete folder, or
nothing, never a half-written one), then the manifest at ``manifest_path`` (written last).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import datasets
from datasets import Dataset

from vlrl.config import PROFILES, DataParams
from vlrl.data.heldout import assign_eval
from vlrl.data.manifest import build_manifest
from vlrl.data.schema import SPLIT_FEATURES
from vlrl.data.sources import load_source
from vlrl.data.transform import transform_rows
from vlrl.errors import ConfigError, CorruptInputError, MissingInputError
from vlrl.io import atomic_directory, atomic_write_json, check_replaceable

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "eval")


class EmptySplitError(ConfigError):
    """A split would be empty (too few rows per stratum for the eval fraction)."""


def _to_dataset(rows: list[dict[str, Any]]) -> Dataset:
    return Dataset.from_list(rows, features=SPLIT_FEATURES)


def fetch_splits(data: DataParams, seed: int, splits_dir: Path, manifest_path: Path) -> dict[str, Any]:
    """Load the source, run the transform, split, and write the splits and the manifest atomically.

    Returns the manifest dict (see :mod:`vlrl.data.manifest`).

    >>> import tempfile
    >>> from vlrl.config import DataParams, OfflineSource
    >>> data = DataParams("offline", 32, 0.3, offline=OfflineSource(n_items=40, canvas_px=48))
    >>> out = Path(tempfile.mkdtemp())
    >>> fetch_splits(data, 0, out / "splits", out / "manifest.json")["splits"]["eval"]["n"] > 0
    True
    """
    splits_dir, manifest_path = Path(splits_dir), Path(manifest_path)
    check_replaceable(splits_dir)  # before the download and the transform, not after
    source = load_source(data, seed)
    result = transform_rows(source.dataset, data.image_size, data.min_image_side, image_root=source.image_root)
    held_out = assign_eval([r["pid"] for r in result.rows],
                           [(r["question_type"], r["answer_type"]) for r in result.rows],
                           seed, data.eval_fraction)
    train = [r for r in result.rows if r["pid"] not in held_out]
    eval_ = [r for r in result.rows if r["pid"] in held_out]
    for name, rows in (("train", train), ("eval", eval_)):
        if not rows:
            raise EmptySplitError(
                f"data split: the {name} split would be empty ({len(result.rows)} rows kept, "
                f"eval_fraction = {data.eval_fraction}); use more rows or another data.eval_fraction")
    manifest = build_manifest(source=source.source, source_params=source.described, revision=source.revision,
                              result=result, train=train, eval_=eval_, image_size=data.image_size,
                              min_image_side=data.min_image_side, eval_fraction=data.eval_fraction, seed=seed)
    with atomic_directory(splits_dir) as tmp:
        for name, rows in (("train", train), ("eval", eval_)):
            _to_dataset(rows).save_to_disk(str(tmp / name))
        atomic_write_json(tmp / "manifest.json", manifest)
    atomic_write_json(manifest_path, manifest)
    log.info("fetch: %d rows in, %d kept -> train %d, eval %d (%s)", result.rows_in, len(result.rows),
             len(train), len(eval_), splits_dir)
    return manifest


def _profile_hint(splits_dir: Path) -> str:
    profile = splits_dir.parent.name if splits_dir.parent.name in PROFILES else "<profile>"
    return f"run `dvc repro fetch@{profile}` (or `python stages/fetch.py --profile {profile} ...`) first"


def load_split(splits_dir: Path, name: Literal["train", "eval"]) -> Dataset:
    """One split as a ``datasets.Dataset`` (columns: :data:`vlrl.data.schema.SPLIT_FEATURES`); a damaged
    or foreign folder is named with the fix."""
    if name not in SPLIT_NAMES:
        raise ValueError(f"split name {name!r}: allowed: {', '.join(SPLIT_NAMES)}")
    splits_dir = Path(splits_dir)
    folder = splits_dir / name
    if not (folder / "state.json").is_file():
        raise MissingInputError(f"{folder}: no {name} split here; {_profile_hint(splits_dir)}")
    # In memory, so that .map()/.filter() downstream never write cache-*.arrow files into the split
    # folder: that folder is the fetch stage's DVC output, and any new file in it makes DVC see the
    # data as modified and re-run every stage after fetch.
    try:
        split = datasets.load_from_disk(str(folder), keep_in_memory=True)
    except Exception as exc:  # datasets / pyarrow raise many types for a truncated or foreign folder
        raise CorruptInputError(f"{folder}: cannot be read as a split ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:160]}); delete {splits_dir} and "
                                f"{_profile_hint(splits_dir)}") from exc
    missing = [column for column in SPLIT_FEATURES if column not in split.column_names]
    if not isinstance(split, Dataset) or missing:
        raise CorruptInputError(f"{folder}: not a vlrl split (missing columns: {', '.join(missing) or '-'}); "
                                f"delete {splits_dir} and {_profile_hint(splits_dir)}")
    return split
