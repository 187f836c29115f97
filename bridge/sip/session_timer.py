"""[pure] RFC 4028 session timers: the header values and the two deadlines, no clock.

    se = parse_session_expires(resp.headers.get("Session-Expires"))   # SessionExpires | None
    se.refresh_after          # the refresher sends UPDATE / re-INVITE this long after each 2xx (§10)
    se.expires_after          # the other side sends BYE this long after the last refresh (§10)
    format_session_expires(1800, "uac")                              # "1800;refresher=uac"

The bridge's trunk leg asks for timers (`Supported: timer`, `Session-Expires`) and refreshes as
the UAC; the carrier answers `Require: timer` and BYEs a session nobody refreshed (cause 102).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .errors import SipParseError

MIN_SE_FLOOR: Final = 90  # §4: Min-SE MUST NOT be less than 90 s (labs and tests may go lower)
TOKEN: Final = "timer"    # the option tag in Supported / Require (§3)


@dataclass(frozen=True, slots=True)
class SessionExpires:
    """`Session-Expires: delta;refresher=uac|uas` (§4)."""

    seconds: int
    refresher: str | None = None  # "uac", "uas" or None (not said yet)

    @property
    def refresh_after(self) -> float:
        """§10: the refresher SHOULD refresh at half the session interval."""
        return self.seconds / 2

    @property
    def expires_after(self) -> float:
        """§10: without a refresh, BYE before expiry, by min(32 s, one third of the interval)."""
        return self.seconds - min(32.0, self.seconds / 3)

    def __str__(self) -> str:
        return format_session_expires(self.seconds, self.refresher)


def parse_session_expires(value: str | None) -> SessionExpires | None:
    """The header's value (or the compact form `x`), None if absent; SipParseError if malformed."""
    if value is None or not value.strip():
        return None
    head, *params = [p.strip() for p in value.split(";")]
    if not head.isdigit() or int(head) <= 0:
        raise SipParseError(f"Session-Expires: bad delta-seconds {head!r}")
    refresher = None
    for p in params:
        name, _, v = p.partition("=")
        if name.strip().lower() == "refresher":
            r = v.strip().lower()
            if r not in ("uac", "uas"):
                raise SipParseError(f"Session-Expires: refresher must be uac or uas, got {v!r}")
            refresher = r
    return SessionExpires(int(head), refresher)


def parse_min_se(value: str | None) -> int | None:
    """`Min-SE: delta-seconds` (§5), None if absent or malformed (then the default applies)."""
    if value is None:
        return None
    head = value.split(";", 1)[0].strip()
    return int(head) if head.isdigit() else None


def format_session_expires(seconds: float, refresher: str | None = None) -> str:
    text = str(int(seconds))
    return f"{text};refresher={refresher}" if refresher else text


def has_option(header_values: list[str], tag: str = TOKEN) -> bool:
    """Whether `Supported` / `Require` values (comma lists) name the option tag."""
    return any(t.strip().lower() == tag for v in header_values for t in v.split(","))


__all__ = ["MIN_SE_FLOOR", "TOKEN", "SessionExpires", "format_session_expires", "has_option", "parse_min_se",
           "parse_session_expires"]
