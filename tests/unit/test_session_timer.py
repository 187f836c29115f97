"""bridge/sip/session_timer.py: RFC 4028 header values and the two deadlines (§10)."""

from __future__ import annotations

import pytest

from bridge.sip.errors import SipParseError
from bridge.sip.session_timer import (
    SessionExpires,
    format_session_expires,
    has_option,
    parse_min_se,
    parse_session_expires,
)


@pytest.mark.parametrize(("text", "seconds", "refresher"), [
    ("1800", 1800, None), ("1800;refresher=uac", 1800, "uac"), (" 90 ; refresher = UAS ", 90, "uas"),
    ("4000;foo=bar;refresher=uac", 4000, "uac"),
])
def test_parse(text: str, seconds: int, refresher: str | None) -> None:
    se = parse_session_expires(text)
    assert se == SessionExpires(seconds, refresher)
    assert parse_session_expires(str(se)) == se  # round trip


@pytest.mark.parametrize("text", ["0", "-5", "abc", "1800;refresher=proxy", "18.5"])
def test_malformed_is_a_parse_error(text: str) -> None:
    with pytest.raises(SipParseError, match="Session-Expires"):
        parse_session_expires(text)


def test_absent() -> None:
    assert parse_session_expires(None) is None and parse_session_expires("  ") is None


def test_deadlines_follow_section_10() -> None:
    assert SessionExpires(1800).refresh_after == 900
    assert SessionExpires(1800).expires_after == 1800 - 32  # min(32, 600)
    assert SessionExpires(90).expires_after == 60  # min(32, 30) = 30
    assert SessionExpires(6).expires_after == 4


def test_min_se_and_options() -> None:
    assert parse_min_se("90") == 90 and parse_min_se("120;x=y") == 120
    assert parse_min_se(None) is None and parse_min_se("lots") is None
    assert format_session_expires(1800.0, "uac") == "1800;refresher=uac" and format_session_expires(90) == "90"
    assert has_option(["100rel, timer"]) and has_option(["path", "TIMER"]) and not has_option(["100rel"])
    assert not has_option([])
