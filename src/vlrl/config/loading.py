"""params.yaml -> :class:`~vlrl.config.sections.Params`: read once, every key typed and checked.

Numbers: PyYAML implements YAML 1.1, where ``1e-06`` and ``2e-3`` (no dot) are strings, while DVC
(ruamel.yaml, YAML 1.2) reads them as floats and writes them so: ``dvc exp run -S
rewards.numeric_rel_tol=1e-6`` leaves ``1e-06`` in params.yaml. :class:`ParamsLoader` resolves
floats with the union of both grammars, and a number field also accepts a string in that grammar
(a quoted ``"1e-6"``), so that any spelling DVC or a person writes is a number: ``1e-06``, ``2e-3``,
``.5``, ``1_000``, ``1.0e+9``.

Errors name the key path, the value and what is allowed, e.g.::

    params.yaml: profiles.tiny.train.num_generations = 1: must be an integer >= 2

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from vlrl.config.checks import require
from vlrl.config.rules import check_profile
from vlrl.config.sections import PROFILES, Params
from vlrl.errors import ConfigError

DEFAULT_PARAMS_PATH = Path("params.yaml")

_FLOAT_TAG = "tag:yaml.org,2002:float"
#: YAML 1.2 core-schema floats and YAML 1.1 floats (digits may carry ``_`` separators).
_DIGITS = r"[0-9][0-9_]*"
NUMBER_RE = re.compile(rf"""^(?:[-+]?(?:{_DIGITS}(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                              |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)


class ParamsLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 float resolution (see the module docstring)."""


ParamsLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# Appended after the int resolver, so "10" stays an int and only non-integers become floats.
ParamsLoader.add_implicit_resolver(_FLOAT_TAG, NUMBER_RE, list("-+0123456789."))


def read_yaml(text: str) -> Any:
    """Parse YAML text with :class:`ParamsLoader`.

    >>> read_yaml("a: 1e-06\\nb: 2e-3\\nc: .5\\nd: 1_000\\ne: 10\\nf: 1.0e+9")
    {'a': 1e-06, 'b': 0.002, 'c': 0.5, 'd': 1000, 'e': 10, 'f': 1000000000.0}
    """
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader subclass


def _number(value: Any) -> float | None:
    """The number a YAML value spells (int, float or a numeric string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    text = value.strip().replace("_", "") if isinstance(value, str) else ""
    if text and NUMBER_RE.match(text):
        return float(text.lower().replace(".inf", "inf").replace(".nan", "nan"))
    return None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(options) == 1:
            raise ConfigError(errors[-1])
        raise ConfigError(f"params.yaml: {key} = {value!r}: expected {' or '.join(map(_type_name, args))}")
    if origin is Literal:
        require(value in args, key, value, f"allowed: {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        require(isinstance(value, list | tuple), key, value, "expected a list")
        return tuple(_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        require(isinstance(value, dict), key, value, "expected a mapping")
        return {k: _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, key)
    if tp is bool:
        require(isinstance(value, bool), key, value, "expected true or false")
        return value
    if tp is int:
        number = _number(value)
        require(number is not None and math.isfinite(number) and float(number).is_integer(), key, value,
                "expected an integer")
        return int(number)
    if tp is float:
        number = _number(value)
        require(number is not None, key, value, "expected a number")
        return float(number)
    if tp is str:
        require(isinstance(value, str) and value != "", key, value, "expected a non-empty string")
        return value
    raise TypeError(f"config: unsupported field type {tp!r} for {key}")  # a bug in this package


def build_section(cls: type, mapping: Any, key: str) -> Any:
    """A section dataclass from its YAML mapping: unknown and missing keys named, then ``validate``."""
    require(isinstance(mapping, dict), key or "params.yaml", mapping, f"expected a mapping ({cls.__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, mapping)) - set(fields))
    if unknown:
        where = f"{key}.{unknown[0]}" if key else unknown[0]
        raise ConfigError(f"params.yaml: {where}: unknown key; allowed keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name not in mapping:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"params.yaml: {sub}: missing (expected {_type_name(hints[name])})")
            continue
        kwargs[name] = _coerce(hints[name], mapping[name], sub)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(key)
    return obj


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping (as loaded from YAML) into :class:`Params`: every section, every profile."""
    params = build_section(Params, raw, "")
    for name in params.profiles:
        require(name in PROFILES, f"profiles.{name}", name, f"allowed profiles: {', '.join(PROFILES)}")
    for name, profile in params.profiles.items():
        check_profile(name, profile, params)
    return params


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the repository root or pass --params PATH")
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML ({reason}); fix the file or restore it with "
                          f"`git checkout {path}`") from exc
    return parse_params(raw if raw is not None else {})
