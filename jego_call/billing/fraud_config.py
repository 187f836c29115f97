"""[pure] `FraudConfig`: the [fraud] section of config/jego.toml, checked when it is built.

Kept apart from `fraud` (the decisions) so that loading the configuration does not import the
numbering plan and phonenumbers' geocoding data (1.5 s of start-up for every CLI command).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from phonenumbers import SUPPORTED_REGIONS

from ..errors import ConfigError

# numbering.KINDS, plus the kinds phonenumbers' metadata names for numbers abroad (and for
# premium-rate ranges, which our +86 table does not name). tests/unit/test_fraud.py checks
# that this stays a superset of numbering.KINDS.
FRAUD_KINDS: Final = frozenset({
    "mobile", "fixed", "emergency", "short", "toll_free", "shared_cost", "satellite", "unallocated", "invalid",
    "incomplete", "foreign", "premium", "voip", "personal", "pager", "uan", "voicemail", "unknown",
})


@dataclass(frozen=True, slots=True)
class FraudConfig:
    """[fraud] in config/jego.toml; see the comments there for each key."""

    allowed_countries: tuple[str, ...] = ("CN",)
    allowed_kinds: tuple[str, ...] = ("mobile", "fixed")
    denied_prefixes: tuple[str, ...] = ("+86400", "+861349", "+86174", "+861619")
    max_concurrent_calls: int = 2
    max_calls_per_hour: int = 20
    max_minutes_per_day: int = 240
    velocity_window_s: float = 600.0
    distinct_destinations_warning: int = 6
    distinct_destinations_critical: int = 10
    sequential_digits: int = 3
    sequential_warning: int = 3
    sequential_critical: int = 5

    def __post_init__(self) -> None:
        for i, c in enumerate(self.allowed_countries):
            if c not in SUPPORTED_REGIONS:
                raise ConfigError(f"fraud.allowed_countries[{i}]", f"not an ISO 3166 region phonenumbers knows: {c!r}")
        for i, k in enumerate(self.allowed_kinds):
            if k not in FRAUD_KINDS:
                raise ConfigError(f"fraud.allowed_kinds[{i}]",
                                  f"must be one of {', '.join(sorted(FRAUD_KINDS))}, got {k!r}")
        for i, p in enumerate(self.denied_prefixes):
            if not (p.startswith("+") and p[1:].isdigit() and 1 <= len(p) - 1 <= 15):
                raise ConfigError(f"fraud.denied_prefixes[{i}]", f"expected + and digits (E.164), got {p!r}")
        for name in ("max_concurrent_calls", "max_calls_per_hour", "max_minutes_per_day",
                     "distinct_destinations_warning", "distinct_destinations_critical", "sequential_digits",
                     "sequential_warning", "sequential_critical"):
            if getattr(self, name) < 1:
                raise ConfigError(f"fraud.{name}", f"must be at least 1, got {getattr(self, name)!r}")
        if self.velocity_window_s <= 0:
            raise ConfigError("fraud.velocity_window_s", "must be greater than 0")
        for rule in ("distinct_destinations", "sequential"):
            if getattr(self, f"{rule}_warning") > getattr(self, f"{rule}_critical"):
                raise ConfigError(f"fraud.{rule}_warning", f"must not be above fraud.{rule}_critical")
