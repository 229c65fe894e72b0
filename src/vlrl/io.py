"""Atomic writes and careful reads: an interrupted run never leaves a file or folder that looks complete,
vlrl never replaces a folder it did not write, and a corrupt input is named, not crashed on.

- Everything is written to a temporary sibling first and renamed into place (``os.replace`` is atomic
  on POSIX within one file system). A failed write (read-only target, full disk) leaves the previous
  output as it was and raises :class:`~vlrl.errors.OutputError`.
- Every folder vlrl writes carries :data:`OUTPUT_MARKER`. An existing folder is replaced only when it
  is empty or carries the marker, so ``--splits-dir ~/important`` stops with one line instead of
  deleting the user's folder.
- Files get the usual permissions (``0666`` and folders ``0777``, less the umask), not the ``0600`` of
  temporary files.
- Readers of our own JSON and JSONL files name the file (and line) of a truncated or foreign record.

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vlrl.errors import CorruptInputError, MissingInputError, OutputError, VlrlError

#: Written into every folder vlrl creates; only folders carrying it (or empty ones) are ever replaced.
OUTPUT_MARKER = ".vlrl-output"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _cannot_write(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or type(exc).__name__
    return OutputError(f"cannot write {path}: {reason}; the previous output, if any, is left as it was")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every metrics file is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary sibling renamed into place).

    >>> import tempfile
    >>> p = atomic_write_text(Path(tempfile.mkdtemp()) / "a" / "m.json", "{}\\n")
    >>> oct(p.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    True
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise OutputError(f"cannot write {path}: it is a folder; give a file path")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; outputs are ordinary files
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, VlrlError):
            raise
        raise _cannot_write(path, exc) from exc
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    lines = (json.dumps(_finite(r), default=_json_default, ensure_ascii=False, allow_nan=False)
             for r in records)
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


_REDO = "delete it and re-run the stage that writes it (dvc repro)"


def read_jsonl(path: str | Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One JSON object per line (blank lines skipped), each with the ``required`` keys; a truncated or
    foreign line is named by number.

    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "g.jsonl"
    >>> _ = bad.write_text('{"pid": "1"}\\n{"pid": "2", "comp')
    >>> read_jsonl(bad)
    Traceback (most recent call last):
    ...
    vlrl.errors.CorruptInputError: ...g.jsonl:2: not a JSON object (Unterminated string ...); delete it ...
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; run the stage that writes it first (dvc repro)")
    records = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorruptInputError(f"{path}:{number}: not a JSON object ({exc.msg}); {_REDO}") from exc
                if not isinstance(record, dict):
                    raise CorruptInputError(f"{path}:{number}: a {type(record).__name__}, not a JSON object; {_REDO}")
                missing = [key for key in required if key not in record]
                if missing:
                    raise CorruptInputError(f"{path}:{number}: missing {', '.join(missing)}; {_REDO}")
                records.append(record)
    except UnicodeDecodeError as exc:
        raise CorruptInputError(f"{path}: not UTF-8 text ({exc.reason}); {_REDO}") from exc
    return records


def read_json(path: str | Path, fix: str | None = None) -> Any:
    """A JSON file; a missing, truncated or undecodable one is named with ``fix`` (default: re-run the
    stage that writes it)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; {fix or 'run the stage that writes it first (dvc repro)'}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else exc.reason
        raise CorruptInputError(f"{path}: not valid JSON ({reason}); {fix or _REDO}") from exc


def read_json_object(path: str | Path, required: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON object holding at least the ``required`` keys."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise CorruptInputError(f"{path}: a JSON {type(obj).__name__}, expected an object; {_REDO}")
    missing = [key for key in required if key not in obj]
    if missing:
        raise CorruptInputError(f"{path}: missing {', '.join(missing)}; {_REDO}")
    return obj


def check_replaceable(path: str | Path) -> None:
    """Raise :class:`~vlrl.errors.OutputError` unless vlrl may replace ``path``: it does not exist, is
    an empty folder, or is a folder carrying :data:`OUTPUT_MARKER`.

    >>> import tempfile
    >>> mine = Path(tempfile.mkdtemp())
    >>> _ = (mine / "notes.txt").write_text("a user's file")
    >>> check_replaceable(mine)
    Traceback (most recent call last):
    ...
    vlrl.errors.OutputError: ...: refusing to replace this folder: it holds files vlrl did not write ...
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise OutputError(f"{path}: refusing to replace it: it is {'a link' if path.is_symlink() else 'a file'}, "
                          "not a folder vlrl wrote; move it away or choose another output path")
    if (path / OUTPUT_MARKER).is_file() or not any(path.iterdir()):
        return
    raise OutputError(f"{path}: refusing to replace this folder: it holds files vlrl did not write (no "
                      f"{OUTPUT_MARKER} marker); move it away or choose another output path")


def mark_output(folder: str | Path) -> Path:
    """Write :data:`OUTPUT_MARKER` into a folder vlrl owns (so that a later run may replace it)."""
    marker = Path(folder) / OUTPUT_MARKER
    if not marker.is_file():
        atomic_write_text(marker, "written by vlrl: a later run may replace this folder\n")
    return marker


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` whole, on failure it is removed.

    The result carries :data:`OUTPUT_MARKER`; an existing ``path`` is replaced only when
    :func:`check_replaceable` allows it, checked before any work is done.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "splits"
    >>> with atomic_directory(out) as tmp:
    ...     _ = (tmp / "a.txt").write_text("complete")
    >>> sorted(p.name for p in out.iterdir())
    ['.vlrl-output', 'a.txt']
    """
    path = Path(path)
    check_replaceable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; the result is an ordinary output folder
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    try:
        mark_output(tmp)
        yield tmp
        check_replaceable(path)  # again: something may have appeared while we worked
        try:
            if path.exists():
                # A fresh empty name (rename may replace an empty folder): never a folder someone else made.
                old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except OSError as exc:
            raise _cannot_write(path, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
