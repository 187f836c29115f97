"""Where the simulated carrier's configuration comes from: config/carrier.toml (or a path), with
per-section overrides, parsed and validated by the pure `scenarios.parse_carrier_config`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from jego_call.errors import ConfigError

from .scenarios import CarrierConfig, parse_carrier_config

DEFAULT_CARRIER_CONFIG: Final = Path(__file__).resolve().parents[2] / "config" / "carrier.toml"


def load_carrier_config(path: str | Path | None = None,
                        overrides: Mapping[str, Mapping[str, Any]] | None = None) -> CarrierConfig:
    """Read config/carrier.toml (or `path`), merge `overrides` per section (e.g.
    {"sip": {"ring_timeout_s": 2}}), validate. Next: `behaviour_for(e164, cfg)`."""
    p = Path(path) if path is not None else DEFAULT_CARRIER_CONFIG
    try:
        data: dict[str, Any] = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("carrier.config", f"no such file: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), f"invalid TOML: {exc}") from None
    for section, values in (overrides or {}).items():
        cur = data.setdefault(section, {})
        if not isinstance(cur, dict):
            raise ConfigError(section, "expected a table")
        cur.update(values)
    return parse_carrier_config(data)


def resolve_config_path(path: str | Path) -> Path:
    """A relative config path is taken from the working directory, else from the repository
    (so `jego serve` works from any directory with the default "config/carrier.toml")."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    repo = DEFAULT_CARRIER_CONFIG.parents[1]
    return repo / p if (repo / p).exists() else p
