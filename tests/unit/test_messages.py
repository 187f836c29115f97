"""Wire message validation (jego_call.signalling.messages)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jego_call.errors import ErrorCode, SignallingError
from jego_call.signalling import messages as m

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CID = "0123456789abcdef"


def code_of(obj: Any, max_bytes: int = 65536) -> ErrorCode:
    with pytest.raises(SignallingError) as info:
        m.parse_frame(obj if isinstance(obj, str) else json.dumps(obj), max_bytes)
    return info.value.code


def test_valid_messages_parse() -> None:
    inv = m.parse_frame(json.dumps({"type": "invite", "call_id": CID, "to": "Bob ", "media": ["audio", "video"],
                                    "sdp": SDP}), 65536)
    assert inv == m.Invite(CID, "Bob", ("audio", "video"), SDP)
    assert m.parse_frame(json.dumps({"type": "ice", "call_id": CID, "candidate": None}), 1000) == m.Ice(CID, None)
    assert m.parse_frame(json.dumps({"type": "decline", "call_id": CID}), 1000).reason == "declined"
    assert m.parse_frame(json.dumps({"type": "dtmf", "call_id": CID, "digits": "0123456789*#"}), 1000).digits == "0123456789*#"


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ("not json", ErrorCode.INVALID_JSON),
        ("[1]", ErrorCode.INVALID_JSON),
        ("\"str\"", ErrorCode.INVALID_JSON),
        ({"type": 5}, ErrorCode.INVALID_MESSAGE),
        ({}, ErrorCode.INVALID_MESSAGE),
        ({"type": "warp"}, ErrorCode.UNKNOWN_TYPE),
        ({"type": "invite", "call_id": CID, "to": "bob"}, ErrorCode.INVALID_MESSAGE),
        ({"type": "invite", "call_id": CID, "to": "bob", "sdp": "hello"}, ErrorCode.INVALID_MESSAGE),
        ({"type": "invite", "call_id": "bad id!!", "to": "bob", "sdp": SDP}, ErrorCode.INVALID_MESSAGE),
        ({"type": "invite", "call_id": CID, "to": "bob", "sdp": SDP, "media": ["video"]}, ErrorCode.INVALID_MESSAGE),
        ({"type": "invite", "call_id": CID, "to": "bob", "sdp": SDP, "media": "audio"}, ErrorCode.INVALID_MESSAGE),
        ({"type": "invite", "call_id": CID, "to": 7, "sdp": SDP}, ErrorCode.INVALID_MESSAGE),
        ({"type": "decline", "call_id": CID, "reason": "bored"}, ErrorCode.INVALID_MESSAGE),
        ({"type": "ice", "call_id": CID}, ErrorCode.INVALID_MESSAGE),
        ({"type": "ice", "call_id": CID, "candidate": "x"}, ErrorCode.INVALID_MESSAGE),
        ({"type": "ice", "call_id": CID, "candidate": {"candidate": "a", "sdpMLineIndex": True}}, ErrorCode.INVALID_MESSAGE),
        ({"type": "dtmf", "call_id": CID, "digits": "12x"}, ErrorCode.INVALID_MESSAGE),
        ({"type": "auth"}, ErrorCode.INVALID_MESSAGE),
    ],
)
def test_bad_messages(obj: Any, code: ErrorCode) -> None:
    assert code_of(obj) is code


def test_size_limit_counts_bytes() -> None:
    text = json.dumps({"type": "ping", "x": "\u4e2d" * 400}, ensure_ascii=False)  # 3 bytes each in UTF-8
    assert len(text) < 1000
    assert code_of(text, max_bytes=1000) is ErrorCode.MESSAGE_TOO_LARGE


def test_error_carries_call_id_and_ref() -> None:
    with pytest.raises(SignallingError) as info:
        m.parse_message({"type": "dtmf", "call_id": CID, "digits": ""})
    assert info.value.call_id == CID
    assert info.value.to_wire(ref=3) == {"type": "error", "code": "invalid_message",
                                        "message": info.value.message, "call_id": CID, "ref": 3}
    assert m.message_ref({"id": "x" * 65}) is None and m.message_ref({"id": 4}) == 4
