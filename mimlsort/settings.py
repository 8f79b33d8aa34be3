"""Frozen settings dataclasses built from plain mappings (TOML tables), with key paths in errors.

Every package declares its own settings as frozen dataclasses whose ``__post_init__`` validates
ranges with :func:`require`; :func:`from_mapping` builds them from a TOML table, rejecting unknown
keys and wrong types, and prefixes any error with the table's key path, so an operator reads
``tracking.min_area_um: must be > 0, got -3``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from mimlsort.errors import ConfigError

T = TypeVar("T")


#: integer keys hold 64-bit integers (what TOML allows)
INT64_LIMIT = 2**63


def require(ok: bool, key: str, problem: str) -> None:
    """Raise ``ConfigError(key, problem)`` unless ``ok``."""
    if not ok:
        raise ConfigError(key, problem)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e.problem)
        raise ConfigError(key, "; ".join(errors))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a table, got {type(value).__name__}")
        return from_mapping(tp, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"must be a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(key, f"must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a table, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {value!r}")
        if value != value:  # NaN passes every range check written as a comparison that fails
            raise ConfigError(key, "must be a number, got nan")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(key, f"unsupported value {value!r}")


def from_mapping(cls: type[T], data: Mapping[str, Any], key: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys and bad values are errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(key, f"must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{key}.{unknown[0]}" if key else unknown[0]
        raise ConfigError(where, f"unknown key (known: {', '.join(sorted(fields))})")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        where = f"{key}.{missing[0]}" if key else missing[0]
        raise ConfigError(where, "is required")
    kwargs = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else name
        kwargs[name] = _coerce(value, hints[name], sub)
    try:
        obj = cls(**kwargs)
    except ConfigError as e:
        raise e.under(key) if key else e from None
    except TypeError as e:  # a required field is missing
        raise ConfigError(key, str(e)) from None
    # after the class's own checks, whose ranges say more: TOML's integers are 64-bit, Python's are
    # not, and 10**30 passed where nothing bounded it, to overflow where it met numpy, numba or HDF5
    for name, value in kwargs.items():
        if type(value) is int and not -INT64_LIMIT <= value < INT64_LIMIT:
            raise ConfigError(f"{key}.{name}" if key else name, f"must fit in 64 bits (|n| < 2**63), got {value}")
    return obj


def to_mapping(obj: Any) -> Any:
    """The plain-data form of a settings dataclass (for TOML/JSON), omitting ``None`` values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = to_mapping(getattr(obj, f.name))
            if v is not None:
                out[f.name] = v
        return out
    if isinstance(obj, tuple):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj
