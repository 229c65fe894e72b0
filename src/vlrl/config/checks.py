"""The one shape of a params.yaml error: ``params.yaml: key = value: what is allowed``.

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

from typing import Any

from vlrl.errors import ConfigError


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ``ConfigError("params.yaml: key = value: allowed")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"params.yaml: {key} = {value!r}: {allowed}")


def one_of(allowed: tuple[str, ...]) -> str:
    """The "allowed: 'a', 'b'" part of a message."""
    return f"allowed: {', '.join(map(repr, allowed))}"
