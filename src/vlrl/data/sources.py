"""Where the raw MathVista-format rows come from: the offline generator, the hub, or a local mirror.

Every source returns a :class:`SourceData`: a ``datasets.Dataset`` with (at least) the hub's columns
(:data:`vlrl.data.schema.HUB_FEATURES`) and ``decoded_image`` left undecoded ({"bytes", "path"}), so
that the transform decodes each image itself and drops a corrupt one with a reason.

- ``offline`` (tiny profile): :func:`vlrl.data.offline.generate_offline`.
- ``hub`` (full profile): only the split's parquet files (``data/<split>-*.parquet``: MathVista's
  testmini is one 1,000-row file; the test split and the image archives are never downloaded), at the
  pinned revision, through ``huggingface_hub``, then read with the parquet loader. The hub is asked
  once (``dataset_info``: one request, no retries) and, when it cannot be reached or ``HF_HUB_OFFLINE``
  is set, the local HF cache is used; with neither, one line says so at once (``datasets.load_dataset``
  on the hub id retries for about 25 s and prints two tracebacks first). ``HF_TOKEN`` (if set) is read
  by ``huggingface_hub`` itself and never logged here.
- ``local``: a copy with the hub's columns for air-gapped machines: a ``save_to_disk`` folder (a
  Dataset, or a DatasetDict from which ``local.split`` is taken), one parquet file, or a folder of
  parquet files (a hub snapshot: only files named ``<split>-*.parquet`` are read when there are any).
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature
from datasets.exceptions import DatasetsError

from vlrl.config import DataParams, HubSource, LocalSource, OfflineSource
from vlrl.data.offline import generate_offline
from vlrl.data.schema import REQUIRED_SOURCE_COLUMNS
from vlrl.errors import EnvironmentProblem, VlrlError

log = logging.getLogger(__name__)


class DataSourceError(VlrlError, RuntimeError):
    """The source could not be read; the message says what was tried and how to proceed."""


class DataNotAvailableError(EnvironmentProblem, DataSourceError):
    """Neither the network nor the local cache has the hub data set."""


@dataclass(frozen=True)
class SourceData:
    dataset: Dataset
    source: str
    revision: str | None
    described: dict
    #: The folder a row's image path may point into (a local mirror's own folder); None: bytes only.
    image_root: Path | None = None


def _undecoded(dataset: Dataset, where: str) -> Dataset:
    missing = [c for c in REQUIRED_SOURCE_COLUMNS if c not in dataset.column_names]
    if missing:
        raise DataSourceError(f"{where}: missing column(s) {', '.join(missing)}; a MathVista source needs "
                              f"the hub's columns: {', '.join(REQUIRED_SOURCE_COLUMNS)}")
    if isinstance(dataset.features["decoded_image"], ImageFeature):
        dataset = dataset.cast_column("decoded_image", ImageFeature(decode=False))
    return dataset


def load_offline(offline: OfflineSource, seed: int) -> SourceData:
    """The generated set (deterministic by seed).

    >>> load_offline(OfflineSource(n_items=12, canvas_px=48), seed=1).dataset.num_rows
    12
    """
    dataset = generate_offline(offline.n_items, seed, offline.canvas_px)
    return SourceData(_undecoded(dataset, "offline generator"), "offline", None,
                      {"n_items": offline.n_items, "canvas_px": offline.canvas_px})


def hub_split_patterns(split: str) -> list[str]:
    """The files of one split in a hub data set repository (the hub's parquet layout).

    >>> hub_split_patterns("testmini")
    ['data/testmini-*.parquet', 'data/testmini.parquet']
    """
    return [f"data/{split}-*.parquet", f"data/{split}.parquet"]


def _offline() -> bool:
    """HF_HUB_OFFLINE read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _ways_on(hub: HubSource) -> str:
    return ("to proceed: (a) on a machine with network, check the id/revision (and HF_TOKEN if the repository "
            "is gated); (b) with a warm cache, set HF_HUB_OFFLINE=1; (c) on an air-gapped machine, point the "
            "profile at a mirror (data.source: local, data.local.path: a save_to_disk folder or parquet files) "
            "or run `python -m vlrl.data --local PATH ...`; (d) to run everything offline, use the tiny profile "
            "(`dvc repro --glob '*@tiny'` or `make demo`)")


def _hub_split_files(hub: HubSource) -> tuple[list[Path], str]:
    """(local parquet files of the split, the commit they come from): the hub, else the local cache."""
    import huggingface_hub
    from huggingface_hub import errors

    patterns = hub_split_patterns(hub.split)
    what = f"the data set {hub.path!r} (split {hub.split!r}, revision {hub.revision!r})"
    reason = "HF_HUB_OFFLINE is set"
    if not _offline():
        try:
            info = huggingface_hub.HfApi().dataset_info(hub.path, revision=hub.revision)
        except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as exc:
            raise DataSourceError(f"params.yaml: profiles.<profile>.data.hub: the hub has no {what} "
                                  f"({type(exc).__name__}); check path and revision") from exc
        except Exception as exc:  # noqa: BLE001 - any other failure to ask the hub: try the cache
            reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        else:
            names = [s.rfilename for s in (info.siblings or [])]
            if not any(fnmatch.fnmatch(name, p) for name in names for p in patterns):
                raise DataSourceError(f"params.yaml: profiles.<profile>.data.hub.split = {hub.split!r}: {hub.path} "
                                      f"at {info.sha} has no {' or '.join(patterns)}; check the split name")
            folder = huggingface_hub.snapshot_download(hub.path, repo_type="dataset", revision=info.sha,
                                                       allow_patterns=patterns)
            return _split_files_in(Path(folder), patterns), info.sha
    try:
        folder = Path(huggingface_hub.snapshot_download(hub.path, repo_type="dataset", revision=hub.revision,
                                                        allow_patterns=patterns, local_files_only=True))
    except (OSError, ValueError, errors.EntryNotFoundError):
        folder = None
    files = _split_files_in(folder, patterns) if folder is not None else []
    if not files:
        where = "HF_HUB_OFFLINE is set" if _offline() else "the hub could not be reached"
        raise DataNotAvailableError(f"{what} is not in the local Hugging Face cache and {where} ({reason}); "
                                    + _ways_on(hub))
    return files, folder.name


def _split_files_in(folder: Path, patterns: list[str]) -> list[Path]:
    return sorted(p for p in folder.rglob("*.parquet")
                  if any(fnmatch.fnmatch(p.relative_to(folder).as_posix(), pattern) for pattern in patterns))


def load_hub(hub: HubSource) -> SourceData:
    """MathVista's split from the hub at a pinned revision (network, or the local cache; see the module doc).
    """
    log.info("loading %s (split %s, revision %s) from the Hugging Face hub or its cache",
             hub.path, hub.split, hub.revision)
    files, commit = _hub_split_files(hub)
    try:
        dataset = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    except (OSError, DatasetsError, ValueError) as exc:
        raise DataSourceError(f"{files[0].parent}: the cached parquet files of {hub.path} ({hub.split}) cannot be "
                              f"read ({type(exc).__name__}); delete them from the HF cache and re-run") from exc
    return SourceData(_undecoded(dataset, f"hub data set {hub.path}"), "hub", commit,
                      {"path": hub.path, "split": hub.split})


def _parquet_files(folder: Path, split: str) -> list[Path]:
    files = sorted(folder.rglob("*.parquet"))
    of_split = [f for f in files if f.name.startswith(f"{split}-") or f.name == f"{split}.parquet"]
    return of_split or files


def load_local(local: LocalSource) -> SourceData:
    """A local copy with the hub's columns: save_to_disk folder, parquet file, or folder of parquet files.
    """
    path = Path(str(local.path)).expanduser()
    where = f"data.local.path {str(path)!r}"
    if not path.exists():
        raise DataSourceError(f"{where}: not found; give a datasets save_to_disk folder, a parquet file "
                              "or a folder of parquet files with MathVista's columns")
    is_saved = path.is_dir() and any((path / name).exists()
                                     for name in ("dataset_info.json", "state.json", "dataset_dict.json"))
    try:
        dataset = _read_local(path, local, is_saved, where)
    except DataSourceError:
        raise
    except Exception as exc:  # pyarrow / datasets raise many types for a truncated or foreign file
        raise DataSourceError(f"{where}: cannot be read as a MathVista copy ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}); replace it with an intact save_to_disk "
                              "folder or parquet files") from exc
    log.info("loaded %d rows from %s", dataset.num_rows, path)
    root = path if path.is_dir() else path.parent
    return SourceData(_undecoded(dataset, where), "local", None, {"path": str(path), "split": local.split},
                      image_root=root)


def _read_local(path: Path, local: LocalSource, is_saved: bool, where: str) -> Dataset:
    if is_saved:
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if local.split not in loaded:
                raise DataSourceError(f"{where}: a DatasetDict without the split {local.split!r} "
                                      f"(has {', '.join(loaded)}); set data.local.split")
            loaded = loaded[local.split]
        dataset = loaded
    else:
        files = [path] if path.is_file() else _parquet_files(path, local.split)
        if not files or any(f.suffix != ".parquet" for f in files):
            raise DataSourceError(f"{where}: neither a save_to_disk folder nor parquet file(s)")
        dataset = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    return dataset


def load_source(data: DataParams, seed: int) -> SourceData:
    """The rows of the configured source (``data.source``)."""
    if data.source == "offline":
        assert data.offline is not None  # DataParams.validate guarantees the section
        return load_offline(data.offline, seed)
    if data.source == "hub":
        assert data.hub is not None
        return load_hub(data.hub)
    assert data.local is not None
    return load_local(data.local)
