"""Parameters for tests: a fixture copy of params.yaml, never the workspace file.

``dvc exp run -S ...`` applies its params to the workspace params.yaml; tests that read that file would
then test someone's experiment instead of the code. ``tests/fixtures/params.yaml`` is a copy of the
committed params.yaml (update it together with a deliberate change of the committed defaults).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from vlrl.config import Params, parse_params, read_yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PARAMS = Path(__file__).resolve().parent / "fixtures" / "params.yaml"


@functools.cache
def _raw() -> dict[str, Any]:
    return read_yaml(FIXTURE_PARAMS.read_text())


def raw_params() -> dict[str, Any]:
    """A fresh, mutable copy of the fixture params mapping."""
    return copy.deepcopy(_raw())


def edited(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``raw`` with the dotted ``path`` set to ``value`` (``KeyError`` as value deletes the key)."""
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


def fixture_params(**paths: Any) -> Params:
    """The fixture params, validated, with ``{"a.b": value}``-style edits given as ``a__b=value``."""
    raw = raw_params()
    for path, value in paths.items():
        edited(raw, path.replace("__", "."), value)
    return parse_params(raw)


def write_params(path: Path, raw: dict[str, Any]) -> Path:
    """Write a params mapping as YAML (for stage subprocesses); returns ``path``."""
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
