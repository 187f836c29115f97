"""[pure] TOML tables -> frozen dataclasses: `build(cls, data, prefix)` checks every key and type
and raises ConfigError naming the dotted key. config.py (jego.toml) and the carrier's
scenarios.py (carrier.toml) both build their dataclasses with it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from .errors import ConfigError


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {value!r}")
        return dict(value)
    if isinstance(tp, types.UnionType):  # pragma: no cover - no optional keys yet
        return value
    raise ConfigError(key, f"unsupported type {tp!r}")


def build(cls: type, data: Mapping[str, Any], prefix: str = "", *, positive: AbstractSet[str] = frozenset(),
          choices: Mapping[str, tuple[str, ...]] | None = None) -> Any:
    """Build the frozen dataclass `cls` from a mapping, rejecting unknown keys and wrong types.

    `positive` names dotted keys that must be > 0, `choices` the allowed values of others."""
    choices = choices or {}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}", "unknown key")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        value = data[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(key, f"expected a table [{key}], got {value!r}")
            kwargs[f.name] = build(tp, value, f"{key}.", positive=positive, choices=choices)  # type: ignore[arg-type]
        else:
            kwargs[f.name] = _coerce(key, value, tp)
            if key in positive and kwargs[f.name] <= 0:
                raise ConfigError(key, f"must be greater than 0, got {value!r}")
            if key in choices and kwargs[f.name] not in choices[key]:
                raise ConfigError(key, f"must be one of {', '.join(choices[key])}, got {value!r}")
    return cls(**kwargs)
