"""Atomic writes: an interrupted run never leaves a file or folder that looks complete.

Everything is written to a temporary sibling first and renamed into place (``os.replace`` is atomic
on POSIX within one file system). Pure module: imports neither torch nor DVC.
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

from vlrl.errors import CorruptInputError, MissingInputError


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
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


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object per line (blank lines skipped); a truncated or foreign line is named by number.

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
                records.append(record)
    except UnicodeDecodeError as exc:
        raise CorruptInputError(f"{path}: not UTF-8 text ({exc.reason}); {_REDO}") from exc
    return records


def read_json(path: str | Path) -> Any:
    """A JSON file; a truncated or undecodable one is named with the fix."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; run the stage that writes it first (dvc repro)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else exc.reason
        raise CorruptInputError(f"{path}: not valid JSON ({reason}); {_REDO}") from exc


def read_json_object(path: str | Path, required: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON object holding at least the ``required`` keys."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise CorruptInputError(f"{path}: a JSON {type(obj).__name__}, expected an object; {_REDO}")
    missing = [key for key in required if key not in obj]
    if missing:
        raise CorruptInputError(f"{path}: missing {', '.join(missing)}; {_REDO}")
    return obj


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` whole, on failure it is removed.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "splits"
    >>> with atomic_directory(out) as tmp:
    ...     _ = (tmp / "a.txt").write_text("complete")
    >>> [p.name for p in out.iterdir()]
    ['a.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the result is an ordinary output folder
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
